// KvmVm: a minimal, real KVM virtual machine whose memory is a guestmem backing, with the two
// standard doorbell paths between a guest and a user-space device:
//   - ioeventfd (KVM_IOEVENTFD): a guest write to a port or MMIO address signals an eventfd in
//     the kernel, without an exit to user space; a device thread waits on that eventfd.
//   - irqfd (KVM_IRQFD): our write(2) to an eventfd raises a guest interrupt line (GSI).
//
// Memory. Each region of the backing becomes one KVM memory slot whose userspace_addr is the
// region's host address, so the guest and guestmem share the same pages: a guest store is
// visible through GuestMemory and RingMemory at once, and the other way round. Every backing
// type works (anonymous memory is this process's own, which is all KVM needs; a memfd is
// needed only for RingMemory's double mapping or for another process). KVM maps every region
// read-write: guestmem's per-page view state (MemoryBacking::SetAccess) does NOT bind the guest.
// The backing is kept alive until the VM is gone.
//
// Interrupts. Create makes the in-kernel irqchip (KVM_CREATE_IRQCHIP: the 8259 PIC pair, an
// IOAPIC, a local APIC per vCPU). Its default routing connects GSI 0-15 to the PIC inputs (and
// the IOAPIC pins) of the same number and GSI 16-23 to IOAPIC pins only. No PIT is created, so
// no timer interrupt arrives unasked. With the in-kernel irqchip a guest HLT waits in the kernel
// for an interrupt and never exits to user space: the host must never wait for an HLT exit.
//
// vCPU. One vCPU, started in real mode, runs KVM_RUN on a thread of its own. The run ends when
// the guest writes the exit port, when the guest or KVM fails (a typed VcpuError), or on Stop.
// Stop sets kvm_run.immediate_exit and sends kKickSignal to the vCPU thread: a KVM_RUN that is
// running returns EINTR at once, one about to start returns EINTR without entering the guest,
// so a vCPU halted in HLT or spinning in the guest stops at once (a whole teardown took
// 0.2-5 ms here).
//
// Process-wide effect: the first StartVcpu installs a no-op handler for kKickSignal unless the
// process already handles that signal (any handler serves: KVM_RUN is never restarted). Code
// that later replaces it with SIG_IGN or SIG_DFL breaks Stop.
//
// Threads. All members may be called from any thread. The vCPU thread is owned by the KvmVm;
// the destructor stops and joins it.
#ifndef CVMBUS_HW_KVM_KVM_VM_H_
#define CVMBUS_HW_KVM_KVM_VM_H_

#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/mutex.h"
#include "guestmem/memory_backing.h"
#include "hw/kvm/unique_fd.h"

struct kvm_run;

namespace cvmbus::hw::kvm {

// The signal Stop sends to a vCPU thread to interrupt KVM_RUN.
inline constexpr int kKickSignal = SIGUSR1;

// The ports a RealModeEntry uses unless told otherwise: QEMU's isa-debug-exit and the
// Bochs/QEMU debug console.
inline constexpr uint16_t kDefaultExitPort = 0x501;
inline constexpr uint16_t kDefaultDebugPort = 0xe9;

struct KvmOptions {
  // The KVM device. Tests point it elsewhere to see how a missing or wrong device is reported.
  std::string device_path = "/dev/kvm";
};

// Where a real-mode vCPU starts, and the two ports the run loop handles itself.
struct RealModeEntry {
  uint16_t cs = 0;  // Code segment selector; the segment base is cs * 16.
  uint16_t ip = 0;
  uint16_t ds = 0;  // Selector loaded into ds, es, fs, gs and ss.
  uint16_t sp = 0;
  // An OUT of 1, 2 or 4 bytes here ends the run with VcpuExit::kExitPort and the value.
  uint16_t exit_port = kDefaultExitPort;
  // Bytes OUT here are appended to debug_output().
  uint16_t debug_port = kDefaultDebugPort;
};

// How a vCPU run ended without an error.
struct VcpuExit {
  enum class Reason {
    kExitPort,  // The guest wrote `value` to the exit port.
    kHalted,    // KVM_EXIT_HLT; only a VM without an in-kernel irqchip sees it.
    kStopped,   // Stop() (or the destructor) ended the run.
  };
  Reason reason = Reason::kStopped;
  uint32_t value = 0;  // kExitPort: the value written, zero-extended.
};

// How a vCPU run failed, attached to its absl::Status (GetVcpuError reads it back).
enum class VcpuError {
  kShutdown,        // KVM_EXIT_SHUTDOWN: a triple fault (kAborted).
  kUnexpectedIo,    // Port I/O to a port no one handles (kAborted).
  kUnexpectedMmio,  // An access outside guest memory and every MMIO ioeventfd (kAborted).
  kInternalError,   // KVM_EXIT_INTERNAL_ERROR: KVM could not emulate or deliver (kInternal).
  kFailEntry,       // KVM_EXIT_FAIL_ENTRY: the CPU refused the vCPU state (kInternal).
  kUnknownExit,     // An exit reason the run loop does not handle (kInternal).
  kRunFailed,       // KVM_RUN itself failed (kInternal).
};
std::string_view VcpuErrorName(VcpuError error);
std::optional<VcpuError> GetVcpuError(const absl::Status& status);

// A port (KVM's PIO bus) or a guest physical address outside guest memory (the MMIO bus).
struct PioAddress {
  uint16_t port = 0;
};
struct MmioAddress {
  uint64_t gpa = 0;
};

struct IoEventOptions {
  // Width of the guest write that matches: 1, 2, 4 or 8 bytes, or 0 for any width.
  uint32_t len = 0;
  // If set, only a write of exactly this value signals (needs len != 0).
  std::optional<uint64_t> datamatch;
};

class KvmVm {
 public:
  // Opens options.device_path, checks the API version (12) and the capabilities used here,
  // creates a VM (type 0), registers every region of `backing` as a memory slot and creates
  // the in-kernel irqchip. Errors: kUnavailable if the device does not exist (no KVM here);
  // kPermissionDenied if it may not be opened; kFailedPrecondition if it is not a KVM device,
  // speaks another API version or lacks a capability; kInvalidArgument for a null backing or a
  // region KVM cannot map; kResourceExhausted for more regions than memory slots; kInternal for
  // other KVM failures. Every message names the device and the operation.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KvmVm>> Create(
      std::shared_ptr<guestmem::MemoryBacking> backing, KvmOptions options = {});

  // Stops and joins the vCPU thread (see Stop), then closes every descriptor and mapping.
  ~KvmVm();
  KvmVm(const KvmVm&) = delete;
  KvmVm& operator=(const KvmVm&) = delete;

  // Makes an eventfd that KVM signals on each matching guest write (KVM_IOEVENTFD) and returns
  // it. The KvmVm owns the descriptor, which stays valid until the KvmVm is destroyed; it is
  // non-blocking: wait with poll(2), then read(2) the 8-byte count of writes since the last
  // read. A matching write completes in the kernel: the guest does not exit. Errors:
  // kInvalidArgument for a bad len, datamatch without len, or an MMIO address inside guest
  // memory (guest RAM writes never trap); kAlreadyExists if KVM already has that registration.
  [[nodiscard]] absl::StatusOr<int> AddIoEventFd(PioAddress address, IoEventOptions options = {});
  [[nodiscard]] absl::StatusOr<int> AddIoEventFd(MmioAddress address, IoEventOptions options = {});

  // Makes an eventfd wired to guest interrupt line `gsi` (KVM_IRQFD) and returns it: each
  // write(2) of a nonzero 8-byte count pulses the line (an edge for the PIC). Owned by the
  // KvmVm as above. A line may have several irqfds. Errors: kInvalidArgument (a GSI KVM
  // rejects).
  [[nodiscard]] absl::StatusOr<int> AddIrqFd(uint32_t gsi);

  // Creates vCPU 0 in real mode at `entry` (interrupts disabled, IF = 0) and starts its run
  // thread. The guest's memory must hold its code first. kFailedPrecondition if a vCPU was
  // already started.
  [[nodiscard]] absl::Status StartVcpu(const RealModeEntry& entry);

  // Waits up to `timeout` for the run to end and returns how it ended (again on every call).
  // kDeadlineExceeded if the vCPU is still running; kFailedPrecondition if none was started;
  // a failed run returns its status (GetVcpuError tells the kind).
  [[nodiscard]] absl::StatusOr<VcpuExit> WaitForExit(absl::Duration timeout);

  // Ends the run if it has not ended, joins the vCPU thread and returns how the run ended
  // (kStopped if Stop ended it). A vCPU in KVM_RUN (halted, or spinning in the guest) is kicked
  // out at once; Stop waits only for the kernel to return from KVM_RUN. kFailedPrecondition if
  // no vCPU was started.
  absl::StatusOr<VcpuExit> Stop();

  // The bytes the guest has written to the debug port so far.
  std::string debug_output() const;

  const std::shared_ptr<guestmem::MemoryBacking>& backing() const { return backing_; }

 private:
  KvmVm(std::shared_ptr<guestmem::MemoryBacking> backing, std::string device_path, UniqueFd kvm_fd,
        UniqueFd vm_fd, size_t run_bytes)
      : backing_(std::move(backing)),
        device_path_(std::move(device_path)),
        kvm_fd_(std::move(kvm_fd)),
        vm_fd_(std::move(vm_fd)),
        run_bytes_(run_bytes) {}

  absl::StatusOr<int> AddIoEventFdAt(bool pio, uint64_t address, const IoEventOptions& options);
  absl::Status SetUpVcpu(const RealModeEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  // The vCPU thread's body and its KVM_RUN loop.
  void RunVcpu();
  absl::StatusOr<VcpuExit> RunLoop();
  // A KVM_EXIT_IO: the exit port's VcpuExit, nullopt to keep running, or an error.
  absl::StatusOr<std::optional<VcpuExit>> HandleIo();
  // "cs:ip ssss:iiii" of the vCPU, for error messages; called on the vCPU thread.
  std::string Where() const;
  absl::Status Error(VcpuError error, std::string_view detail) const;

  // Declared first: destroyed last, after the VM that maps its pages.
  const std::shared_ptr<guestmem::MemoryBacking> backing_;
  const std::string device_path_;
  UniqueFd kvm_fd_;         // The device (/dev/kvm).
  UniqueFd vm_fd_;          // The VM.
  const size_t run_bytes_;  // Size of the kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE).

  Mutex control_mu_;  // Serializes Add*, StartVcpu and Stop.
  std::vector<UniqueFd> event_fds_ ABSL_GUARDED_BY(control_mu_);  // ioeventfds and irqfds.
  UniqueFd vcpu_fd_ ABSL_GUARDED_BY(control_mu_);
  std::thread thread_ ABSL_GUARDED_BY(control_mu_);
  std::atomic<bool> started_{false};  // Written under control_mu_.
  // The vCPU's kvm_run page. Set (and entry_ written) before the thread starts, unmapped after
  // it is joined; the thread reads it, Stop writes only immediate_exit (atomically).
  kvm_run* run_ = nullptr;
  int run_fd_ = -1;  // vcpu_fd_'s value, for the thread (which must not take control_mu_).
  RealModeEntry entry_;
  std::atomic<bool> stop_requested_{false};

  mutable Mutex result_mu_;
  std::condition_variable_any result_cv_;  // Signalled when finished_ becomes true.
  bool finished_ ABSL_GUARDED_BY(result_mu_) = false;
  absl::StatusOr<VcpuExit> result_ ABSL_GUARDED_BY(result_mu_);
  std::string debug_output_ ABSL_GUARDED_BY(result_mu_);
};

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_KVM_VM_H_
