#include "base/bench/report.h"

#include <fmt/format.h>
#include <sys/utsname.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>

#include "base/bench/placement.h"

namespace cvmbus::bench {
namespace {

// How far apart two probes may be and still count as one placement.
constexpr double kMaxRttSpread = 1.5;

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

}  // namespace

absl::StatusOr<std::vector<uint64_t>> ParseList(const std::string& flag, const std::string& text,
                                                uint64_t max) {
  std::vector<uint64_t> values;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    char* end = nullptr;
    errno = 0;
    const unsigned long long value = std::strtoull(item.c_str(), &end, 10);
    if (item.empty() || item[0] == '-' || *end != '\0' || errno != 0 || value > max) {
      return absl::InvalidArgumentError(
          fmt::format("'--{}={}': '{}' is not a whole number from 0 to {}", flag, text, item, max));
    }
    values.push_back(value);
    at = comma + 1;
  }
  return values;
}

std::string CommandLine(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) {
    if (i) line += ' ';
    line += argv[i];
  }
  return line;
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

std::string Kernel() {
  utsname name{};
  if (uname(&name) != 0) return "unknown";
  return std::string(name.sysname) + " " + name.release;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::optional<size_t> Harness::RowIndex(const std::string& name) const {
  for (size_t i = 0; i < rows_.size(); ++i) {
    if (rows_[i].name == name) return i;
  }
  return std::nullopt;
}

absl::Status Harness::KeepRows(const std::vector<std::string>& names) {
  if (names.empty()) return absl::OkStatus();
  for (const std::string& name : names) {
    if (!RowIndex(name)) {
      return absl::InvalidArgumentError(
          fmt::format("{}: no row '{}' to keep", options_.program, name));
    }
  }
  const auto kept = [&](const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  std::erase_if(rows_, [&](const Row& row) { return !kept(row.name); });
  std::erase_if(comparisons_, [&](const Comparison& comparison) {
    for (const auto* side : {&comparison.numerators, &comparison.denominators}) {
      if (!std::all_of(side->begin(), side->end(), kept)) return true;
    }
    return false;
  });
  return absl::OkStatus();
}

absl::Status Harness::Run() {
  if (rows_.empty() || options_.params.empty() || options_.reps < 1) {
    return absl::InvalidArgumentError(
        fmt::format("{}: nothing to measure (rows, parameter values and reps)", options_.program));
  }
  for (const Comparison& comparison : comparisons_) {
    for (const auto* names : {&comparison.numerators, &comparison.denominators}) {
      if (names->empty()) {
        return absl::InvalidArgumentError(fmt::format("{}: comparison '{}' has an empty side",
                                                      options_.program, comparison.name));
      }
      for (const std::string& name : *names) {
        if (!RowIndex(name)) {
          return absl::InvalidArgumentError(fmt::format("{}: comparison '{}' names no row '{}'",
                                                        options_.program, comparison.name, name));
        }
      }
    }
  }
  const size_t total = options_.params.size() * options_.reps * rows_.size();
  size_t done = 0;
  for (uint64_t param : options_.params) {
    for (int rep = 0; rep < options_.reps; ++rep) {
      for (size_t row = 0; row < rows_.size(); ++row) {
        fmt::print(stderr, "\r{}: {} {} rep {}/{} {:<14} [{}/{}]   ", options_.program,
                   options_.param_name, param, rep + 1, options_.reps, rows_[row].name, done + 1,
                   total);
        std::fflush(stderr);
        Sample sample{.param = param,
                      .rep = rep,
                      .row = row,
                      .rtt_ns = options_.probe ? options_.probe() : CacheLineRoundTripNs()};
        sample.measurement = rows_[row].run(param, options_.millis);
        samples_.push_back(sample);
        ++done;
      }
    }
  }
  fmt::print(stderr, "\r{:<79}\r", "");
  return absl::OkStatus();
}

const Harness::Sample* Harness::Find(uint64_t param, int rep, size_t row) const {
  for (const Sample& sample : samples_) {
    if (sample.param == param && sample.rep == rep && sample.row == row) return &sample;
  }
  return nullptr;
}

std::vector<double> Harness::Rates(uint64_t param, size_t row) const {
  std::vector<double> rates;
  for (const Sample& sample : samples_) {
    if (sample.param == param && sample.row == row) {
      rates.push_back(sample.measurement.packets_per_second);
    }
  }
  return rates;
}

Harness::RatioSummary Harness::Ratios(const Comparison& comparison, uint64_t param) const {
  RatioSummary summary;
  for (int rep = 0; rep < options_.reps; ++rep) {
    // One placement: every probe in the same class, and the slowest round trip within
    // kMaxRttSpread of the fastest (the "far" class alone spans 150 ns to microseconds when
    // the host is busy).
    std::optional<std::string_view> placement;
    double fastest = 0, slowest = 0;
    bool same = true;
    const auto best = [&](const std::vector<std::string>& names) {
      double rate = 0;
      for (const std::string& name : names) {
        const Sample* sample = Find(param, rep, *RowIndex(name));
        if (sample == nullptr) continue;
        const std::string_view here = PlacementName(sample->rtt_ns);
        if (placement && *placement != here) same = false;
        placement = here;
        fastest = fastest == 0 ? sample->rtt_ns : std::min(fastest, sample->rtt_ns);
        slowest = std::max(slowest, sample->rtt_ns);
        rate = std::max(rate, sample->measurement.packets_per_second);
      }
      return rate;
    };
    const double numerator = best(comparison.numerators);
    const double denominator = best(comparison.denominators);
    if (slowest > kMaxRttSpread * fastest) same = false;
    if (!same || denominator <= 0) {
      ++summary.discarded;
      continue;
    }
    summary.ratios.push_back(numerator / denominator);
  }
  return summary;
}

void Harness::PrintTable() const {
  fmt::print("{}\n", options_.title);
  fmt::print(
      "{} repetitions x {} ms per row, rows interleaved; placement = the cache-line round\n"
      "trip cpu0 <-> cpu1 probed before each run (median over the rows, its class)\n",
      options_.reps, options_.millis);
  for (const Row& row : rows_) fmt::print("  {:<14} {}\n", row.name, row.policy);
  fmt::print("\n{:>8} {:>9} |", options_.param_name, "rtt ns");
  for (const Row& row : rows_) fmt::print(" {:>14}", row.name);
  fmt::print("\n");
  for (uint64_t param : options_.params) {
    std::vector<double> rtts;
    for (const Sample& sample : samples_) {
      if (sample.param == param) rtts.push_back(sample.rtt_ns);
    }
    const double rtt = Median(rtts);
    fmt::print("{:>8} {:>4.0f} {:<4}|", param, rtt, PlacementName(rtt));
    for (size_t row = 0; row < rows_.size(); ++row) {
      fmt::print(" {:>14}", fmt::format("{:.3g}", Median(Rates(param, row)) / 1e6));
    }
    fmt::print("   Mpkt/s\n");
    if (options_.param_is_payload_bytes && param > 0) {
      fmt::print("{:>8} {:>9} |", "", "");
      for (size_t row = 0; row < rows_.size(); ++row) {
        fmt::print(" {:>14}", fmt::format("{:.3g}", Median(Rates(param, row)) * param / 1e9));
      }
      fmt::print("   GB/s\n");
    }
    bool any_signals = false;
    std::string signals_line = fmt::format("{:>8} {:>9} |", "", "");
    for (size_t row = 0; row < rows_.size(); ++row) {
      std::vector<double> counts;
      for (const Sample& sample : samples_) {
        if (sample.param == param && sample.row == row && sample.measurement.signals_per_packet) {
          counts.push_back(*sample.measurement.signals_per_packet);
        }
      }
      any_signals |= !counts.empty();
      signals_line +=
          fmt::format(" {:>14}", counts.empty() ? "-" : fmt::format("{:.4f}", Median(counts)));
    }
    if (any_signals) fmt::print("{}   signals/packet\n", signals_line);
  }
  if (comparisons_.empty()) return;
  fmt::print("\nratios, per repetition at one placement (median [min-max], n of {}):\n",
             options_.reps);
  for (const Comparison& comparison : comparisons_) {
    fmt::print("  {}", comparison.name);
    if (comparison.goal > 0) {
      fmt::print("  (goal >= {:.2f}x for {} {}..{})", comparison.goal, options_.param_name,
                 comparison.goal_from,
                 comparison.goal_to == UINT64_MAX ? std::string("any")
                                                  : std::to_string(comparison.goal_to));
    }
    fmt::print("\n");
    for (uint64_t param : options_.params) {
      const RatioSummary summary = Ratios(comparison, param);
      fmt::print("    {:>8}: ", param);
      if (summary.ratios.empty()) {
        fmt::print("no repetition at one placement ({} discarded)\n", summary.discarded);
        continue;
      }
      const double median = Median(summary.ratios);
      const auto [low, high] = std::minmax_element(summary.ratios.begin(), summary.ratios.end());
      fmt::print("{:.2f}x [{:.2f}-{:.2f}] n={}", median, *low, *high, summary.ratios.size());
      if (summary.discarded) fmt::print(" ({} discarded)", summary.discarded);
      if (comparison.goal > 0 && param >= comparison.goal_from && param <= comparison.goal_to) {
        fmt::print("  {}", median >= comparison.goal ? "met" : "MISSED");
      }
      fmt::print("\n");
    }
  }
}

absl::Status Harness::WriteJson(const std::string& path, const std::string& command) const {
  using nlohmann::json;
  json out;
  out["program"] = options_.program;
  out["title"] = options_.title;
  out["command"] = command;
  out["date"] = UtcNow();
  out["cpu"] = CpuModel();
  out["kernel"] = Kernel();
  out["param"] = options_.param_name;
  out["param_is_payload_bytes"] = options_.param_is_payload_bytes;
  out["reps"] = options_.reps;
  out["millis"] = options_.millis;
  out["rows"] = json::array();
  for (const Row& row : rows_) out["rows"].push_back({{"name", row.name}, {"policy", row.policy}});
  out["samples"] = json::array();
  for (const Sample& sample : samples_) {
    json entry = {{"param", sample.param},
                  {"rep", sample.rep},
                  {"row", rows_[sample.row].name},
                  {"rtt_ns", sample.rtt_ns},
                  {"placement", PlacementName(sample.rtt_ns)},
                  {"packets_per_second", sample.measurement.packets_per_second}};
    if (sample.measurement.signals_per_packet) {
      entry["signals_per_packet"] = *sample.measurement.signals_per_packet;
    }
    out["samples"].push_back(entry);
  }
  out["medians"] = json::array();
  for (uint64_t param : options_.params) {
    std::vector<double> rtts;
    for (const Sample& sample : samples_) {
      if (sample.param == param) rtts.push_back(sample.rtt_ns);
    }
    json entry = {{"param", param}, {"rtt_ns", Median(rtts)}};
    for (size_t row = 0; row < rows_.size(); ++row) {
      const std::vector<double> rates = Rates(param, row);
      if (rates.empty()) continue;
      const auto [low, high] = std::minmax_element(rates.begin(), rates.end());
      entry["rows"][rows_[row].name] = {
          {"packets_per_second", Median(rates)}, {"min", *low}, {"max", *high}};
    }
    out["medians"].push_back(entry);
  }
  out["comparisons"] = json::array();
  for (const Comparison& comparison : comparisons_) {
    json entry = {
        {"name", comparison.name},
        {"numerators", comparison.numerators},
        {"denominators", comparison.denominators},
        {"goal", comparison.goal},
        {"goal_from", comparison.goal_from},
        {"goal_to", comparison.goal_to == UINT64_MAX ? json(nullptr) : json(comparison.goal_to)}};
    entry["by_param"] = json::array();
    for (uint64_t param : options_.params) {
      const RatioSummary summary = Ratios(comparison, param);
      json point = {
          {"param", param}, {"n", summary.ratios.size()}, {"discarded", summary.discarded}};
      if (!summary.ratios.empty()) {
        const auto [low, high] = std::minmax_element(summary.ratios.begin(), summary.ratios.end());
        point["median"] = Median(summary.ratios);
        point["min"] = *low;
        point["max"] = *high;
        if (comparison.goal > 0 && param >= comparison.goal_from && param <= comparison.goal_to) {
          point["met"] = Median(summary.ratios) >= comparison.goal;
        }
      }
      entry["by_param"].push_back(point);
    }
    out["comparisons"].push_back(entry);
  }
  std::ofstream file(path, std::ios::trunc);
  if (!file) return absl::UnavailableError(fmt::format("cannot write '{}'", path));
  file << out.dump(1) << "\n";
  file.close();
  if (!file) return absl::DataLossError(fmt::format("writing '{}' failed", path));
  return absl::OkStatus();
}

}  // namespace cvmbus::bench
