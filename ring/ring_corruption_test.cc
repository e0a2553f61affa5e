// A hostile peer: one test per corruption mode, each asserting the exact RingError. Corrupt
// rings are built byte by byte, as a peer would leave them.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "ring/errors.h"
#include "ring/ring.h"
#include "ring/testing/ring_pair.h"

namespace cvmbus::ring {
namespace {

using testing::Descriptor;
using testing::Put32;
using testing::Put64;
using testing::TestRing;

// Puts `packet` (descriptor and body, no trailer) at `offset` with the trailer it should have,
// and moves the write index past it.
void PutPacket(const TestRing& ring, uint32_t offset, std::vector<uint8_t> packet,
               uint64_t trailer_override = ~uint64_t{0}) {
  const uint32_t end = static_cast<uint32_t>(offset + packet.size());
  Put64(&packet, trailer_override != ~uint64_t{0} ? trailer_override : uint64_t{offset} << 32);
  ring.PutData(offset, packet);
  ring.SetControl(control::kWriteIndex, (end + 8) % ring.data_size());
}

// Reads one packet and returns the error kind (nullopt if it read fine).
std::optional<RingError> ReadError(const TestRing& ring) {
  auto reader = IncomingRing::Create(ring.Memory());
  if (!reader.ok()) return GetRingError(reader.status());
  PacketBuffer buffer;
  absl::StatusOr<bool> got = reader->Read(&buffer);
  if (got.ok()) return std::nullopt;
  EXPECT_TRUE(GetRingError(got.status()).has_value()) << got.status();
  // A poisoned ring repeats its error.
  absl::StatusOr<bool> again = reader->Read(&buffer);
  EXPECT_EQ(again.status(), got.status());
  return GetRingError(got.status());
}

TEST(CorruptionTest, WriteIndexOutOfRange) {
  TestRing ring;
  ring.SetControl(control::kWriteIndex, ring.data_size());
  EXPECT_EQ(ReadError(ring), RingError::kIndexOutOfRange);
}

TEST(CorruptionTest, WriteIndexUnalignedAfterOpen) {
  TestRing ring;
  auto reader = IncomingRing::Create(ring.Memory());
  ring.SetControl(control::kWriteIndex, 0x1c);
  PacketBuffer buffer;
  EXPECT_TRUE(IsRingError(reader->Read(&buffer).status(), RingError::kIndexUnaligned));
}

TEST(CorruptionTest, ReadIndexOutOfRangeSeenByTheWriter) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  const std::vector<uint8_t> big(2000);
  ASSERT_TRUE(writer->Write({.payload = big}).ok());
  ring.SetControl(control::kReadIndex, 0xffff0000);
  // The cached index still allows one more; the reload for the third write sees the lie.
  ASSERT_TRUE(writer->Write({.payload = std::vector<uint8_t>(100)}).ok());
  EXPECT_TRUE(IsRingError(writer->Write({.payload = big}).status(), RingError::kIndexOutOfRange));
  EXPECT_TRUE(IsRingError(writer->Write({}).status(), RingError::kIndexOutOfRange));  // Poisoned.
}

TEST(CorruptionTest, ReadIndexUnalignedAtCreate) {
  TestRing ring;
  ring.SetControl(control::kReadIndex, 4);
  EXPECT_TRUE(
      IsRingError(OutgoingRing::Create(ring.Memory()).status(), RingError::kIndexUnaligned));
}

TEST(CorruptionTest, FewerBytesThanADescriptorAndTrailer) {
  TestRing ring;
  ring.SetControl(control::kWriteIndex, 16);
  EXPECT_EQ(ReadError(ring), RingError::kTruncated);
}

TEST(CorruptionTest, DataOffsetShorterThanTheDescriptor) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x6, 1, 2, 0, 0));
  EXPECT_EQ(ReadError(ring), RingError::kBadDataOffset);
}

TEST(CorruptionTest, LengthShorterThanDataOffset) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x6, 3, 2, 0, 0);
  packet.resize(24);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadLength);
}

TEST(CorruptionTest, LengthPastTheBytesAvailableCountingTheTrailer) {
  TestRing ring;
  // A 32-byte packet whose trailer is missing: exactly 32 bytes available, 40 needed.
  std::vector<uint8_t> packet = Descriptor(0x6, 2, 4, 0, 0);
  packet.resize(32);
  ring.PutData(0, packet);
  ring.SetControl(control::kWriteIndex, 32);
  EXPECT_EQ(ReadError(ring), RingError::kTruncated);
}

TEST(CorruptionTest, WrongTrailer) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x6, 2, 2, 0, 0), /*trailer_override=*/0x1234);
  EXPECT_EQ(ReadError(ring), RingError::kBadTrailer);
}

TEST(CorruptionTest, UnknownType) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x8, 2, 2, 0, 0));  // DATA_USING_GPADL: not on this ring.
  EXPECT_EQ(ReadError(ring), RingError::kUnknownType);
}

TEST(CorruptionTest, UnknownFlags) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x6, 2, 2, 0x8001, 0));
  EXPECT_EQ(ReadError(ring), RingError::kUnknownFlags);
}

TEST(CorruptionTest, GpaDirectWithZeroRanges) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x9, 3, 3, 0, 0);
  Put32(&packet, 0);
  Put32(&packet, 0);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, GpaDirectRangesPastTheHeader) {
  TestRing ring;
  // Two ranges declared, room for one (one page) in a 40-byte header.
  std::vector<uint8_t> packet = Descriptor(0x9, 5, 5, 0, 0);
  Put32(&packet, 0);
  Put32(&packet, 2);
  Put32(&packet, 100);
  Put32(&packet, 0);
  Put64(&packet, 0x55);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, GpaDirectRangeNeedsMorePagesThanPresent) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x9, 5, 5, 0, 0);
  Put32(&packet, 0);
  Put32(&packet, 1);
  Put32(&packet, 8192);  // Two pages, one page number present.
  Put32(&packet, 0);
  Put64(&packet, 0x55);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, GpaDirectRangeOffsetPastThePage) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x9, 5, 5, 0, 0);
  Put32(&packet, 0);
  Put32(&packet, 1);
  Put32(&packet, 16);
  Put32(&packet, 4096);
  Put64(&packet, 0x55);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

// The same rules as a GPADL's (guestmem::WalkGpaRanges): no words after the last range, and
// page numbers that fit a GPA.
TEST(CorruptionTest, GpaDirectWordsAfterTheLastRange) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x9, 6, 6, 0, 0);
  Put32(&packet, 0);
  Put32(&packet, 1);
  Put32(&packet, 16);
  Put32(&packet, 0);
  Put64(&packet, 0x55);
  Put64(&packet, 0x66);  // Not a page of the one range.
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, GpaDirectPageNumberOverflowsAGpa) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x9, 5, 5, 0, 0);
  Put32(&packet, 0);
  Put32(&packet, 1);
  Put32(&packet, 16);
  Put32(&packet, 0);
  Put64(&packet, uint64_t{1} << 52);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, GpaDirectHeaderTooShortForItsFixedPart) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x9, 2, 2, 0, 0));
  EXPECT_EQ(ReadError(ring), RingError::kBadDataOffset);
}

TEST(CorruptionTest, TransferPagesWithZeroRanges) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x7, 3, 3, 0, 0);
  Put64(&packet, 0);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, TransferPageCountBeyondTheHeader) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x7, 4, 4, 0, 0);
  Put32(&packet, 1);
  Put32(&packet, 1000);  // range_count 1000, room for 1.
  Put64(&packet, 0);
  PutPacket(ring, 0, packet);
  EXPECT_EQ(ReadError(ring), RingError::kBadRanges);
}

TEST(CorruptionTest, PacketLargerThanTheCallersLimit) {
  TestRing ring;
  std::vector<uint8_t> packet = Descriptor(0x6, 2, 130, 0, 0);
  packet.resize(130 * 8);
  PutPacket(ring, 0, packet);
  auto reader = IncomingRing::Create(ring.Memory(), {.max_packet_bytes = 1024});
  PacketBuffer buffer;
  EXPECT_TRUE(IsRingError(reader->Read(&buffer).status(), RingError::kTooLarge));
}

TEST(CorruptionTest, WriteIndexMovedBackBehindUnreleasedPackets) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x6, 2, 2, 0, 0));
  PutPacket(ring, 24, Descriptor(0x6, 2, 2, 0, 0));
  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  ASSERT_TRUE(*reader->Read(&buffer));  // Read both, released neither.
  ring.SetControl(control::kWriteIndex, 24);
  EXPECT_TRUE(IsRingError(reader->Read(&buffer).status(), RingError::kIndexOutOfRange));
}

TEST(CorruptionTest, ErrorsNameTheRingPosition) {
  TestRing ring;
  PutPacket(ring, 0, Descriptor(0x6, 2, 2, 0, 0));
  PutPacket(ring, 24, Descriptor(0x6, 2, 2, 0, 0), 0x77);
  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  ASSERT_TRUE(*reader->Read(&buffer));
  absl::StatusOr<bool> got = reader->Read(&buffer);
  EXPECT_EQ(std::string(got.status().message()),
            "incoming ring at 0x18: trailer 0x77, expected 0x1800000000");
}

// A peer that rewrites the ring while we read it: lengths flipped between two values, indices
// pushed around, random bytes. Every Read must return a packet or a typed RingError, and every
// packet we return must be self-consistent (its spans inside its buffer).
TEST(HostilePeerTest, ConcurrentRewritesNeverCrashTheReader) {
  TestRing ring(/*data_pages=*/2);
  std::atomic<bool> stop{false};
  std::thread hostile([&] {
    std::mt19937 random(7);
    auto memory = guestmem::GuestMemory::Private(ring.backing());
    while (!stop.load(std::memory_order_relaxed)) {
      const uint32_t choice = random() % 4;
      if (choice == 0) {  // Flip length8 of the packet at 0 between two values.
        (void)memory.WritePlain<uint16_t>(4096 + 4, (random() % 2) ? 2 : 0x7fff);
      } else if (choice == 1) {
        (void)memory.WritePlain<uint32_t>(control::kWriteIndex, random() % (3 * 8192));
      } else if (choice == 2) {
        (void)memory.WritePlain<uint64_t>(4096 + (random() % 1024) * 8, random());
      } else {
        (void)memory.WritePlain<uint32_t>(control::kWriteIndex, (random() % 1024) * 8);
      }
    }
  });
  int packets = 0, errors = 0;
  for (int round = 0; round < 3000; ++round) {
    PutPacket(ring, 0, Descriptor(0x6, 2, 2, 0, round));
    auto reader = IncomingRing::Create(ring.Memory());
    if (!reader.ok()) {
      ASSERT_TRUE(GetRingError(reader.status()).has_value()) << reader.status();
      ++errors;
      continue;
    }
    PacketBuffer buffer;
    for (int i = 0; i < 8; ++i) {
      absl::StatusOr<bool> got = reader->Read(&buffer);
      if (!got.ok()) {
        ASSERT_TRUE(GetRingError(got.status()).has_value()) << got.status();
        ++errors;
        break;
      }
      if (!*got) break;
      ++packets;
      ASSERT_LE(buffer.packet().payload.size(), ring.data_size());
    }
  }
  stop = true;
  hostile.join();
  EXPECT_GT(packets + errors, 0);
}

}  // namespace
}  // namespace cvmbus::ring
