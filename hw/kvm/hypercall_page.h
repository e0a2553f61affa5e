// The hypercall page a KvmVm writes for a long-mode guest (KvmVm::WriteHypercallPage).
//
// VMCALL does not return to the guest on this machine kind (it hangs in KVM_RUN), so the page
// traps with port I/O instead. The ABI is Hyper-V's (TLFS 3.7; Linux hv_do_hypercall and
// hv_do_fast_hypercall8): the guest calls the page's first byte with
//   RCX = control (call code 15:0, fast bit 16, rep count 43:32), RDX = input GPA (or the
//   first fast parameter), R8 = output GPA (or the second); RAX = the result on return.
// The stub clobbers RAX, RDX, R9, R10 and the flags, all within what callers already treat as
// clobbered (RCX, RDX, R8-R11). It has two paths:
//
//   Signal (fast HvSignalEvent): if RCX == kHvSignalEventFastControl (call code 0x5d, fast,
//   rep count 0) and RDX bits 63:32 (flag number, reserved) are 0:
//       mov %edx, %eax; xor %r9d, %r9d; mov $signal_port, %edx; out %eax, (%dx);
//       mov %r9, %rax; ret
//   A 4-byte OUT of the connection id. With an ioeventfd bound to that id (KvmVm::
//   BindSignalEvent) KVM completes it in the kernel, signals the eventfd, and the stub
//   returns R9 = 0 = HV_STATUS_SUCCESS with no exit to user space. With none, the OUT exits:
//   the VMM calls HypervExitHandler::Hypercall(kHvSignalEventFastControl, connection id, R8)
//   and sets R9 to its result (KVM_SET_REGS), which the stub returns.
//
//   Hypercall (everything else):
//       mov %rdx, %r10; mov $hypercall_port, %edx; out %al, (%dx); ret
//   The OUT always exits: the VMM reads RCX, R10 (= the guest's RDX) and R8 (KVM_GET_REGS),
//   calls Hypercall and sets RAX to its result (KVM_SET_REGS) before resuming.
//
// The rest of the page is UD2 instructions (and a final zero byte): a guest that jumps into it
// gets #UD.
#ifndef CVMBUS_HW_KVM_HYPERCALL_PAGE_H_
#define CVMBUS_HW_KVM_HYPERCALL_PAGE_H_

#include <array>
#include <cstddef>
#include <cstdint>

namespace cvmbus::hw::kvm {

inline constexpr size_t kHypercallPageBytes = 4096;

// The page's bytes for these two ports.
std::array<uint8_t, kHypercallPageBytes> HypercallPage(uint16_t hypercall_port,
                                                       uint16_t signal_port);

// The size of the stub at the start of the page (the rest is UD2 padding).
size_t HypercallStubBytes();

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_HYPERCALL_PAGE_H_
