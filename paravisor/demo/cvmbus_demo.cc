// cvmbus demo: an emulated AMD SEV-SNP confidential VM whose guest talks VMBus to the
// paravisor's server over confidential channels.
//
//   1. a 64 MiB guest memory (memfd) under the SNP memory model: every page starts
//      hypervisor-owned; the guest makes its ring pages private (page-state change + PVALIDATE);
//   2. cvmbusd's body (paravisor/daemon) in this process: the VMBus server on an io_uring loop,
//      with echo devices, a storvsp disk (a temporary file), the three integration components
//      and the hvsocket relay offered through ParentBus, configured as a config file would;
//   3. the guest client negotiates VMBus 6.0 with confidential channels, takes the offers,
//      creates GPADLs, opens the channels with their rings in private memory;
//   4. traffic: request/answer round trips, then a pipelined burst;
//   5. what the host sees: the private ring pages read as ciphertext, and its writes fault;
//   6. storage: the guest's storvsc initializes the disk as Linux does, with a subchannel,
//      writes through one channel, reads back through the other, and checks the file;
//   7. servicing: the paravisor saves and restores itself in place with echoes and disk writes
//      in flight, and none is lost or repeated;
//   8. integration components: the guest's hv_utils negotiates heartbeat, shutdown and time
//      sync as Linux does, answers heartbeats, takes the SYNC and accepts a reboot request;
//   9. hvsocket: a guest vsock stream to port 5000 relayed to a host Unix socket and back;
//  10. a per-channel summary from the daemon's inspect tree (state, ring view, free space);
//  11. close, teardown, unload; the daemon's ordered stop.
//
//   bazel run -c opt //paravisor/demo:cvmbus_demo -- [--packets=N] [--channels=N] [--kvm]
// With --kvm the guest is a KVM vCPU instead (kvm_demo.h).
#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "base/format.h"
#include "base/log.h"
#include "guestmem/errors.h"
#include "hw/isolation/errors.h"
#include "paravisor/daemon/daemon.h"
#include "paravisor/demo/hvsocket_demo.h"
#include "paravisor/demo/ic_demo.h"
#include "paravisor/demo/kvm_demo.h"
#include "paravisor/demo/servicing_demo.h"
#include "paravisor/demo/storage_demo.h"
#include "paravisor/devices/demo_devices.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

ABSL_FLAG(int64_t, packets, 200000,
          "Packets in the pipelined burst on one channel (1 to 100000000); a tenth as many "
          "request/answer round trips go first.");
ABSL_FLAG(int64_t, channels, 4, "Echo channels (1 to 64), the last one monitored if two or more.");
ABSL_FLAG(bool, kvm, false,
          "The guest is a real KVM vCPU (needs /dev/kvm) running --packets / 10 checked round "
          "trips, with two servicings under it.");

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Flags {
  long packets = 200000;
  long channels = 4;
};

// The flags' values, each checked against its range: false after a one-line error naming it.
bool GetFlags(Flags* flags) {
  static_assert(kDemoMaxDeviceCount == 64, "the --channels help text names the limit");
  const auto get = [](std::string_view name, const absl::Flag<int64_t>& flag, long limit,
                      long* out) {
    const int64_t value = absl::GetFlag(flag);
    if (value < 1 || value > limit) {
      fmt::print(stderr, "cvmbus_demo: '--{}={}' needs a whole number from 1 to {}\n", name, value,
                 limit);
      return false;
    }
    *out = static_cast<long>(value);
    return true;
  };
  return get("packets", FLAGS_packets, 100000000, &flags->packets) &&
         get("channels", FLAGS_channels, kDemoMaxDeviceCount, &flags->channels);
}

int Fail(const std::string& what, const absl::Status& status) {
  fmt::print(stderr, "cvmbus_demo: {}: {}\n", what, status);
  return 1;
}

// The demo's scratch directory (the disk file, the sockets), removed at exit.
struct ScratchDir {
  std::string path;
  ~ScratchDir() {
    std::error_code ignored;
    if (!path.empty()) std::filesystem::remove_all(path, ignored);
  }
};

// One line per channel from the daemon's inspect tree.
void PrintChannelSummary(const daemon::Tree& tree) {
  fmt::print("== the daemon's inspect tree, per channel:\n");
  for (const auto& item : tree["channels"].items()) {
    const daemon::Tree& channel = item.value();
    std::string rings;
    if (channel.contains("rings")) {
      const daemon::Tree& r = channel["rings"];
      rings = fmt::format("  rings {} (guest->host free {}, host->guest free {})",
                          r.value("view", "?"), r["guest_to_host"].value("free_bytes", 0),
                          r["host_to_guest"].value("free_bytes", 0));
    }
    fmt::print("   relid {:>2}  {:<16} {}{}\n", item.key(), channel.value("interface_name", ""),
               rings.empty() ? channel.value("state", "")
                             : fmt::format("{:<8}", channel.value("state", "")),
               rings);
  }
  const daemon::Tree& connection = tree["connection"];
  fmt::print("   connection: version {}, {} messages, {} guest errors, monitor {} scans\n",
             connection.value("version", "?"), connection.value("messages_handled", 0),
             connection.value("guest_errors", 0),
             connection.contains("monitor") ? connection["monitor"].value("scans", 0) : 0);
}

int Run(const Flags& flags) {
  // Short paths: sockaddr_un holds 107 bytes.
  char dir_template[] = "/tmp/cvmbus-demo-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return Fail("mkdtemp", absl::UnavailableError(std::strerror(errno)));
  }
  const ScratchDir scratch{dir_template};
  absl::StatusOr<std::string> disk = StorageDemo::MakeDiskFile(scratch.path);
  if (!disk.ok()) return Fail("the disk file", disk.status());

  // cvmbusd's body in this process: the VM, the server and the devices, as a configuration
  // file would set them. Both ring directions are signalled again 100 ms after each open, as a
  // deployment would run it (Linux netvsc ignores interrupts that arrive before
  // OPENCHANNEL_RESULT). The guest side is this program.
  daemon::Settings settings;
  settings.memory_bytes = 64ull << 20;
  settings.isolation = daemon::IsolationKind::kSnp;
  settings.guest = daemon::GUEST_NONE;
  settings.max_version = protocol::kVersionWin10V6_0;
  settings.resignal_after_open = std::chrono::milliseconds(100);
  settings.echo_channels = static_cast<uint32_t>(flags.channels);
  settings.disks.push_back({.path = *disk, .direct = true, .subchannels = 1});
  settings.heartbeat = settings.shutdown = settings.timesync = true;
  // A heartbeat every 100 ms so the demo sees a few (Hyper-V's hosts send one every 2 s).
  settings.heartbeat_interval = std::chrono::milliseconds(100);
  settings.hvsocket_prefix = scratch.path + "/host";
  settings.control_socket = scratch.path + "/control.sock";
  absl::StatusOr<std::unique_ptr<daemon::Daemon>> started = daemon::Daemon::Start(settings, {});
  if (!started.ok()) return Fail("starting the daemon", started.status());
  daemon::Daemon* paravisor = started->get();
  vm::VirtualMachine* machine = &paravisor->vm();
  fmt::print(
      "== cvmbusd in-process on an emulated SEV-SNP VM: 64 MiB guest memory (memfd), all pages "
      "hypervisor-owned; control socket {}\n",
      settings.control_socket);
  fmt::print(
      "   offered: {} echo channel(s) (the last through the monitor page), a storvsp disk over "
      "{} ({} MiB, one subchannel), heartbeat, shutdown, time sync, the hvsocket relay\n",
      flags.channels, *disk, StorageDemo::kDiskBytes >> 20);
  StorageDemo storage(paravisor, *disk);
  IcDemo ics(paravisor);
  absl::StatusOr<std::unique_ptr<HvSocketDemo>> hvsocket =
      HvSocketDemo::Create(paravisor, scratch.path);
  if (!hvsocket.ok()) return Fail("the hvsocket host end", hvsocket.status());

  GuestClient& guest = machine->guest();
  auto contact = guest.Connect(
      protocol::kVersionWin10V6_0,
      protocol::kFeatureConfidentialChannels | protocol::kFeatureServerSpecifiedMonitorPages,
      {.server_pages = guestmem::GuestMemory::Private(machine->memory())});
  if (!contact.ok()) return Fail("INITIATE_CONTACT", contact.status());
  fmt::print(
      "== guest: VMBus 6.0 negotiated, features granted {:#x} (confidential channels, the "
      "paravisor's private monitor page at {:#x})\n",
      contact->supported_features, contact->child_to_parent_monitor_page);
  auto offers = guest.RequestOffers();
  if (!offers.ok()) return Fail("REQUESTOFFERS", offers.status());
  for (const auto& offer : *offers) {
    fmt::print(
        "   offer relid {:>2}  connection {:#x}  flags {:#06x}{}{}{}\n", offer.child_relid,
        offer.connection_id, offer.channel_flags,
        offer.channel_flags & protocol::kOfferConfidentialRingBuffer ? "  confidential-ring" : "",
        offer.channel_flags & protocol::kOfferConfidentialExternalMemory
            ? "  confidential-external-memory"
            : "",
        offer.monitor_allocated() ? fmt::format("  monitor id {}", offer.monitor_id) : "");
  }

  std::vector<protocol::OfferChannel> echo_offers;
  uint32_t disk_relid = 0;
  for (const auto& offer : *offers) {
    Guid interface;  // The wire's byte order is the in-memory one of Guid on x86.
    std::memcpy(&interface, offer.interface_type.bytes, sizeof(interface));
    if (interface == kDemoInterfaceId) echo_offers.push_back(offer);
    if (interface == storvsp::kScsiInterfaceId) disk_relid = offer.child_relid;
  }
  if (echo_offers.empty() || disk_relid == 0) {
    return Fail("REQUESTOFFERS", absl::NotFoundError("no echo or no storvsp offer"));
  }
  std::vector<std::unique_ptr<testing::GuestChannel>> channels;
  for (size_t i = 0; i < echo_offers.size(); ++i) {
    auto channel = testing::GuestChannel::Open(machine, {.relid = echo_offers[i].child_relid,
                                                         .gpadl_id = static_cast<uint32_t>(100 + i),
                                                         .first_gpn = 0x1000 + i * 64,
                                                         .ring_pages = 16,
                                                         .confidential = true});
    if (!channel.ok()) return Fail("opening a channel", channel.status());
    channels.push_back(*std::move(channel));
  }
  fmt::print("== {} echo channels open; each ring is 15 data pages in private (validated) memory\n",
             channels.size());

  // Round trips: one request, one answer, on every channel in turn.
  ring::PacketBuffer buffer;
  std::vector<uint8_t> payload(64, 0x42);
  const long round_trips = std::max(1L, flags.packets / 10);
  auto start = Clock::now();
  for (long i = 0; i < round_trips; ++i) {
    testing::GuestChannel& channel = *channels[i % channels.size()];
    if (absl::Status status = channel.Send(payload, i + 1); !status.ok()) {
      return Fail("send", status);
    }
    if (absl::Status status = channel.Receive(&buffer, 5s); !status.ok()) {
      return Fail("receive", status);
    }
    if (buffer.packet().transaction_id != static_cast<uint64_t>(i + 1)) {
      return Fail("receive", absl::DataLossError("wrong transaction id"));
    }
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  fmt::print("== {} request/answer round trips: {:.1f} us each (each side waits on an eventfd)\n",
             round_trips, 1e6 * seconds / round_trips);

  // Pipelined: keep up to 64 requests in flight on channel 0.
  testing::GuestChannel& first = *channels[0];
  long sent = 0, received = 0;
  start = Clock::now();
  while (received < flags.packets) {
    while (sent < flags.packets && sent - received < 64) {
      if (absl::Status status = first.Send(payload, sent + 1); !status.ok()) {
        return Fail("send", status);
      }
      ++sent;
    }
    if (absl::Status status = first.Receive(&buffer, 5s); !status.ok()) {
      return Fail("receive", status);
    }
    ++received;
    // A progress line at each quarter.
    if (received % (flags.packets / 4 + 1) == 0 || received == flags.packets) {
      fmt::print("   ... {} of {} packets echoed\n", received, flags.packets);
    }
  }
  seconds = std::chrono::duration<double>(Clock::now() - start).count();
  fmt::print(
      "== {} pipelined 64-byte packets on one channel: {:.2f} M packets/s, {} signals "
      "from the guest\n",
      flags.packets, flags.packets / seconds / 1e6, first.signals_sent());

  // The monitored channel: the guest sets a pending bit, the paravisor's scan raises the event.
  if (channels.size() >= 2) {
    testing::GuestChannel& monitored = *channels.back();
    constexpr int kMonitoredTrips = 200;
    start = Clock::now();
    for (int i = 0; i < kMonitoredTrips; ++i) {
      if (absl::Status status = monitored.Send(payload, i + 1); !status.ok()) {
        return Fail("send", status);
      }
      if (absl::Status status = monitored.Receive(&buffer, 5s); !status.ok()) {
        return Fail("receive", status);
      }
    }
    seconds = std::chrono::duration<double>(Clock::now() - start).count();
    uint64_t scans = 0, events = 0;
    machine->OnServer([&] {
      if (const MonitorScanner* scanner = machine->server().monitor()) {
        scans = scanner->stats().scans;
        events = scanner->stats().signals;
      }
    });
    fmt::print(
        "== monitored channel: {} round trips, {:.1f} us each (50 us scan period); {} scans of "
        "the monitor page raised {} channel events\n",
        kMonitoredTrips, 1e6 * seconds / kMonitoredTrips, scans, events);
  }

  // What the untrusted host sees of a private ring page.
  const uint64_t ring_gpa = 0x1000ull * 4096;
  std::vector<uint8_t> host_view(16);
  absl::Status host_read = machine->snp()->HostRead(ring_gpa, absl::MakeSpan(host_view));
  fmt::print("== host read of the private ring page at {:#x}: {} (bytes {:02x})\n", ring_gpa,
             host_read.ok() ? "ciphertext" : std::string(host_read.message()),
             fmt::join(host_view.begin(), host_view.begin() + 8, " "));
  absl::Status host_write = machine->snp()->HostWrite(ring_gpa, host_view);
  fmt::print("== host write to it: {}\n", host_write.ok() ? "allowed (BUG)" : host_write.message());
  absl::Status shared_read =
      guestmem::GuestMemory::Untrusted(machine->memory()).Read(ring_gpa, absl::MakeSpan(host_view));
  fmt::print("== the paravisor's untrusted view of it: {}\n", shared_read.message());

  if (absl::Status status = storage.Run(disk_relid); !status.ok()) {
    return Fail("storage", status);
  }
  if (absl::Status status = RunServicingDemo(paravisor, *channels[0], disk_relid, *disk);
      !status.ok()) {
    return Fail("servicing", status);
  }
  fmt::print(
      "== integration components: the guest's hv_utils on three more confidential channels\n");
  if (absl::Status status = ics.Run(*offers); !status.ok()) {
    return Fail("integration components", status);
  }
  fmt::print("== hvsocket: a guest AF_VSOCK stream relayed to a host Unix socket\n");
  if (absl::Status status = (*hvsocket)->Run(); !status.ok()) return Fail("hvsocket", status);
  PrintChannelSummary(paravisor->Inspect());

  for (size_t i = 0; i < channels.size(); ++i) {
    if (absl::Status status = channels[i]->Close(); !status.ok()) return Fail("close", status);
    if (absl::Status status =
            guest.TeardownGpadl(echo_offers[i].child_relid, static_cast<uint32_t>(100 + i));
        !status.ok()) {
      return Fail("GPADL teardown", status);
    }
  }
  if (absl::Status status = guest.Unload(); !status.ok()) return Fail("UNLOAD", status);
  const daemon::Tree tree = paravisor->Inspect();
  uint64_t echoed = 0;
  for (const auto& item : tree["devices"]["echo"].items()) {
    echoed += item.value().value("packets_echoed", uint64_t{0});
  }
  const uint64_t guest_errors = tree["connection"].value("guest_errors", uint64_t{0});
  fmt::print(
      "== closed, torn down, unloaded: {} packets echoed, {} control messages, {} guest "
      "errors\n",
      echoed, tree["connection"].value("messages_handled", uint64_t{0}), guest_errors);
  paravisor->Stop();
  fmt::print("== cvmbusd stopped: every device's offers revoked, the control socket removed\n");
  return guest_errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace cvmbus::paravisor

int main(int argc, char** argv) {
  // The demo prints what it shows; the daemon's own lines only when something is wrong.
  cvmbus::log::SetMinLevel(cvmbus::log::Level::kWarning);
  absl::SetProgramUsageMessage(
      "cvmbus_demo [--packets=N] [--channels=N] [--kvm]: an emulated SEV-SNP confidential VM "
      "whose guest talks VMBus to the paravisor's server over confidential channels");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr,
               "cvmbus_demo: unexpected argument '{}' (flags: --packets=N --channels=N --kvm)\n",
               rest[1]);
    return 2;
  }
  cvmbus::paravisor::Flags flags;
  if (!cvmbus::paravisor::GetFlags(&flags)) return 2;
  if (absl::GetFlag(FLAGS_kvm)) {
    return cvmbus::paravisor::RunKvmDemo(static_cast<uint32_t>(std::max(1L, flags.packets / 10)));
  }
  return cvmbus::paravisor::Run(flags);
}
