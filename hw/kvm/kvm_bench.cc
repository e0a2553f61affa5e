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
#include <fmt/format.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "base/bench/placement.h"
#include "hw/kvm/testing/raw_round_trip.h"

ABSL_FLAG(uint64_t, iterations, 20000, "Operations per run (at least 2; fewer count as 2).");
ABSL_FLAG(int, reps, 3, "Runs of every row, each at the placement measured before it.");
ABSL_FLAG(std::string, only, "", "Runs only the rows whose names contain this substring.");

namespace cvmbus::hw::kvm {
namespace {

void PrintRow(const std::string& what, int rep, double cacheline_ns, const RawResult& result) {
  const double n = static_cast<double>(result.operations);
  const auto ns = [](double v) { return v > 0 ? fmt::format("{:.0f}", v) : std::string("-"); };
  std::printf(
      "%s",
      fmt::format("{:<26} {:>3} {:>6.0f}ns {:>5} {:>10} {:>10} {:>10} {:>10}  {:.3f} ({:.3f} "
                  "{:.3f} {:.3f} {:.3f})\n",
                  what, rep, cacheline_ns, bench::PlacementName(cacheline_ns), ns(result.guest_ns),
                  ns(result.doorbell_to_interrupt_ns), ns(result.median_ns), ns(result.p99_ns),
                  result.exits.total() / n, result.exits.msr / n, result.exits.hypercall / n,
                  result.exits.signal_fallback / n, result.exits.other / n)
          .c_str());
  std::fflush(stdout);
}

int Main() {
  uint64_t iterations = absl::GetFlag(FLAGS_iterations);
  const int reps = absl::GetFlag(FLAGS_reps);
  const std::string only = absl::GetFlag(FLAGS_only);
  if (iterations < 2) iterations = 2;
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    std::printf("kvm_bench: /dev/kvm is absent or not read-write here; nothing to measure\n");
    return 0;
  }
  const double tsc_per_ns = TscPerNs();
  std::printf("%s", fmt::format("kvm_bench: {} operations per run, TSC {:.3f} GHz; guest ns = per "
                                "operation by the guest's TSC, turn ns = doorbell to interrupt "
                                "handler by the guest's TSC, median/p99 = per round trip as "
                                "the host saw the doorbells\n",
                                iterations, tsc_per_ns)
                        .c_str());
  std::printf("%-26s %3s %8s %5s %10s %10s %10s %10s  %s\n", "what", "rep", "cacheline", "place",
              "guest ns", "turn ns", "median ns", "p99 ns",
              "user-space exits/op (msr hypercall fallback other)");
  struct Case {
    const char* name;
    RawMode mode;
    bool bound;
    bool host_spins;
  };
  const Case cases[] = {
      {"roundtrip guest-hlt host-block", RawMode::kRoundTripHlt, true, false},
      {"roundtrip guest-hlt host-spin", RawMode::kRoundTripHlt, true, true},
      {"roundtrip guest-spin host-block", RawMode::kRoundTripSpin, true, false},
      {"roundtrip guest-spin host-spin", RawMode::kRoundTripSpin, true, true},
      {"signal bound (ioeventfd)", RawMode::kSignalOnly, true, true},
      {"signal unbound (user exit)", RawMode::kSignalOnly, false, true},
      {"cpuid (exit to KVM)", RawMode::kCpuid, false, true},
  };
  int status = 0;
  for (const Case& c : cases) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    for (int rep = 0; rep < reps; ++rep) {
      const double cacheline_ns = bench::CacheLineRoundTripNs();
      absl::StatusOr<RawResult> result =
          RunRawBench(c.mode, iterations, c.bound, c.host_spins, tsc_per_ns);
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

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvm_bench [--iterations=N] [--reps=N] [--only=SUBSTRING]: the raw long-mode KVM doorbell "
      "round trip and its parts");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr,
                 "kvm_bench: unexpected argument '%s' (--iterations=N --reps=N --only=SUBSTRING)\n",
                 rest[1]);
    return 2;
  }
  return cvmbus::hw::kvm::Main();
}
