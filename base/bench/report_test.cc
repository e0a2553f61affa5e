#include "base/bench/report.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

namespace cvmbus::bench {
namespace {

// A harness whose rows report fixed rates and whose probe reports `rtts` in order.
Harness MakeHarness(std::vector<double> rtts, int reps) {
  auto next = std::make_shared<size_t>(0);
  return Harness(
      {.program = "test",
       .title = "fixed rows",
       .params = {0, 64},
       .reps = reps,
       .millis = 1,
       .probe = [rtts = std::move(rtts), next] { return rtts[(*next)++ % rtts.size()]; }});
}

nlohmann::json Written(const Harness& harness) {
  const std::string path = ::testing::TempDir() + "/report_test.json";
  EXPECT_TRUE(harness.WriteJson(path, "report_test").ok());
  std::ifstream file(path);
  return nlohmann::json::parse(file);
}

TEST(HarnessTest, RatiosComeFromOneRepetitionAtOnePlacement) {
  // Two rows, two repetitions per size: the probe says far, far (rep 0: kept), far, near
  // (rep 1: discarded) for size 0, and near everywhere for size 64.
  Harness harness = MakeHarness({300, 310, 305, 60, 60, 60, 60, 60}, 2);
  int calls = 0;
  harness.AddRow({"a", "fast", [&](uint64_t, int) {
                    ++calls;
                    return Measurement{.packets_per_second = 4e6};
                  }});
  harness.AddRow({"b", "slow", [](uint64_t size, int) {
                    return Measurement{.packets_per_second = size == 0 ? 2e6 : 1e6,
                                       .signals_per_packet = 0.5};
                  }});
  harness.AddComparison({"a / b", {"a"}, {"b"}, 3.0});
  ASSERT_TRUE(harness.Run().ok());
  EXPECT_EQ(calls, 4);  // 2 sizes x 2 repetitions.
  const nlohmann::json out = Written(harness);
  EXPECT_EQ(out["samples"].size(), 8u);
  EXPECT_EQ(out["samples"][3]["placement"], "near");
  const nlohmann::json& by_param = out["comparisons"][0]["by_param"];
  EXPECT_EQ(by_param[0]["n"], 1);
  EXPECT_EQ(by_param[0]["discarded"], 1);
  EXPECT_DOUBLE_EQ(by_param[0]["median"], 2.0);
  EXPECT_EQ(by_param[0]["met"], false);
  EXPECT_EQ(by_param[1]["n"], 2);
  EXPECT_EQ(by_param[1]["discarded"], 0);
  EXPECT_DOUBLE_EQ(by_param[1]["median"], 4.0);
  EXPECT_EQ(by_param[1]["met"], true);
  EXPECT_DOUBLE_EQ(out["medians"][1]["rows"]["b"]["packets_per_second"], 1e6);
}

TEST(HarnessTest, FarRoundTripsTooFarApartAreNotOnePlacement) {
  // Both "far", but 1500 ns is more than 1.5x 300 ns: the host moved or loaded the vCPUs.
  Harness harness = MakeHarness({300, 1500, 300, 420}, 2);
  harness.AddRow({"a", "", [](uint64_t, int) { return Measurement{.packets_per_second = 2}; }});
  harness.AddRow({"b", "", [](uint64_t, int) { return Measurement{.packets_per_second = 1}; }});
  harness.AddComparison({"a / b", {"a"}, {"b"}});
  ASSERT_TRUE(harness.Run().ok());
  const nlohmann::json point = Written(harness)["comparisons"][0]["by_param"][0];
  EXPECT_EQ(point["n"], 1);
  EXPECT_EQ(point["discarded"], 1);
}

TEST(HarnessTest, BestOfEachSideIsCompared) {
  Harness harness = MakeHarness({300}, 1);
  harness.AddRow({"x1", "", [](uint64_t, int) { return Measurement{.packets_per_second = 1}; }});
  harness.AddRow({"x2", "", [](uint64_t, int) { return Measurement{.packets_per_second = 3}; }});
  harness.AddRow({"y", "", [](uint64_t, int) { return Measurement{.packets_per_second = 2}; }});
  harness.AddComparison({"best x / y", {"x1", "x2"}, {"y"}});
  ASSERT_TRUE(harness.Run().ok());
  EXPECT_DOUBLE_EQ(Written(harness)["comparisons"][0]["by_param"][0]["median"], 1.5);
}

TEST(HarnessTest, UnknownRowsAreRefusedByName) {
  Harness harness = MakeHarness({300}, 1);
  harness.AddRow({"a", "", [](uint64_t, int) { return Measurement{}; }});
  harness.AddComparison({"a / nope", {"a"}, {"nope"}});
  const absl::Status run = harness.Run();
  EXPECT_EQ(run.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(run.message().find("'nope'"), absl::string_view::npos) << run;
  const absl::Status keep = harness.KeepRows({"b"});
  EXPECT_EQ(keep.code(), absl::StatusCode::kInvalidArgument);
}

TEST(HarnessTest, KeepRowsDropsComparisonsWithADroppedRow) {
  Harness harness = MakeHarness({300}, 1);
  harness.AddRow({"a", "", [](uint64_t, int) { return Measurement{.packets_per_second = 1}; }});
  harness.AddRow({"b", "", [](uint64_t, int) { return Measurement{.packets_per_second = 1}; }});
  harness.AddComparison({"a / b", {"a"}, {"b"}});
  ASSERT_TRUE(harness.KeepRows({"a"}).ok());
  ASSERT_TRUE(harness.Run().ok());
  const nlohmann::json out = Written(harness);
  EXPECT_EQ(out["rows"].size(), 1u);
  EXPECT_TRUE(out["comparisons"].empty());
}

TEST(ParseListTest, NumbersAndTheirErrors) {
  EXPECT_EQ(*ParseList("sizes", "0,64,4096", 65536), (std::vector<uint64_t>{0, 64, 4096}));
  for (const char* bad : {"", "1,,2", "-1", "12x", "65537", "99999999999999999999999"}) {
    const absl::StatusOr<std::vector<uint64_t>> parsed = ParseList("sizes", bad, 65536);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--sizes="), absl::string_view::npos) << bad;
  }
}

}  // namespace
}  // namespace cvmbus::bench
