#include "base/log.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace cvmbus::log {
namespace {

// Captures what reaches the sink for the test's life, and restores the defaults after.
class CapturedLog {
 public:
  CapturedLog() {
    SetSink([this](const Record& record) {
      lines.push_back(std::string(LevelName(record.level)) + " " + std::string(record.component) +
                      ": " + std::string(record.message));
    });
  }
  ~CapturedLog() {
    SetSink(nullptr);
    SetMinLevel(Level::kInfo);
  }
  std::vector<std::string> lines;
};

TEST(LogTest, LevelNamesRoundTripAndUnknownNamesAreRefused) {
  for (Level level : {Level::kDebug, Level::kInfo, Level::kWarning, Level::kError}) {
    EXPECT_EQ(ParseLevel(LevelName(level)), level);
  }
  EXPECT_EQ(ParseLevel("verbose"), std::nullopt);
  EXPECT_EQ(ParseLevel(""), std::nullopt);
  EXPECT_EQ(ParseLevel("INFO"), std::nullopt);
}

TEST(LogTest, LinesBelowTheMinimumLevelAreDropped) {
  CapturedLog captured;
  Logger logger("test");
  EXPECT_FALSE(logger.Debug("hidden"));
  EXPECT_TRUE(logger.Info("shown"));
  SetMinLevel(Level::kError);
  EXPECT_FALSE(logger.Warning("hidden too"));
  EXPECT_TRUE(logger.Error("bad"));
  EXPECT_EQ(captured.lines, (std::vector<std::string>{"info test: shown", "error test: bad"}));
}

TEST(LogTest, TheStderrFormatCarriesTimeLevelAndComponent) {
  const Record record{.time = absl::FromUnixMicros(1764752462123456),
                      .level = Level::kWarning,
                      .component = "vmbus server",
                      .message = "channel 7: bad"};
  EXPECT_EQ(FormatRecord(record), "2025-12-03T09:01:02.123456Z W vmbus server: channel 7: bad");
}

TEST(LogTest, ABurstPassesThenTheLimitRefusesUntilItRefills) {
  RateLimit limit(3, absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t suppressed = 99;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limit.Admit(t0, &suppressed)) << i;
    EXPECT_EQ(suppressed, 0u);
  }
  EXPECT_FALSE(limit.Admit(t0, &suppressed));
  EXPECT_FALSE(limit.Admit(t0 + absl::Milliseconds(500), &suppressed));
  // One second on, one token: the line passes and reports the two it displaced.
  EXPECT_TRUE(limit.Admit(t0 + absl::Milliseconds(1000), &suppressed));
  EXPECT_EQ(suppressed, 2u);
  EXPECT_FALSE(limit.Admit(t0 + absl::Milliseconds(1100), &suppressed));
  // A long quiet spell refills to the burst, not beyond.
  const absl::Time later = t0 + absl::Hours(1);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limit.Admit(later, &suppressed)) << i;
  EXPECT_FALSE(limit.Admit(later, &suppressed));
  EXPECT_EQ(limit.total_suppressed(), 4u);
}

TEST(LogTest, ATimeGoingBackwardsNeitherRefillsNorBreaksTheLimit) {
  RateLimit limit(1, absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t suppressed = 0;
  EXPECT_TRUE(limit.Admit(t0, &suppressed));
  EXPECT_FALSE(limit.Admit(t0 - absl::Hours(1), &suppressed));
  EXPECT_TRUE(limit.Admit(t0 + absl::Seconds(1), &suppressed));
  EXPECT_EQ(suppressed, 1u);
}

TEST(LogTest, AFloodThroughALoggerIsCutAndTheGapIsReported) {
  CapturedLog captured;
  RateLimit limit(2, absl::Hours(1));  // No refill within the test.
  Logger logger("guest", &limit);
  int written = 0;
  for (int i = 0; i < 1000; ++i) written += logger.Warning("bad message") ? 1 : 0;
  EXPECT_EQ(written, 2);
  EXPECT_EQ(captured.lines.size(), 2u);
  EXPECT_EQ(limit.total_suppressed(), 998u);
}

TEST(LogTest, TheSuppressedCountPrecedesTheNextLineThatPasses) {
  CapturedLog captured;
  RateLimit limit(1, absl::Milliseconds(20));
  Logger logger("guest", &limit);
  ASSERT_TRUE(logger.Warning("first"));
  EXPECT_FALSE(logger.Warning("second"));
  EXPECT_FALSE(logger.Warning("third"));
  absl::SleepFor(absl::Milliseconds(30));
  ASSERT_TRUE(logger.Warning("fourth"));
  EXPECT_EQ(captured.lines,
            (std::vector<std::string>{"warning guest: first",
                                      "warning guest: suppressed 2 lines (rate limit)",
                                      "warning guest: fourth"}));
}

}  // namespace
}  // namespace cvmbus::log
