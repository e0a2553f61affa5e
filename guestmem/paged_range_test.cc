#include "guestmem/paged_range.h"

#include <gtest/gtest.h>

#include <vector>

#include "guestmem/errors.h"
#include "guestmem/guest_memory.h"

namespace cvmbus::guestmem {
namespace {

void ExpectKind(const absl::Status& status, ErrorKind kind) {
  EXPECT_EQ(GetErrorKind(status), kind) << status;
}

TEST(PagedRangeTest, ValidatesItsShape) {
  const std::vector<uint64_t> two = {5, 9};
  EXPECT_TRUE(PagedRange::Create(0, 8192, two).ok());
  EXPECT_TRUE(PagedRange::Create(4095, 4097, two).ok());
  EXPECT_TRUE(PagedRange::Create(0, 1, two).ok());  // Extra pages are allowed.
  ExpectKind(PagedRange::Create(0, 0, two).status(), ErrorKind::kInvalidRange);
  ExpectKind(PagedRange::Create(4096, 1, two).status(), ErrorKind::kInvalidRange);
  ExpectKind(PagedRange::Create(1, 8192, two).status(), ErrorKind::kInvalidRange);
  ExpectKind(PagedRange::Create(0, 1, {}).status(), ErrorKind::kInvalidRange);
  ExpectKind(PagedRange::Create(0, 1, {uint64_t{1} << 52}).status(), ErrorKind::kOverflow);
  ExpectKind(PagedRange::Create(0xfff, 0xffffffff, two).status(), ErrorKind::kInvalidRange);
}

TEST(PagedRangeTest, ChunksFollowPagesInOrder) {
  auto range = PagedRange::Create(0xf00, 0x1200, std::vector<uint64_t>{5, 9, 11});
  ASSERT_TRUE(range.ok());
  std::vector<GpaChunk> chunks;
  ASSERT_TRUE(range
                  ->ForEachChunk(0, 0x1200,
                                 [&](GpaChunk chunk) {
                                   chunks.push_back(chunk);
                                   return absl::OkStatus();
                                 })
                  .ok());
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].gpa, 0x5f00u);
  EXPECT_EQ(chunks[0].len, 0x100u);
  EXPECT_EQ(chunks[1].gpa, 0x9000u);
  EXPECT_EQ(chunks[1].len, 0x1000u);
  EXPECT_EQ(chunks[2].gpa, 0xb000u);
  EXPECT_EQ(chunks[2].len, 0x100u);
  const auto ok = [](GpaChunk) { return absl::OkStatus(); };
  ExpectKind(range->ForEachChunk(0x1100, 0x101, ok), ErrorKind::kOutOfRange);
  ExpectKind(range->ForEachChunk(~uint64_t{0}, 2, ok), ErrorKind::kOverflow);
  EXPECT_TRUE(range->ForEachChunk(0x1200, 0, ok).ok());
}

TEST(PagedRangeTest, ScatterGatherThroughGuestMemory) {
  MemoryOptions options;
  options.regions = {{0, 64 * 4096}};
  auto backing = MemoryBacking::Create(options);
  ASSERT_TRUE(backing.ok());
  GuestMemory memory = GuestMemory::Private(*backing);
  auto range = PagedRange::Create(0x800, 3 * 4096, std::vector<uint64_t>{10, 2, 40, 7});
  ASSERT_TRUE(range.ok());
  std::vector<uint8_t> bytes(3 * 4096);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 13);
  ASSERT_TRUE(memory.WriteRange(*range, 0, bytes).ok());
  EXPECT_EQ(*memory.ReadPlain<uint8_t>(10 * 4096 + 0x800), bytes[0]);
  EXPECT_EQ(*memory.ReadPlain<uint8_t>(2 * 4096), bytes[0x800]);
  EXPECT_EQ(*memory.ReadPlain<uint8_t>(7 * 4096 + 0x7ff), bytes.back());
  std::vector<uint8_t> middle(5000);
  ASSERT_TRUE(memory.ReadRange(*range, 1000, absl::MakeSpan(middle)).ok());
  EXPECT_TRUE(std::equal(middle.begin(), middle.end(), bytes.begin() + 1000));
  // A page outside guest memory fails the access, not the range's construction.
  auto outside = PagedRange::Create(0, 4096, std::vector<uint64_t>{1000});
  ASSERT_TRUE(outside.ok());
  ExpectKind(memory.ReadRange(*outside, 0, absl::MakeSpan(middle).subspan(0, 16)),
             ErrorKind::kOutOfRange);
}

TEST(ParseGpaRangesTest, ParsesPackedRanges) {
  // Range 0: 0x1800 bytes at offset 0x400 -> 2 pages; range 1: 16 bytes at 0 -> 1 page.
  const std::vector<uint64_t> buf = {(uint64_t{0x400} << 32) | 0x1800, 3, 4,
                                     (uint64_t{0} << 32) | 16, 99};
  auto ranges = ParseGpaRanges(buf, 2);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  ASSERT_EQ(ranges->size(), 2u);
  EXPECT_EQ((*ranges)[0].byte_offset(), 0x400u);
  EXPECT_EQ((*ranges)[0].byte_count(), 0x1800u);
  EXPECT_EQ((*ranges)[0].gpns()[1], 4u);
  EXPECT_EQ((*ranges)[1].gpns()[0], 99u);
}

TEST(ParseGpaRangesTest, RejectsEveryMalformedBuffer) {
  const uint64_t one_page = 4096;
  ExpectKind(ParseGpaRanges({one_page, 1}, 2).status(), ErrorKind::kInvalidRange);  // Count.
  ExpectKind(ParseGpaRanges({one_page}, 1).status(), ErrorKind::kInvalidRange);     // No gpn.
  ExpectKind(ParseGpaRanges({one_page, 1, 2}, 1).status(),
             ErrorKind::kInvalidRange);                                      // Trailing.
  ExpectKind(ParseGpaRanges({0, 1}, 1).status(), ErrorKind::kInvalidRange);  // Empty.
  ExpectKind(ParseGpaRanges({(uint64_t{4096} << 32) | 1, 1, 2}, 1).status(),
             ErrorKind::kInvalidRange);  // Offset.
  ExpectKind(ParseGpaRanges({0xffffffff, 1}, 1).status(), ErrorKind::kInvalidRange);
  ExpectKind(ParseGpaRanges({}, 0).status(), ErrorKind::kInvalidRange);  // No ranges at all.
  ExpectKind(ParseGpaRanges({one_page, uint64_t{1} << 52}, 1).status(), ErrorKind::kOverflow);
}

}  // namespace
}  // namespace cvmbus::guestmem
