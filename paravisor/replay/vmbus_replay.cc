// vmbus_replay: plays VMBus replay scripts (.vmr, shared/docs/replay-format.md) against the
// real server, through the SynIC, each on a fresh machine.
//
//   vmbus_replay SCRIPT...
//
// Every script is parsed first; the well-formed ones then run, each step printed as it runs.
// Exit status: 0 if every script passed; 2 if any script was malformed or unreadable (the
// others still run); otherwise 1 if any failed, with the file, line and what differed.
#include <fmt/format.h>

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/format.h"
#include "paravisor/replay/runner.h"
#include "paravisor/replay/script.h"

namespace cvmbus::paravisor::replay {
namespace {

constexpr int kExitPassed = 0;
constexpr int kExitFailed = 1;
constexpr int kExitMalformed = 2;

constexpr std::string_view kUsage =
    "usage: vmbus_replay SCRIPT...\n"
    "Plays each VMBus replay script (shared/docs/replay-format.md) on a fresh machine.\n"
    "Exit status: 0 all passed, 1 a script failed, 2 a script was malformed.\n";

int Main(int argc, char** argv) {
  std::vector<std::string> paths;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (!options_done && arg == "--") {
      options_done = true;
    } else if (!options_done && (arg == "--help" || arg == "-h")) {
      fmt::print("{}", kUsage);
      return kExitPassed;
    } else if (!options_done && arg.size() > 1 && arg[0] == '-') {
      fmt::print(stderr, "vmbus_replay: unknown option '{}'\n{}", arg, kUsage);
      return kExitMalformed;
    } else {
      paths.emplace_back(arg);
    }
  }
  if (paths.empty()) {
    fmt::print(stderr, "{}", kUsage);
    return kExitMalformed;
  }

  std::vector<Script> scripts;
  int malformed = 0;
  for (const std::string& path : paths) {
    absl::StatusOr<Script> script = LoadScript(path);
    if (!script.ok()) {
      fmt::print(stderr, "vmbus_replay: malformed: {}\n", script.status().message());
      ++malformed;
      continue;
    }
    scripts.push_back(*std::move(script));
  }

  int passed = 0;
  int failed = 0;
  for (const Script& script : scripts) {
    fmt::print("== {} ({} steps)\n", script.file, script.steps.size());
    absl::Status result = RunScript(script, {.print = [](std::string_view line) {
                                      fmt::print("{}\n", line);
                                      std::fflush(stdout);
                                    }});
    if (result.ok()) {
      fmt::print("PASS {}\n", script.file);
      ++passed;
    } else {
      fmt::print("FAIL {}\n", result.message());
      fmt::print(stderr, "vmbus_replay: FAIL {}\n", result.message());
      ++failed;
    }
  }
  fmt::print("vmbus_replay: {} passed, {} failed, {} malformed\n", passed, failed, malformed);
  if (malformed > 0) return kExitMalformed;
  return failed > 0 ? kExitFailed : kExitPassed;
}

}  // namespace
}  // namespace cvmbus::paravisor::replay

int main(int argc, char** argv) { return cvmbus::paravisor::replay::Main(argc, argv); }
