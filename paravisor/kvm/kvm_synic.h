// KvmSynic: a real KVM vCPU as a guest of the paravisor's SynIC.
//
// It joins the two halves of the guest boundary: hw::kvm::KvmVm (a long-mode vCPU whose
// Hyper-V MSR accesses and hypercalls exit to user space) and synic::Synic (what those MSRs
// and hypercalls mean). The paths, from fastest:
//   - HvSignalEvent on a channel whose device waits on an eventfd: the SynIC registers the
//     event port, this binds its connection id to that eventfd with KVM_IOEVENTFD, and the
//     guest's doorbell completes in the kernel (no exit to user space);
//   - SINT interrupts: an MSI irqfd per vector; a SynIC event is an atomic OR in the guest's
//     SIEFP page and one eventfd write (no exit; the guest EOIs its in-kernel x2APIC);
//   - every other hypercall (HvPostMessage, a signal no eventfd is bound to) and every
//     synthetic MSR access exits to the vCPU thread, which calls the SynIC.
// The hypercall page is written by KvmVm::WriteHypercallPage when the guest enables it.
//
// Measuring: each guest read of TIME_REF_COUNT records a Mark (the value the guest got and
// the VM's exit counts at that moment), so a benchmark can count exits between two reads.
//
// Threads: the exit handler runs on the vCPU thread; the interrupt sink on whatever thread
// raises an interrupt. Create before starting the vCPU; destroy after the vCPU stopped.
#ifndef CVMBUS_PARAVISOR_KVM_KVM_SYNIC_H_
#define CVMBUS_PARAVISOR_KVM_KVM_SYNIC_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/kvm_vm.h"
#include "paravisor/synic/synic.h"

namespace cvmbus::paravisor {

class KvmSynic : public hw::kvm::HypervExitHandler,
                 public synic::InterruptSink,
                 public std::enable_shared_from_this<KvmSynic> {
 public:
  struct Mark {
    uint64_t time_ref_100ns = 0;
    hw::kvm::ExitCounts exits;
  };

  // Creates the SynIC (from `options`, whose on_hypercall_page and on_event_port are taken
  // over; vp_count must be 1: the KvmVm has vCPU 0 only) and makes it `vm`'s Hyper-V. `vm`
  // must outlive the KvmSynic and must not have started its vCPU.
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<KvmSynic>> Create(
      hw::kvm::KvmVm* vm, synic::SynicOptions options);

  const std::shared_ptr<synic::Synic>& synic() const { return synic_; }
  std::vector<Mark> marks() const;
  // Connection ids whose HvSignalEvent completes in the kernel now.
  size_t bound_event_ports() const;

  // HypervExitHandler (vCPU thread).
  absl::StatusOr<uint64_t> ReadMsr(uint32_t index) override;
  absl::Status WriteMsr(uint32_t index, uint64_t value) override;
  uint64_t Hypercall(uint64_t control, uint64_t input, uint64_t output) override;

  // InterruptSink (any thread).
  void Assert(uint32_t vp, uint8_t vector) override;

 private:
  explicit KvmSynic(hw::kvm::KvmVm* vm) : vm_(vm) {}
  void OnEventPort(uint32_t connection_id, const std::shared_ptr<hw::Signal>& target);

  hw::kvm::KvmVm* const vm_;
  std::shared_ptr<synic::Synic> synic_;
  mutable Mutex mu_;
  absl::flat_hash_map<uint8_t, int> irq_fds_ ABSL_GUARDED_BY(mu_);  // vector -> MSI irqfd
  absl::flat_hash_set<uint32_t> bound_ ABSL_GUARDED_BY(mu_);
  std::vector<Mark> marks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_KVM_KVM_SYNIC_H_
