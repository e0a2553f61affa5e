// The benchmark harness's core: rows run interleaved, every comparison taken at one placement.
//
// A benchmark program describes its rows (each an implementation with its write, release and
// signalling policy) and the comparisons it publishes, then Run() measures, for each parameter
// value (a packet size, a channel count), `reps` repetitions of every row in order (A, B, C,
// A, B, C ...), each run preceded by a cache-line round-trip probe between cpu0 and cpu1
// (placement.h). The host moves this machine's vCPUs, which changes cross-core figures 2-5x, so a
// comparison's ratio is taken only within one repetition and only when the probes before all of
// its rows put the vCPUs at the same placement (smt, near or far, and the slowest round trip at
// most 1.5x the fastest); other repetitions are counted as discarded, never mixed in. Results: a
// table on stdout (medians, ranges, ratios against their goals), a progress line on stderr, and a
// JSON file with every sample for plotting and for the README.
//
// Thread ownership: one thread drives a Harness; rows may start threads of their own.
#ifndef CVMBUS_BASE_BENCH_REPORT_H_
#define CVMBUS_BASE_BENCH_REPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cvmbus::bench {

// What one run of one row measured.
struct Measurement {
  double packets_per_second = 0;
  // Signals (doorbells) raised by both sides per packet, for rows that count them.
  std::optional<double> signals_per_packet;
};

struct Row {
  std::string name;    // Short: a table column and a plot's key ("burst", "dpdk-best").
  std::string policy;  // One sentence: what it writes, when it publishes, releases and signals.
  // Measures the row at parameter value `param` for about `millis` milliseconds.
  std::function<Measurement(uint64_t param, int millis)> run;
};

// Per repetition: the best of `numerators` over the best of `denominators` (each a row name).
struct Comparison {
  std::string name;
  std::vector<std::string> numerators;
  std::vector<std::string> denominators;
  // The published goal: the median ratio is at least `goal` (0: none) for parameter values in
  // [goal_from, goal_to].
  double goal = 0;
  uint64_t goal_from = 0;
  uint64_t goal_to = UINT64_MAX;
};

struct HarnessOptions {
  std::string program;                 // The program's name, first in the JSON.
  std::string title;                   // What is measured and where the threads run.
  std::string param_name = "size";     // Column header: "size" (bytes) or "channels".
  bool param_is_payload_bytes = true;  // Then the table adds GB/s of payload.
  std::vector<uint64_t> params;
  int reps = 3;
  int millis = 300;
  // The placement probe run before each row (tests give their own): the cache-line round trip
  // in nanoseconds.
  std::function<double()> probe;  // Default: CacheLineRoundTripNs().
};

class Harness {
 public:
  explicit Harness(HarnessOptions options) : options_(std::move(options)) {}

  void AddRow(Row row) { rows_.push_back(std::move(row)); }
  // Every name in it must be a row's (checked by Run).
  void AddComparison(Comparison comparison) { comparisons_.push_back(std::move(comparison)); }

  // Keeps only the rows named (all when empty) and the comparisons among them, for a run that
  // looks at a few rows (a profile). kInvalidArgument for a name that is no row.
  [[nodiscard]] absl::Status KeepRows(const std::vector<std::string>& names);

  // Measures everything, with a progress line on stderr. kInvalidArgument if a comparison
  // names an unknown row or nothing is configured.
  [[nodiscard]] absl::Status Run();
  // The table: per parameter value the placement seen, every row's median Mpkt/s (and its
  // range), signals per packet where counted, and every comparison with its goal.
  void PrintTable() const;
  // Every sample, the per-row medians and the comparisons, with the command line, the date, the
  // CPU model and the kernel. Errors name the file.
  [[nodiscard]] absl::Status WriteJson(const std::string& path, const std::string& command) const;

 private:
  struct Sample {
    uint64_t param = 0;
    int rep = 0;
    size_t row = 0;
    double rtt_ns = 0;
    Measurement measurement;
  };
  struct RatioSummary {
    std::vector<double> ratios;  // One per repetition at one placement.
    int discarded = 0;           // Repetitions whose rows ran at different placements.
  };
  const Sample* Find(uint64_t param, int rep, size_t row) const;
  std::optional<size_t> RowIndex(const std::string& name) const;
  RatioSummary Ratios(const Comparison& comparison, uint64_t param) const;
  std::vector<double> Rates(uint64_t param, size_t row) const;

  HarnessOptions options_;
  std::vector<Row> rows_;
  std::vector<Comparison> comparisons_;
  std::vector<Sample> samples_;
};

// A flag's comma-separated list of whole numbers, each at most `max`; kInvalidArgument naming
// the flag and the item otherwise.
absl::StatusOr<std::vector<uint64_t>> ParseList(const std::string& flag, const std::string& text,
                                                uint64_t max);

// The command line as one string, for WriteJson.
std::string CommandLine(int argc, char** argv);

// What WriteJson records about the run, for programs that write JSON of their own: the CPU
// model (/proc/cpuinfo), the kernel (uname), and the time now as ISO 8601 UTC.
std::string CpuModel();
std::string Kernel();
std::string UtcNow();

}  // namespace cvmbus::bench

#endif  // CVMBUS_BASE_BENCH_REPORT_H_
