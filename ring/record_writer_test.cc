#include "ring/record_writer.h"

#include <gtest/gtest.h>

#include <vector>

#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "guestmem/ring_memory.h"

namespace cvmbus::ring {
namespace {

using guestmem::BackingType;
using guestmem::GuestMemory;
using guestmem::RingMemory;

std::shared_ptr<guestmem::MemoryBacking> MakeBacking() {
  guestmem::MemoryOptions options;
  options.name = "ring";
  options.type = BackingType::kMemfd;
  options.regions = {{0, 64 * guestmem::kPageSize}};
  return *guestmem::MemoryBacking::Create(options);
}

TEST(RecordWriterTest, PadsAndWrapsTheSameWithAndWithoutDoubleMapping) {
  for (const bool double_map : {true, false}) {
    auto backing = MakeBacking();
    auto ring = RingMemory::Create(GuestMemory::Private(backing), {0, 1, 2},
                                   {.allow_double_mapping = double_map});
    ASSERT_TRUE(ring.ok());
    ASSERT_EQ(ring->double_mapped(), double_map);
    std::vector<uint8_t> junk(8192, 0xee);
    ASSERT_TRUE(ring->WriteData(0, junk.data(), 8192));
    const uint64_t prefix_low = 0x0807060504030201, prefix_high = 0x100f0e0d0c0b0a09;
    const std::vector<uint8_t> body = {0xa1, 0xa2, 0xa3};  // Padded with 5 zeros.
    const uint32_t offset = 8192 - 16;                     // Wraps after the prefix.
    ASSERT_TRUE(WriteRecord(*ring, offset, prefix_low, prefix_high, body, 0x1122334455667788));
    std::vector<uint8_t> back(32);
    ASSERT_TRUE(ring->ReadData(offset, back.data(), back.size()));
    std::vector<uint8_t> expected = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    expected.insert(expected.end(), {0xa1, 0xa2, 0xa3, 0, 0, 0, 0, 0});
    expected.insert(expected.end(), {0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11});
    EXPECT_EQ(back, expected) << "double_map " << double_map;
    EXPECT_FALSE(WriteRecord(*ring, 8192, prefix_low, prefix_high, body, 0));
    // A record longer than the data area is refused, writing nothing.
    const std::vector<uint8_t> huge(8192, 0x55);
    EXPECT_FALSE(WriteRecord(*ring, 0, prefix_low, prefix_high, huge, 0));
    // Empty body: prefix and suffix only.
    ASSERT_TRUE(WriteRecord(*ring, 0, prefix_low, prefix_high, {}, 0x99));
    std::vector<uint8_t> short_back(24);
    ASSERT_TRUE(ring->ReadData(0, short_back.data(), short_back.size()));
    EXPECT_EQ(short_back[0], 1);
    EXPECT_EQ(short_back[15], 16);
    EXPECT_EQ(short_back[16], 0x99);
    EXPECT_EQ(short_back[17], 0);
  }
}

}  // namespace
}  // namespace cvmbus::ring
