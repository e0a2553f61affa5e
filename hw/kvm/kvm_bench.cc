// kvm_bench: the raw long-mode doorbell round trip, the baseline a VMBus round trip is compared
// with later. A benchmark program (it prints figures), not a test.
//
// The round trip (guest: //hw/kvm/testing/guests:bench_guest):
//   guest: fast HvSignalEvent of a bound connection id through the hypercall page (an
//          ioeventfd: no exit to user space)
//   host:  a thread blocked on (or spinning on) that eventfd wakes and writes an MSI irqfd
//   guest: the vector's handler runs (EOI through the x2APIC MSR), then the next signal
// for each way of waiting: the guest STI; HLT (the vCPU sleeps in the kernel) or spinning with
// interrupts enabled; the host a blocking read(2) or spinning on a non-blocking one. Beside
// them, the parts: a bound signal alone (back to back, no wait), an unbound signal (each a
// user-space exit through HypervExitHandler::Hypercall), and a bare CPUID (an exit to KVM
// that stays in the kernel).
//
// Figures: "guest ns" is the guest's own loop time per operation by its TSC (which runs at the
// host's rate; calibrated against steady_clock); median and p99 are per round trip as the host
// saw consecutive doorbells; user-space exits per operation are counted over the run, minus
// the guest's fixed set-up (two MSR writes, the exit port). The main thread is pinned to cpu0
// before the vCPU starts (the vCPU thread inherits it), the host thread to cpu1; the cache-line
// round trip between the two is printed beside each figure (../shared/docs/limits.md:
// placement moves cross-core figures by 2-5x). Run it on an otherwise idle machine.
//
//   bazel run -c opt //hw/kvm:kvm_bench -- --iterations=20000 --reps=3
//   flags: --iterations=N (per run) --reps=N --only=SUBSTRING (of the row names)
#include <errno.h>
#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/kvm/testing/guests/bench_guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/tests.h"
#include "hw/kvm/unique_fd.h"
#include "ring/bench/placement.h"

namespace cvmbus::hw::kvm {
namespace {

namespace program = guest::bench_guest;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kConnectionId = 0x3001;

// Just enough SynIC for the guest: GUEST_OS_ID and HYPERCALL (which writes the page).
class BenchHyperv : public HypervExitHandler {
 public:
  explicit BenchHyperv(KvmVm* vm) : vm_(vm) {}
  absl::StatusOr<uint64_t> ReadMsr(uint32_t index) override {
    return absl::NotFoundError(fmt::format("bench: no MSR {:#x}", index));
  }
  absl::Status WriteMsr(uint32_t index, uint64_t value) override {
    if (index == kHvMsrHypercall && (value & kHvHypercallEnable) != 0) {
      return vm_->WriteHypercallPage(value & ~uint64_t{0xfff});
    }
    return index == kHvMsrGuestOsId || index == kHvMsrHypercall
               ? absl::OkStatus()
               : absl::NotFoundError(fmt::format("bench: no MSR {:#x}", index));
  }
  // Only an unbound signal comes here (the "fallback" figure); it succeeds.
  uint64_t Hypercall(uint64_t control, uint64_t input, uint64_t) override {
    if (control == kHvSignalEventFastControl && input == kConnectionId) return kHvStatusSuccess;
    unexpected_hypercalls.fetch_add(1, std::memory_order_relaxed);
    return kHvStatusInvalidHypercallCode;
  }
  std::atomic<uint64_t> unexpected_hypercalls{0};

 private:
  KvmVm* const vm_;
};

// What one run measures. mode: as bench_guest.c's mailbox[2].
enum class Mode { kRoundTripHlt = 0, kRoundTripSpin = 1, kSignalOnly = 2, kCpuid = 3 };

struct Result {
  uint64_t operations = 0;
  double guest_ns = 0;   // Per operation, by the guest's TSC over its whole loop.
  double median_ns = 0;  // Round trips only: per round trip as the host saw the doorbells.
  double p99_ns = 0;
  ExitCounts exits;  // Over the guest's loop (from the first doorbell for round trips).
};

// TSC ticks per nanosecond: the guest's TSC runs at the host's rate (PVM runs the guest on the
// same CPU, no TSC scaling); calibrated against steady_clock over 50 ms.
double TscPerNs() {
  const auto t0 = Clock::now();
  const uint64_t c0 = __rdtsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const uint64_t c1 = __rdtsc();
  const auto t1 = Clock::now();
  return static_cast<double>(c1 - c0) / std::chrono::duration<double, std::nano>(t1 - t0).count();
}

// Waits for doorbells on `fd` (a blocking read(2), or spinning on a non-blocking one); returns
// how many arrived (the eventfd's count), 0 on an error.
uint64_t WaitDoorbell(int fd, bool spin) {
  uint64_t count = 0;
  for (;;) {
    const ssize_t got = read(fd, &count, sizeof(count));
    if (got == sizeof(count)) return count;
    if (got < 0 && (errno == EINTR || (spin && errno == EAGAIN))) continue;
    return 0;
  }
}

// One VM, one run of bench_guest. `bound`: the guest's id has an eventfd (else every signal
// falls back to user space, where the handler answers 0). `host_spins`: how the host waits.
absl::StatusOr<Result> RunOnce(Mode mode, uint64_t iterations, bool bound, bool host_spins,
                               double tsc_per_ns) {
  const bool round_trips = mode == Mode::kRoundTripHlt || mode == Mode::kRoundTripSpin;
  guestmem::MemoryOptions options;
  options.name = "kvm-bench";
  options.type = guestmem::BackingType::kMemfd;
  options.regions = {{0, TEST_MEMORY_BYTES}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(options);
  if (!backing.ok()) return backing.status();
  const guestmem::GuestMemory memory = guestmem::GuestMemory::Private(*backing);
  if (absl::Status s = memory.Write(program::kLoadGpa, program::Image()); !s.ok()) return s;
  for (const auto& [word, value] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, kConnectionId}, {1, iterations}, {2, static_cast<uint64_t>(mode)}}) {
    if (absl::Status s = memory.WritePlain<uint64_t>(TEST_MAILBOX_GPA + 8 * word, value); !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(*backing);
  if (!vm.ok()) return vm.status();
  UniqueFd doorbell(eventfd(0, EFD_CLOEXEC | (host_spins ? EFD_NONBLOCK : 0)));
  if (!doorbell.valid()) return absl::InternalError("eventfd failed");
  if (bound) {
    if (absl::Status s = (*vm)->BindSignalEvent(kConnectionId, doorbell.get()); !s.ok()) return s;
  }
  absl::StatusOr<int> irq = (*vm)->AddMsiIrqFd(TEST_BENCH_VECTOR);
  if (!irq.ok()) return irq.status();
  BenchHyperv hyperv(vm->get());
  if (absl::Status s = (*vm)->SetHypervExitHandler(&hyperv); !s.ok()) return s;

  // The host thread: for round trips, answer each doorbell with the irqfd; for signals, count
  // them. Only when the guest's id is bound (else there is nothing to wait for).
  std::vector<Clock::time_point> wakes(iterations);  // When the host saw doorbell i.
  bool host_ok = true;
  std::atomic<bool> abort{false};  // Set (then the doorbell rung) to release the host thread.
  std::thread host;
  if (bound && mode != Mode::kCpuid) {
    host = std::thread([&] {
      ring::bench::PinToCpu(1);
      const uint64_t one = 1;
      for (uint64_t i = 0; i < iterations;) {
        const uint64_t got = WaitDoorbell(doorbell.get(), host_spins);
        if (got == 0) {
          host_ok = false;
          return;
        }
        if (abort.load(std::memory_order_acquire)) return;
        wakes[i] = Clock::now();
        for (uint64_t j = 1; j < got && i + j < iterations; ++j) wakes[i + j] = wakes[i];
        i += got;
        if (round_trips && write(*irq, &one, sizeof(one)) != sizeof(one)) {
          host_ok = false;
          return;
        }
      }
    });
  }
  const auto release_host = [&] {
    if (!host.joinable()) return;
    abort.store(true, std::memory_order_release);
    const uint64_t one = 1;
    (void)!write(doorbell.get(), &one, sizeof(one));
    host.join();
  };
  LongModeEntry entry;
  entry.rip = program::kEntryGpa;
  entry.rsp = TEST_STACK_TOP_GPA;
  entry.tables_gpa = TEST_TABLES_GPA;
  entry.cpuid = HypervCpuidLeaves();
  ring::bench::PinToCpu(0);  // The vCPU thread inherits it.
  const ExitCounts at_start = (*vm)->exit_counts();
  if (absl::Status started = (*vm)->StartVcpu(entry); !started.ok()) {
    release_host();
    return started;
  }
  absl::StatusOr<VcpuExit> exit = (*vm)->WaitForExit(absl::Seconds(600));
  if (!exit.ok()) {
    (void)(*vm)->Stop();
    release_host();
    return exit.status();
  }
  if (host.joinable()) host.join();
  const ExitCounts at_end = (*vm)->exit_counts();
  if (exit->value != TEST_EXIT_OK || !host_ok) {
    return absl::InternalError(
        fmt::format("the guest exited with {:#x}, host thread {}; output: {}", exit->value,
                    host_ok ? "ok" : "failed", (*vm)->debug_output()));
  }
  absl::StatusOr<uint64_t> failures = memory.ReadPlain<uint64_t>(TEST_MAILBOX_GPA + 8 * 8);
  absl::StatusOr<uint64_t> ticks = memory.ReadPlain<uint64_t>(TEST_MAILBOX_GPA + 8 * 9);
  if (!failures.ok() || !ticks.ok() || *failures != 0 ||
      (bound && hyperv.unexpected_hypercalls.load() != 0)) {
    return absl::InternalError("signals failed or fell back to user space");
  }
  Result result;
  result.operations = iterations;
  result.guest_ns = static_cast<double>(*ticks) / tsc_per_ns / static_cast<double>(iterations);
  // Exits over the loop: the whole run's, minus the guest's set-up (its GUEST_OS_ID and
  // HYPERCALL writes) and its exit-port write, which bench_guest.c makes once each.
  result.exits = ExitCounts{
      .msr = at_end.msr - at_start.msr - 2,
      .hypercall = at_end.hypercall - at_start.hypercall,
      .signal_fallback = at_end.signal_fallback - at_start.signal_fallback,
      .other = at_end.other - at_start.other - 1,
  };
  if (round_trips && bound) {
    std::vector<double> round_trips_ns;
    for (uint64_t i = 1; i < iterations; ++i) {
      round_trips_ns.push_back(
          std::chrono::duration<double, std::nano>(wakes[i] - wakes[i - 1]).count());
    }
    std::sort(round_trips_ns.begin(), round_trips_ns.end());
    result.median_ns = round_trips_ns[round_trips_ns.size() / 2];
    result.p99_ns = round_trips_ns[round_trips_ns.size() * 99 / 100];
  }
  return result;
}

void PrintRow(const std::string& what, int rep, double cacheline_ns, const Result& result) {
  const double n = static_cast<double>(result.operations);
  const auto ns = [](double v) { return v > 0 ? fmt::format("{:.0f}", v) : std::string("-"); };
  std::printf(
      "%s", fmt::format("{:<26} {:>3} {:>6.0f}ns {:>5} {:>10} {:>10} {:>10}  {:.3f} ({:.3f} "
                        "{:.3f} {:.3f} {:.3f})\n",
                        what, rep, cacheline_ns, ring::bench::PlacementName(cacheline_ns),
                        ns(result.guest_ns), ns(result.median_ns), ns(result.p99_ns),
                        result.exits.total() / n, result.exits.msr / n, result.exits.hypercall / n,
                        result.exits.signal_fallback / n, result.exits.other / n)
                .c_str());
  std::fflush(stdout);
}

bool FlagValue(const std::string& arg, const std::string& name, std::string* value) {
  const std::string prefix = "--" + name + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

int Main(int argc, char** argv) {
  uint64_t iterations = 20000;
  int reps = 3;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    if (FlagValue(arg, "iterations", &value)) {
      iterations = std::stoull(value);
    } else if (FlagValue(arg, "reps", &value)) {
      reps = std::stoi(value);
    } else if (FlagValue(arg, "only", &value)) {
      only = value;
    } else {
      std::fprintf(stderr, "unknown flag %s (--iterations=N --reps=N --only=SUBSTRING)\n",
                   arg.c_str());
      return 2;
    }
  }
  if (iterations < 2) iterations = 2;
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    std::printf("kvm_bench: /dev/kvm is absent or not read-write here; nothing to measure\n");
    return 0;
  }
  const double tsc_per_ns = TscPerNs();
  std::printf("%s", fmt::format("kvm_bench: {} operations per run, TSC {:.3f} GHz; guest ns = per "
                                "operation by the guest's TSC, median/p99 = per round trip as "
                                "the host saw the doorbells\n",
                                iterations, tsc_per_ns)
                        .c_str());
  std::printf("%-26s %3s %8s %5s %10s %10s %10s  %s\n", "what", "rep", "cacheline", "place",
              "guest ns", "median ns", "p99 ns",
              "user-space exits/op (msr hypercall fallback other)");
  struct Case {
    const char* name;
    Mode mode;
    bool bound;
    bool host_spins;
  };
  const Case cases[] = {
      {"roundtrip guest-hlt host-block", Mode::kRoundTripHlt, true, false},
      {"roundtrip guest-hlt host-spin", Mode::kRoundTripHlt, true, true},
      {"roundtrip guest-spin host-block", Mode::kRoundTripSpin, true, false},
      {"roundtrip guest-spin host-spin", Mode::kRoundTripSpin, true, true},
      {"signal bound (ioeventfd)", Mode::kSignalOnly, true, true},
      {"signal unbound (user exit)", Mode::kSignalOnly, false, true},
      {"cpuid (exit to KVM)", Mode::kCpuid, false, true},
  };
  int status = 0;
  for (const Case& c : cases) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    for (int rep = 0; rep < reps; ++rep) {
      const double cacheline_ns = ring::bench::CacheLineRoundTripNs();
      absl::StatusOr<Result> result =
          RunOnce(c.mode, iterations, c.bound, c.host_spins, tsc_per_ns);
      if (!result.ok()) {
        std::printf("%-26s %3d failed: %s\n", c.name, rep,
                    std::string(result.status().message()).c_str());
        status = 1;
        continue;
      }
      PrintRow(c.name, rep, cacheline_ns, *result);
    }
  }
  return status;
}

}  // namespace
}  // namespace cvmbus::hw::kvm

int main(int argc, char** argv) { return cvmbus::hw::kvm::Main(argc, argv); }
