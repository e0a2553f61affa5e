#include "paravisor/bus/bus.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>

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

}  // namespace
}  // namespace cvmbus::paravisor
