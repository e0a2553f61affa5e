// Shutdown end to end: each kind reaches the guest with Linux's flag values and the guest's
// status comes back to the caller; refusals, a second request in flight, and a silent guest.
#include "tests/ic/ic_fixture.h"

namespace cvmbus::paravisor::ic::testing {
namespace {

class ShutdownTest : public IcTest {
 protected:
  IcGuest* Ready(IcGuestOptions options = {}) {
    AddShutdown({.response_timeout = 300ms});
    Connect();
    IcGuest* guest = Attach(IcService::kShutdown, options);
    if (guest == nullptr || !guest->ServeOne(5s).ok()) return nullptr;
    if (!WaitUntil([&] { return shutdown_->state() == IcChannelState::kReady; })) return nullptr;
    return guest;
  }
};

TEST_F(ShutdownTest, EachKindCarriesLinuxFlagsAndTheGuestStatusComesBack) {
  IcGuest* guest = Ready({.hibernation_supported = true});
  ASSERT_NE(guest, nullptr);
  struct Case {
    ShutdownRequest request;
    uint32_t flags;
  };
  const Case cases[] = {
      {{.kind = ShutdownKind::kPowerOff}, 0},
      {{.kind = ShutdownKind::kPowerOff, .force = true}, 1},
      {{.kind = ShutdownKind::kReboot}, 2},
      {{.kind = ShutdownKind::kReboot, .force = true}, 3},
      {{.kind = ShutdownKind::kHibernate}, 4},
      {{.kind = ShutdownKind::kHibernate, .force = true}, 5},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.flags);
    EXPECT_EQ(ShutdownFlags(c.request), c.flags);
    std::future<absl::StatusOr<uint32_t>> result = RequestShutdown(c.request);
    absl::StatusOr<IcGuestEvent> event = guest->ServeOne(5s);
    ASSERT_TRUE(event.ok()) << event.status();
    EXPECT_EQ(event->message_type, kMessageTypeShutdown);
    EXPECT_EQ(event->shutdown_flags, c.flags);
    EXPECT_TRUE(event->shutdown_started);
    ASSERT_EQ(result.wait_for(5s), std::future_status::ready);
    absl::StatusOr<uint32_t> status = result.get();
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ(*status, kStatusOk);
  }
  const ShutdownStats stats = OnServer([&] { return shutdown_->stats(); });
  EXPECT_EQ(stats.requested, 6u);
  EXPECT_EQ(stats.accepted, 6u);
  EXPECT_EQ(stats.channel.bad_packets, 0u);
}

TEST_F(ShutdownTest, HibernateOnAGuestThatCannotIsRefusedWithHvEFail) {
  IcGuest* guest = Ready({.hibernation_supported = false});
  ASSERT_NE(guest, nullptr);
  std::future<absl::StatusOr<uint32_t>> result =
      RequestShutdown({.kind = ShutdownKind::kHibernate});
  absl::StatusOr<IcGuestEvent> event = guest->ServeOne(5s);
  ASSERT_TRUE(event.ok());
  EXPECT_FALSE(event->shutdown_started);
  ASSERT_EQ(result.wait_for(5s), std::future_status::ready);
  absl::StatusOr<uint32_t> status = result.get();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(*status, kStatusFail);
  const ShutdownStats stats = OnServer([&] { return shutdown_->stats(); });
  EXPECT_EQ(stats.refused, 1u);
  EXPECT_EQ(stats.last_guest_status, kStatusFail);
}

TEST_F(ShutdownTest, BeforeNegotiationAndWhileInFlightAreRefusedAtOnce) {
  AddShutdown({.response_timeout = 300ms});
  ASSERT_NO_FATAL_FAILURE(Connect());
  std::future<absl::StatusOr<uint32_t>> early = RequestShutdown({});
  ASSERT_EQ(early.wait_for(0s), std::future_status::ready);
  EXPECT_TRUE(absl::IsFailedPrecondition(early.get().status()));
  IcGuest* guest = Attach(IcService::kShutdown);
  ASSERT_NE(guest, nullptr);
  ASSERT_TRUE(guest->ServeOne(5s).ok());
  ASSERT_TRUE(WaitUntil([&] { return shutdown_->state() == IcChannelState::kReady; }));
  std::future<absl::StatusOr<uint32_t>> first = RequestShutdown({});
  std::future<absl::StatusOr<uint32_t>> second = RequestShutdown({});
  ASSERT_EQ(second.wait_for(0s), std::future_status::ready);
  EXPECT_TRUE(absl::IsAlreadyExists(second.get().status()));
  ASSERT_TRUE(guest->ServeOne(5s).ok());
  ASSERT_EQ(first.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(first.get().value_or(~0u), kStatusOk);
}

TEST_F(ShutdownTest, AGuestThatNeverAnswersTimesOut) {
  IcGuest* guest = Ready();
  ASSERT_NE(guest, nullptr);
  const auto start = std::chrono::steady_clock::now();
  std::future<absl::StatusOr<uint32_t>> result = RequestShutdown({});
  ASSERT_EQ(result.wait_for(5s), std::future_status::ready);
  const absl::Status status = result.get().status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
  EXPECT_GE(std::chrono::steady_clock::now() - start, 250ms);
  const ShutdownStats stats = OnServer([&] { return shutdown_->stats(); });
  EXPECT_EQ(stats.failed, 1u);
  EXPECT_EQ(stats.channel.timeouts, 1u);
  // The device is still usable: the next request is answered.
  ASSERT_TRUE(guest->ServeOne(5s).ok());  // The old request, answered late.
  std::future<absl::StatusOr<uint32_t>> again = RequestShutdown({.kind = ShutdownKind::kReboot});
  ASSERT_TRUE(guest->ServeOne(5s).ok());
  ASSERT_EQ(again.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(again.get().value_or(~0u), kStatusOk);
  EXPECT_EQ(OnServer([&] { return shutdown_->ic_stats().late_responses; }), 1u);
}

}  // namespace
}  // namespace cvmbus::paravisor::ic::testing
