// A hostile peer: one test per corruption mode, each asserting the exact RingError. Corrupt
// rings are built byte by byte, as a peer would leave them.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/ring_memory.h"
#include "ring/errors.h"
#include "ring/protocol.h"
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

// The reader's index may only move forward, and never past the write index we committed: a
// reader that moved it back would have us overwrite packets it has not read; one past our
// committed index would release bytes it never saw (or that we have not published).
TEST(CorruptionTest, ReadIndexMovedBackwardsSeenByAWrite) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  const std::vector<uint8_t> big(2000);  // 2024-byte packets.
  ASSERT_TRUE(writer->Write({.payload = big}).ok());
  ASSERT_TRUE(writer->Write({.payload = big}).ok());  // Committed up to 0xfd0.
  ring.SetControl(control::kReadIndex, 2024);         // The reader released the first...
  ASSERT_EQ(*writer->FreeBytes(), 4096u - 2024u);
  ring.SetControl(control::kReadIndex, 1000);  // ...and then moved back behind 0x7e8.
  // Does not fit the cached free space: the write reloads the read index and sees the lie.
  const absl::StatusOr<bool> got = writer->Write({.payload = std::vector<uint8_t>(3000)});
  EXPECT_TRUE(IsRingError(got.status(), RingError::kIndexOutOfRange)) << got.status();
  EXPECT_EQ(std::string(got.status().message()),
            "outgoing ring: read index 0x3e8 is outside [0x7e8, 0xfd0], from the reader's last "
            "read index to our committed write index");
  EXPECT_EQ(writer->Write({}).status(), got.status());  // Poisoned.
  EXPECT_EQ(writer->error(), got.status());
}

TEST(CorruptionTest, ReadIndexPastOurCommittedWriteIndex) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  ASSERT_TRUE(writer->Write({.payload = std::vector<uint8_t>(40)}).ok());  // Committed 0x40.
  ring.SetControl(control::kReadIndex, 0x48);  // In range, aligned, past what we published.
  const absl::StatusOr<uint32_t> free_bytes = writer->FreeBytes();
  EXPECT_TRUE(IsRingError(free_bytes.status(), RingError::kIndexOutOfRange)) << free_bytes.status();
  EXPECT_EQ(std::string(free_bytes.status().message()),
            "outgoing ring: read index 0x48 is outside [0x0, 0x40], from the reader's last read "
            "index to our committed write index");
  EXPECT_EQ(writer->FreeBytes().status(), free_bytes.status());  // Poisoned.
}

TEST(CorruptionTest, ReadIndexIntoBytesAppendedButNotCommittedInABurst) {
  TestRing ring(/*data_pages=*/1);
  auto writer = OutgoingRing::Create(ring.Memory());
  ring.SetControl(control::kInterruptMask, 1);  // A draining reader: the burst goes on.
  const std::vector<uint8_t> big(2000);
  ASSERT_TRUE(writer->Append({.payload = big}).ok());
  EXPECT_FALSE(writer->CommitInBurst());  // Published up to 0x7e8.
  ASSERT_TRUE(writer->in_burst());
  ASSERT_TRUE(writer->Append({.payload = big}).ok());  // Up to 0xfd0, not published.
  ring.SetControl(control::kReadIndex, 3024);          // Inside the unpublished packet.
  const absl::StatusOr<bool> fits = writer->RequestSpace(1000);
  EXPECT_TRUE(IsRingError(fits.status(), RingError::kIndexOutOfRange)) << fits.status();
  EXPECT_EQ(std::string(fits.status().message()),
            "outgoing ring: read index 0xbd0 is outside [0x0, 0x7e8], from the reader's last read "
            "index to our committed write index");
  EXPECT_EQ(writer->Append({}), fits.status());  // Poisoned.
}

// Our own index comes only from our private state: a peer that overwrites it in shared memory
// does not move our cursor, and the end of a burst (whose full barrier stores the index again)
// puts ours back rather than keeping the peer's.
TEST(CorruptionTest, PeerOverwritesOurWriteIndexDuringABurst) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  ring.SetControl(control::kInterruptMask, 1);
  for (uint64_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(writer->Append({.transaction_id = i}).ok());
    EXPECT_FALSE(writer->CommitInBurst());
  }
  ASSERT_EQ(ring.Control(control::kWriteIndex), 48u);
  ring.SetControl(control::kWriteIndex, 0x1000);  // Between our publish and EndBurst.
  EXPECT_FALSE(writer->EndBurst());               // Masked: no signal.
  EXPECT_EQ(ring.Control(control::kWriteIndex), 48u);
  EXPECT_EQ(writer->uncommitted_bytes(), 0u);
  // The next packet goes where our cursor is, and the reader sees exactly our three packets.
  ring.SetControl(control::kWriteIndex, 0x2000);
  ASSERT_TRUE(writer->Write({.transaction_id = 2}).ok());
  EXPECT_EQ(ring.Control(control::kWriteIndex), 72u);
  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(*reader->Read(&buffer));
    EXPECT_EQ(buffer.packet().transaction_id, i);
  }
  EXPECT_FALSE(*reader->Read(&buffer));
}

TEST(CorruptionTest, PeerOverwritesOurReadIndexDuringABurst) {
  TestRing ring;
  auto writer = OutgoingRing::Create(ring.Memory());
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(writer->Write({.transaction_id = i}).ok());
  auto reader = IncomingRing::Create(ring.Memory());
  PacketBuffer buffer;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(*reader->Read(&buffer));
    EXPECT_FALSE(reader->CommitInBurst());  // No space request: no signal.
  }
  ASSERT_TRUE(reader->in_burst());
  ASSERT_EQ(ring.Control(control::kReadIndex), 48u);
  ring.SetControl(control::kReadIndex, 8);  // Between our publish and EndBurst.
  EXPECT_FALSE(reader->EndBurst());
  EXPECT_EQ(ring.Control(control::kReadIndex), 48u);
  ring.SetControl(control::kReadIndex, 0x100);
  ASSERT_TRUE(*reader->Read(&buffer));  // Our cursor: the third packet.
  EXPECT_EQ(buffer.packet().transaction_id, 2u);
  reader->Commit();
  EXPECT_EQ(ring.Control(control::kReadIndex), 72u);
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

// --- A concurrent hostile peer ----------------------------------------------------------------

// The honest writer's packets in the concurrent test: in-band, back to back over the whole data
// area, so that every byte a reader can reach belongs to a packet the writer wrote.
struct Slot {
  uint32_t offset;
  uint16_t length8;  // Descriptor and payload, without the trailer.
};

std::vector<Slot> Layout(uint32_t data_size) {
  static constexpr uint32_t kPayloadBytes[] = {0, 8, 40, 200, 16, 1000, 64, 24, 512};
  std::vector<Slot> slots;
  uint32_t offset = 0;
  for (size_t i = 0;; ++i) {
    const uint32_t total =
        kDescriptorBytes + kPayloadBytes[i % std::size(kPayloadBytes)] + kTrailerBytes;
    const uint32_t left = data_size - offset;
    if (left < total + kMinPacketBytes) {  // The last packet takes the rest (>= 24 bytes).
      slots.push_back({offset, static_cast<uint16_t>((left - kTrailerBytes) / 8)});
      return slots;
    }
    slots.push_back({offset, static_cast<uint16_t>((total - kTrailerBytes) / 8)});
    offset += total;
  }
}

// What round `round` writes in `slot`: a transaction id naming both, and payload bytes that all
// have bit 7 set. No 8-byte word the writer or the hostile peer ever stores has a zero low half
// except the true trailers (start << 32), so a packet parsed at a slot's start with any length
// but its own fails its trailer check: a packet the reader accepts can only be a whole slot.
uint64_t TransactionId(uint32_t round, size_t slot) { return uint64_t{round} << 32 | (slot + 1); }
uint8_t PayloadByte(uint32_t round, size_t slot, size_t i) {
  return static_cast<uint8_t>(0x80 | ((round * 7 + slot * 13 + i) & 0x7f));
}

// A peer that rewrites the ring while we read it, over and over: the indices (anything: out of
// range, unaligned, behind or past the reader), and each header field and trailer flipped
// between its honest value and invalid ones. It never stores a valid but different header
// field or touches the transaction ids and payloads, so everything the reader accepts must be
// byte for byte a packet the writer wrote; anything else must end the read with a RingError of
// the kinds below, and the error must repeat. (A reader that parsed a length or trailer it had
// not validated, read a field twice, or returned a stale buffer would fail here.)
TEST(HostilePeerTest, ConcurrentRewritesYieldWrittenPacketsOrTypedErrors) {
  TestRing ring(/*data_pages=*/1);
  const uint32_t size = ring.data_size();
  const std::vector<Slot> slots = Layout(size);
  ASSERT_GT(slots.size(), 10u);
  const std::set<RingError> acceptable = {
      RingError::kIndexOutOfRange, RingError::kIndexUnaligned, RingError::kTruncated,
      RingError::kBadDataOffset,   RingError::kBadLength,      RingError::kBadTrailer,
      RingError::kUnknownType,     RingError::kUnknownFlags,
  };
  // The peer's pace. Between rounds it makes kWritesPerRound writes, which stay; while a
  // reader reads (`reading`), it flips words without pause, each to a value and back to what
  // it found, so that a reader that looked at a word twice would see two values. The pacing
  // keeps the mix of packets and errors independent of how fast each thread runs (TSan slows
  // the reader's copies far more than the peer's stores).
  constexpr uint64_t kWritesPerRound = 16;
  std::atomic<uint64_t> budget{0};
  std::atomic<bool> reading{false};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> peer_writes{0}, peer_flips{0};
  // Each side's RingMemory is made here, on this thread; the peer's moves into its thread.
  const guestmem::RingMemory writer = ring.Memory();
  std::thread hostile([&, memory = ring.Memory()] {
    std::mt19937 random(7);
    const auto any_index = [&]() -> uint32_t {
      switch (random() % 5) {
        case 0:
          return random();  // Almost always out of range.
        case 1:
          return (random() % (size / 8)) * 8;  // In range, aligned, anywhere.
        case 2:
          return slots[random() % slots.size()].offset;
        case 3:
          return slots[random() % slots.size()].offset + 4;
        default:
          return size;
      }
    };
    // One write: a control word, or `bytes` bytes of the data area (the low bytes of `value`:
    // the ring is little-endian).
    struct Write {
      bool control;
      uint32_t offset;
      uint32_t bytes;
      uint64_t value;
    };
    const auto choose = [&]() -> Write {
      const Slot& slot = slots[random() % slots.size()];
      const bool honest = random() % 2 == 0;
      // One write in 64 goes to an index (about one every fourth round), the rest to fields.
      const uint32_t op = random() % 128;
      switch (op < 2 ? 5 + op : op % 5) {
        case 0: {
          const uint16_t bad[] = {0, 1, static_cast<uint16_t>(slot.length8 - 1),
                                  static_cast<uint16_t>(slot.length8 + 1), 0x7fff};
          return {false, slot.offset + 4, 2, honest ? slot.length8 : bad[random() % 5]};
        }
        case 1: {
          const uint16_t bad[] = {0, 1, 0xffff};
          return {false, slot.offset + 2, 2, honest ? 2u : bad[random() % 3]};
        }
        case 2: {
          // Never 0: with the type nonzero, no descriptor word can pass for a trailer.
          const uint16_t bad[] = {0x1, 0x8, 0x8080};
          return {false, slot.offset, 2, honest ? 0x6u : bad[random() % 3]};
        }
        case 3:
          return {false, slot.offset + 6, 2, honest ? 0u : (random() % 2 ? 0x2u : 0x8000u)};
        case 4:
          return {false, slot.offset + slot.length8 * 8u, 8,
                  TrailerFor(slot.offset) ^ (honest ? 0 : 1)};
        case 5:
          return {true, control::kWriteIndex, 4, any_index()};
        default:
          return {true, control::kReadIndex, 4, any_index()};
      }
    };
    const auto load = [&](const Write& at) -> uint64_t {
      if (at.control) return memory.LoadControl(at.offset, std::memory_order_relaxed);
      uint64_t value = 0;
      (void)memory.ReadData(at.offset % size, &value, at.bytes);
      return value;
    };
    const auto store = [&](const Write& at, uint64_t value) {
      if (at.control) {
        memory.StoreControl(at.offset, static_cast<uint32_t>(value), std::memory_order_relaxed);
      } else {
        (void)memory.WriteData(at.offset % size, &value, at.bytes);
      }
    };
    uint64_t writes = 0, flips = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      if (reading.load(std::memory_order_relaxed)) {
        const Write write = choose();
        const uint64_t found = load(write);
        store(write, write.value);
        store(write, found);
        ++flips;
      } else if (writes < budget.load(std::memory_order_relaxed)) {
        const Write write = choose();
        store(write, write.value);
        ++writes;
      } else {
        std::this_thread::yield();
      }
    }
    peer_writes = writes;
    peer_flips = flips;
  });
  // Stops the peer however the test ends (a failed ASSERT returns early).
  struct StopAndJoin {
    std::atomic<bool>& stop;
    std::thread& thread;
    ~StopAndJoin() {
      stop = true;
      if (thread.joinable()) thread.join();
    }
  } stop_and_join{stop, hostile};

  PacketBuffer buffer;  // Shared by every round: a stale packet would show.
  uint64_t packets = 0, empty = 0, create_errors = 0;
  std::map<RingError, uint64_t> errors;
  uint64_t error_count = 0;
  // At least kMinRounds, and on until both outcomes were seen (the peer must get a word in).
  constexpr uint32_t kMinRounds = 10000, kMaxRounds = 200000;
  uint32_t round = 0;
  for (; round < kMinRounds || (round < kMaxRounds && (packets == 0 || error_count == 0));
       ++round) {
    // Publishes 1 to all-but-one packets from a slot that moves around the ring (wrapping).
    // Published before the packets are written, which is safe as only this thread reads them,
    // later: the peer's turn comes now, with honest indices in place for it to overwrite.
    const size_t first = (round * 5) % slots.size();
    const size_t count = 1 + round % (slots.size() - 1);
    writer.StoreControl(control::kReadIndex, slots[first].offset, std::memory_order_release);
    writer.StoreControl(control::kWriteIndex, slots[(first + count) % slots.size()].offset,
                        std::memory_order_release);
    budget.fetch_add(kWritesPerRound, std::memory_order_relaxed);
    std::this_thread::yield();  // On a shared CPU, let the peer in between rounds too.
    // Every round writes new transaction ids and payloads; every fourth round also puts the
    // honest header words and trailers back, the rounds between read what the peer left (which
    // matters when the two threads share a CPU and the peer runs in time slices).
    const bool restore_headers = round % 4 == 0;
    for (size_t i = 0; i < slots.size(); ++i) {
      std::vector<uint8_t> packet =
          Descriptor(0x6, 2, slots[i].length8, 0, TransactionId(round, i));
      for (size_t j = kDescriptorBytes; j < slots[i].length8 * 8u; ++j) {
        packet.push_back(PayloadByte(round, i, j - kDescriptorBytes));
      }
      Put64(&packet, TrailerFor(slots[i].offset));
      const size_t skip = restore_headers ? 0 : 8;  // The descriptor's first word.
      const size_t len = restore_headers ? packet.size() : packet.size() - 16;  // No trailer.
      ASSERT_TRUE(writer.WriteData(slots[i].offset + skip, packet.data() + skip, len));
    }
    auto reader = IncomingRing::Create(ring.Memory());
    if (!reader.ok()) {
      const std::optional<RingError> kind = GetRingError(reader.status());
      ASSERT_TRUE(kind == RingError::kIndexOutOfRange || kind == RingError::kIndexUnaligned)
          << reader.status();
      ++create_errors;
      continue;
    }
    reading = true;
    std::optional<size_t> previous;
    for (size_t reads = 0;; ++reads) {
      // The packets accepted add up to less than the data size: fewer than slots.size().
      ASSERT_LT(reads, slots.size()) << "round " << round << ": the reader did not stop";
      const absl::StatusOr<bool> got = reader->Read(&buffer);
      if (!got.ok()) {
        const std::optional<RingError> kind = GetRingError(got.status());
        ASSERT_TRUE(kind.has_value() && acceptable.count(*kind) == 1) << got.status();
        ASSERT_EQ(reader->Read(&buffer).status(), got.status());  // Poisoned.
        ++errors[*kind];
        ++error_count;
        break;
      }
      if (!*got) {
        ++empty;
        break;
      }
      const Packet& packet = buffer.packet();
      ASSERT_EQ(packet.transaction_id >> 32, round) << "a stale or forged packet";
      const size_t i = static_cast<size_t>((packet.transaction_id & 0xffffffff) - 1);
      ASSERT_LT(i, slots.size()) << "a forged transaction id " << packet.transaction_id;
      if (previous.has_value()) {
        ASSERT_EQ(i, (*previous + 1) % slots.size()) << "the reader skipped or repeated";
      }
      previous = i;
      ASSERT_EQ(packet.type, PacketType::kDataInBand);
      ASSERT_EQ(packet.flags, 0);
      ASSERT_EQ(packet.payload.size(), slots[i].length8 * 8u - kDescriptorBytes);
      for (size_t j = 0; j < packet.payload.size(); ++j) {
        ASSERT_EQ(packet.payload[j], PayloadByte(round, i, j)) << "slot " << i << " byte " << j;
      }
      ++packets;
    }
    reading = false;
  }
  stop = true;
  hostile.join();
  std::string by_kind;
  for (const auto& [kind, count] : errors) {
    by_kind += " " + std::string(RingErrorName(kind)) + "=" + std::to_string(count);
  }
  std::printf(
      "hostile peer: %u rounds, %llu peer writes between rounds and %llu flips during reads; "
      "%llu packets accepted, %llu empty reads, %llu errors at Create, %llu errors in Read:%s\n",
      round, static_cast<unsigned long long>(peer_writes.load()),
      static_cast<unsigned long long>(peer_flips.load()), static_cast<unsigned long long>(packets),
      static_cast<unsigned long long>(empty), static_cast<unsigned long long>(create_errors),
      static_cast<unsigned long long>(error_count), by_kind.c_str());
  // The test exercised both outcomes: the peer corrupted reads, and packets still came through.
  EXPECT_GT(packets, 0u);
  EXPECT_GT(error_count, 0u);
}

}  // namespace
}  // namespace cvmbus::ring
