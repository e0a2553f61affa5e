// OutgoingRing and IncomingRing against each other: formats, batching, signalling rules.
#include "ring/ring.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "guestmem/errors.h"
#include "ring/errors.h"
#include "ring/testing/ring_pair.h"

namespace cvmbus::ring {
namespace {

using testing::Descriptor;
using testing::Put32;
using testing::Put64;
using testing::TestRing;

std::vector<uint8_t> Bytes(size_t len, uint8_t seed) {
  std::vector<uint8_t> out(len);
  for (size_t i = 0; i < len; ++i) out[i] = static_cast<uint8_t>(seed + i * 3);
  return out;
}

OutgoingPacket InBand(absl::Span<const uint8_t> payload, uint64_t xid = 0, uint16_t flags = 0) {
  OutgoingPacket packet;
  packet.payload = payload;
  packet.transaction_id = xid;
  packet.flags = flags;
  return packet;
}

// --- Known-answer bytes for each packet type -------------------------------------------------

TEST(KnownAnswerTest, InBandPacketBytes) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer.ok());
  const std::vector<uint8_t> payload = {1, 2, 3, 4, 5};
  ASSERT_TRUE(writer->Write(InBand(payload, 0x1122334455667788, kFlagCompletionRequested)).ok());
  std::vector<uint8_t> expected = Descriptor(0x6, 2, 3, 1, 0x1122334455667788);
  expected.insert(expected.end(), {1, 2, 3, 4, 5, 0, 0, 0});  // Payload padded to 8.
  Put64(&expected, 0);                                        // Trailer: start index 0 << 32.
  EXPECT_EQ(ring.GetData(0, 32), expected);
  EXPECT_EQ(ring.Control(control::kWriteIndex), 32u);
  EXPECT_EQ(ring.Control(control::kFeatureBits) & 1, 1u);
}

TEST(KnownAnswerTest, CompletionPacketBytesAndTrailerOfALaterPacket) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer->Write(InBand({})).ok());  // 24 bytes at 0.
  OutgoingPacket completion;
  completion.type = PacketType::kCompletion;
  completion.transaction_id = 7;
  const std::vector<uint8_t> payload(8, 0xaa);
  completion.payload = payload;
  ASSERT_TRUE(writer->Write(completion).ok());
  std::vector<uint8_t> expected = Descriptor(0xb, 2, 3, 0, 7);
  expected.insert(expected.end(), payload.begin(), payload.end());
  Put64(&expected, uint64_t{24} << 32);
  EXPECT_EQ(ring.GetData(24, 32), expected);
}

TEST(KnownAnswerTest, GpaDirectPacketBytes) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  const std::vector<uint64_t> first_pages = {0x100, 0x101};
  const std::vector<uint64_t> second_pages = {0x2000};
  const GpaRange ranges[] = {{5000, 0x10, first_pages}, {16, 0, second_pages}};
  OutgoingPacket packet;
  packet.type = PacketType::kDataUsingGpaDirect;
  packet.flags = kFlagCompletionRequested;
  packet.transaction_id = 9;
  packet.gpa_ranges = ranges;
  const std::vector<uint8_t> payload = {0xde, 0xad};
  packet.payload = payload;
  ASSERT_TRUE(writer->Write(packet).ok());
  // Header: 16 descriptor + 8 {reserved, count} + (8 + 16) + (8 + 8) = 64 bytes = 8 units.
  std::vector<uint8_t> expected = Descriptor(0x9, 8, 9, 1, 9);
  Put32(&expected, 0);
  Put32(&expected, 2);
  Put32(&expected, 5000);
  Put32(&expected, 0x10);
  Put64(&expected, 0x100);
  Put64(&expected, 0x101);
  Put32(&expected, 16);
  Put32(&expected, 0);
  Put64(&expected, 0x2000);
  expected.insert(expected.end(), {0xde, 0xad, 0, 0, 0, 0, 0, 0});
  Put64(&expected, 0);
  EXPECT_EQ(ring.GetData(0, 80), expected);

  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  const Packet& got = buffer.packet();
  EXPECT_EQ(got.type, PacketType::kDataUsingGpaDirect);
  ASSERT_EQ(got.gpa_ranges.size(), 2u);
  EXPECT_EQ(got.gpa_ranges[0].byte_count, 5000u);
  EXPECT_EQ(got.gpa_ranges[0].byte_offset, 0x10u);
  EXPECT_EQ(std::vector<uint64_t>(got.gpa_ranges[0].gpns.begin(), got.gpa_ranges[0].gpns.end()),
            first_pages);
  EXPECT_EQ(got.gpa_ranges[1].gpns[0], 0x2000u);
  EXPECT_EQ(got.payload.size(), 8u);
  EXPECT_TRUE(got.completion_requested());
}

TEST(KnownAnswerTest, TransferPagePacketBytes) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  const TransferPageRange ranges[] = {{100, 0}, {200, 4096}};
  OutgoingPacket packet;
  packet.type = PacketType::kDataUsingTransferPages;
  packet.transaction_id = 3;
  packet.transfer_page_set_id = 0xcafe;
  packet.sender_owns_set = true;
  packet.transfer_ranges = ranges;
  ASSERT_TRUE(writer->Write(packet).ok());
  std::vector<uint8_t> expected = Descriptor(0x7, 5, 5, 0, 3);
  expected.insert(expected.end(), {0xfe, 0xca, 1, 0});
  Put32(&expected, 2);
  Put32(&expected, 100);
  Put32(&expected, 0);
  Put32(&expected, 200);
  Put32(&expected, 4096);
  Put64(&expected, 0);
  EXPECT_EQ(ring.GetData(0, 48), expected);

  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_EQ(buffer.packet().transfer_page_set_id, 0xcafe);
  EXPECT_TRUE(buffer.packet().sender_owns_set);
  ASSERT_EQ(buffer.packet().transfer_ranges.size(), 2u);
  EXPECT_EQ(buffer.packet().transfer_ranges[1].byte_offset, 4096u);
  EXPECT_TRUE(buffer.packet().payload.empty());
}

// --- Round trips -------------------------------------------------------------------------------

class RoundTripTest : public ::testing::TestWithParam<bool> {};  // Param: double mapping.

TEST_P(RoundTripTest, RandomSizesWrapManyTimes) {
  TestRing ring(/*data_pages=*/2, /*double_map=*/GetParam());
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::mt19937 random(42);
  PacketBuffer buffer;
  uint64_t written = 0, read = 0, wrapped_bytes = 0;
  std::vector<std::vector<uint8_t>> in_flight;
  for (int step = 0; step < 20000; ++step) {
    if (random() % 2 == 0) {
      std::vector<uint8_t> payload = Bytes(random() % 3000, static_cast<uint8_t>(step));
      absl::StatusOr<bool> signal = writer->Write(InBand(payload, written + 1));
      if (!signal.ok()) {
        ASSERT_TRUE(IsRingError(signal.status(), RingError::kFull)) << signal.status();
        continue;
      }
      wrapped_bytes += payload.size() + 24;
      in_flight.push_back(std::move(payload));
      ++written;
    } else {
      absl::StatusOr<bool> got = reader->Read(&buffer);
      ASSERT_TRUE(got.ok()) << got.status();
      if (!*got) {
        ASSERT_EQ(read, written);  // Empty only when everything written was read.
        continue;
      }
      const std::vector<uint8_t>& expected = in_flight[read];
      ++read;
      ASSERT_EQ(buffer.packet().transaction_id, read);
      ASSERT_EQ(buffer.packet().payload.size(), AlignUp8(expected.size()));
      ASSERT_TRUE(std::equal(expected.begin(), expected.end(), buffer.packet().payload.begin()));
      reader->Commit();
    }
  }
  EXPECT_GT(read, 1000u);
  EXPECT_GT(wrapped_bytes, 100u * ring.data_size());  // Many wraps.
}

INSTANTIATE_TEST_SUITE_P(Mappings, RoundTripTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "double_mapped" : "split_copies";
                         });

TEST(RingTest, BatchPublishesOnceAndSignalsOnce) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  const std::vector<uint8_t> payload(40, 1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(writer->Append(InBand(payload)).ok());
  EXPECT_EQ(ring.Control(control::kWriteIndex), 0u);  // Nothing visible before Commit.
  EXPECT_EQ(writer->uncommitted_bytes(), 5u * 64);
  EXPECT_TRUE(writer->Commit());  // Empty -> non-empty: one signal for the batch.
  EXPECT_EQ(ring.Control(control::kWriteIndex), 5u * 64);
  EXPECT_FALSE(writer->Commit());  // Nothing new.

  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  int count = 0;
  while (*reader->Read(&buffer)) ++count;
  EXPECT_EQ(count, 5);
  EXPECT_EQ(ring.Control(control::kReadIndex), 0u);  // Not released before Commit.
  reader->Commit();
  EXPECT_EQ(ring.Control(control::kReadIndex), 5u * 64);
}

TEST(RingTest, FullAndTooLarge) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  // 4096-byte ring: a packet needs strictly fewer than 4096 bytes with its trailer.
  const std::vector<uint8_t> fits(4096 - 24 - 8);
  const std::vector<uint8_t> too_big(4096 - 24);
  EXPECT_TRUE(IsRingError(writer->Write(InBand(too_big)).status(), RingError::kTooLarge));
  ASSERT_TRUE(writer->Write(InBand(fits)).ok());
  EXPECT_TRUE(IsRingError(writer->Write(InBand({})).status(), RingError::kFull));
  EXPECT_EQ(*writer->FreeBytes(), 8u);
}

// --- Signalling --------------------------------------------------------------------------------

TEST(SignalTest, WriterSignalsOnlyOnTheEmptyToNonEmptyEdge) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  EXPECT_TRUE(*writer->Write(InBand({})));   // Was empty.
  EXPECT_FALSE(*writer->Write(InBand({})));  // Reader has not caught up: already signalled.
  PacketBuffer buffer;
  while (*reader->Read(&buffer)) {
  }
  reader->Commit();
  EXPECT_TRUE(*writer->Write(InBand({})));  // Empty again.
}

TEST(SignalTest, InterruptMaskSuppressesWriterSignals) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  reader->Mask();
  EXPECT_EQ(ring.Control(control::kInterruptMask), 1u);
  EXPECT_FALSE(*writer->Write(InBand({})));
  // Unmask re-checks and reports the packet that arrived while masked: no lost wake-up.
  EXPECT_TRUE(*reader->Unmask());
  EXPECT_EQ(ring.Control(control::kInterruptMask), 0u);
  PacketBuffer buffer;
  EXPECT_TRUE(*reader->Read(&buffer));
  reader->Commit();
  EXPECT_FALSE(*reader->Unmask());
}

TEST(SignalTest, ReaderSignalsWhenPendingSendSizeIsCrossed) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  const std::vector<uint8_t> payload(1000 - 24);  // 1000-byte packets with trailer.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(writer->Write(InBand(payload)).ok());
  // 96 bytes free; ask for room for 1000.
  EXPECT_TRUE(IsRingError(writer->Write(InBand(payload)).status(), RingError::kFull));
  EXPECT_FALSE(*writer->RequestSpace(1000));
  EXPECT_EQ(ring.Control(control::kPendingSendSize), 1000u);
  reader->Mask();  // The mask must not gate this signal.
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_TRUE(reader->Commit());  // 96 -> 1096 free: crossed 1000.
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_FALSE(reader->Commit());  // Was already above.
  EXPECT_TRUE(writer->Write(InBand(payload)).ok());
  EXPECT_EQ(ring.Control(control::kPendingSendSize), 0u);  // Cleared by the successful write.
}

TEST(SignalTest, PendingSendSizeIgnoresLowBitsAndNeedsTheFeatureBit) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  const std::vector<uint8_t> payload(1000 - 24);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(writer->Write(InBand(payload)).ok());
  PacketBuffer buffer;
  // A peer that writes size - 1 (1095 & ~7 = 1088): 96 -> 1096 free crosses 1088.
  ring.SetControl(control::kPendingSendSize, 1095);
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_TRUE(reader->Commit());
  // Without the writer's feature bit, no pending_send_sz signal at all.
  ring.SetControl(control::kFeatureBits, 0);
  ring.SetControl(control::kPendingSendSize, 2000);
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_FALSE(reader->Commit());  // 1096 -> 2096 would cross 2000.
}

// --- Bursts: publish per packet, the full signal check once per burst ------------------------

TEST(BurstTest, AReaderIdleAtTheStartIsSignalledAtOnce) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer->Append(InBand({})).ok());
  EXPECT_TRUE(writer->CommitInBurst());  // Empty and unmasked: the reader may be asleep.
  EXPECT_FALSE(writer->in_burst());      // That signal settles the burst.
  EXPECT_EQ(ring.Control(control::kWriteIndex), 24u);  // Published at once.
}

TEST(BurstTest, EndBurstSignalsAReaderThatSleptAtAnyIndexTheBurstPublished) {
  // The reader is masked when the burst starts, then (a race the burst's loads may miss)
  // unmasks and goes to sleep at an index the burst published: the burst's end wakes it.
  for (const uint32_t sleeps_after_packets : {0u, 1u, 2u}) {
    TestRing ring;
    auto writer = OutgoingRing::Create(ring.Memory());
    ring.SetControl(control::kInterruptMask, 1);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(writer->Append(InBand({})).ok());
      EXPECT_FALSE(writer->CommitInBurst());
    }
    ASSERT_TRUE(writer->in_burst());
    ring.SetControl(control::kReadIndex, 24 * sleeps_after_packets);
    ring.SetControl(control::kInterruptMask, 0);
    EXPECT_TRUE(writer->EndBurst()) << sleeps_after_packets;
    EXPECT_FALSE(writer->EndBurst());  // Settled.
  }
}

TEST(BurstTest, EndBurstLeavesAloneAReaderThatIsMaskedOrHasEverything) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  ring.SetControl(control::kInterruptMask, 1);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(writer->Append(InBand({})).ok());
    EXPECT_FALSE(writer->CommitInBurst());
  }
  EXPECT_FALSE(writer->EndBurst());  // Masked: it is draining and will re-check.
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(writer->Append(InBand({})).ok());
    EXPECT_FALSE(writer->CommitInBurst());
  }
  ring.SetControl(control::kInterruptMask, 0);
  ring.SetControl(control::kReadIndex, 4 * 24);  // It read everything.
  EXPECT_FALSE(writer->EndBurst());
}

TEST(BurstTest, ABurstEndsItselfEveryCheckIntervalAndAtCommit) {
  TestRing ring(/*data_pages=*/4);
  auto writer = OutgoingRing::Create(ring.Memory());
  ring.SetControl(control::kInterruptMask, 1);
  ASSERT_TRUE(writer->Append(InBand({})).ok());
  EXPECT_FALSE(writer->CommitInBurst());
  ring.SetControl(control::kInterruptMask, 0);  // Asleep at 0, unseen by the burst so far.
  for (uint32_t i = 2; i < OutgoingRing::kBurstCheckInterval; ++i) {
    ASSERT_TRUE(writer->Append(InBand({})).ok());
    EXPECT_FALSE(writer->CommitInBurst()) << i;
  }
  ASSERT_TRUE(writer->Append(InBand({})).ok());
  EXPECT_TRUE(writer->CommitInBurst());  // The interval's last commit does the full check.
  EXPECT_FALSE(writer->in_burst());

  // Commit ends a burst with the burst's rule: the reader asleep at the burst's start is
  // signalled although it is not at the index before this last commit.
  ring.SetControl(control::kInterruptMask, 1);
  ring.SetControl(control::kReadIndex, 16 * 24);
  ASSERT_TRUE(writer->Append(InBand({})).ok());
  EXPECT_FALSE(writer->CommitInBurst());
  ring.SetControl(control::kInterruptMask, 0);
  EXPECT_TRUE(*writer->Write(InBand({})));
  EXPECT_FALSE(writer->in_burst());
}

TEST(BurstTest, ReaderBurstEndCatchesASpaceRequestItsLooksMissed) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  const std::vector<uint8_t> payload(1000 - 24);  // 1000-byte packets with trailer.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(writer->Write(InBand(payload)).ok());  // 96 free.
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_FALSE(reader->CommitInBurst());  // No request yet: 96 -> 1096 free.
  // The writer asked for 1000 bytes after reading a read index older than our store, and
  // went to sleep; the burst's end finds that the burst crossed its request.
  ring.SetControl(control::kPendingSendSize, 1000);
  EXPECT_TRUE(reader->EndBurst());
  EXPECT_FALSE(reader->EndBurst());
  // A request a commit sees crossed is signalled at once.
  ring.SetControl(control::kPendingSendSize, 2000);
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_TRUE(reader->CommitInBurst());  // 1096 -> 2096 crosses 2000.
  EXPECT_FALSE(reader->in_burst());
}

TEST(BurstTest, ReaderSignalsARequestOnceUntilTheWriterWritesAgain) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  auto reader = IncomingRing::Create(ring.Memory());
  const std::vector<uint8_t> payload(1000 - 24);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(writer->Write(InBand(payload)).ok());  // 96 free.
  ring.SetControl(control::kPendingSendSize, 1000);  // The writer sleeps for 1000 bytes.
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_TRUE(reader->CommitInBurst());  // 96 -> 1096: crossed, signalled.
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_FALSE(reader->CommitInBurst());
  EXPECT_FALSE(reader->EndBurst());  // Same request, the writer has not written: answered.
  // The writer woke, wrote, and asks again for the same size: a new request.
  ring.SetControl(control::kPendingSendSize, 0);
  ASSERT_TRUE(writer->Write(InBand(payload)).ok());
  ring.SetControl(control::kPendingSendSize, 1000);
  ASSERT_TRUE(*reader->Read(&buffer));
  EXPECT_FALSE(reader->CommitInBurst());  // 1096 -> 2096 does not cross 1000 now...
  EXPECT_TRUE(reader->EndBurst());        // ...but the writer may sleep on what it saw.
}

TEST(SignalTest, RequestSpaceReportsSpaceThatAlreadyFits) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  EXPECT_TRUE(*writer->RequestSpace(64));                  // Empty ring: fits now, do not sleep...
  EXPECT_EQ(ring.Control(control::kPendingSendSize), 0u);  // ...so the request is withdrawn.
}

TEST(RingTest, ResumesFromTheIndicesInTheControlPage) {
  TestRing ring;
  {
    auto writer = OutgoingRing::Create(ring.Memory());
    ASSERT_TRUE(writer->Write(InBand(Bytes(10, 1), 1)).ok());
    ASSERT_TRUE(writer->Write(InBand(Bytes(20, 2), 2)).ok());
  }
  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  reader->Commit();
  // A new writer and reader (after a restore) continue where the indices say.
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer->Write(InBand(Bytes(30, 3), 3)).ok());
  auto reader2 = IncomingRing::Create(ring.Memory());
  ASSERT_TRUE(*reader2->Read(&buffer));
  EXPECT_EQ(buffer.packet().transaction_id, 2u);
  ASSERT_TRUE(*reader2->Read(&buffer));
  EXPECT_EQ(buffer.packet().transaction_id, 3u);
}

TEST(RingTest, PrivateViewRingWorksAndUntrustedPagesAreRefused) {
  TestRing ring(4, true, guestmem::View::kPrivate);
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->Write(InBand(Bytes(5, 5))).ok());
  ASSERT_TRUE(ring.backing()
                  ->SetAccess(ring.spare_gpn() * 4096, 4096, guestmem::Access::kNone,
                              guestmem::Access::kReadWrite)
                  .ok());
  const std::vector<uint64_t> gpns = {ring.spare_gpn() + 1, ring.spare_gpn()};
  EXPECT_TRUE(guestmem::IsError(
      guestmem::RingMemory::Create(guestmem::GuestMemory::Private(ring.backing()), gpns).status(),
      guestmem::ErrorKind::kNotPrivate));
}

}  // namespace
}  // namespace cvmbus::ring
