// KvmVmbusMachine: the whole guest boundary with a real vCPU on one side: guest memory, a KVM
// VM over it, the paravisor's SynIC bound to the vCPU (KvmSynic), the VMBus server and an
// echo device on an io_uring loop thread, and the freestanding VMBus guest program
// (vmbus_guest.c) loaded and configured. For the end-to-end test and the benchmark.
//
// Confidential mode: the SEV-SNP model runs under guestmem, the server has private memory and
// a trusted SynIC whose view is the private one, the guest asks for 6.0 with confidential
// channels, and the pages the guest gives the SynIC and the device (SIMP, SIEFP, input page,
// rings) are made private before the vCPU starts, as an SNP guest's launch-validated memory is.
// (KVM itself maps all of guest memory read-write: the views bind the paravisor, not the vCPU.)
#ifndef CVMBUS_TESTS_KVM_VMBUS_KVM_VMBUS_MACHINE_H_
#define CVMBUS_TESTS_KVM_VMBUS_KVM_VMBUS_MACHINE_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "guestmem/memory_backing.h"
#include "hw/isolation/snp_model.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/uring/event_loop.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/kvm/kvm_echo_guest.h"
#include "paravisor/kvm/kvm_synic.h"
#include "paravisor/kvm/vmbus_guest_abi.h"
#include "paravisor/server/server.h"

namespace cvmbus::tests {

struct KvmVmbusOptions {
  bool confidential = false;  // SNP model, 6.0 with confidential channels.
  uint32_t warmup = 10;
  uint32_t iterations = 100;
  uint32_t payload_bytes = 64;
};

struct KvmVmbusRun {
  uint32_t exit_code = 0;
  vmbus_guest_result result{};
  std::string debug_output;
  std::vector<paravisor::KvmSynic::Mark> marks;  // The guest's TIME_REF_COUNT reads.
  hw::kvm::ExitCounts exits;                     // Over the whole run.
  std::vector<std::string> server_log;
  uint64_t echoed = 0;  // Packets the echo device answered.
};

class KvmVmbusMachine {
 public:
  // kUnavailable where there is no /dev/kvm.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KvmVmbusMachine>> Create(
      KvmVmbusOptions options);
  ~KvmVmbusMachine();

  // Starts the vCPU and waits for the guest to exit (or `timeout`).
  [[nodiscard]] absl::StatusOr<KvmVmbusRun> Run(absl::Duration timeout);

 private:
  KvmVmbusMachine() = default;
  KvmVmbusOptions options_;
  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::unique_ptr<hw::isolation::SnpModel> snp_;
  std::unique_ptr<hw::kvm::KvmVm> vm_;
  std::shared_ptr<paravisor::KvmSynic> kvm_synic_;
  std::unique_ptr<paravisor::KvmEchoGuest> guest_;
  std::unique_ptr<hw::EventLoop> loop_;
  std::thread loop_thread_;
  std::unique_ptr<paravisor::VmbusServer> server_;  // Lives and dies on loop_'s thread.
  std::unique_ptr<paravisor::ParentBus> bus_;
  std::unique_ptr<paravisor::EchoDevice> device_;
  Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
};

// The echo device's interface id (the demo's).
paravisor::Guid EchoInterfaceId();

}  // namespace cvmbus::tests

#endif  // CVMBUS_TESTS_KVM_VMBUS_KVM_VMBUS_MACHINE_H_
