#include "guestmem/ring_memory.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "guestmem/errors.h"

namespace cvmbus::guestmem {
namespace {

std::shared_ptr<MemoryBacking> MakeBacking(BackingType type) {
  MemoryOptions options;
  options.name = "ring";
  options.type = type;
  options.regions = {{0, 64 * kPageSize}, {128 * kPageSize, 64 * kPageSize}};
  return *MemoryBacking::Create(options);
}

struct Case {
  const char* name;
  BackingType type;
  bool allow_double;
  std::vector<uint64_t> gpns;  // Control page, then data pages.
  bool expect_double;
};

class RingMemoryTest : public testing::TestWithParam<Case> {};

TEST_P(RingMemoryTest, WrappingCopiesMatchAByteModel) {
  const Case& c = GetParam();
  auto backing = MakeBacking(c.type);
  auto ring = RingMemory::Create(GuestMemory::Untrusted(backing), c.gpns,
                                 RingMemoryOptions{.allow_double_mapping = c.allow_double});
  ASSERT_TRUE(ring.ok()) << ring.status();
  EXPECT_EQ(ring->double_mapped(), c.expect_double);
  const uint32_t size = ring->data_size();
  ASSERT_EQ(size, (c.gpns.size() - 1) * kPageSize);
  std::vector<uint8_t> model(size, 0);
  uint32_t at = 0;
  for (int round = 0; round < 200; ++round) {
    const size_t len = (round * 977) % size + 1;
    std::vector<uint8_t> bytes(len);
    for (size_t i = 0; i < len; ++i) bytes[i] = static_cast<uint8_t>(round * 31 + i);
    ASSERT_TRUE(ring->WriteData(at, bytes.data(), len));
    for (size_t i = 0; i < len; ++i) model[(at + i) % size] = bytes[i];
    std::vector<uint8_t> back(len);
    ASSERT_TRUE(ring->ReadData(at, back.data(), len));
    ASSERT_EQ(back, bytes) << "round " << round;
    at = static_cast<uint32_t>((at + len * 3) % size);
  }
  // The guest sees the same bytes at the data pages' GPAs.
  for (size_t page = 1; page < c.gpns.size(); ++page) {
    std::vector<uint8_t> guest(kPageSize);
    ASSERT_TRUE(
        GuestMemory::Private(backing).Read(c.gpns[page] * kPageSize, absl::MakeSpan(guest)).ok());
    EXPECT_TRUE(std::equal(guest.begin(), guest.end(), model.begin() + (page - 1) * kPageSize))
        << "page " << page;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, RingMemoryTest,
    testing::Values(
        Case{"memfd_double", BackingType::kMemfd, true, {0, 1, 2, 3}, true},
        Case{"memfd_split", BackingType::kMemfd, false, {0, 1, 2, 3}, false},
        Case{"memfd_scattered_double", BackingType::kMemfd, true, {5, 130, 9, 7, 150}, true},
        Case{"anonymous_contiguous", BackingType::kAnonymous, true, {0, 1, 2}, false},
        Case{"anonymous_scattered", BackingType::kAnonymous, true, {5, 130, 9, 7, 150}, false}),
    [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(RingMemoryTest, ContiguousDataIsTheDoubleMappingOnly) {
  for (const bool double_map : {true, false}) {
    auto ring = RingMemory::Create(GuestMemory::Private(MakeBacking(BackingType::kMemfd)),
                                   {0, 1, 2}, {.allow_double_mapping = double_map});
    ASSERT_TRUE(ring.ok());
    ASSERT_EQ(ring->double_mapped(), double_map);
    if (!double_map) {
      EXPECT_EQ(ring->ContiguousData(0, 8), nullptr);
      continue;
    }
    // A window that wraps is one range: its bytes past the end are the start of the data.
    uint8_t* window = ring->ContiguousData(8192 - 4, 8);
    ASSERT_NE(window, nullptr);
    const uint8_t bytes[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    std::memcpy(window, bytes, 8);
    uint8_t head[4] = {};
    ASSERT_TRUE(ring->ReadData(0, head, 4));
    EXPECT_EQ(head[0], 5);
    EXPECT_EQ(head[3], 8);
    EXPECT_EQ(ring->ContiguousData(8192, 1), nullptr);  // Offset outside the data.
    EXPECT_EQ(ring->ContiguousData(0, 8193), nullptr);  // Longer than the data.
    EXPECT_EQ(ring->ContiguousData(0, 0), nullptr);
  }
}

TEST(RingMemoryTest, RefusesCopiesOutsideTheDataArea) {
  auto ring = RingMemory::Create(GuestMemory::Private(MakeBacking(BackingType::kMemfd)), {0, 1});
  ASSERT_TRUE(ring.ok());
  uint8_t byte = 0;
  EXPECT_FALSE(ring->ReadData(4096, &byte, 1));
  EXPECT_FALSE(ring->WriteData(0, &byte, 4097));
  EXPECT_TRUE(ring->ReadData(4095, &byte, 1));
  EXPECT_TRUE(ring->ReadData(0, &byte, 0));
  // Empty spans have null data: a zero-length copy must not hand null to memcpy (UBSan).
  EXPECT_TRUE(ring->WriteData(8, nullptr, 0));
  EXPECT_TRUE(ring->ReadData(8, nullptr, 0));
}

TEST(RingMemoryTest, ControlWordsAreTheControlPage) {
  auto backing = MakeBacking(BackingType::kMemfd);
  auto ring = RingMemory::Create(GuestMemory::Untrusted(backing), {3, 4});
  ASSERT_TRUE(ring.ok());
  ring->StoreControl(4, 0x1234, std::memory_order_release);
  EXPECT_EQ(*GuestMemory::Private(backing).ReadPlain<uint32_t>(3 * kPageSize + 4), 0x1234u);
  ASSERT_TRUE(GuestMemory::Private(backing).WritePlain<uint32_t>(3 * kPageSize + 0x40, 1).ok());
  EXPECT_EQ(ring->LoadControl(0x40, std::memory_order_acquire), 1u);
}

TEST(RingMemoryTest, NeedsTwoPagesInTheRightView) {
  auto backing = MakeBacking(BackingType::kMemfd);
  EXPECT_TRUE(IsError(RingMemory::Create(GuestMemory::Private(backing), {0}).status(),
                      ErrorKind::kInvalidArgument));
  ASSERT_TRUE(backing->SetAccess(0x2000, 0x1000, Access::kReadWrite, Access::kNone).ok());
  EXPECT_TRUE(IsError(RingMemory::Create(GuestMemory::Untrusted(backing), {1, 2}).status(),
                      ErrorKind::kNotShared));
  EXPECT_TRUE(IsError(RingMemory::Create(GuestMemory::Private(backing), {1, 64}).status(),
                      ErrorKind::kOutOfRange));  // Page 64 is the hole.
}

TEST(RingMemoryTest, AnOpenRingBlocksConversionOfItsPages) {
  auto backing = MakeBacking(BackingType::kMemfd);
  {
    auto ring = RingMemory::Create(GuestMemory::Untrusted(backing), {10, 11, 12});
    ASSERT_TRUE(ring.ok());
    EXPECT_TRUE(
        IsError(backing->SetAccess(11 * kPageSize, kPageSize, Access::kReadWrite, Access::kNone),
                ErrorKind::kPinned));
    RingMemory moved = *std::move(ring);  // Still pinned after a move.
    EXPECT_TRUE(
        IsError(backing->SetAccess(10 * kPageSize, kPageSize, Access::kReadWrite, Access::kNone),
                ErrorKind::kPinned));
  }
  EXPECT_TRUE(
      backing->SetAccess(10 * kPageSize, 3 * kPageSize, Access::kReadWrite, Access::kNone).ok());
}

}  // namespace
}  // namespace cvmbus::guestmem
