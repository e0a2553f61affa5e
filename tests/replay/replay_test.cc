// Runs every replay script in tests/replay (each one test case, on a fresh machine) and checks
// it passes. A script named in expected_to_fail.txt is reported as skipped, with its reason,
// while it fails; once it passes, the test fails so that the entry is removed.
//
// Bazel runs tests in the runfiles tree of the workspace, so the scripts (the `data` of this
// test) are at tests/replay/*.vmr relative to the working directory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "paravisor/replay/runner.h"
#include "paravisor/replay/script.h"

namespace cvmbus::paravisor::replay {
namespace {

constexpr char kScriptDir[] = "tests/replay";
constexpr char kExpectedToFail[] = "tests/replay/expected_to_fail.txt";
// The scripts this directory holds today: fewer found means the data glob or the runfiles
// lookup broke, not that scripts were removed on purpose (then lower this).
constexpr size_t kMinScripts = 10;

std::vector<std::string> FindScripts() {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(kScriptDir, error)) {
    const std::filesystem::path& path = entry.path();
    if (path.extension() == ".vmr") names.push_back(path.filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// expected_to_fail.txt: "SCRIPT: reason" per line; blank lines and # comments ignored.
std::map<std::string, std::string> ExpectedToFail() {
  std::map<std::string, std::string> entries;
  std::ifstream in(kExpectedToFail);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) {
      entries[line] = "";
      continue;
    }
    size_t start = colon + 1;
    while (start < line.size() && line[start] == ' ') ++start;
    entries[line.substr(0, colon)] = line.substr(start);
  }
  return entries;
}

class ReplayScriptTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReplayScriptTest, Passes) {
  const std::string path = std::string(kScriptDir) + "/" + GetParam();
  absl::StatusOr<Script> script = LoadScript(path);
  ASSERT_TRUE(script.ok()) << "malformed: " << script.status().message();
  std::string transcript;
  const absl::Status result = RunScript(*script, {.print = [&](std::string_view line) {
    transcript.append(line);
    transcript.push_back('\n');
  }});
  const std::map<std::string, std::string> expected_to_fail = ExpectedToFail();
  if (auto it = expected_to_fail.find(GetParam()); it != expected_to_fail.end()) {
    if (!result.ok()) {
      GTEST_SKIP() << "expected to fail: " << it->second << "\n  fails at " << result.message();
    }
    FAIL() << GetParam() << " passes now: remove it from " << kExpectedToFail << "\n" << transcript;
  }
  EXPECT_TRUE(result.ok()) << result.message() << "\n--- transcript ---\n" << transcript;
}

std::string TestName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param.substr(0, info.param.rfind(".vmr"));
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Scripts, ReplayScriptTest, ::testing::ValuesIn(FindScripts()), TestName);

TEST(ReplayScriptsTest, AllAreFound) {
  const std::vector<std::string> scripts = FindScripts();
  EXPECT_GE(scripts.size(), kMinScripts) << "scripts found in " << kScriptDir;
}

TEST(ReplayScriptsTest, ExpectedToFailNamesRealScriptsWithReasons) {
  const std::vector<std::string> scripts = FindScripts();
  for (const auto& [name, reason] : ExpectedToFail()) {
    EXPECT_TRUE(std::find(scripts.begin(), scripts.end(), name) != scripts.end())
        << kExpectedToFail << " names " << name << ", which is not a script here";
    EXPECT_FALSE(reason.empty()) << kExpectedToFail << ": " << name << " needs a reason";
  }
}

}  // namespace
}  // namespace cvmbus::paravisor::replay
