#include "paravisor/demo/kvm_demo.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "base/format.h"
#include "paravisor/daemon/daemon.h"
#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t RoundTrips(daemon::Daemon& daemon) {
  return daemon.Inspect()["guest"].value("round_trips", uint64_t{0});
}

}  // namespace

int RunKvmDemo(uint32_t round_trips) {
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    fmt::print(stderr, "cvmbus_demo --kvm: no usable /dev/kvm here\n");
    return 3;
  }
  char dir[] = "/tmp/cvmbus-kvm-demo-XXXXXX";
  if (mkdtemp(dir) == nullptr) {
    fmt::print(stderr, "cvmbus_demo --kvm: mkdtemp failed\n");
    return 1;
  }
  daemon::Settings settings;
  settings.isolation = daemon::IsolationKind::kSnp;
  settings.guest = daemon::GUEST_KVM;
  settings.max_version = protocol::kVersionWin10V6_0;
  settings.echo_channels = 1;
  settings.kvm_round_trips = round_trips;
  settings.control_socket = std::string(dir) + "/control.sock";
  const auto start = Clock::now();
  absl::StatusOr<std::unique_ptr<daemon::Daemon>> started = daemon::Daemon::Start(settings, {});
  if (!started.ok()) {
    fmt::print(stderr, "cvmbus_demo --kvm: starting the daemon: {}\n", started.status());
    std::filesystem::remove_all(dir);
    return 1;
  }
  daemon::Daemon& paravisor = **started;
  fmt::print(
      "== cvmbusd in-process on an emulated SEV-SNP VM; the guest is a KVM vCPU running the "
      "freestanding VMBus guest (paravisor/kvm/vmbus_guest.c), its memory launch-validated "
      "private\n");
  // Two servicings while the vCPU runs: at a third and at two thirds of its round trips.
  int serviced = 0;
  uint64_t last_progress = 0;
  std::string state = "running";
  daemon::Tree tree;
  while (Clock::now() - start < std::chrono::seconds(120)) {
    tree = paravisor.Inspect();
    state = tree["guest"].value("state", "?");
    const uint64_t done = tree["guest"].value("round_trips", uint64_t{0});
    if (state != "running") break;
    if (serviced < 2 && done >= (serviced + 1) * uint64_t{round_trips} / 3) {
      const uint64_t before = RoundTrips(paravisor);
      const absl::Status status = paravisor.Service();
      fmt::print("   ... servicing at round trip {}: {}\n", before,
                 status.ok() ? "saved and restored in place" : status.ToString());
      ++serviced;
    }
    if (done >= last_progress + round_trips / 4 + 1) {
      fmt::print("   ... {} of {} round trips checked by the guest\n", done, round_trips + 10);
      last_progress = done;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const daemon::Tree& guest = tree["guest"];
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  fmt::print(
      "== KVM guest: {}; VMBus {} with features {:#x}, echo channel relid {} ({} offers "
      "seen), {} round trips checked byte for byte in {:.2f} s, {} doorbells ({} refused, as "
      "Linux ignores them)\n",
      state, guest.value("version", "?"), guest.value("features", 0), guest.value("relid", 0),
      guest.value("offers", 0), guest.value("round_trips", uint64_t{0}), seconds,
      guest.value("signals", uint64_t{0}), guest.value("signals_refused", uint64_t{0}));
  const daemon::Tree& exits = guest["vcpu_exits"];
  fmt::print(
      "== vCPU exits to user space: {} MSR, {} hypercall, {} doorbell fallbacks, {} other (the "
      "doorbells and interrupts of the round trips complete in the kernel)\n",
      exits.value("msr", uint64_t{0}), exits.value("hypercall", uint64_t{0}),
      exits.value("signal_fallback", uint64_t{0}), exits.value("other", uint64_t{0}));
  const uint64_t guest_errors = tree["connection"].value("guest_errors", uint64_t{0});
  fmt::print("== {} servicings under the running vCPU; {} guest errors; the guest unloaded: {}\n",
             tree["daemon"]["servicing"].value("done", 0), guest_errors,
             tree["connection"].value("version", "?") == "none" ? "yes" : "no");
  if (guest.contains("last_error")) {
    fmt::print("== the guest's error: {}\n", guest.value("last_error", ""));
  }
  paravisor.Stop();
  fmt::print("== cvmbusd stopped\n");
  std::filesystem::remove_all(dir);
  return state == "exited" && guest_errors == 0 && serviced == 2 ? 0 : 1;
}

}  // namespace cvmbus::paravisor
