#include "paravisor/bus/bus.h"

#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "hw/uring/task.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;

Guid G(const char* text) { return *Guid::Parse(text); }

TEST(GuidTest, ParsesAndPrintsTheRegistryForm) {
  const Guid guid = G("{F8615163-DF3E-46C5-913F-F2D2F965ED0E}");  // Network (netvsc).
  EXPECT_EQ(guid.data1, 0xf8615163u);
  EXPECT_EQ(guid.data2, 0xdf3e);
  EXPECT_EQ(guid.data3, 0x46c5);
  EXPECT_EQ(guid.data4[0], 0x91);
  EXPECT_EQ(guid.data4[7], 0x0e);
  EXPECT_EQ(guid.ToString(), "f8615163-df3e-46c5-913f-f2d2f965ed0e");
  EXPECT_TRUE(Guid::Zero().is_zero());
  // The wire layout: data1..3 little-endian.
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&guid);
  EXPECT_EQ(bytes[0], 0x63);
  EXPECT_EQ(bytes[3], 0xf8);
  EXPECT_EQ(bytes[4], 0x3e);
  EXPECT_EQ(bytes[8], 0x91);
}

TEST(GuidTest, RejectsMalformedText) {
  for (const char* bad :
       {"", "f8615163-df3e-46c5-913f-f2d2f965ed0", "f8615163df3e-46c5-913f-f2d2f965ed0e0",
        "g8615163-df3e-46c5-913f-f2d2f965ed0e", "{f8615163-df3e-46c5-913f-f2d2f965ed0e"}) {
    EXPECT_FALSE(Guid::Parse(bad).ok()) << bad;
  }
}

TEST(OfferKeyTest, OrderedHashableAndPrinted) {
  const OfferKey a{G("00000000-0000-0000-0000-000000000001"),
                   G("00000000-0000-0000-0000-00000000000a"), 0};
  OfferKey b = a;
  b.subchannel_index = 1;
  OfferKey c = a;
  c.interface_id = G("00000000-0000-0000-0000-000000000002");
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  absl::flat_hash_set<OfferKey> set = {a, b, c, a};
  EXPECT_EQ(set.size(), 3u);
  EXPECT_EQ(b.ToString(),
            "{00000000-0000-0000-0000-000000000001}-{00000000-0000-0000-0000-00000000000a}-1");
  OfferParams params;
  params.interface_id = c.interface_id;
  params.instance_id = c.instance_id;
  EXPECT_EQ(params.key(), c);
}

// The four combinations of the connection feature and the offer flag, for each flag.
TEST(OpenRequestTest, EachFlagIsTheFeatureAndTheOfferFlag) {
  for (const bool feature : {false, true}) {
    for (const uint16_t offer : {0, 2, 4, 6}) {
      const OpenRequest open = OpenRequest::Make(
          OpenData{}, Interrupt(), FeatureFlags{feature ? FeatureFlags::kConfidentialChannels : 0u},
          OfferFlags{offer});
      EXPECT_EQ(open.use_confidential_ring, feature && (offer & 2)) << feature << offer;
      EXPECT_EQ(open.use_confidential_external_memory, feature && (offer & 4)) << feature << offer;
    }
  }
}

TEST(OfferResourcesTest, ViewsFollowTheOpenRequest) {
  guestmem::MemoryOptions options;
  options.regions = {{0, 1 << 20}};
  auto backing = *guestmem::MemoryBacking::Create(options);
  const OfferResources isolated(guestmem::GuestMemory::Untrusted(backing),
                                guestmem::GuestMemory::Private(backing));
  for (const bool ring : {false, true}) {
    for (const bool external : {false, true}) {
      OpenRequest open;
      open.use_confidential_ring = ring;
      open.use_confidential_external_memory = external;
      EXPECT_EQ(isolated.ring_memory(open)->view(),
                ring ? guestmem::View::kPrivate : guestmem::View::kUntrusted);
      EXPECT_EQ(isolated.guest_memory(open)->view(),
                external ? guestmem::View::kPrivate : guestmem::View::kUntrusted);
    }
  }
  // A bus without private memory: asking for it is an error, not a crash.
  const OfferResources plain(guestmem::GuestMemory::Untrusted(backing), std::nullopt);
  OpenRequest open;
  open.use_confidential_ring = true;
  EXPECT_EQ(plain.ring_memory(open).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(plain.guest_memory(open)->view(), guestmem::View::kUntrusted);
}

TEST(RpcTest, ReplyArrives) {
  auto [rpc, reply] = MakeRpc<GpadlRequest, bool>(GpadlRequest{.id = 7});
  EXPECT_EQ(rpc.input().id, 7u);
  EXPECT_FALSE(reply.ready());
  std::move(rpc).Reply(true);
  EXPECT_TRUE(*reply.Take());
}

TEST(RpcTest, ADroppedRpcIsAnErrorNotAHang) {
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  { auto dropped = std::move(rpc); }
  EXPECT_EQ(reply.Wait(1s).status().code(), absl::StatusCode::kCancelled);
  auto [never, pending] = MakeRpc<Unit, Unit>(Unit{});
  EXPECT_EQ(pending.Wait(10ms).status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(RpcTest, FailableRpcCarriesTheRepliersError) {
  auto [rpc, reply] =
      MakeRpc<std::optional<OpenResult>, absl::StatusOr<RestoreResult>>(std::nullopt);
  std::move(rpc).Reply(absl::DataLossError("saved state mismatch"));
  EXPECT_EQ(Flatten(reply.Take()).status().code(), absl::StatusCode::kDataLoss);
}

hw::Task AwaitReply(hw::EventLoop* loop, ReplyFuture<int32_t> reply, int32_t* out) {
  absl::StatusOr<int32_t> value = co_await reply.On(loop);
  *out = value.ok() ? *value : -1;
  loop->Stop();
}

TEST(RpcTest, AwaitingTaskIsWokenOnItsLoopFromAnotherThread) {
  auto loop = *hw::EventLoop::Create();
  auto [rpc, reply] = MakeRpc<ModifyRequest, int32_t>(ModifyTargetVp{3});
  int32_t out = 0;
  AwaitReply(loop.get(), std::move(reply), &out);
  std::thread device([rpc = std::move(rpc)]() mutable {
    std::this_thread::sleep_for(5ms);
    std::move(rpc).Reply(42);
  });
  ASSERT_TRUE(loop->Run().ok());
  device.join();
  EXPECT_EQ(out, 42);
}

hw::Task Drain(hw::EventLoop* loop, Receiver<ChannelRequest>* receiver, std::vector<int>* kinds) {
  while (std::optional<ChannelRequest> request = co_await receiver->Next(loop)) {
    kinds->push_back(static_cast<int>(request->index()));
    if (auto* gpadl = std::get_if<CreateGpadl>(&*request)) std::move(gpadl->rpc).Reply(true);
  }
  loop->Stop();  // Every sender gone.
}

TEST(ChannelTest, SendersOnOtherThreadsWakeTheReceiversLoop) {
  auto loop = *hw::EventLoop::Create();
  auto [sender, receiver] = MakeChannel<ChannelRequest>();
  std::vector<int> kinds;
  Drain(loop.get(), &receiver, &kinds);
  std::vector<ReplyFuture<bool>> replies;
  std::thread server([sender = std::move(sender), &replies]() mutable {
    for (int i = 0; i < 100; ++i) {
      auto [rpc, reply] = MakeRpc<GpadlRequest, bool>(GpadlRequest{.id = GpadlId(i)});
      replies.push_back(std::move(reply));
      ASSERT_TRUE(sender.Send(CreateGpadl{std::move(rpc)}).ok());
    }
    auto [close, close_reply] = MakeRpc<Unit, Unit>(Unit{});
    ASSERT_TRUE(sender.Send(CloseChannel{std::move(close)}).ok());
  });  // The sender is destroyed with the thread's lambda: the receiver sees the end.
  ASSERT_TRUE(loop->Run().ok());
  server.join();
  ASSERT_EQ(kinds.size(), 101u);
  EXPECT_EQ(kinds.back(), 1);  // CloseChannel.
  for (auto& reply : replies) EXPECT_TRUE(*reply.Take());
}

TEST(ChannelTest, SendFailsOnceTheReceiverIsGoneAndQueuedRpcsAreCancelled) {
  auto [sender, receiver] = MakeChannel<ChannelRequest>();
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  ASSERT_TRUE(sender.Send(CloseChannel{std::move(rpc)}).ok());
  { auto gone = std::move(receiver); }
  EXPECT_EQ(reply.Wait(1s).status().code(), absl::StatusCode::kCancelled);
  auto [rpc2, reply2] = MakeRpc<Unit, Unit>(Unit{});
  EXPECT_FALSE(sender.Send(CloseChannel{std::move(rpc2)}).ok());
}

struct Tracker {
  explicit Tracker(std::atomic<int>* live) : live(live) { live->fetch_add(1); }
  ~Tracker() { live->fetch_sub(1); }
  std::atomic<int>* live;
};

hw::Task AwaitReplyTracked(hw::EventLoop* loop, ReplyFuture<int32_t> reply, std::atomic<int>* live,
                           std::thread::id* resumed_on) {
  Tracker tracker(live);
  (void)co_await reply.On(loop);
  *resumed_on = std::this_thread::get_id();
  loop->Stop();
}

TEST(RpcTest, TheReplyResumesTheTaskOnItsLoopThread) {
  auto loop = *hw::EventLoop::Create();
  auto [rpc, reply] = MakeRpc<Unit, int32_t>(Unit{});
  std::atomic<int> live{0};
  std::thread::id resumed_on, replied_from;
  AwaitReplyTracked(loop.get(), std::move(reply), &live, &resumed_on);
  std::thread device([&replied_from, rpc = std::move(rpc)]() mutable {
    replied_from = std::this_thread::get_id();
    std::move(rpc).Reply(1);
  });
  ASSERT_TRUE(loop->Run().ok());
  device.join();
  EXPECT_EQ(resumed_on, std::this_thread::get_id());
  EXPECT_NE(resumed_on, replied_from);
  EXPECT_EQ(live.load(), 0);
}

// The review's case: the task's loop is destroyed while the Rpc lives on in another thread.
// The old waker posted to the freed loop (ASan: heap-use-after-free).
TEST(RpcTest, AReplyAfterTheWaitingLoopIsGoneWakesNothing) {
  auto loop = *hw::EventLoop::Create();
  auto [rpc, reply] = MakeRpc<Unit, int32_t>(Unit{});
  auto [dropped, dropped_reply] = MakeRpc<Unit, int32_t>(Unit{});
  std::atomic<int> live{0};
  std::thread::id resumed_on;
  AwaitReplyTracked(loop.get(), std::move(reply), &live, &resumed_on);
  AwaitReplyTracked(loop.get(), std::move(dropped_reply), &live, &resumed_on);
  EXPECT_EQ(live.load(), 2);
  loop.reset();
  EXPECT_EQ(live.load(), 0);  // The teardown destroyed both waiting tasks.
  std::thread device([rpc = std::move(rpc), dropped = std::move(dropped)]() mutable {
    std::move(rpc).Reply(42);
    { auto gone = std::move(dropped); }  // Dropped unanswered: wakes with kCancelled.
  });
  device.join();
  EXPECT_EQ(resumed_on, std::thread::id());  // Never resumed.
}

hw::Task DrainTracked(hw::EventLoop* loop, Receiver<int>* receiver, std::vector<int>* values,
                      std::atomic<int>* live, std::vector<std::thread::id>* resumed_on) {
  Tracker tracker(live);
  while (std::optional<int> value = co_await receiver->Next(loop)) {
    values->push_back(*value);
    resumed_on->push_back(std::this_thread::get_id());
  }
  loop->Stop();
}

TEST(ChannelTest, SendsResumeTheTaskOnItsLoopThread) {
  auto loop = *hw::EventLoop::Create();
  auto [sender, receiver] = MakeChannel<int>();
  std::vector<int> values;
  std::atomic<int> live{0};
  std::vector<std::thread::id> resumed_on;
  DrainTracked(loop.get(), &receiver, &values, &live, &resumed_on);
  std::thread::id sent_from;
  std::thread server([&sent_from, sender = std::move(sender)]() mutable {
    sent_from = std::this_thread::get_id();
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(sender.Send(i).ok());
      std::this_thread::sleep_for(1ms);  // Let the task park again between sends.
    }
  });  // The last sender goes with the lambda: the task sees the end and stops the loop.
  ASSERT_TRUE(loop->Run().ok());
  server.join();
  EXPECT_EQ(values, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  for (const std::thread::id id : resumed_on) EXPECT_EQ(id, std::this_thread::get_id());
  EXPECT_NE(sent_from, std::this_thread::get_id());
  EXPECT_EQ(live.load(), 0);
}

// The review's case: the receiving task's loop is destroyed while a sender on another thread
// still sends. The old waker posted to the freed loop (ASan: heap-use-after-free).
TEST(ChannelTest, ASendAfterTheWaitingLoopIsGoneWakesNothing) {
  auto loop = *hw::EventLoop::Create();
  auto [sender, receiver] = MakeChannel<int>();
  std::vector<int> values;
  std::atomic<int> live{0};
  std::vector<std::thread::id> resumed_on;
  DrainTracked(loop.get(), &receiver, &values, &live, &resumed_on);
  EXPECT_EQ(live.load(), 1);
  loop.reset();
  EXPECT_EQ(live.load(), 0);  // The teardown destroyed the waiting task.
  std::thread server([sender = std::move(sender)]() mutable {
    EXPECT_TRUE(sender.Send(7).ok());  // The receiver lives on: queued, nothing posted.
  });                                  // The last sender's end wakes nothing either.
  server.join();
  EXPECT_TRUE(values.empty());
  EXPECT_TRUE(resumed_on.empty());
  EXPECT_EQ(receiver.TryNext(), std::optional<int>(7));  // Kept for whoever awaits next.
  EXPECT_TRUE(receiver.closed());
}

hw::Task OwnReceiver(hw::EventLoop* loop, Receiver<int> receiver, std::atomic<int>* live,
                     bool* resumed) {
  Tracker tracker(live);
  (void)co_await receiver.Next(loop);
  *resumed = true;
}

// A waiting task that owns its Receiver: destroying it at teardown closes the channel (its
// Receiver's wake-up of its own, destroyed, parking finds nothing).
TEST(ChannelTest, ATaskDestroyedWithItsLoopClosesTheReceiverItOwned) {
  auto loop = *hw::EventLoop::Create();
  auto [sender, receiver] = MakeChannel<int>();
  std::atomic<int> live{0};
  bool resumed = false;
  OwnReceiver(loop.get(), std::move(receiver), &live, &resumed);
  loop.reset();
  EXPECT_EQ(live.load(), 0);
  EXPECT_FALSE(resumed);
  std::thread server([sender = std::move(sender)]() mutable {
    EXPECT_EQ(sender.Send(1).code(), absl::StatusCode::kFailedPrecondition);
  });
  server.join();
}

}  // namespace
}  // namespace cvmbus::paravisor
