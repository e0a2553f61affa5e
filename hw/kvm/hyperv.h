// The Hyper-V face of a KvmVm: what a user-space SynIC plugs into (HypervExitHandler), the
// hypercall ABI the KvmVm's hypercall page implements, and the CPUID leaves that make a guest
// see a Hyper-V hypervisor.
//
// KVM_CAP_HYPERV is 0 on this machine kind: KVM emulates none of Hyper-V. A long-mode vCPU of
// a KvmVm sends the guest's rdmsr/wrmsr of the Hyper-V MSR range and its hypercalls to a
// HypervExitHandler on the vCPU thread; the SynIC (above hw/, in paravisor/) implements it.
// Facts: Hyper-V TLFS; Linux include/hyperv/hvgdk_mini.h, arch/x86/include/asm/mshyperv.h.
#ifndef CVMBUS_HW_KVM_HYPERV_H_
#define CVMBUS_HW_KVM_HYPERV_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cvmbus::hw::kvm {

// --- MSRs ----------------------------------------------------------------------------------------

// The synthetic MSRs a long-mode vCPU sends to the handler: [kHypervMsrFirst, kHypervMsrEnd).
// Covers GUEST_OS_ID 0x40000000 ... the crash, reenlightenment and TSC MSRs up to 0x400001ff.
inline constexpr uint32_t kHypervMsrFirst = 0x40000000;
inline constexpr uint32_t kHypervMsrEnd = 0x40000200;
inline constexpr uint32_t kHvMsrGuestOsId = 0x40000000;
inline constexpr uint32_t kHvMsrHypercall = 0x40000001;
inline constexpr uint32_t kHvMsrVpIndex = 0x40000002;
inline constexpr uint64_t kHvHypercallEnable = 1;  // HYPERCALL MSR bit 0; the GPA is 63:12.

// --- Hypercalls ----------------------------------------------------------------------------------

// The control word (RCX): call code 15:0, fast 16, variable header size 26:17, rep count 43:32,
// rep start index 59:48. The result (RAX): status 15:0, reps completed 43:32.
inline constexpr uint64_t kHvHypercallFast = uint64_t{1} << 16;
inline constexpr int kHvRepCountShift = 32;
inline constexpr uint16_t kHvCallPostMessage = 0x005c;
inline constexpr uint16_t kHvCallSignalEvent = 0x005d;
// The control of the one hypercall the page can finish in the kernel: fast HvSignalEvent,
// rep count 0 (and RDX bits 63:32, the flag number and a reserved field, zero).
inline constexpr uint64_t kHvSignalEventFastControl = kHvHypercallFast | kHvCallSignalEvent;

inline constexpr uint64_t kHvStatusSuccess = 0;
inline constexpr uint64_t kHvStatusInvalidHypercallCode = 2;
inline constexpr uint64_t kHvStatusInvalidParameter = 5;
inline constexpr uint64_t kHvStatusInvalidConnectionId = 0x12;
inline constexpr uint64_t kHvStatusInsufficientBuffers = 0x13;

// What a SynIC implements for a KvmVm long-mode vCPU. Every call comes from the vCPU thread,
// one at a time, while the vCPU is stopped in an exit; the guest resumes when it returns. All
// arguments are guest-controlled (untrusted). A call may use the KvmVm (WriteHypercallPage,
// BindSignalEvent, AddMsiIrqFd, ...), but must not call its Stop or destroy it.
class HypervExitHandler {
 public:
  virtual ~HypervExitHandler() = default;

  // rdmsr of `index` in [kHypervMsrFirst, kHypervMsrEnd). An error makes the guest's rdmsr
  // raise #GP (the status is not shown to the guest).
  virtual absl::StatusOr<uint64_t> ReadMsr(uint32_t index) = 0;
  // wrmsr of `value` to `index` in that range; an error raises #GP. The write of the HYPERCALL
  // MSR with its enable bit is where a SynIC calls KvmVm::WriteHypercallPage.
  virtual absl::Status WriteMsr(uint32_t index, uint64_t value) = 0;
  // A hypercall that did not finish in the kernel: RCX, RDX and R8 as the guest passed them to
  // the hypercall page (for a fast HvSignalEvent whose connection id no eventfd is bound to:
  // kHvSignalEventFastControl, the connection id, R8). Returns the guest's RAX.
  virtual uint64_t Hypercall(uint64_t control, uint64_t input, uint64_t output) = 0;
};

// --- CPUID ---------------------------------------------------------------------------------------

// One CPUID leaf as the guest will see it. `indexed`: the leaf has subleaves and this entry is
// subleaf `index` (KVM_CPUID_FLAG_SIGNIFCANT_INDEX); otherwise `index` is ignored.
struct CpuidLeaf {
  uint32_t function = 0;
  uint32_t index = 0;
  bool indexed = false;
  uint32_t eax = 0;
  uint32_t ebx = 0;
  uint32_t ecx = 0;
  uint32_t edx = 0;
};

// The hypervisor leaf range that a guest scans for signatures (Linux: 0x40000000 up to
// 0x40010000 in steps of 0x100). KVM's own leaves there are always dropped; only the caller's
// remain.
inline constexpr uint32_t kHypervisorCpuidFirst = 0x40000000;
inline constexpr uint32_t kHypervisorCpuidLast = 0x4fffffff;

// Feature words of the Hyper-V leaves (TLFS 2.4). The defaults are what Linux needs to pick
// Hyper-V and to run VMBus on a SynIC (linux-guest.md).
struct HypervCpuidFeatures {
  // 0x40000003 EAX, partition privileges (low): bit 1 AccessPartitionReferenceCounter, 2
  // AccessSynicRegs, 5 AccessHypercallMsrs, 6 AccessVpIndex.
  uint32_t privileges_low = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6);
  // 0x40000003 EBX, partition privileges (high): bit 4 PostMessages, 5 SignalEvents.
  uint32_t privileges_high = (1u << 4) | (1u << 5);
  uint32_t features_edx = 0;     // 0x40000003 EDX.
  uint32_t recommendations = 0;  // 0x40000004 EAX (bit 9: deprecate AutoEOI).
  uint32_t max_vps = 1;          // 0x40000005 EAX.
};

// The leaves 0x40000000-0x40000006: the "Microsoft Hv" vendor with max leaf 0x40000006, the
// "Hv#1" interface, a version (0x40000002), `features`, and zeros for 0x40000006.
std::vector<CpuidLeaf> HypervCpuidLeaves(const HypervCpuidFeatures& features = {});

// The CPUID table for a long-mode vCPU: `supported` (KVM_GET_SUPPORTED_CPUID) without any leaf
// in [kHypervisorCpuidFirst, kHypervisorCpuidLast], with each function in `extra` replacing all
// of `supported`'s entries of that function, then leaf 1 adjusted: x2APIC (ECX bit 21) and
// hypervisor-present (ECX bit 31) set, initial APIC id (EBX 31:24) 0. kInvalidArgument if
// `extra` holds a function twice without `indexed` or one (function, index) twice.
absl::StatusOr<std::vector<CpuidLeaf>> MergeCpuid(const std::vector<CpuidLeaf>& supported,
                                                  const std::vector<CpuidLeaf>& extra);

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_HYPERV_H_
