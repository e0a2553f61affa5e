// KvmEchoGuest: the freestanding VMBus guest (vmbus_guest.c) in a KvmVm's vCPU, as the guest
// of whatever server the VM's KvmSynic serves. Load writes the program and its config block
// into guest memory, as a loader would; Start runs the vCPU at its entry with Hyper-V's CPUID;
// the guest then negotiates, opens the first echo offer of `interface_id`, runs its checked
// round trips, closes, tears down, unloads and exits with a code (VMBUS_GUEST_OK or the step
// that failed). Result() is the result block as the guest keeps it, read while it runs.
//
// Memory map (vmbus_guest_abi.h): the VMM's tables at 0x1000, the stack below 0x80000, the
// image at 1 MiB, SynIC pages, config and result at 2 MiB, the rings at 3 MiB. A confidential
// guest's launch validates [kLaunchFirst, kLaunchEnd) (the caller makes it private).
//
// Threads: any; the vCPU runs on the KvmVm's thread.
#ifndef CVMBUS_PARAVISOR_KVM_KVM_ECHO_GUEST_H_
#define CVMBUS_PARAVISOR_KVM_KVM_ECHO_GUEST_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "guestmem/guest_memory.h"
#include "hw/kvm/kvm_vm.h"
#include "paravisor/bus/guid.h"
#include "paravisor/kvm/vmbus_guest_abi.h"

namespace cvmbus::paravisor {

struct KvmEchoGuestOptions {
  uint32_t version = 0x50003;         // VMBus version to ask for (0x60000: 6.0).
  uint32_t features = 0;              // 6.0 features to ask for (0x10: confidential channels).
  bool require_confidential = false;  // The echo offer must have a confidential ring.
  uint32_t warmup = 10;               // Untimed round trips first.
  uint32_t iterations = 100;          // Timed round trips.
  uint32_t payload_bytes = 64;        // 1..1024.
  Guid interface_id;                  // The echo offer's.
};

class KvmEchoGuest {
 public:
  static constexpr uint64_t kLaunchFirst = 0x1000;
  static constexpr uint64_t kLaunchEnd = VMBUS_GUEST_RINGS + VMBUS_GUEST_RINGS_BYTES;

  // `memory`: the guest's own view (private on a confidential VM). kInvalidArgument for a
  // payload outside 1..1024; the view's error if the image or config cannot be written.
  static absl::StatusOr<std::unique_ptr<KvmEchoGuest>> Load(hw::kvm::KvmVm* vm,
                                                            guestmem::GuestMemory memory,
                                                            KvmEchoGuestOptions options);

  absl::Status Start();
  // The vCPU's exit (the guest's code in `value` for kExitPort), or kDeadlineExceeded.
  absl::StatusOr<hw::kvm::VcpuExit> WaitForExit(absl::Duration timeout);
  // A copy of the result block now.
  absl::StatusOr<vmbus_guest_result> Result() const;
  // "GPADL" for VMBUS_GUEST_FAIL_GPADL, ...; "ok" for VMBUS_GUEST_OK.
  static std::string StepName(uint32_t code);

 private:
  KvmEchoGuest(hw::kvm::KvmVm* vm, guestmem::GuestMemory memory)
      : vm_(vm), memory_(std::move(memory)) {}
  hw::kvm::KvmVm* vm_;
  guestmem::GuestMemory memory_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_KVM_KVM_ECHO_GUEST_H_
