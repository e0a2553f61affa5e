// vmbus_replay: plays VMBus replay scripts (.vmr, shared/docs/replay-format.md) against the
// real server, through the SynIC, each on a fresh machine.
//
//   vmbus_replay SCRIPT...
//
// Every script is parsed first; the well-formed ones then run, each step printed as it runs.
// Exit status: 0 if every script passed; 2 if any script was malformed or unreadable (the
// others still run), or no script was named; otherwise 1 if any failed, with the file, line and
// what differed. The command line is Abseil's (it has no flags of its own): an unknown flag is
// Abseil's error and exits 1, --help (or -h) prints the usage and exits 1, and a script whose
// name starts with '-' follows a "--".
#include <fmt/format.h>

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "base/format.h"
#include "paravisor/replay/runner.h"
#include "paravisor/replay/script.h"

namespace cvmbus::paravisor::replay {
namespace {

constexpr int kExitPassed = 0;
constexpr int kExitFailed = 1;
constexpr int kExitMalformed = 2;

constexpr char kUsage[] =
    "usage: vmbus_replay SCRIPT...\n"
    "Plays each VMBus replay script (shared/docs/replay-format.md) on a fresh machine.\n"
    "Exit status: 0 all passed, 1 a script failed (or Abseil refused a flag), 2 a script was\n"
    "malformed or unreadable, or none was named.\n";

int Main(int argc, char** argv) {
  // -h stays a spelling of --help, as before the command line was Abseil's.
  std::vector<char*> args(argv, argv + argc);
  char help[] = "--help";
  for (size_t i = 1; i < args.size() && std::string_view(args[i]) != "--"; ++i) {
    if (std::string_view(args[i]) == "-h") args[i] = help;
  }
  // The usage without its last newline: Abseil's --help adds a blank line after it.
  absl::SetProgramUsageMessage(absl::string_view(kUsage, sizeof(kUsage) - 2));
  const std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  const std::vector<std::string> paths(rest.begin() + 1, rest.end());
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
