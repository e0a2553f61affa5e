#include "hw/kvm/hyperv.h"

#include <gtest/gtest.h>

#include <vector>

namespace cvmbus::hw::kvm {
namespace {

const CpuidLeaf* Find(const std::vector<CpuidLeaf>& leaves, uint32_t function, uint32_t index = 0) {
  for (const CpuidLeaf& leaf : leaves) {
    if (leaf.function == function && (!leaf.indexed || leaf.index == index)) return &leaf;
  }
  return nullptr;
}

// What KVM_GET_SUPPORTED_CPUID looks like: basic leaves, KVM's signature and features.
std::vector<CpuidLeaf> Supported() {
  return {
      CpuidLeaf{.function = 0, .eax = 0xd},
      CpuidLeaf{.function = 1, .ebx = 0x0b000800, .ecx = 0x00000001, .edx = 0x178bfbff},
      CpuidLeaf{.function = 7, .index = 0, .indexed = true, .ebx = 0x219c91a9},
      CpuidLeaf{.function = 7, .index = 1, .indexed = true, .eax = 0x10},
      CpuidLeaf{.function = 0x40000000, .eax = 0x40000001, .ebx = 0x4b4d564b},
      CpuidLeaf{.function = 0x40000001, .eax = 0x1007efb},
      CpuidLeaf{.function = 0x40000100, .ebx = 0x4b4d564b},
  };
}

TEST(HypervCpuidTest, LeavesSayMicrosoftHvAndHv1) {
  const std::vector<CpuidLeaf> leaves = HypervCpuidLeaves();
  ASSERT_EQ(leaves.size(), 7u);
  EXPECT_EQ(leaves[0].function, 0x40000000u);
  EXPECT_EQ(leaves[0].eax, 0x40000006u);
  EXPECT_EQ(leaves[0].ebx, 0x7263694du);  // "Micr"
  EXPECT_EQ(leaves[0].ecx, 0x666f736fu);  // "osof"
  EXPECT_EQ(leaves[0].edx, 0x76482074u);  // "t Hv"
  EXPECT_EQ(leaves[1].eax, 0x31237648u);  // "Hv#1"
  // What Linux requires: hypercall MSRs (bit 5) and VP index (bit 6); SynIC (2) and the
  // reference counter (1) recommended; post messages and signal events (EBX 4, 5).
  EXPECT_EQ(leaves[3].eax, 0x66u);
  EXPECT_EQ(leaves[3].ebx, 0x30u);
  EXPECT_EQ(leaves[5].eax, 1u);
}

TEST(MergeCpuidTest, DropsEveryKvmHypervisorLeafAndAddsTheCallers) {
  absl::StatusOr<std::vector<CpuidLeaf>> merged = MergeCpuid(Supported(), HypervCpuidLeaves());
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(Find(*merged, 0x40000100), nullptr);  // KVM's signature at 0x40000100 too.
  ASSERT_NE(Find(*merged, 0x40000000), nullptr);
  EXPECT_EQ(Find(*merged, 0x40000000)->ebx, 0x7263694du);
  EXPECT_EQ(Find(*merged, 0x40000001)->eax, 0x31237648u);
  // Leaf 1: x2APIC and hypervisor bits set, initial APIC id 0, the rest kept.
  const CpuidLeaf* leaf1 = Find(*merged, 1);
  ASSERT_NE(leaf1, nullptr);
  EXPECT_EQ(leaf1->ecx, 0x00000001u | 1u << 21 | 1u << 31);
  EXPECT_EQ(leaf1->ebx, 0x00000800u);
  EXPECT_EQ(leaf1->edx, 0x178bfbffu);
  // Indexed leaves pass through whole.
  ASSERT_NE(Find(*merged, 7, 1), nullptr);
  EXPECT_EQ(Find(*merged, 7, 1)->eax, 0x10u);
  EXPECT_EQ(merged->size(), 4u + 7u);
}

TEST(MergeCpuidTest, CallerLeavesReplaceEveryEntryOfTheirFunction) {
  std::vector<CpuidLeaf> extra = {CpuidLeaf{.function = 7, .index = 0, .indexed = true}};
  absl::StatusOr<std::vector<CpuidLeaf>> merged = MergeCpuid(Supported(), extra);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(Find(*merged, 7, 1), nullptr);
  ASSERT_NE(Find(*merged, 7, 0), nullptr);
  EXPECT_EQ(Find(*merged, 7, 0)->ebx, 0u);
  // A caller's leaf 1 still gets the x2APIC bit.
  merged = MergeCpuid(Supported(), {CpuidLeaf{.function = 1}});
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(Find(*merged, 1)->ecx, 1u << 21 | 1u << 31);
}

TEST(MergeCpuidTest, RefusesDuplicateLeaves) {
  EXPECT_EQ(MergeCpuid(Supported(),
                       {CpuidLeaf{.function = 0x40000000}, CpuidLeaf{.function = 0x40000000}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MergeCpuid(Supported(), {CpuidLeaf{.function = 7, .index = 2, .indexed = true},
                                     CpuidLeaf{.function = 7, .index = 2, .indexed = true}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MergeCpuid(Supported(), {CpuidLeaf{.function = 7, .index = 0, .indexed = true},
                                       CpuidLeaf{.function = 7, .index = 1, .indexed = true}})
                  .ok());
}

}  // namespace
}  // namespace cvmbus::hw::kvm
