// The daemon's KVM guest (guest.side GUEST_KVM): a real vCPU running the freestanding VMBus
// guest (paravisor/kvm/vmbus_guest.c) on the paravisor's SynIC. It finds Hyper-V by CPUID,
// programs its SynIC through MSR exits, negotiates `version` (with confidential channels on an
// isolated VM, whose launch has validated the guest's memory: it is made private first), opens
// the first echo channel, runs `round_trips` request/answer round trips checking every byte,
// then closes, tears down, unloads and halts. Doorbells to the echo device and interrupts back
// complete in the kernel (KVM_IOEVENTFD, MSI irqfds).
//
// Threads: Start and Stop from the controlling thread; stats() from any.
#ifndef CVMBUS_PARAVISOR_DAEMON_KVM_GUEST_SIDE_H_
#define CVMBUS_PARAVISOR_DAEMON_KVM_GUEST_SIDE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "hw/kvm/kvm_vm.h"
#include "paravisor/kvm/kvm_echo_guest.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor::daemon {

struct KvmGuestSideOptions {
  bool confidential = true;
  uint32_t version = 0x60000;  // protocol::kVersion...
  uint32_t round_trips = 0;    // 0: as many as it can count (2^32 - 11), until stopped.
  uint32_t payload_bytes = 64;
  // A page the guest's launch must leave alone (the paravisor's own monitor page).
  std::optional<uint64_t> paravisor_page;
};

struct KvmGuestSideStats {
  std::string state = "starting";  // running, exited (its code said ok), failed, stopped.
  vmbus_guest_result result{};     // As the guest keeps it.
  hw::kvm::ExitCounts exits;       // The vCPU's exits to user space so far.
  std::string last_error;          // The failed step, or why the vCPU stopped.
};

class KvmGuestSide {
 public:
  // `vm` must have been created with kvm_guest; its devices must be offered already.
  static absl::StatusOr<std::unique_ptr<KvmGuestSide>> Start(vm::VirtualMachine* vm,
                                                             KvmGuestSideOptions options);
  ~KvmGuestSide() { Stop(); }
  void Stop();  // Stops the vCPU (wherever it is) and joins the waiter.
  KvmGuestSideStats stats() const;

 private:
  KvmGuestSide(vm::VirtualMachine* vm, std::unique_ptr<KvmEchoGuest> guest)
      : vm_(vm), guest_(std::move(guest)) {}
  void Wait();

  vm::VirtualMachine* const vm_;
  std::unique_ptr<KvmEchoGuest> guest_;
  std::thread waiter_;
  mutable Mutex mu_;
  std::optional<absl::StatusOr<hw::kvm::VcpuExit>> exit_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_KVM_GUEST_SIDE_H_
