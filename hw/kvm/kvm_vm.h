// KvmVm: a minimal, real KVM virtual machine whose memory is a guestmem backing, with the two
// standard doorbell paths between a guest and a user-space device:
//   - ioeventfd (KVM_IOEVENTFD): a guest write to a port or MMIO address signals an eventfd in
//     the kernel, without an exit to user space; a device thread waits on that eventfd.
//   - irqfd (KVM_IRQFD): our write(2) to an eventfd raises a guest interrupt line (GSI), or
//     sends an MSI vector to the local APIC (AddMsiIrqFd).
// and, for a 64-bit long-mode guest, the Hyper-V interface a user-space SynIC needs: Hyper-V
// MSRs and hypercalls as calls to a HypervExitHandler (hyperv.h), a hypercall page whose fast
// HvSignalEvent completes in the kernel through an ioeventfd (hypercall_page.h), and the
// Hyper-V CPUID leaves.
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
// the IOAPIC pins) of the same number and GSI 16-23 to IOAPIC pins only; AddMsiIrqFd adds MSI
// routes at GSI 24 and up and keeps the default ones (gsi_routing.h). No PIT is created, so no
// timer interrupt arrives unasked. With the in-kernel irqchip a guest HLT waits in the kernel
// for an interrupt and never exits to user space: the host must never wait for an HLT exit.
// The local APIC is KVM's: a long-mode guest may switch it to x2APIC (CPUID says it can) and
// its MSRs (0x1b, 0x800-0x8ff) stay in the kernel.
//
// vCPU. One vCPU, started in real mode or in 64-bit long mode, runs KVM_RUN on a thread of its
// own. The run ends when the guest writes the exit port, when the guest or KVM fails (a typed
// VcpuError), or on Stop. Stop sets kvm_run.immediate_exit and sends kKickSignal to the vCPU
// thread: a KVM_RUN that is running returns EINTR at once, one about to start returns EINTR
// without entering the guest, so a vCPU halted in HLT or spinning in the guest stops at once
// (a whole teardown took 0.2-5 ms here).
//
// Process-wide effect: the first StartVcpu installs a no-op handler for kKickSignal unless the
// process already handles that signal (any handler serves: KVM_RUN is never restarted). Code
// that later replaces it with SIG_IGN or SIG_DFL breaks Stop.
//
// Threads. All members may be called from any thread. The vCPU thread is owned by the KvmVm;
// the destructor stops and joins it. The HypervExitHandler runs on the vCPU thread and may call
// every member except Stop (kFailedPrecondition there) and the destructor.
#ifndef CVMBUS_HW_KVM_KVM_VM_H_
#define CVMBUS_HW_KVM_KVM_VM_H_

#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
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
#include "hw/kvm/gsi_routing.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/unique_fd.h"

struct kvm_run;

namespace cvmbus::hw::kvm {

// The signal Stop sends to a vCPU thread to interrupt KVM_RUN.
inline constexpr int kKickSignal = SIGUSR1;

// The ports a RealModeEntry uses unless told otherwise: QEMU's isa-debug-exit and the
// Bochs/QEMU debug console.
inline constexpr uint16_t kDefaultExitPort = 0x501;
inline constexpr uint16_t kDefaultDebugPort = 0xe9;
// The ports of the hypercall page (hypercall_page.h), unless KvmOptions say otherwise.
inline constexpr uint16_t kDefaultHypercallPort = 0x4e0;
inline constexpr uint16_t kDefaultSignalPort = 0x4e4;

struct KvmOptions {
  // The KVM device. Tests point it elsewhere to see how a missing or wrong device is reported.
  std::string device_path = "/dev/kvm";
  // The hypercall page's two ports: every OUT to hypercall_port is a hypercall for the
  // HypervExitHandler; a 4-byte OUT to signal_port is a fast HvSignalEvent of that connection
  // id (completed in the kernel where BindSignalEvent bound the id). They must differ from each
  // other and from the in-kernel irqchip's ports (0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1), and no
  // AddIoEventFd may claim them.
  uint16_t hypercall_port = kDefaultHypercallPort;
  uint16_t signal_port = kDefaultSignalPort;
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

// Where a 64-bit long-mode vCPU starts. The VMM writes a GDT (with a TSS) and page tables that
// identity-map every GPA below max(4 GiB, the end of guest memory rounded up to 1 GiB) with
// 2 MiB pages at tables_gpa (layout: long_mode.h), and starts the vCPU at CPL 0 with
// CR0 = PE|MP|ET|NE|WP|PG, CR4 = PAE, EFER = LME|LMA, cs = kLongModeCodeSelector (0x08),
// ds = es = fs = gs = ss = kLongModeDataSelector (0x10), tr = kLongModeTssSelector, an empty
// IDT (base 0, limit 0: the guest loads its own before it enables interrupts or faults),
// RFLAGS = 2 (IF = 0), the other general registers 0.
//
// Before the first instruction it also sets the CPUID table (MergeCpuid(KVM's supported
// leaves, cpuid)) and sends rdmsr/wrmsr of [kHypervMsrFirst, kHypervMsrEnd) to the
// HypervExitHandler (KVM_CAP_X86_USER_SPACE_MSR with an MSR filter denying that range, so KVM
// never handles those MSRs itself; other MSRs KVM does not know raise #GP).
struct LongModeEntry {
  uint64_t rip = 0;  // The entry point, a GPA (= its linear address).
  uint64_t rsp = 0;  // The initial stack pointer.
  // Where the VMM writes its tables: KvmVm::LongModeTablesBytes() bytes, 4 KiB-aligned, inside
  // guest memory. The guest must not overwrite them while it uses them.
  uint64_t tables_gpa = 0x1000;
  // Leaves added to (or replacing) KVM's supported ones, e.g. HypervCpuidLeaves().
  std::vector<CpuidLeaf> cpuid;
  uint16_t exit_port = kDefaultExitPort;    // As in RealModeEntry.
  uint16_t debug_port = kDefaultDebugPort;  // As in RealModeEntry.
};

// How many times KVM_RUN returned to user space, by kind, since Create (MSR exits exist for a
// long-mode vCPU only).
struct ExitCounts {
  uint64_t msr = 0;              // KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR.
  uint64_t hypercall = 0;        // The hypercall port.
  uint64_t signal_fallback = 0;  // The signal port: a fast HvSignalEvent no eventfd matched.
  uint64_t other = 0;            // Everything else: debug port, exit port, kicks, errors.
  uint64_t total() const { return msr + hypercall + signal_fallback + other; }
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

  // Makes an eventfd whose write(2) sends `vector` to the local APIC `apic_id` as an MSI
  // (fixed delivery, edge, physical destination) and returns it, owned by the KvmVm as above:
  // a new GSI routed as that MSI (KVM_SET_GSI_ROUTING with the whole table, gsi_routing.h) and
  // a KVM_IRQFD on it. The guest's IDT handler for `vector` runs once its APIC accepts it (it
  // must EOI). Errors: kInvalidArgument for a vector below 16 or an apic_id above 255;
  // kFailedPrecondition if KVM lacks KVM_CAP_IRQ_ROUTING; kResourceExhausted past KVM's route
  // limit. On an error the routing table is what it was.
  [[nodiscard]] absl::StatusOr<int> AddMsiIrqFd(uint8_t vector, uint32_t apic_id = 0);

  // Makes a fast HvSignalEvent of `connection_id` from the hypercall page signal `eventfd` in
  // the kernel, with no exit to user space: KVM_IOEVENTFD on the signal port, 4 bytes,
  // datamatch connection_id. The KvmVm keeps a duplicate of `eventfd` (dup(2)) for as long as
  // the binding lasts, and never closes the caller's descriptor: the caller may close its own
  // at any time (KVM holds its own reference to the eventfd file too). Errors:
  // kAlreadyExists if the id is bound; kInvalidArgument if `eventfd` is not an eventfd.
  [[nodiscard]] absl::Status BindSignalEvent(uint32_t connection_id, int eventfd);
  // Removes that binding: later signals of the id exit to user space and reach
  // HypervExitHandler::Hypercall. A signal the guest is making at this moment may still reach
  // the eventfd. kNotFound if the id is not bound.
  [[nodiscard]] absl::Status UnbindSignalEvent(uint32_t connection_id);

  // Writes the hypercall page (hypercall_page.h) for this VM's ports over the guest page at
  // `gpa`, which must be 4 KiB-aligned guest memory; the page's old contents are lost (no
  // overlay is kept to restore). A SynIC calls it when the guest enables the HYPERCALL MSR.
  // The guest must not be running code in that page meanwhile (true inside a WriteMsr call).
  [[nodiscard]] absl::Status WriteHypercallPage(uint64_t gpa);

  // The handler of the Hyper-V MSRs and hypercalls of a long-mode vCPU; null (the default):
  // those MSRs raise #GP and hypercalls return HV_STATUS_INVALID_HYPERCALL_CODE. `handler` is
  // not owned and must outlive the vCPU run (until Stop or the destructor returns).
  // kFailedPrecondition once a vCPU was started.
  [[nodiscard]] absl::Status SetHypervExitHandler(HypervExitHandler* handler);

  // Creates vCPU 0 in real mode at `entry` (interrupts disabled, IF = 0) and starts its run
  // thread. The guest's memory must hold its code first. kFailedPrecondition if a vCPU was
  // already started. A real-mode vCPU gets KVM's default CPUID and no MSR exits. Either
  // StartVcpu may be called again after it failed.
  [[nodiscard]] absl::Status StartVcpu(const RealModeEntry& entry);

  // Creates vCPU 0 in 64-bit long mode at `entry` (see LongModeEntry) and starts its run
  // thread. Errors: kFailedPrecondition if a vCPU was already started or KVM lacks
  // KVM_CAP_X86_USER_SPACE_MSR or KVM_CAP_EXT_CPUID; kInvalidArgument for tables outside guest
  // memory or misaligned, guest memory beyond 512 GiB, an exit or debug port that is one of the
  // hypercall page's, or CPUID leaves MergeCpuid refuses; kInternal when KVM refuses the state.
  [[nodiscard]] absl::Status StartVcpu(const LongModeEntry& entry);

  // The size of the tables a long-mode start writes at LongModeEntry::tables_gpa, for this
  // VM's memory.
  uint64_t LongModeTablesBytes() const;

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

  // The exits so far (relaxed loads: each count is exact, the four are not one snapshot).
  ExitCounts exit_counts() const;

  const std::shared_ptr<guestmem::MemoryBacking>& backing() const { return backing_; }

 private:
  // The ports the run loop handles itself, from the entry.
  struct Ports {
    uint16_t exit_port = kDefaultExitPort;
    uint16_t debug_port = kDefaultDebugPort;
  };

  KvmVm(std::shared_ptr<guestmem::MemoryBacking> backing, std::string device_path, UniqueFd kvm_fd,
        UniqueFd vm_fd, size_t run_bytes, const KvmOptions& options, uint32_t max_routes)
      : backing_(std::move(backing)),
        device_path_(std::move(device_path)),
        kvm_fd_(std::move(kvm_fd)),
        vm_fd_(std::move(vm_fd)),
        run_bytes_(run_bytes),
        hypercall_port_(options.hypercall_port),
        signal_port_(options.signal_port),
        routing_(max_routes) {}

  absl::StatusOr<int> AddIoEventFdAt(bool pio, uint64_t address, const IoEventOptions& options);
  // Creates vCPU 0 and maps its kvm_run (run_, run_fd_), unless an earlier start did.
  absl::Status CreateVcpu() ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  absl::Status SetUpRealMode(const RealModeEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  absl::Status SetUpLongMode(const LongModeEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  absl::Status EnableHypervMsrExits() ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  absl::Status SetCpuid(const std::vector<CpuidLeaf>& extra)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  // The common part of both StartVcpu: checks, `set_up`, then the thread.
  template <typename SetUp>
  absl::Status Start(const Ports& ports, SetUp set_up) ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_);
  // KVM_SET_GSI_ROUTING with routing_.
  absl::Status SetRoutingLocked(std::string_view why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(devices_mu_);
  // The vCPU thread's body and its KVM_RUN loop.
  void RunVcpu();
  absl::StatusOr<VcpuExit> RunLoop();
  // A KVM_EXIT_IO: the exit port's VcpuExit, nullopt to keep running, or an error.
  absl::StatusOr<std::optional<VcpuExit>> HandleIo();
  // The hypercall page's two exits; on the vCPU thread.
  absl::Status HandleHypercallPort();
  absl::Status HandleSignalPort(uint32_t connection_id);
  // KVM_EXIT_X86_RDMSR / WRMSR: answers in run_->msr.
  void HandleMsr(bool write);
  // The vCPU's position, for error messages ("cs:ip ssss:iiii ..." in real mode, "rip ..." in
  // long mode); called on the vCPU thread.
  std::string Where() const;
  absl::Status Error(VcpuError error, std::string_view detail) const;

  // Declared first: destroyed last, after the VM that maps its pages.
  const std::shared_ptr<guestmem::MemoryBacking> backing_;
  const std::string device_path_;
  UniqueFd kvm_fd_;         // The device (/dev/kvm).
  UniqueFd vm_fd_;          // The VM.
  const size_t run_bytes_;  // Size of the kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE).

  const uint16_t hypercall_port_;
  const uint16_t signal_port_;

  // Serializes StartVcpu, SetHypervExitHandler and Stop. Stop holds it while it joins the vCPU
  // thread, so nothing the vCPU thread calls (a HypervExitHandler's calls) may take it.
  Mutex control_mu_;
  UniqueFd vcpu_fd_ ABSL_GUARDED_BY(control_mu_);
  std::thread thread_ ABSL_GUARDED_BY(control_mu_);
  std::atomic<bool> started_{false};  // Written under control_mu_.
  // Set before the thread starts (under control_mu_), read by the thread; then constant.
  HypervExitHandler* handler_ = nullptr;
  // The vCPU's kvm_run page. Set (and ports_ written) before the thread starts, unmapped after
  // it is joined; the thread reads it, Stop writes only immediate_exit (atomically).
  kvm_run* run_ = nullptr;
  int run_fd_ = -1;  // vcpu_fd_'s value, for the thread (which must not take control_mu_).
  Ports ports_;
  std::atomic<bool> stop_requested_{false};

  // Serializes the doorbell registrations (Add*, Bind/Unbind). Never held across a vCPU wait.
  Mutex devices_mu_;
  std::vector<UniqueFd> event_fds_ ABSL_GUARDED_BY(devices_mu_);  // ioeventfds and irqfds.
  // KVM's routing table as we last set it; max routes 0 if KVM lacks KVM_CAP_IRQ_ROUTING.
  GsiRoutingTable routing_ ABSL_GUARDED_BY(devices_mu_);
  // Bound signal events: connection id -> the duplicate of the caller's eventfd.
  std::map<uint32_t, UniqueFd> signal_events_ ABSL_GUARDED_BY(devices_mu_);

  // Written by the vCPU thread only; relaxed (statistics).
  std::atomic<uint64_t> msr_exits_{0};
  std::atomic<uint64_t> hypercall_exits_{0};
  std::atomic<uint64_t> signal_fallback_exits_{0};
  std::atomic<uint64_t> other_exits_{0};

  mutable Mutex result_mu_;
  std::condition_variable_any result_cv_;  // Signalled when finished_ becomes true.
  bool finished_ ABSL_GUARDED_BY(result_mu_) = false;
  absl::StatusOr<VcpuExit> result_ ABSL_GUARDED_BY(result_mu_);
  std::string debug_output_ ABSL_GUARDED_BY(result_mu_);
};

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_KVM_VM_H_
