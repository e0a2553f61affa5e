#include "hw/kvm/gsi_routing.h"

#include <fmt/format.h>
#include <linux/kvm.h>

#include <cstring>

#include "hw/kvm/kvm_uapi.h"

namespace cvmbus::hw::kvm {
namespace {

// The MSI address of a physical destination (SDM Vol. 3A 11.11.1): 0xfee, destination id in
// bits 19:12, redirection hint 0, destination mode 0 (physical).
constexpr uint32_t kMsiAddressBase = 0xfee00000;

kvm_irq_routing_entry Irqchip(uint32_t gsi, uint32_t chip, uint32_t pin) {
  kvm_irq_routing_entry entry{};
  entry.gsi = gsi;
  entry.type = KVM_IRQ_ROUTING_IRQCHIP;
  entry.u.irqchip.irqchip = chip;
  entry.u.irqchip.pin = pin;
  return entry;
}

}  // namespace

absl::StatusOr<uint32_t> GsiRoutingTable::AddMsi(uint8_t vector, uint32_t apic_id) {
  if (vector < 16) {
    return absl::InvalidArgumentError(
        fmt::format("MSI route: vector {:#x} is below 0x10 (reserved for exceptions)", vector));
  }
  if (apic_id > 0xff) {
    return absl::InvalidArgumentError(fmt::format(
        "MSI route: APIC id {} does not fit the MSI address's 8-bit destination", apic_id));
  }
  if (size() + 1 > max_routes_) {
    return absl::ResourceExhaustedError(
        fmt::format("MSI route: KVM takes at most {} routes", max_routes_));
  }
  const uint32_t gsi = next_gsi_++;
  msi_[gsi] = Msi{.vector = vector, .apic_id = apic_id};
  return gsi;
}

void GsiRoutingTable::Remove(uint32_t gsi) { msi_.erase(gsi); }

std::vector<uint64_t> GsiRoutingTable::Encode() const {
  std::vector<kvm_irq_routing_entry> entries;
  entries.reserve(size());
  // KVM's default_routing (arch/x86/kvm/irq.c): ROUTING_ENTRY2(0..15), ROUTING_ENTRY1(16..23).
  for (uint32_t gsi = 0; gsi < 24; ++gsi) {
    entries.push_back(Irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    if (gsi < 16) {
      entries.push_back(
          Irqchip(gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, gsi % 8));
    }
  }
  for (const auto& [gsi, msi] : msi_) {
    kvm_irq_routing_entry entry{};
    entry.gsi = gsi;
    entry.type = KVM_IRQ_ROUTING_MSI;
    entry.u.msi.address_lo = kMsiAddressBase | (msi.apic_id << 12);
    entry.u.msi.address_hi = 0;
    entry.u.msi.data = msi.vector;  // Fixed delivery (bits 10:8 = 0), edge (bit 15 = 0).
    entries.push_back(entry);
  }
  // The C layout (kvm_uapi.h): the header, then the entries at offset 8.
  const size_t bytes =
      sizeof(uapi::IrqRoutingHeader) + entries.size() * sizeof(kvm_irq_routing_entry);
  std::vector<uint64_t> storage((bytes + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
  const uapi::IrqRoutingHeader header{.nr = static_cast<uint32_t>(entries.size()), .flags = 0};
  std::memcpy(storage.data(), &header, sizeof(header));
  std::memcpy(reinterpret_cast<uint8_t*>(storage.data()) + sizeof(header), entries.data(),
              entries.size() * sizeof(kvm_irq_routing_entry));
  return storage;
}

}  // namespace cvmbus::hw::kvm
