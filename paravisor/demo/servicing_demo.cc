#include "paravisor/demo/servicing_demo.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <vector>

#include "guestmem/guest_memory.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/testing/storvsc_guest.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kRingGpn = 0x2400;  // Clear of the storage demo's rings and buffers.
constexpr uint64_t kDataGpn = 0x2300;  // One private page per write.
constexpr uint32_t kWrites = 8;        // Sent just before the servicing, half per channel.
constexpr uint64_t kLba = 8192;        // 4 MiB into the disk.
constexpr long kEchoAfter = 2000;      // Echoes after the servicing, at least.

absl::Status Step(const std::string& what, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      fmt::format("servicing demo: {}: {}", what, std::string(status.message())));
}

std::vector<uint8_t> Pattern(uint32_t write) {
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + write * 5 + 1);
  return data;
}

}  // namespace

absl::Status RunServicingDemo(daemon::Daemon* daemon, testing::GuestChannel& echo,
                              uint32_t disk_relid, const std::string& disk_path) {
  vm::VirtualMachine* vm = &daemon->vm();
  if (absl::Status status = vm->MakePrivate(kDataGpn * 4096, kWrites * 4096); !status.ok()) {
    return Step("private data pages", status);
  }
  // The storage demo's detach closed the subchannel, which the host then rescinded: the guest
  // releases its relid, as Linux does, before the driver attaches again.
  absl::StatusOr<protocol::ParsedMessage> rescind =
      vm->guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 2s);
  if (!rescind.ok()) return Step("the subchannel's rescind", rescind.status());
  const auto* rescinded = rescind->As<protocol::RescindChannelOffer>();
  if (rescinded == nullptr) return Step("the subchannel's rescind", absl::DataLossError("short"));
  if (absl::Status status = vm->guest().ReleaseRelid(rescinded->child_relid); !status.ok()) {
    return Step("RELID_RELEASED", status);
  }
  absl::StatusOr<std::unique_ptr<storvsp::StorvscGuest>> disk = storvsp::StorvscGuest::Attach(
      vm, {.relid = disk_relid, .first_gpadl_id = 300, .first_ring_gpn = kRingGpn, .cpus = 2});
  if (!disk.ok()) return Step("attaching the disk again", disk.status());
  const guestmem::GuestMemory memory = guestmem::GuestMemory::Private(vm->memory());
  for (uint32_t i = 0; i < kWrites; ++i) {
    const storvsp::GuestBuffer buffer{.gpns = {kDataGpn + i}};
    if (absl::Status status = memory.Write((kDataGpn + i) * 4096, Pattern(i)); !status.ok()) {
      return Step("filling a buffer", status);
    }
    const size_t channel = i % (*disk)->channel_count();
    if (absl::Status status =
            (*disk)->Submit(channel, 500 + i, storvsp::Write16Cdb(kLba + 8 * i, 8),
                            /*data_in=*/false, 4096, buffer);
        !status.ok()) {
      return Step("WRITE(16)", status);
    }
  }

  // The servicing runs on another thread while this one keeps 64 echoes in flight.
  std::atomic<bool> serviced{false};
  std::future<absl::Status> servicing = std::async(std::launch::async, [&] {
    absl::Status status = daemon->Service();
    serviced = true;
    return status;
  });
  std::vector<uint8_t> payload(64, 0x5e);
  ring::PacketBuffer buffer;
  long sent = 0, received = 0, during = 0, after = 0;
  absl::Status echoed;
  while (echoed.ok() && (!serviced || after < kEchoAfter)) {
    while (sent - received < 64 && echoed.ok()) echoed = echo.Send(payload, ++sent);
    if (!echoed.ok()) break;
    echoed = echo.Receive(&buffer, 5s);
    if (!echoed.ok()) break;
    ++received;
    if (buffer.packet().transaction_id != static_cast<uint64_t>(received)) {
      echoed = absl::DataLossError(fmt::format("echo {} came back as transaction {}", received,
                                               buffer.packet().transaction_id));
    }
    (serviced ? after : during) += 1;
  }
  const absl::Status service = servicing.get();
  if (!service.ok()) return Step("Service", service);
  while (echoed.ok() && received < sent) {  // The last ones in flight.
    echoed = echo.Receive(&buffer, 5s);
    if (echoed.ok() && buffer.packet().transaction_id != static_cast<uint64_t>(++received)) {
      echoed = absl::DataLossError("an echo out of order");
    }
  }
  if (!echoed.ok()) return Step("echo across the servicing", echoed);

  // The writes: each answered once, on its channel, and in the file.
  std::map<uint64_t, int> answered;
  for (uint32_t i = 0; i < kWrites; ++i) {
    uint64_t id = 0;
    absl::StatusOr<storvsp::StorvscCompletion> done =
        (*disk)->Wait(i % (*disk)->channel_count(), &id);
    if (!done.ok()) return Step("a write's completion", done.status());
    if (done->srb_status != storvsp::kSrbSuccess) {
      return Step("a write",
                  absl::DataLossError(fmt::format("srb status {:#x}", done->srb_status)));
    }
    ++answered[id];
  }
  bool in_file = answered.size() == kWrites;
  const int fd = open(disk_path.c_str(), O_RDONLY | O_CLOEXEC);
  for (uint32_t i = 0; i < kWrites && fd >= 0; ++i) {
    std::vector<uint8_t> bytes(4096);
    in_file = in_file && pread(fd, bytes.data(), bytes.size(), (kLba + 8 * i) * 512) == 4096 &&
              bytes == Pattern(i);
  }
  if (fd >= 0) close(fd);
  const bool no_new_offer = vm->guest().NothingArrives(protocol::MessageType::kOfferChannel, 20ms);
  const daemon::Tree state = daemon->Inspect()["daemon"]["servicing"];
  fmt::print(
      "== servicing: the paravisor saved and restored itself in place in {:.1f} ms ({} bytes of "
      "state) while {} echoes ran ({} before it had finished, {} after), every one back once "
      "and in order\n",
      state.value("last_microseconds", 0.0) / 1000, state.value("last_state_bytes", 0), received,
      during, received - during);
  fmt::print(
      "== servicing: {} disk writes sent on {} channels just before it: {} answered once each, {} "
      "in the file; the guest saw {} new offer\n",
      kWrites, (*disk)->channel_count(), answered.size(), in_file ? "all" : "NOT all",
      no_new_offer ? "no" : "a");
  if (absl::Status status = (*disk)->Detach(); !status.ok()) return Step("detach", status);
  if (!in_file || !no_new_offer) {
    return absl::DataLossError("servicing demo: the disk or the offers did not survive (above)");
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
