#include "ring/testing/dpdk_peer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"

namespace cvmbus::ring::testing {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kWriteIndex = 0x00;
constexpr size_t kReadIndex = 0x04;
constexpr size_t kInterruptMask = 0x08;
constexpr size_t kPendingSendSize = 0x0c;
constexpr size_t kFeatureBits = 0x40;

size_t Pad8(size_t bytes) { return (bytes + 7) & ~size_t{7}; }

// One ring's memory, owned by the test: a control page and `data_bytes` of data, zeroed.
class TestRing {
 public:
  explicit TestRing(size_t data_bytes)
      : total_bytes_(kPage + data_bytes),
        memory_(static_cast<uint8_t*>(std::aligned_alloc(kPage, total_bytes_))) {
    std::memset(memory_.get(), 0, total_bytes_);
  }

  RawRing memory() const { return {memory_.get(), total_bytes_}; }
  uint8_t* data() const { return memory_.get() + kPage; }
  uint32_t data_bytes() const { return static_cast<uint32_t>(total_bytes_ - kPage); }

  // The peers run on this thread, so plain accesses to the control page are race-free.
  uint32_t Get(size_t offset) const {
    uint32_t value;
    std::memcpy(&value, memory_.get() + offset, 4);
    return value;
  }
  void Set(size_t offset, uint32_t value) { std::memcpy(memory_.get() + offset, &value, 4); }

  // DPDK's count of writable bytes: the whole data area when empty.
  uint32_t FreeBytes() const {
    const uint32_t used = (Get(kWriteIndex) + data_bytes() - Get(kReadIndex)) % data_bytes();
    return data_bytes() - used;
  }

  uint64_t DataU64(uint32_t offset) const {
    uint64_t value;
    std::memcpy(&value, data() + offset, 8);
    return value;
  }

 private:
  struct Free {
    void operator()(uint8_t* memory) const { std::free(memory); }
  };
  size_t total_bytes_;
  std::unique_ptr<uint8_t, Free> memory_;
};

uint16_t U16(const uint8_t* bytes) {
  uint16_t value;
  std::memcpy(&value, bytes, 2);
  return value;
}
uint32_t U32(const uint8_t* bytes) {
  uint32_t value;
  std::memcpy(&value, bytes, 4);
  return value;
}
uint64_t U64(const uint8_t* bytes) {
  uint64_t value;
  std::memcpy(&value, bytes, 8);
  return value;
}

std::unique_ptr<DpdkPeer> MakePeer(const TestRing& tx, const TestRing& rx, uint8_t monitor_id = 0) {
  auto peer = DpdkPeer::Create(tx.memory(), rx.memory(), monitor_id);
  EXPECT_TRUE(peer.ok()) << peer.status();
  return peer.ok() ? std::move(peer).value() : nullptr;
}

// True if the bytes at `bytes` begin with `expected` (which may be empty).
bool StartsWith(const uint8_t* bytes, const std::vector<uint8_t>& expected) {
  return std::equal(expected.begin(), expected.end(), bytes);
}

std::vector<uint8_t> Pattern(size_t bytes, uint8_t seed) {
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(seed + 31 * i);
  return out;
}

void ExpectError(const absl::Status& status, absl::StatusCode code, const char* needle) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), needle)) << status;
}

// Two peers over one-page rings: `sender` writes `forward` and reads `backward`, `receiver` the
// reverse.
class DpdkPeerPairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sender = MakePeer(forward, backward);
    receiver = MakePeer(backward, forward);
    ASSERT_NE(sender, nullptr);
    ASSERT_NE(receiver, nullptr);
  }
  TestRing forward{kPage};
  TestRing backward{kPage};
  std::unique_ptr<DpdkPeer> sender;
  std::unique_ptr<DpdkPeer> receiver;
};

TEST(DpdkPeerTest, CreateRejectsBadRings) {
  TestRing a(kPage);
  TestRing b(kPage);
  const RawRing good = a.memory();
  auto expect_invalid = [&](RawRing tx, RawRing rx, uint8_t monitor_id) {
    auto peer = DpdkPeer::Create(tx, rx, monitor_id);
    EXPECT_EQ(peer.status().code(), absl::StatusCode::kInvalidArgument) << peer.status();
  };
  expect_invalid({nullptr, 2 * kPage}, b.memory(), 0);
  expect_invalid({good.base + 8, kPage + 8}, b.memory(), 0);
  expect_invalid({good.base, kPage}, b.memory(), 0);  // No data area.
  expect_invalid(good, {b.memory().base, kPage + 100}, 0);
  expect_invalid(good, b.memory(), DpdkPeer::kMonitorIds);

  a.Set(kWriteIndex, kPage);  // One past the data area.
  expect_invalid(good, b.memory(), 0);
  a.Set(kWriteIndex, 12);  // Not 8-aligned.
  expect_invalid(good, b.memory(), 0);
  a.Set(kWriteIndex, 0);
  b.Set(kReadIndex, 0x2000);
  expect_invalid(good, b.memory(), 0);
  b.Set(kReadIndex, 0);
  EXPECT_TRUE(DpdkPeer::Create(good, b.memory(), 127).ok());
}

TEST(DpdkPeerTest, RandomSizesWrapManyTimes) {
  // 8 KiB of data: every size up to 5000 fits (5000 + 16 + 8 < 8192), and a few packets fill it.
  TestRing forward(2 * kPage);
  TestRing backward(kPage);
  auto sender = MakePeer(forward, backward);
  auto receiver = MakePeer(backward, forward, 3);
  ASSERT_NE(sender, nullptr);
  ASSERT_NE(receiver, nullptr);

  std::mt19937_64 random(20240611);
  std::uniform_int_distribution<size_t> size_of(0, 5000);
  std::uniform_int_distribution<int> percent(0, 99);
  struct Sent {
    std::vector<uint8_t> payload;
    uint64_t xid;
  };
  std::deque<Sent> in_flight;
  std::vector<uint8_t> buffer(8192);
  uint64_t next_xid = 1;
  int received = 0;
  int full = 0;
  int wraps = 0;

  while (received < 3000) {
    if (percent(random) < 55) {
      std::vector<uint8_t> payload(size_of(random));
      for (auto& byte : payload) byte = static_cast<uint8_t>(random());
      const uint32_t free_before = forward.FreeBytes();
      const bool was_empty = forward.Get(kWriteIndex) == forward.Get(kReadIndex);
      const uint32_t write_before = forward.Get(kWriteIndex);
      const uint64_t signals_before = sender->signals_to_host();
      const size_t ring_bytes = 16 + Pad8(payload.size()) + 8;
      const absl::Status sent = sender->Send(6, 1, payload, next_xid, nullptr);
      if (free_before > ring_bytes) {
        ASSERT_TRUE(sent.ok()) << sent;
        // Empty -> non-empty with interrupt_mask 0 is the only case that signals.
        EXPECT_EQ(sender->signals_to_host() - signals_before, was_empty ? 1u : 0u);
        if (forward.Get(kWriteIndex) < write_before) ++wraps;
        in_flight.push_back({std::move(payload), next_xid++});
      } else {
        // DPDK needs strictly more free bytes than it writes.
        ExpectError(sent, absl::StatusCode::kResourceExhausted, "rte_vmbus_chan_send");
        EXPECT_EQ(sender->signals_to_host(), signals_before);
        ++full;
      }
    } else if (!in_flight.empty()) {
      ASSERT_FALSE(receiver->RxEmpty());
      uint64_t xid = 0;
      auto got = receiver->Recv(absl::MakeSpan(buffer), &xid);
      ASSERT_TRUE(got.ok()) << got.status();
      const Sent& want = in_flight.front();
      ASSERT_EQ(*got, Pad8(want.payload.size()));  // The padded length, not the sent one.
      ASSERT_EQ(xid, want.xid);
      ASSERT_TRUE(StartsWith(buffer.data(), want.payload)) << "packet " << received;
      for (size_t i = want.payload.size(); i < *got; ++i) ASSERT_EQ(buffer[i], 0) << i;
      in_flight.pop_front();
      ++received;
    } else {
      EXPECT_TRUE(receiver->RxEmpty());
    }
  }
  EXPECT_GT(wraps, 500);
  EXPECT_GT(full, 100);
  // feature_bits is 0 on the forward ring, so reading never signals.
  EXPECT_EQ(receiver->signals_to_host(), 0u);
}

TEST(DpdkPeerTest, FullMeansNotStrictlyMoreFreeBytes) {
  TestRing ring(kPage);
  TestRing unused(kPage);
  auto peer = MakePeer(ring, unused);
  ASSERT_NE(peer, nullptr);
  // 16 + 4072 + 8 == 4096 == free bytes of an empty ring: does not fit.
  ExpectError(peer->Send(6, 0, Pattern(4065, 1), 1, nullptr), absl::StatusCode::kResourceExhausted,
              "-EAGAIN");
  EXPECT_EQ(ring.Get(kWriteIndex), 0u);
  // 16 + 4064 + 8 == 4088 < 4096: fits.
  EXPECT_TRUE(peer->Send(6, 0, Pattern(4064, 1), 1, nullptr).ok());
  EXPECT_EQ(ring.Get(kWriteIndex), 4088u);
}

TEST_F(DpdkPeerPairTest, RawPacketsDecodeByHand) {
  std::vector<uint8_t> buffer(kPage);
  const size_t sizes[] = {0, 1, 7, 8, 9, 100, 1000, 2999, 4000, 13, 3333};
  for (int round = 0; round < 20; ++round) {
    for (size_t size : sizes) {
      const uint16_t type = (round % 2 == 0) ? 0x6 : 0xb;
      const uint16_t flags = (round % 2 == 0) ? 1 : 0;
      const uint64_t xid = 0x1000 * round + size;
      const uint32_t start = forward.Get(kWriteIndex);
      const auto payload = Pattern(size, static_cast<uint8_t>(round));
      ASSERT_TRUE(sender->Send(type, flags, payload, xid, nullptr).ok());

      const uint16_t length8 = static_cast<uint16_t>((16 + Pad8(size)) / 8);
      const uint32_t trailer_at = (start + length8 * 8) % forward.data_bytes();
      EXPECT_EQ(forward.DataU64(trailer_at), uint64_t{start} << 32);
      EXPECT_EQ(forward.Get(kWriteIndex), (trailer_at + 8) % forward.data_bytes());

      auto bytes = receiver->RecvRaw(absl::MakeSpan(buffer));
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      ASSERT_EQ(*bytes, length8 * 8u);
      EXPECT_EQ(U16(&buffer[0]), type);
      EXPECT_EQ(U16(&buffer[2]), 2);  // data_offset8: the 16-byte descriptor.
      EXPECT_EQ(U16(&buffer[4]), length8);
      EXPECT_EQ(U16(&buffer[6]), flags);
      EXPECT_EQ(U64(&buffer[8]), xid);
      EXPECT_TRUE(StartsWith(&buffer[16], payload));
      // RecvRaw consumed the trailer too.
      EXPECT_EQ(forward.Get(kReadIndex), forward.Get(kWriteIndex));
      EXPECT_TRUE(receiver->SignalRead(static_cast<uint32_t>(*bytes + 8)).ok());
    }
  }
  EXPECT_EQ(receiver->signals_to_host(), 0u);
}

TEST_F(DpdkPeerPairTest, GpaDirectPacketLayout) {
  const GpaPageRange ranges[] = {{4096, 0, 0x1234}, {100, 0xf00, 0xabcdef}};
  const auto payload = Pattern(10, 7);
  ASSERT_TRUE(sender->SendSgList(ranges, payload, 42, nullptr).ok());

  std::vector<uint8_t> buffer(256);
  auto bytes = receiver->RecvRaw(absl::MakeSpan(buffer));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, 24u + 32 + 16);
  EXPECT_EQ(U16(&buffer[0]), 0x9);
  EXPECT_EQ(U16(&buffer[2]), 7);  // (16 + 8 + 2 * 16) / 8
  EXPECT_EQ(U16(&buffer[4]), 9);  // (56 + 16) / 8
  EXPECT_EQ(U16(&buffer[6]), 1);  // DPDK always asks for a completion.
  EXPECT_EQ(U64(&buffer[8]), 42u);
  EXPECT_EQ(U32(&buffer[16]), 0u);  // reserved
  EXPECT_EQ(U32(&buffer[20]), 2u);  // range_count
  EXPECT_EQ(U32(&buffer[24]), 4096u);
  EXPECT_EQ(U32(&buffer[28]), 0u);
  EXPECT_EQ(U64(&buffer[32]), 0x1234u);
  EXPECT_EQ(U32(&buffer[40]), 100u);
  EXPECT_EQ(U32(&buffer[44]), 0xf00u);
  EXPECT_EQ(U64(&buffer[48]), 0xabcdefu);
  EXPECT_TRUE(StartsWith(&buffer[56], payload));

  // Recv skips the whole header, ranges included.
  ASSERT_TRUE(sender->SendSgList(ranges, payload, 43, nullptr).ok());
  uint64_t xid = 0;
  auto got = receiver->Recv(absl::MakeSpan(buffer), &xid);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 16u);
  EXPECT_EQ(xid, 43u);
  EXPECT_TRUE(StartsWith(buffer.data(), payload));
}

TEST(DpdkPeerTest, WriterSignalsOnlyOnEmptyToNonEmpty) {
  TestRing forward(kPage);
  TestRing backward(kPage);
  auto sender = MakePeer(forward, backward, 77);  // Trigger 2, bit 13.
  auto receiver = MakePeer(backward, forward);
  ASSERT_NE(sender, nullptr);
  ASSERT_NE(receiver, nullptr);
  std::vector<uint8_t> buffer(kPage);
  uint64_t xid;

  ASSERT_TRUE(sender->Send(6, 0, Pattern(40, 1), 1, nullptr).ok());
  EXPECT_EQ(sender->signals_to_host(), 1u);
  ASSERT_TRUE(sender->Send(6, 0, Pattern(40, 2), 2, nullptr).ok());
  EXPECT_EQ(sender->signals_to_host(), 1u);  // Not empty before.
  ASSERT_TRUE(receiver->Recv(absl::MakeSpan(buffer), &xid).ok());
  ASSERT_TRUE(sender->Send(6, 0, Pattern(40, 3), 3, nullptr).ok());
  EXPECT_EQ(sender->signals_to_host(), 1u);  // Still one packet in the ring.
  ASSERT_TRUE(receiver->Recv(absl::MakeSpan(buffer), &xid).ok());
  ASSERT_TRUE(receiver->Recv(absl::MakeSpan(buffer), &xid).ok());
  ASSERT_TRUE(sender->Send(6, 0, Pattern(40, 4), 4, nullptr).ok());
  EXPECT_EQ(sender->signals_to_host(), 2u);
  ASSERT_TRUE(receiver->Recv(absl::MakeSpan(buffer), &xid).ok());

  forward.Set(kInterruptMask, 1);  // The reader is draining: no signal even on an empty ring.
  ASSERT_TRUE(sender->Send(6, 0, Pattern(40, 5), 5, nullptr).ok());
  EXPECT_EQ(sender->signals_to_host(), 2u);

  sender->ResetSignals();
  EXPECT_EQ(sender->signals_to_host(), 0u);
}

TEST(DpdkPeerTest, BatchedSendsReportNeedSignal) {
  TestRing forward(kPage);
  TestRing backward(kPage);
  auto sender = MakePeer(forward, backward, 40);
  ASSERT_NE(sender, nullptr);

  bool need_signal = false;
  ASSERT_TRUE(sender->Send(6, 0, Pattern(8, 1), 1, &need_signal).ok());
  EXPECT_TRUE(need_signal);
  EXPECT_EQ(sender->signals_to_host(), 0u);  // DPDK leaves the signal to the caller.
  bool need_signal_again = false;
  ASSERT_TRUE(sender->Send(6, 0, Pattern(8, 2), 2, &need_signal_again).ok());
  EXPECT_FALSE(need_signal_again);
  ASSERT_TRUE(sender->SignalTx().ok());
  EXPECT_EQ(sender->signals_to_host(), 1u);

  forward.Set(kInterruptMask, 1);  // signal_tx reads the mask again at call time.
  ASSERT_TRUE(sender->SignalTx().ok());
  EXPECT_EQ(sender->signals_to_host(), 1u);
}

TEST_F(DpdkPeerPairTest, ReaderSignalsWhenPendingSendSizeIsCrossed) {
  std::vector<uint8_t> buffer(kPage);
  constexpr uint32_t kPacketRingBytes = 16 + 504 + 8;

  // Seven 528-byte packets leave 400 bytes free; each read frees 528 more:
  // 400 -> 928 -> 1456 -> 1984 -> 2512 -> 3040 -> 3568 -> 4096 (empty).
  struct Case {
    uint32_t pending;
    uint64_t signals;
  };
  const Case cases[] = {
      {1000, 1},  // 928 -> 1456 crosses.
      {928, 1},   // 928 <= 928 < 1456: the lower bound is inclusive.
      {927, 1},   // 400 -> 928.
      {400, 1},   // 400 <= 400 < 928.
      {399, 0},   // The writer was never short of space.
      {4000, 1},  // 3568 -> 4096, on the last read.
  };
  for (const bool raw : {false, true}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << "raw " << raw << " pending " << c.pending);
      forward.Set(kFeatureBits, 0);
      int packets = 0;
      while (sender->Send(6, 0, Pattern(504, 9), 1, nullptr).ok()) ++packets;
      ASSERT_EQ(packets, 7);
      ASSERT_EQ(forward.FreeBytes(), 400u);
      // The blocked writer asks to be woken; the reader's interrupt_mask must not matter.
      forward.Set(kFeatureBits, 1);
      forward.Set(kPendingSendSize, c.pending);
      forward.Set(kInterruptMask, 1);
      receiver->ResetSignals();
      for (int i = 0; i < packets; ++i) {
        const uint64_t before = receiver->signals_to_host();
        if (raw) {
          auto got = receiver->RecvRaw(absl::MakeSpan(buffer));
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_EQ(receiver->signals_to_host(), before);  // RecvRaw never signals.
          ASSERT_TRUE(receiver->SignalRead(static_cast<uint32_t>(*got + 8)).ok());
        } else {
          uint64_t xid;
          ASSERT_TRUE(receiver->Recv(absl::MakeSpan(buffer), &xid).ok());
        }
        const uint32_t free_after = forward.FreeBytes();
        const uint32_t free_before = free_after - kPacketRingBytes;
        const bool crossed = free_before <= c.pending && free_after > c.pending;
        EXPECT_EQ(receiver->signals_to_host() - before, crossed ? 1u : 0u)
            << "free " << free_before << " -> " << free_after;
      }
      EXPECT_EQ(receiver->signals_to_host(), c.signals);
      forward.Set(kInterruptMask, 0);
    }
  }

  // Without feature bit 0 the reader never signals.
  forward.Set(kFeatureBits, 0);
  forward.Set(kPendingSendSize, 1000);
  receiver->ResetSignals();
  while (sender->Send(6, 0, Pattern(504, 9), 1, nullptr).ok()) {
  }
  uint64_t xid;
  while (receiver->Recv(absl::MakeSpan(buffer), &xid).ok()) {
  }
  EXPECT_EQ(receiver->signals_to_host(), 0u);
}

TEST_F(DpdkPeerPairTest, RecvErrors) {
  std::vector<uint8_t> buffer(kPage);
  uint64_t xid = 0;

  EXPECT_TRUE(receiver->RxEmpty());
  ExpectError(receiver->Recv(absl::MakeSpan(buffer), &xid).status(), absl::StatusCode::kUnavailable,
              "rte_vmbus_chan_recv returned -EAGAIN");
  ExpectError(receiver->RecvRaw(absl::MakeSpan(buffer)).status(), absl::StatusCode::kUnavailable,
              "rte_vmbus_chan_recv_raw returned -EAGAIN");

  ASSERT_TRUE(sender->Send(6, 0, Pattern(100, 1), 9, nullptr).ok());
  ExpectError(receiver->Recv(absl::MakeSpan(buffer.data(), 99), &xid).status(),
              absl::StatusCode::kOutOfRange, "needs a 104-byte buffer");
  ExpectError(receiver->RecvRaw(absl::MakeSpan(buffer.data(), 119)).status(),
              absl::StatusCode::kOutOfRange, "needs a 120-byte buffer");
  EXPECT_FALSE(receiver->RxEmpty());  // Still there.
  auto got = receiver->Recv(absl::MakeSpan(buffer.data(), 104), &xid);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 104u);
  EXPECT_EQ(xid, 9u);
}

TEST_F(DpdkPeerPairTest, CorruptDescriptorsAreDataLoss) {
  std::vector<uint8_t> buffer(kPage);
  uint64_t xid;
  ASSERT_TRUE(sender->Send(6, 0, Pattern(64, 1), 1, nullptr).ok());

  const uint16_t too_short = 1;  // data_offset8 < 2: shorter than a descriptor.
  std::memcpy(forward.data() + 2, &too_short, 2);
  ExpectError(receiver->Recv(absl::MakeSpan(buffer), &xid).status(), absl::StatusCode::kDataLoss,
              "rte_vmbus_chan_recv returned -EIO");
  ExpectError(receiver->RecvRaw(absl::MakeSpan(buffer)).status(), absl::StatusCode::kDataLoss,
              "rte_vmbus_chan_recv_raw returned -EIO");

  const uint16_t past_end = 11;  // data_offset8 > length8 (10).
  std::memcpy(forward.data() + 2, &past_end, 2);
  ExpectError(receiver->Recv(absl::MakeSpan(buffer), &xid).status(), absl::StatusCode::kDataLoss,
              "-EIO");
  EXPECT_EQ(forward.Get(kReadIndex), 0u);  // Nothing consumed.
}

TEST_F(DpdkPeerPairTest, HostileIndicesAreErrorsNotCrashes) {
  std::vector<uint8_t> buffer(kPage);
  uint64_t xid;

  forward.Set(kWriteIndex, 0x1000);  // The writer claims a write_index past the data area.
  ExpectError(receiver->Recv(absl::MakeSpan(buffer), &xid).status(), absl::StatusCode::kDataLoss,
              "rx ring write_index 0x1000");
  forward.Set(kWriteIndex, 0x14);  // Unaligned.
  ExpectError(receiver->RecvRaw(absl::MakeSpan(buffer)).status(), absl::StatusCode::kDataLoss,
              "rx ring write_index 0x14");
  forward.Set(kWriteIndex, 0);

  forward.Set(kReadIndex, 0x2000);  // The reader claims a read_index past the data area.
  ExpectError(sender->Send(6, 0, Pattern(8, 1), 1, nullptr), absl::StatusCode::kDataLoss,
              "tx ring read_index 0x2000");
  forward.Set(kReadIndex, 0);

  forward.Set(kWriteIndex, 0x40);  // Someone else wrote the sender's write_index.
  ExpectError(sender->Send(6, 0, Pattern(8, 1), 1, nullptr), absl::StatusCode::kDataLoss,
              "not where DPDK left it");
  forward.Set(kWriteIndex, 0);
  EXPECT_TRUE(sender->Send(6, 0, Pattern(8, 1), 1, nullptr).ok());
}

TEST(DpdkPeerTest, SendRejectsWhatDpdkWouldTruncate) {
  TestRing forward(kPage);
  TestRing backward(kPage);
  auto sender = MakePeer(forward, backward);
  ASSERT_NE(sender, nullptr);
  ExpectError(sender->Send(6, 0x10000, {}, 1, nullptr), absl::StatusCode::kInvalidArgument,
              "flags");
  std::vector<uint8_t> huge(DpdkPeer::kMaxPacketBytes);
  ExpectError(sender->Send(6, 0, huge, 1, nullptr), absl::StatusCode::kInvalidArgument, "length8");
  EXPECT_EQ(forward.Get(kWriteIndex), 0u);
}

TEST(DpdkPeerTest, LoopbackOnOneRingStartingMidRing) {
  TestRing ring(kPage);
  ring.Set(kWriteIndex, 4000);  // Existing state is taken over, as vmbus_br_setup does.
  ring.Set(kReadIndex, 4000);
  auto peer = MakePeer(ring, ring);
  ASSERT_NE(peer, nullptr);
  std::vector<uint8_t> buffer(kPage);
  for (uint64_t i = 0; i < 50; ++i) {
    const auto payload = Pattern(300 + i, static_cast<uint8_t>(i));
    ASSERT_TRUE(peer->Send(6, 0, payload, i, nullptr).ok());
    uint64_t xid = 0;
    auto got = peer->Recv(absl::MakeSpan(buffer), &xid);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(xid, i);
    EXPECT_TRUE(StartsWith(buffer.data(), payload));
  }
  EXPECT_EQ(peer->signals_to_host(), 50u);  // Every send found the ring empty.
}

}  // namespace
}  // namespace cvmbus::ring::testing
