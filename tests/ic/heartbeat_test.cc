// Heartbeat end to end: periodic requests with increasing sequence numbers, Linux's seq + 1
// answers, and the health the daemon reads when the guest stops and starts answering.
#include "tests/ic/ic_fixture.h"

namespace cvmbus::paravisor::ic::testing {
namespace {

class HeartbeatTest : public IcTest {};

TEST_F(HeartbeatTest, SequenceNumbersRiseAndEveryAnswerCounts) {
  AddHeartbeat({.interval = 20ms, .response_timeout = 2s});
  EXPECT_EQ(OnServer([&] { return heartbeat_->stats().health; }),
            HeartbeatHealth::kNeverNegotiated);
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kHeartbeat);
  ASSERT_NE(guest, nullptr);
  ASSERT_TRUE(guest->ServeOne(5s).ok());  // NEGOTIATE.
  uint64_t last_transaction = 0;
  for (uint64_t expected = 1; expected <= 4; ++expected) {
    absl::StatusOr<IcGuestEvent> beat = guest->ServeOne(5s);
    ASSERT_TRUE(beat.ok()) << beat.status();
    EXPECT_EQ(beat->message_type, kMessageTypeHeartbeat);
    EXPECT_EQ(beat->sequence, expected);
    EXPECT_EQ(beat->received_bytes, 72u);  // 28 + heartbeat_msg_data, padded to 8.
    EXPECT_TRUE(beat->answered);
    EXPECT_GT(beat->transaction_id, last_transaction);
    last_transaction = beat->transaction_id;
  }
  ASSERT_TRUE(WaitUntil([&] { return heartbeat_->stats().answered >= 4; }));
  const HeartbeatStats stats = OnServer([&] { return heartbeat_->stats(); });
  EXPECT_EQ(stats.health, HeartbeatHealth::kHealthy);
  EXPECT_EQ(stats.missed, 0u);
  EXPECT_EQ(stats.channel.bad_packets, 0u);
  EXPECT_EQ(stats.channel.state, IcChannelState::kReady);
}

// Servicing with the channel open: the restored device takes the rings back, negotiates again
// (Linux answers a NEGOTIATE whenever one comes) and carries on; the guest is offered nothing.
TEST_F(HeartbeatTest, ARestoredDeviceNegotiatesAgainAndCarriesOn) {
  AddHeartbeat({.interval = 20ms, .response_timeout = 2s});
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kHeartbeat);
  ASSERT_NE(guest, nullptr);
  absl::StatusOr<IcGuestEvent> negotiate = guest->ServeOne(5s);
  ASSERT_TRUE(negotiate.ok()) << negotiate.status();
  ASSERT_TRUE(ServeUntil(guest, [&] { return heartbeat_->stats().answered >= 2; }));

  absl::Status restored = absl::UnknownError("not run");
  vm_->OnServer([&] {
    absl::StatusOr<saved::Server> state = vm_->ServiceServerOnLoop([&] { heartbeat_.reset(); });
    if (!state.ok()) {
      restored = state.status();
      return;
    }
    heartbeat_ = std::make_unique<HeartbeatIc>(vm_->server_loop(), &vm_->bus(),
                                               HeartbeatOptions{.interval = 20ms});
    restored = heartbeat_->StartRestored(/*was_open=*/true);
  });
  ASSERT_TRUE(restored.ok()) << restored;
  // The next thing on the ring that is not an old heartbeat is the new NEGOTIATE.
  bool negotiated_again = false;
  for (int i = 0; i < 20 && !negotiated_again; ++i) {
    absl::StatusOr<IcGuestEvent> event = guest->ServeOne(5s);
    ASSERT_TRUE(event.ok()) << event.status();
    negotiated_again = event->message_type == kMessageTypeNegotiate;
  }
  EXPECT_TRUE(negotiated_again);
  ASSERT_TRUE(ServeUntil(guest, [&] { return heartbeat_->stats().answered >= 3; }));
  const HeartbeatStats stats = OnServer([&] { return heartbeat_->stats(); });
  EXPECT_EQ(stats.health, HeartbeatHealth::kHealthy);
  EXPECT_EQ(stats.channel.state, IcChannelState::kReady);
  EXPECT_EQ(stats.channel.unknown_transactions, 0u);
  EXPECT_TRUE(stats.channel.last_error.ok()) << stats.channel.last_error;
  EXPECT_TRUE(vm_->guest().NothingArrives(protocol::MessageType::kOfferChannel, 50ms));
}

TEST_F(HeartbeatTest, SilenceIsMissedNThenAnswersMakeItHealthyAgain) {
  AddHeartbeat({.interval = 20ms, .response_timeout = 50ms});
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kHeartbeat);
  ASSERT_NE(guest, nullptr);
  ASSERT_TRUE(guest->ServeOne(5s).ok());  // NEGOTIATE; then the guest goes quiet.
  ASSERT_TRUE(WaitUntil([&] { return heartbeat_->stats().consecutive_missed >= 3; }));
  HeartbeatStats stats = OnServer([&] { return heartbeat_->stats(); });
  EXPECT_EQ(stats.health, HeartbeatHealth::kMissed);
  EXPECT_EQ(stats.answered, 0u);
  EXPECT_GE(stats.channel.timeouts, 3u);
  // The guest wakes up: its answers to timed-out beats are late, the fresh ones count.
  ASSERT_TRUE(
      ServeUntil(guest, [&] { return heartbeat_->stats().health == HeartbeatHealth::kHealthy; }));
  stats = OnServer([&] { return heartbeat_->stats(); });
  EXPECT_EQ(stats.consecutive_missed, 0u);
  EXPECT_GE(stats.answered, 1u);
  EXPECT_GE(stats.channel.late_responses, 1u);
  EXPECT_EQ(stats.channel.bad_packets, 0u);
  EXPECT_EQ(stats.channel.unknown_transactions, 0u);
}

// A guest that answers with the sequence number unchanged is wrong, and counted.
TEST_F(HeartbeatTest, AWrongSequenceIsABadBodyAndAMiss) {
  AddHeartbeat({.interval = 1h, .response_timeout = 5s});
  ASSERT_NO_FATAL_FAILURE(Connect());
  IcGuest* guest = Attach(IcService::kHeartbeat);
  ASSERT_NE(guest, nullptr);
  ASSERT_TRUE(guest->ServeOne(5s).ok());
  ring::PacketBuffer buffer;
  ASSERT_TRUE(guest->ReceiveRaw(&buffer, 5s).ok());
  std::vector<uint8_t> echo(buffer.packet().payload.begin(), buffer.packet().payload.end());
  echo[kIcHeaderOffset + offsetof(IcMessageHeader, flags)] = kFlagTransaction | kFlagResponse;
  ASSERT_TRUE(guest->SendRaw(echo, buffer.packet().transaction_id).ok());
  ASSERT_TRUE(WaitUntil([&] { return heartbeat_->stats().missed == 1; }));
  const HeartbeatStats stats = OnServer([&] { return heartbeat_->stats(); });
  EXPECT_EQ(stats.health, HeartbeatHealth::kMissed);
  EXPECT_EQ(stats.channel.bad_packets, 1u);
  EXPECT_TRUE(IsIcError(stats.channel.last_error, IcError::kBadBody)) << stats.channel.last_error;
}

}  // namespace
}  // namespace cvmbus::paravisor::ic::testing
