// Negotiation end to end on an SNP VM: each IC agrees on the versions Linux picks (the newest
// in both lists), older guests get older versions, and a guest with nothing in common leaves
// the device in a reported failure.
#include "tests/ic/ic_fixture.h"

namespace cvmbus::paravisor::ic::testing {
namespace {

class NegotiationTest : public IcTest {};

TEST_F(NegotiationTest, EachIcAgreesOnTheVersionsLinuxPicks) {
  AddHeartbeat({.interval = 1h});
  AddShutdown();
  AddTimeSync({.sample_period = 1h});
  ASSERT_NO_FATAL_FAILURE(Connect());
  ASSERT_EQ(offers_.size(), 3u);
  // The offers are confidential (private rings) and carry Hyper-V's instance GUIDs.
  for (const protocol::OfferChannel& offer : offers_) {
    EXPECT_NE(offer.channel_flags & protocol::kOfferConfidentialRingBuffer, 0);
    EXPECT_NE(offer.channel_flags & protocol::kOfferNamedPipeMode, 0);
  }
  struct Case {
    IcService service;
    IcVersion expected;
    std::function<IcDeviceStats()> stats;
  };
  const Case cases[] = {
      {IcService::kHeartbeat, kHeartbeatVersion3, [&] { return heartbeat_->ic_stats(); }},
      {IcService::kShutdown, kShutdownVersion3_2, [&] { return shutdown_->ic_stats(); }},
      {IcService::kTimeSync, kTimeSyncVersion4, [&] { return timesync_->ic_stats(); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(static_cast<int>(c.service));
    IcGuest* guest = Attach(c.service);
    ASSERT_NE(guest, nullptr);
    absl::StatusOr<IcGuestEvent> event = guest->ServeOne(5s);
    ASSERT_TRUE(event.ok()) << event.status();
    EXPECT_EQ(event->message_type, kMessageTypeNegotiate);
    EXPECT_NE(event->transaction_id, 0u);
    ASSERT_TRUE(event->negotiated.has_value());
    EXPECT_EQ(event->negotiated->framework, kFrameworkVersion3);
    EXPECT_EQ(event->negotiated->message, c.expected);
    ASSERT_TRUE(WaitUntil([&] { return c.stats().state == IcChannelState::kReady; }));
    const IcDeviceStats stats = OnServer(c.stats);
    ASSERT_TRUE(stats.versions.has_value());
    EXPECT_EQ(stats.versions->framework, kFrameworkVersion3);
    EXPECT_EQ(stats.versions->message, c.expected);
    EXPECT_EQ(stats.negotiations, 1u);
    EXPECT_EQ(stats.bad_packets, 0u);
  }
}

// Linux before hibernation support (sd_versions {3.0, 1.0}) and a WS2008-era guest (1.0 only).
TEST_F(NegotiationTest, OlderGuestListsGetOlderVersions) {
  AddShutdown();
  AddHeartbeat({.interval = 1h});
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* shutdown = Attach(IcService::kShutdown, {.message_versions = {{3, 0}, {1, 0}}});
  IcGuest* heartbeat =
      Attach(IcService::kHeartbeat, {.framework_versions = {{1, 0}}, .message_versions = {{1, 0}}});
  ASSERT_TRUE(shutdown && heartbeat);
  absl::StatusOr<IcGuestEvent> sd = shutdown->ServeOne(5s);
  absl::StatusOr<IcGuestEvent> hb = heartbeat->ServeOne(5s);
  ASSERT_TRUE(sd.ok() && hb.ok());
  EXPECT_EQ(sd->negotiated, (IcVersions{kFrameworkVersion3, kShutdownVersion3}));
  EXPECT_EQ(hb->negotiated, (IcVersions{kFrameworkVersion1, kHeartbeatVersion1}));
  ASSERT_TRUE(WaitUntil([&] { return heartbeat_->state() == IcChannelState::kReady; }));
  EXPECT_EQ(OnServer([&] { return *heartbeat_->ic_stats().versions; }),
            (IcVersions{kFrameworkVersion1, kHeartbeatVersion1}));
}

TEST_F(NegotiationTest, NoCommonVersionIsReportedNotRetried) {
  AddHeartbeat({.interval = 1h});
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kHeartbeat, {.message_versions = {{5, 0}}});
  ASSERT_NE(guest, nullptr);
  absl::StatusOr<IcGuestEvent> event = guest->ServeOne(5s);
  ASSERT_TRUE(event.ok());
  EXPECT_FALSE(event->negotiated.has_value());
  EXPECT_TRUE(event->answered);
  ASSERT_TRUE(WaitUntil([&] { return heartbeat_->state() == IcChannelState::kNegotiationFailed; }));
  const HeartbeatStats stats = OnServer([&] { return heartbeat_->stats(); });
  EXPECT_TRUE(IsIcError(stats.channel.last_error, IcError::kNoCommonVersion))
      << stats.channel.last_error;
  EXPECT_EQ(stats.channel.bad_packets, 0u);  // A well-formed answer.
  EXPECT_EQ(stats.health, HeartbeatHealth::kNeverNegotiated);
  EXPECT_EQ(stats.sent, 0u);
  ring::PacketBuffer buffer;
  EXPECT_TRUE(absl::IsDeadlineExceeded(guest->ReceiveRaw(&buffer, 100ms)));
}

}  // namespace
}  // namespace cvmbus::paravisor::ic::testing
