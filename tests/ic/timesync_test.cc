// Time sync end to end: a SYNC first after negotiation (and again after a reopen), SAMPLEs
// after it, the 4.0 layout with the reference time for a current Linux and the old layout for a
// guest that stops at 3.0, and a guest that never answers.
#include "tests/ic/ic_fixture.h"

namespace cvmbus::paravisor::ic::testing {
namespace {

class TimeSyncTest : public IcTest {
 protected:
  // A clock that moves 1 s (10^7 units) per reading, so each message's times are known.
  TimeSyncOptions Options(std::chrono::milliseconds period, std::chrono::milliseconds timeout) {
    return {.sample_period = period,
            .response_timeout = timeout,
            .clock = [readings = std::make_shared<uint64_t>(0)] {
              ++*readings;
              return TimeSample{.parent_time_100ns = kBase + *readings * 10'000'000,
                                .vm_reference_time_100ns = *readings * 10'000'000};
            }};
  }
  static constexpr uint64_t kBase = 133'000'000'000'000'000;  // 2022 in 100 ns since 1601.
};

TEST_F(TimeSyncTest, LinuxGetsASyncThenSamplesWithTheReferenceTime) {
  AddTimeSync(Options(10ms, 2s));
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kTimeSync);
  ASSERT_NE(guest, nullptr);
  absl::StatusOr<IcGuestEvent> negotiate = guest->ServeOne(5s);
  ASSERT_TRUE(negotiate.ok()) << negotiate.status();
  EXPECT_EQ(negotiate->negotiated, (IcVersions{kFrameworkVersion3, kTimeSyncVersion4}));
  for (uint64_t reading = 1; reading <= 3; ++reading) {
    absl::StatusOr<IcGuestEvent> event = guest->ServeOne(5s);
    ASSERT_TRUE(event.ok()) << event.status();
    EXPECT_EQ(event->message_type, kMessageTypeTimeSync);
    EXPECT_TRUE(event->reference_format);
    EXPECT_TRUE(event->answered);
    EXPECT_EQ(event->time_flags, reading == 1 ? kTimeSyncFlagSync : kTimeSyncFlagSample);
    EXPECT_EQ(event->parent_time, kBase + reading * 10'000'000);
    EXPECT_EQ(event->reference_time, reading * 10'000'000);
  }
  ASSERT_TRUE(WaitUntil([&] { return timesync_->stats().answered >= 3; }));
  const TimeSyncStats stats = OnServer([&] { return timesync_->stats(); });
  EXPECT_EQ(stats.syncs_sent, 1u);
  EXPECT_GE(stats.samples_sent, 2u);
  EXPECT_EQ(stats.unanswered, 0u);
  EXPECT_EQ(stats.channel.bad_packets, 0u);
}

TEST_F(TimeSyncTest, AGuestAt3_0GetsTheOldLayout) {
  AddTimeSync(Options(10ms, 2s));
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kTimeSync, {.message_versions = {{3, 0}, {1, 0}}});
  ASSERT_NE(guest, nullptr);
  absl::StatusOr<IcGuestEvent> negotiate = guest->ServeOne(5s);
  ASSERT_TRUE(negotiate.ok());
  EXPECT_EQ(negotiate->negotiated, (IcVersions{kFrameworkVersion3, kTimeSyncVersion3}));
  absl::StatusOr<IcGuestEvent> sync = guest->ServeOne(5s);
  ASSERT_TRUE(sync.ok()) << sync.status();
  EXPECT_FALSE(sync->reference_format);
  EXPECT_EQ(sync->time_flags, kTimeSyncFlagSync);
  EXPECT_EQ(sync->parent_time, kBase + 10'000'000);
  EXPECT_EQ(sync->received_bytes, kIcBodyOffset + sizeof(TimeSyncMessage));
}

TEST_F(TimeSyncTest, SilenceIsCountedAndSamplingGoesOn) {
  AddTimeSync(Options(10ms, 40ms));
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kTimeSync);
  ASSERT_NE(guest, nullptr);
  ASSERT_TRUE(guest->ServeOne(5s).ok());  // NEGOTIATE, answered.
  ring::PacketBuffer buffer;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(guest->ReceiveRaw(&buffer, 5s).ok());  // Ignored.
  ASSERT_TRUE(WaitUntil([&] { return timesync_->stats().unanswered >= 2; }));
  const TimeSyncStats stats = OnServer([&] { return timesync_->stats(); });
  EXPECT_GE(stats.channel.timeouts, 2u);
  EXPECT_EQ(stats.answered, 0u);
  EXPECT_EQ(stats.channel.state, IcChannelState::kReady);
  // Once it answers again, the answers count.
  ASSERT_TRUE(ServeUntil(guest, [&] { return timesync_->stats().answered >= 1; }));
}

TEST_F(TimeSyncTest, AReopenOwesANewSync) {
  AddTimeSync(Options(10ms, 2s));
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* first = Attach(IcService::kTimeSync);
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->ServeOne(5s).ok());
  absl::StatusOr<IcGuestEvent> sync = first->ServeOne(5s);
  ASSERT_TRUE(sync.ok());
  EXPECT_EQ(sync->time_flags, kTimeSyncFlagSync);
  ASSERT_TRUE(first->Close().ok());
  ASSERT_TRUE(WaitUntil([&] { return timesync_->state() == IcChannelState::kClosed; }));
  IcGuest* second = Attach(IcService::kTimeSync);  // Fresh ring pages and GPADL id.
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->ServeOne(5s).ok());  // NEGOTIATE again.
  absl::StatusOr<IcGuestEvent> again = second->ServeOne(5s);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->time_flags, kTimeSyncFlagSync);
  const TimeSyncStats stats = OnServer([&] { return timesync_->stats(); });
  EXPECT_EQ(stats.syncs_sent, 2u);
  EXPECT_EQ(stats.channel.opens, 2u);
}

}  // namespace
}  // namespace cvmbus::paravisor::ic::testing
