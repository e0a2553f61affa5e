#include "hw/kvm/gsi_routing.h"

#include <gtest/gtest.h>
#include <linux/kvm.h>

#include <cstring>
#include <vector>

#include "hw/kvm/kvm_uapi.h"

namespace cvmbus::hw::kvm {
namespace {

// The entries of an encoded table, read back in the C layout.
std::vector<kvm_irq_routing_entry> Decode(const std::vector<uint64_t>& storage) {
  uapi::IrqRoutingHeader header{};
  std::memcpy(&header, storage.data(), sizeof(header));
  std::vector<kvm_irq_routing_entry> entries(header.nr);
  std::memcpy(entries.data(), reinterpret_cast<const uint8_t*>(storage.data()) + sizeof(header),
              header.nr * sizeof(kvm_irq_routing_entry));
  return entries;
}

TEST(GsiRoutingTableTest, StartsAsKvmsDefaultTable) {
  GsiRoutingTable table(4096);
  const std::vector<kvm_irq_routing_entry> entries = Decode(table.Encode());
  ASSERT_EQ(entries.size(), 40u);
  // GSI 4: IOAPIC pin 4 and master PIC pin 4; GSI 12: IOAPIC pin 12 and slave PIC pin 4.
  EXPECT_EQ(entries[8].gsi, 4u);
  EXPECT_EQ(entries[8].u.irqchip.irqchip, uint32_t{KVM_IRQCHIP_IOAPIC});
  EXPECT_EQ(entries[9].gsi, 4u);
  EXPECT_EQ(entries[9].u.irqchip.irqchip, uint32_t{KVM_IRQCHIP_PIC_MASTER});
  EXPECT_EQ(entries[9].u.irqchip.pin, 4u);
  EXPECT_EQ(entries[25].gsi, 12u);
  EXPECT_EQ(entries[25].u.irqchip.irqchip, uint32_t{KVM_IRQCHIP_PIC_SLAVE});
  EXPECT_EQ(entries[25].u.irqchip.pin, 4u);
  EXPECT_EQ(entries[39].gsi, 23u);
  EXPECT_EQ(entries[39].u.irqchip.irqchip, uint32_t{KVM_IRQCHIP_IOAPIC});
}

TEST(GsiRoutingTableTest, MsiRoutesGetNewGsisAndKeepTheDefaults) {
  GsiRoutingTable table(4096);
  absl::StatusOr<uint32_t> first = table.AddMsi(0x41, 0);
  absl::StatusOr<uint32_t> second = table.AddMsi(0xf3, 3);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(*first, 24u);
  EXPECT_EQ(*second, 25u);
  std::vector<kvm_irq_routing_entry> entries = Decode(table.Encode());
  ASSERT_EQ(entries.size(), 42u);
  EXPECT_EQ(entries[41].gsi, 25u);
  EXPECT_EQ(entries[41].type, uint32_t{KVM_IRQ_ROUTING_MSI});
  EXPECT_EQ(entries[41].u.msi.address_lo, 0xfee03000u);
  EXPECT_EQ(entries[41].u.msi.address_hi, 0u);
  EXPECT_EQ(entries[41].u.msi.data, 0xf3u);
  table.Remove(*first);
  entries = Decode(table.Encode());
  ASSERT_EQ(entries.size(), 41u);
  EXPECT_EQ(entries[40].gsi, 25u);
  EXPECT_EQ(*table.AddMsi(0x42, 0), 26u);  // GSIs are not reused.
}

TEST(GsiRoutingTableTest, RefusesBadMsisAndTooManyRoutes) {
  GsiRoutingTable table(GsiRoutingTable::kDefaultRoutes + 1);
  EXPECT_EQ(table.AddMsi(0x0f, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.AddMsi(0x40, 256).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(table.AddMsi(0x40, 255).ok());
  EXPECT_EQ(table.AddMsi(0x40, 0).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(table.size(), GsiRoutingTable::kDefaultRoutes + 1);
}

}  // namespace
}  // namespace cvmbus::hw::kvm
