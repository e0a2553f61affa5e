// KVM ABI that the system headers get wrong for C++, declared here instead.
//
// Debian 12's uapi headers (Linux 6.1) declare the flexible arrays of struct kvm_cpuid2 and
// struct kvm_irq_routing with __DECLARE_FLEX_ARRAY, which wraps the array in an anonymous struct
// after an empty struct member. An empty struct has size 0 in C but 1 in C++, so compiled as
// C++ the entries move (offset 12 in kvm_cpuid2, 16 in kvm_irq_routing, instead of 8) and the
// ioctl numbers, which encode sizeof, change: KVM answers EINVAL (KVM_GET_SUPPORTED_CPUID) or
// ENOTTY (KVM_SET_GSI_ROUTING). (Linux 6.2 fixed the macro for C++.) These are the C layouts;
// the entry structs themselves (kvm_cpuid_entry2, kvm_irq_routing_entry) are unaffected.
#ifndef CVMBUS_HW_KVM_KVM_UAPI_H_
#define CVMBUS_HW_KVM_KVM_UAPI_H_

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace cvmbus::hw::kvm::uapi {

// struct kvm_cpuid2 without its entries, which follow at offset 8.
struct Cpuid2Header {
  uint32_t nent;
  uint32_t padding;
};
// struct kvm_irq_routing without its entries, which follow at offset 8.
struct IrqRoutingHeader {
  uint32_t nr;
  uint32_t flags;
};
static_assert(sizeof(Cpuid2Header) == 8 && sizeof(IrqRoutingHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && alignof(kvm_cpuid_entry2) <= 8);
static_assert(sizeof(kvm_irq_routing_entry) == 48 && alignof(kvm_irq_routing_entry) <= 8);

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
inline constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);
static_assert(kGetSupportedCpuid == 0xc008ae05);
static_assert(kSetCpuid2 == 0x4008ae90);
static_assert(kSetGsiRouting == 0x4008ae6a);

}  // namespace cvmbus::hw::kvm::uapi

#endif  // CVMBUS_HW_KVM_KVM_UAPI_H_
