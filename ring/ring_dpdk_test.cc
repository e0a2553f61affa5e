// cvmbus's ring against DPDK 22.11's (Debian librte-bus-vmbus23) on the same memory: packets
// cross in both directions byte for byte, and both implementations make the same signalling
// decision on every step.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "ring/errors.h"
#include "ring/ring.h"
#include "ring/testing/dpdk_peer.h"
#include "ring/testing/ring_pair.h"

namespace cvmbus::ring {
namespace {

using testing::DpdkPeer;
using testing::RawRing;
using testing::TestRing;

RawRing Raw(const TestRing& ring) {
  return RawRing{static_cast<uint8_t*>(ring.backing()->regions()[0].host_address),
                 4096 + size_t{ring.data_size()}};
}

std::vector<uint8_t> Payload(std::mt19937& random, size_t max_bytes) {
  std::vector<uint8_t> bytes(random() % (max_bytes + 1));
  for (uint8_t& byte : bytes) byte = static_cast<uint8_t>(random());
  return bytes;
}

TEST(DpdkInteropTest, OurWriterToDpdkReader) {
  TestRing ring(/*data_pages=*/2), unused(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer.ok());
  auto dpdk = DpdkPeer::Create(/*tx=*/Raw(unused), /*rx=*/Raw(ring));
  ASSERT_TRUE(dpdk.ok()) << dpdk.status();
  std::mt19937 random(1);
  std::vector<uint8_t> out(8192);
  uint64_t sent = 0, received = 0, bytes_through = 0;
  std::vector<std::vector<uint8_t>> queue;
  for (int step = 0; step < 20000; ++step) {
    if (random() % 2 == 0) {
      std::vector<uint8_t> payload = Payload(random, 5000);
      absl::StatusOr<bool> signal = writer->Write(
          {.flags = kFlagCompletionRequested, .transaction_id = sent + 1, .payload = payload});
      if (!signal.ok()) {
        ASSERT_TRUE(IsRingError(signal.status(), RingError::kFull)) << signal.status();
        continue;
      }
      queue.push_back(std::move(payload));
      ++sent;
    } else if (received < sent) {
      uint64_t xid = 0;
      absl::StatusOr<size_t> got = (*dpdk)->Recv(absl::MakeSpan(out), &xid);
      ASSERT_TRUE(got.ok()) << got.status();
      const std::vector<uint8_t>& expected = queue[received];
      ++received;
      ASSERT_EQ(xid, received);
      ASSERT_EQ(*got, AlignUp8(static_cast<uint32_t>(expected.size())));
      ASSERT_TRUE(std::equal(expected.begin(), expected.end(), out.begin()));
      bytes_through += expected.size() + 24;
    }
  }
  EXPECT_GT(received, 2000u);
  EXPECT_GT(bytes_through, 200u * ring.data_size());  // Hundreds of wraps.
}

TEST(DpdkInteropTest, DpdkWriterToOurReader) {
  TestRing ring(/*data_pages=*/2), unused(/*data_pages=*/1);
  auto dpdk = DpdkPeer::Create(/*tx=*/Raw(ring), /*rx=*/Raw(unused));
  ASSERT_TRUE(dpdk.ok()) << dpdk.status();
  auto reader = IncomingRing::Create(ring.Memory());
  ASSERT_TRUE(reader.ok());
  std::mt19937 random(2);
  PacketBuffer buffer;
  uint64_t sent = 0, received = 0;
  std::vector<std::vector<uint8_t>> queue;
  std::vector<testing::GpaPageRange> ranges;
  for (int step = 0; step < 20000; ++step) {
    if (random() % 2 == 0) {
      std::vector<uint8_t> payload = Payload(random, 5000);
      const bool gpa_direct = random() % 4 == 0;
      absl::Status sent_status;
      if (gpa_direct) {
        ranges.assign(1 + random() % 3, {});
        for (size_t i = 0; i < ranges.size(); ++i) {
          ranges[i] = {static_cast<uint32_t>(1 + random() % 4000), 0, 0x1000 + i};
        }
        sent_status = (*dpdk)->SendSgList(ranges, payload, sent + 1, nullptr);
      } else {
        sent_status = (*dpdk)->Send(0x6, 0, payload, sent + 1, nullptr);
      }
      if (!sent_status.ok()) {
        ASSERT_EQ(sent_status.code(), absl::StatusCode::kResourceExhausted) << sent_status;
        continue;
      }
      queue.push_back(std::move(payload));
      if (gpa_direct) queue.back().push_back(static_cast<uint8_t>(ranges.size()));  // Marker.
      ++sent;
    } else {
      absl::StatusOr<bool> got = reader->Read(&buffer);
      ASSERT_TRUE(got.ok()) << got.status();
      if (!*got) {
        ASSERT_EQ(received, sent);
        continue;
      }
      const Packet& packet = buffer.packet();
      std::vector<uint8_t> expected = queue[received];
      ++received;
      ASSERT_EQ(packet.transaction_id, received);
      if (packet.type == PacketType::kDataUsingGpaDirect) {
        const size_t range_count = expected.back();
        expected.pop_back();
        ASSERT_EQ(packet.gpa_ranges.size(), range_count);
        ASSERT_EQ(packet.gpa_ranges[0].gpns[0], 0x1000u);
        ASSERT_TRUE(packet.completion_requested());
      } else {
        ASSERT_EQ(packet.type, PacketType::kDataInBand);
      }
      ASSERT_EQ(packet.payload.size(), AlignUp8(static_cast<uint32_t>(expected.size())));
      ASSERT_TRUE(std::equal(expected.begin(), expected.end(), packet.payload.begin()));
      reader->Commit();
    }
  }
  EXPECT_GT(received, 2000u);
}

// Our writer on ring `ours`, DPDK's on ring `theirs`, the same packets and the same reader
// behaviour on both: the rings must hold the same bytes and the writers make the same
// empty -> non-empty signalling decisions.
TEST(DpdkInteropTest, WritersAgreeOnBytesAndSignals) {
  TestRing ours(/*data_pages=*/1), theirs(/*data_pages=*/1), unused(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ours.Memory());
  auto dpdk = DpdkPeer::Create(/*tx=*/Raw(theirs), /*rx=*/Raw(unused));
  ASSERT_TRUE(dpdk.ok()) << dpdk.status();
  // Our writer sets its feature bit; DPDK does not. Give DPDK's ring the same bits.
  theirs.SetControl(control::kFeatureBits, ours.Control(control::kFeatureBits));
  auto our_reader = IncomingRing::Create(ours.Memory());
  auto their_reader = IncomingRing::Create(theirs.Memory());
  std::mt19937 random(3);
  PacketBuffer buffer;
  int signals = 0, decisions = 0;
  for (int step = 0; step < 20000; ++step) {
    const uint32_t op = random() % 8;
    if (op < 4) {
      const std::vector<uint8_t> payload = Payload(random, 600);
      absl::StatusOr<bool> our_signal =
          writer->Write({.transaction_id = uint64_t(step), .payload = payload});
      bool their_signal = false;
      absl::Status their_status = (*dpdk)->Send(0x6, 0, payload, step, &their_signal);
      ASSERT_EQ(our_signal.ok(), their_status.ok()) << our_signal.status() << their_status;
      if (!our_signal.ok()) continue;
      ASSERT_EQ(*our_signal, their_signal) << "step " << step;
      signals += *our_signal;
      ++decisions;
    } else if (op < 6) {
      const uint32_t count = random() % 4;
      for (IncomingRing* reader : {&*our_reader, &*their_reader}) {
        for (uint32_t n = count; n > 0 && *reader->Read(&buffer); --n) {
        }
      }
      our_reader->Commit();
      their_reader->Commit();
    } else if (op == 6) {
      our_reader->Mask();
      their_reader->Mask();
    } else {
      ASSERT_EQ(*our_reader->Unmask(), *their_reader->Unmask());
    }
    ASSERT_EQ(ours.Control(control::kWriteIndex), theirs.Control(control::kWriteIndex));
    ASSERT_EQ(ours.Control(control::kReadIndex), theirs.Control(control::kReadIndex));
  }
  EXPECT_EQ(ours.GetData(0, ours.data_size()), theirs.GetData(0, theirs.data_size()));
  EXPECT_GT(signals, 50);
  EXPECT_GT(decisions - signals, 100);
}

// Our reader on ring `ours`, DPDK's on `theirs`, fed identically by our writer with
// pending_send_sz requests: both readers make the same pending_send_sz signalling decisions.
TEST(DpdkInteropTest, ReadersAgreeOnPendingSendSizeSignals) {
  TestRing ours(/*data_pages=*/1), theirs(/*data_pages=*/1), unused(/*data_pages=*/1);
  auto our_writer = OutgoingRing::Create(ours.Memory());
  auto their_writer = OutgoingRing::Create(theirs.Memory());
  auto our_reader = IncomingRing::Create(ours.Memory());
  auto dpdk = DpdkPeer::Create(/*tx=*/Raw(unused), /*rx=*/Raw(theirs));
  ASSERT_TRUE(dpdk.ok()) << dpdk.status();
  std::mt19937 random(4);
  PacketBuffer buffer;
  std::vector<uint8_t> raw(4096);
  int read_signals = 0, reads = 0;
  for (int step = 0; step < 20000; ++step) {
    if (random() % 2 == 0) {
      const std::vector<uint8_t> payload = Payload(random, 1500);
      absl::StatusOr<bool> a = our_writer->Write({.payload = payload});
      absl::StatusOr<bool> b = their_writer->Write({.payload = payload});
      ASSERT_EQ(a.ok(), b.ok());
      if (!a.ok()) {
        const uint32_t needed = AlignUp8(static_cast<uint32_t>(payload.size())) + 24;
        ASSERT_EQ(*our_writer->RequestSpace(needed), *their_writer->RequestSpace(needed));
      }
    } else {
      absl::StatusOr<bool> got = our_reader->Read(&buffer);
      ASSERT_TRUE(got.ok());
      absl::StatusOr<size_t> their_got = (*dpdk)->RecvRaw(absl::MakeSpan(raw));
      ASSERT_EQ(*got, their_got.ok()) << their_got.status();
      if (!*got) continue;
      const bool our_signal = our_reader->Commit();
      const uint64_t before = (*dpdk)->signals_to_host();
      ASSERT_TRUE((*dpdk)->SignalRead(static_cast<uint32_t>(*their_got + 8)).ok());
      ASSERT_EQ(our_signal, (*dpdk)->signals_to_host() > before) << "step " << step;
      read_signals += our_signal;
      ++reads;
    }
  }
  EXPECT_GT(read_signals, 50);
  EXPECT_GT(reads - read_signals, 50);
}

}  // namespace
}  // namespace cvmbus::ring
