// GsiRoutingTable: the GSI routing of a KvmVm, kept in user space because KVM_SET_GSI_ROUTING
// replaces the whole table. It starts as the table KVM_CREATE_IRQCHIP installs (KVM's
// default_routing: GSI 0-15 to the PIC input and the IOAPIC pin of the same number, GSI 16-23
// to IOAPIC pins), so the irqfds of AddIrqFd keep working, and adds MSI routes at GSIs from
// kFirstMsiGsi up, each sending one vector to one local APIC.
//
// Not thread-safe: the owner serializes (KvmVm under its devices mutex).
#ifndef CVMBUS_HW_KVM_GSI_ROUTING_H_
#define CVMBUS_HW_KVM_GSI_ROUTING_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/statusor.h"

namespace cvmbus::hw::kvm {

class GsiRoutingTable {
 public:
  static constexpr uint32_t kFirstMsiGsi = 24;  // Past the default table's GSIs 0-23.
  static constexpr uint32_t kDefaultRoutes = 16 * 2 + 8;

  // `max_routes`: KVM_CAP_IRQ_ROUTING's value (the most entries KVM accepts).
  explicit GsiRoutingTable(uint32_t max_routes) : max_routes_(max_routes) {}

  // Adds an MSI route (fixed delivery, edge, physical destination `apic_id`) at a new GSI and
  // returns the GSI. kInvalidArgument for a vector below 16 (reserved for exceptions: the
  // local APIC rejects it) or an apic_id above 255 (the MSI address holds 8 bits; larger ids
  // need KVM_CAP_X2APIC_API's extended destinations, which this table does not use);
  // kResourceExhausted if the table would exceed max_routes.
  absl::StatusOr<uint32_t> AddMsi(uint8_t vector, uint32_t apic_id);
  // Drops the MSI route at `gsi` (a no-op for an unknown GSI).
  void Remove(uint32_t gsi);

  // The KVM_SET_GSI_ROUTING argument (uapi::kSetGsiRouting: a struct kvm_irq_routing in its C
  // layout, see kvm_uapi.h, and its entries) in storage suitably aligned for it.
  std::vector<uint64_t> Encode() const;
  uint32_t size() const { return kDefaultRoutes + static_cast<uint32_t>(msi_.size()); }

 private:
  struct Msi {
    uint8_t vector;
    uint32_t apic_id;
  };
  const uint32_t max_routes_;
  uint32_t next_gsi_ = kFirstMsiGsi;
  std::map<uint32_t, Msi> msi_;  // By GSI.
};

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_GSI_ROUTING_H_
