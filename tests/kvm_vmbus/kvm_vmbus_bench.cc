// kvm_vmbus_bench: the VMBus request/answer round trip of a real KVM vCPU through the
// paravisor's SynIC, server and echo device, the VM exits it costs, and the raw KVM doorbell
// round trip beside it in the same run. A benchmark program (it prints figures), not a test.
//
// One VMBus round trip: the guest writes a request into its ring and, on the empty ->
// non-empty edge, rings the doorbell (fast HvSignalEvent through the hypercall page: an
// ioeventfd bound to the echo device's eventfd, no exit); the device's io_uring loop wakes,
// reads the packet, writes the completion and raises the channel's event (the SynIC sets the
// SIEFP flag and writes the SINT's MSI irqfd); the guest, halted in STI; HLT, takes the
// interrupt, EOIs its x2APIC, and checks the answer byte for byte.
//
// Columns: "us/rt" is the whole round trip by the guest's clock (TIME_REF_COUNT around the
// timed loop for VMBus, the TSC for raw); "turn us" is the host's turn alone, from just before
// the guest's HvSignalEvent to the first instruction of its interrupt handler (guest TSC),
// averaged over the round trips that rang the doorbell; "turn/raw" divides it by the raw
// round trip's turn measured just before, at the same placement. The raw row is
// //hw/kvm/testing:raw_round_trip (guest HLT, host thread blocked in read(2) on the ioeventfd,
// answering with the irqfd). Why both: on this machine kind KVM (the PVM backend) emulates
// every instruction a guest runs at CPL0, a few microseconds each, so the guest's own ring and
// check code dominates "us/rt"; the turn is what the paravisor side costs.
//
//   bazel run -c opt //tests/kvm_vmbus:kvm_vmbus_bench -- --iterations=5000 --reps=3
//       [--json=FILE]   (FILE: every run's figures, for tools/harness_report.py)
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "base/bench/placement.h"
#include "base/bench/report.h"
#include "hw/kvm/testing/raw_round_trip.h"
#include "tests/kvm_vmbus/kvm_vmbus_machine.h"

ABSL_FLAG(uint32_t, iterations, 20000, "Timed round trips per run.");
ABSL_FLAG(uint32_t, reps, 3, "Runs of the raw, 5.3 plain and 6.0 SNP rows.");
ABSL_FLAG(uint32_t, payload, 64, "Bytes of each VMBus request.");
ABSL_FLAG(std::string, json, "", "Also write every run's figures to this JSON file.");

namespace cvmbus::tests {
namespace {

// What the columns mean, for the JSON's readers (the file's opening comment says it at length).
constexpr char kColumns[] =
    "us/rt: the whole round trip by the guest's clock; turn us: the host's turn alone, from the "
    "guest's doorbell to the first instruction of its interrupt handler; turn/raw: that over the "
    "raw KVM doorbell round trip's turn measured just before. KVM on this machine kind (PVM) "
    "emulates every instruction a guest runs at CPL0, so the guest's own code dominates us/rt; "
    "the turn is what the paravisor side costs.";
constexpr char kTitle[] =
    "VMBus round trip, KVM vCPU guest <-> paravisor SynIC + server + echo device";

struct Flags {
  uint32_t iterations;
  uint32_t reps;
  uint32_t payload;
  std::string json;
};

// One run's figures (the table's columns), as the JSON records them.
struct RunFigures {
  const char* mode;
  uint32_t rep;
  double cacheline_ns;
  double us_per_round_trip;
  double turn_us;
  double turn_over_raw;
  double exits_per_round_trip;
  double irqs_per_round_trip;
};

void PrintRun(const RunFigures& run) {
  std::printf("%-13s %3u %7.0fns %5s %10.2f %10.2f %9.2f %9.4f %9.4f\n", run.mode, run.rep,
              run.cacheline_ns, bench::PlacementName(run.cacheline_ns), run.us_per_round_trip,
              run.turn_us, run.turn_over_raw, run.exits_per_round_trip, run.irqs_per_round_trip);
  std::fflush(stdout);
}

int WriteJson(const Flags& flags, const std::string& command, const std::vector<RunFigures>& runs) {
  nlohmann::json out = {{"program", "kvm_vmbus_bench"},
                        {"title", kTitle},
                        {"columns", kColumns},
                        {"command", command},
                        {"date", bench::UtcNow()},
                        {"cpu", bench::CpuModel()},
                        {"kernel", bench::Kernel()},
                        {"iterations", flags.iterations},
                        {"payload_bytes", flags.payload},
                        {"reps", flags.reps}};
  out["runs"] = nlohmann::json::array();
  for (const RunFigures& run : runs) {
    out["runs"].push_back({{"mode", run.mode},
                           {"rep", run.rep},
                           {"rtt_ns", run.cacheline_ns},
                           {"placement", bench::PlacementName(run.cacheline_ns)},
                           {"us_per_round_trip", run.us_per_round_trip},
                           {"turn_us", run.turn_us},
                           {"turn_over_raw", run.turn_over_raw},
                           {"exits_per_round_trip", run.exits_per_round_trip},
                           {"irqs_per_round_trip", run.irqs_per_round_trip}});
  }
  std::ofstream file(flags.json);
  file << out.dump(2) << "\n";
  if (!file.good()) {
    std::fprintf(stderr, "kvm_vmbus_bench: cannot write '%s'\n", flags.json.c_str());
    return 1;
  }
  return 0;
}

int Main(const std::string& command) {
  const Flags flags{.iterations = absl::GetFlag(FLAGS_iterations),
                    .reps = absl::GetFlag(FLAGS_reps),
                    .payload = absl::GetFlag(FLAGS_payload),
                    .json = absl::GetFlag(FLAGS_json)};
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    std::printf("kvm_vmbus_bench: /dev/kvm is absent or not read-write here; nothing to measure\n");
    return 0;
  }
  const double tsc_per_ns = hw::kvm::TscPerNs();
  std::printf("%s\n", kTitle);
  std::printf("%u timed round trips per run, %u-byte requests, TSC %.3f GHz\n\n", flags.iterations,
              flags.payload, tsc_per_ns);
  std::printf("%-13s %3s %9s %5s %10s %10s %9s %9s %9s\n", "mode", "rep", "cacheline", "place",
              "us/rt", "turn us", "turn/raw", "exits/rt", "irqs/rt");
  int status = 0;
  std::vector<RunFigures> runs;
  for (uint32_t rep = 0; rep < flags.reps; ++rep) {
    const double cacheline_ns = bench::CacheLineRoundTripNs();
    absl::StatusOr<hw::kvm::RawResult> raw =
        hw::kvm::RunRawBench(hw::kvm::RawMode::kRoundTripHlt, flags.iterations, /*bound=*/true,
                             /*host_spins=*/false, tsc_per_ns);
    if (!raw.ok()) {
      std::printf("raw run failed: %s\n", raw.status().ToString().c_str());
      return 1;
    }
    const double raw_turn_us = raw->doorbell_to_interrupt_ns / 1000.0;
    runs.push_back({"raw kvm", rep, cacheline_ns, raw->guest_ns / 1000.0, raw_turn_us, 1.0,
                    raw->exits.total() / static_cast<double>(raw->operations), 1.0});
    PrintRun(runs.back());
    for (const bool confidential : {false, true}) {
      auto machine = KvmVmbusMachine::Create({.confidential = confidential,
                                              .warmup = 100,
                                              .iterations = flags.iterations,
                                              .payload_bytes = flags.payload});
      if (!machine.ok()) {
        std::printf("%s\n", machine.status().ToString().c_str());
        return 1;
      }
      absl::StatusOr<KvmVmbusRun> run = (*machine)->Run(absl::Seconds(600));
      if (!run.ok() || run->exit_code != VMBUS_GUEST_OK || run->marks.size() != 2) {
        std::printf("run failed: %s\n%s\n",
                    run.ok() ? fmt::format("exit {}", run->exit_code).c_str()
                             : run.status().ToString().c_str(),
                    run.ok() ? run->debug_output.c_str() : "");
        return 1;
      }
      const auto& [start, end] = std::pair{run->marks[0], run->marks[1]};
      const double n = flags.iterations;
      const double us = (end.time_ref_100ns - start.time_ref_100ns) / 10.0 / n;
      // The second TIME_REF_COUNT read is itself one MSR exit: not the round trips'.
      const double exits = (end.exits.total() - start.exits.total() - 1.0) / n;
      const vmbus_guest_result& result = run->result;
      const double turn_us = result.doorbell_to_interrupt_count == 0
                                 ? 0
                                 : static_cast<double>(result.doorbell_to_interrupt_tsc) /
                                       tsc_per_ns / 1000.0 /
                                       static_cast<double>(result.doorbell_to_interrupt_count);
      // Interrupts over the whole run (warm-up included) per round trip of the whole run.
      const double irqs = static_cast<double>(result.interrupts) / (n + 100);
      runs.push_back({confidential ? "6.0 SNP" : "5.3 plain", rep, cacheline_ns, us, turn_us,
                      raw_turn_us > 0 ? turn_us / raw_turn_us : 0.0, exits, irqs});
      PrintRun(runs.back());
      if (exits != 0) status = 1;
    }
  }
  if (!flags.json.empty() && WriteJson(flags, command, runs) != 0) return 1;
  return status;
}

}  // namespace
}  // namespace cvmbus::tests

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvm_vmbus_bench [--iterations=N] [--reps=N] [--payload=BYTES] [--json=FILE]: the VMBus "
      "round trip of a KVM vCPU through the paravisor, beside the raw KVM doorbell round trip");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr,
                 "kvm_vmbus_bench: unexpected argument '%s' (--iterations=N --reps=N "
                 "--payload=BYTES --json=FILE)\n",
                 rest[1]);
    return 2;
  }
  return cvmbus::tests::Main(cvmbus::bench::CommandLine(argc, argv));
}
