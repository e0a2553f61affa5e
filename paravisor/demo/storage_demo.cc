#include "paravisor/demo/storage_demo.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "guestmem/guest_memory.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/testing/storvsc_guest.h"

namespace cvmbus::paravisor {
namespace {

constexpr uint64_t kRingGpn = 0x2000;  // Past the echo channels' rings (0x1000 + 64 * 64).
constexpr uint64_t kDataGpn = 0x2100;  // Two 64 KiB buffers, private.
constexpr uint32_t kBufferPages = 16;
constexpr uint32_t kBytes = kBufferPages * 4096;
constexpr uint64_t kLba = 2048;  // 1 MiB into the disk.

absl::Status Step(const char* what, absl::Status status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      fmt::format("storage demo: {}: {}", what, std::string(status.message())));
}

storvsp::GuestBuffer Buffer(uint32_t index) {
  storvsp::GuestBuffer buffer;
  for (uint32_t i = 0; i < kBufferPages; ++i) buffer.gpns.push_back(kDataGpn + index * 16 + i);
  return buffer;
}

}  // namespace

absl::StatusOr<std::string> StorageDemo::MakeDiskFile(const std::string& dir) {
  const std::string path = dir + "/disk.img";
  const int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError(fmt::format("storage demo: creating {}", path));
  const bool sized = ftruncate(fd, kDiskBytes) == 0;
  close(fd);
  if (!sized) return absl::UnavailableError(fmt::format("storage demo: ftruncate {}", path));
  return path;
}

absl::Status StorageDemo::Run(uint32_t relid) {
  vm::VirtualMachine* vm = &daemon_->vm();
  if (absl::Status status =
          Step("private data pages", vm->MakePrivate(kDataGpn * 4096, 2 * 16 * 4096));
      !status.ok()) {
    return status;
  }
  // Two vCPUs: Linux asks for one subchannel.
  absl::StatusOr<std::unique_ptr<storvsp::StorvscGuest>> guest = storvsp::StorvscGuest::Attach(
      vm, {.relid = relid, .first_gpadl_id = 200, .first_ring_gpn = kRingGpn, .cpus = 2});
  if (!guest.ok()) return Step("attach (VSTOR initialization)", guest.status());
  const storvsp::StorvscProperties& properties = (*guest)->properties();
  fmt::print(
      "== storvsp: a {} MiB disk over {} (O_DIRECT io_uring); storvsc negotiated VSTOR {:#06x}, "
      "max transfer {} KiB, {} channel(s) (primary + {} subchannel)\n",
      kDiskBytes >> 20, path_, properties.version, properties.max_transfer_bytes / 1024,
      (*guest)->channel_count(), (*guest)->channel_count() - 1);

  // Write a pattern from a private buffer through the primary channel.
  const guestmem::GuestMemory memory = guestmem::GuestMemory::Private(vm->memory());
  std::vector<uint8_t> pattern(kBytes);
  for (uint32_t i = 0; i < kBytes; ++i) pattern[i] = static_cast<uint8_t>(i * 7 + i / 4096);
  if (absl::Status status = Step("fill buffer", memory.Write(kDataGpn * 4096, pattern));
      !status.ok()) {
    return status;
  }
  absl::StatusOr<storvsp::StorvscCompletion> wrote = (*guest)->Execute(
      0, storvsp::Write16Cdb(kLba, kBytes / 512), /*data_in=*/false, kBytes, Buffer(0));
  if (!wrote.ok()) return Step("WRITE(16)", wrote.status());
  // Read it back through the last channel (the subchannel when there is one).
  const size_t last = (*guest)->channel_count() - 1;
  absl::StatusOr<storvsp::StorvscCompletion> read = (*guest)->Execute(
      last, storvsp::Read16Cdb(kLba, kBytes / 512), /*data_in=*/true, kBytes, Buffer(1));
  if (!read.ok()) return Step("READ(16)", read.status());
  std::vector<uint8_t> back(kBytes);
  if (absl::Status status =
          Step("read buffer", memory.Read((kDataGpn + 16) * 4096, absl::MakeSpan(back)));
      !status.ok()) {
    return status;
  }
  std::vector<uint8_t> in_file(kBytes);
  const int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  const bool file_read =
      fd >= 0 && pread(fd, in_file.data(), kBytes, kLba * 512) == static_cast<ssize_t>(kBytes);
  if (fd >= 0) close(fd);
  fmt::print(
      "== storvsp: WRITE(16) of {} KiB on channel 0: srb status {:#04x}; READ(16) on channel {}: "
      "srb status {:#04x}, {}; the file's bytes at {:#x} {}\n",
      kBytes / 1024, wrote->srb_status, last, read->srb_status,
      back == pattern ? "the same bytes" : "DIFFERENT bytes", kLba * 512,
      file_read && in_file == pattern ? "match" : "DO NOT match");

  // A read past the end: CHECK CONDITION, ILLEGAL REQUEST, LBA OUT OF RANGE.
  absl::StatusOr<storvsp::StorvscCompletion> past = (*guest)->Execute(
      0, storvsp::Read16Cdb(kDiskBytes / 512, 8), /*data_in=*/true, 4096, Buffer(1));
  if (!past.ok()) return Step("READ(16) past the end", past.status());
  const bool sensed = past->sense.size() >= 13;
  fmt::print(
      "== storvsp: READ(16) past the end: scsi status {:#04x}, sense key {:#x} asc {:#04x} "
      "(ILLEGAL REQUEST, LBA OUT OF RANGE)\n",
      past->scsi_status, sensed ? past->sense[2] & 0x0f : 0, sensed ? past->sense[12] : 0);

  if (absl::Status status = Step("detach", (*guest)->Detach()); !status.ok()) return status;
  const daemon::Tree disk = daemon_->Inspect()["devices"]["disks"]["0"];
  fmt::print(
      "== storvsp: detached (subchannel closed and revoked first): {} SRBs, {} malformed, {} "
      "subchannel(s) offered, {} revoked\n",
      disk.value("srbs", 0), disk.value("bad_packets", 0), disk.value("subchannels_offered", 0),
      disk.value("subchannels_revoked", 0));
  const bool good = back == pattern && file_read && in_file == pattern &&
                    wrote->srb_status == storvsp::kSrbSuccess &&
                    read->srb_status == storvsp::kSrbSuccess &&
                    past->scsi_status == storvsp::kScsiCheckCondition;
  return good ? absl::OkStatus()
              : absl::DataLossError("storage demo: the disk did not behave (see above)");
}

}  // namespace cvmbus::paravisor
