#include "hw/kvm/long_mode.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

namespace cvmbus::hw::kvm {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

uint64_t Word(const LongModeTables& tables, uint64_t offset) {
  uint64_t value = 0;
  std::memcpy(&value, tables.bytes.data() + offset, sizeof(value));
  return value;
}

TEST(LongModeTablesTest, IdentityMapCoversAtLeastFourGiB) {
  EXPECT_EQ(IdentityMapBytesFor(0x400000), 4 * kGiB);
  EXPECT_EQ(IdentityMapBytesFor(4 * kGiB), 4 * kGiB);
  EXPECT_EQ(IdentityMapBytesFor(4 * kGiB + 1), 5 * kGiB);
  EXPECT_EQ(LongModeTablesBytes(4 * kGiB), 7u * 4096);
}

// Known answers: the descriptors and the page-table entries of a 4 GiB map at 0x1000.
TEST(LongModeTablesTest, TablesHoldTheGdtTssAndTwoMiBPages) {
  absl::StatusOr<LongModeTables> tables = BuildLongModeTables(0x1000, 4 * kGiB);
  ASSERT_TRUE(tables.ok()) << tables.status();
  ASSERT_EQ(tables->bytes.size(), 7u * 4096);
  EXPECT_EQ(tables->gpa, 0x1000u);
  EXPECT_EQ(tables->gdt_base, 0x1000u);
  EXPECT_EQ(tables->tss_base, 0x1100u);
  EXPECT_EQ(tables->cr3, 0x2000u);
  EXPECT_EQ(Word(*tables, 0), 0u);
  EXPECT_EQ(Word(*tables, kLongModeCodeSelector), 0x00af9b000000ffffu);
  EXPECT_EQ(Word(*tables, kLongModeDataSelector), 0x00cf93000000ffffu);
  // Busy 64-bit TSS at 0x1100, limit 0x67: base 23:0 in bits 39:16, type 0xb, present.
  EXPECT_EQ(Word(*tables, kLongModeTssSelector), 0x00008b0011000067u);
  EXPECT_EQ(Word(*tables, kLongModeTssSelector + 8), 0u);
  uint16_t io_map_base = 0;
  std::memcpy(&io_map_base, tables->bytes.data() + kLongModeTssOffset + 0x66, 2);
  EXPECT_EQ(io_map_base, 104);
  EXPECT_EQ(Word(*tables, 0x1000), 0x3003u);  // PML4[0] -> PDPT at 0x3000.
  EXPECT_EQ(Word(*tables, 0x1008), 0u);       // Nothing above 512 GiB.
  for (uint64_t gib = 0; gib < 4; ++gib) {
    EXPECT_EQ(Word(*tables, 0x2000 + 8 * gib), (0x4000 + gib * 0x1000) | 3);  // PDPT[gib].
  }
  EXPECT_EQ(Word(*tables, 0x2000 + 8 * 4), 0u);
  EXPECT_EQ(Word(*tables, 0x3000), 0x83u);  // 0 -> 0, 2 MiB, RW, present.
  EXPECT_EQ(Word(*tables, 0x3008), 0x200083u);
  EXPECT_EQ(Word(*tables, 0x6000 + 511 * 8), 0xffe00083u);  // The last 2 MiB below 4 GiB.
}

TEST(LongModeTablesTest, RefusesBadPlacementsAndSizes) {
  EXPECT_EQ(BuildLongModeTables(0x1008, 4 * kGiB).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLongModeTables(0x1000, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLongModeTables(0x1000, kGiB + 4096).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLongModeTables(0x1000, 513 * kGiB).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLongModeTables(~uint64_t{0xfff}, kGiB).status().code(),
            absl::StatusCode::kInvalidArgument);  // Wraps.
  EXPECT_TRUE(BuildLongModeTables(0, 512 * kGiB).ok());
}

}  // namespace
}  // namespace cvmbus::hw::kvm
