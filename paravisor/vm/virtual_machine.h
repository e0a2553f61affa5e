// An emulated SEV-SNP guest memory, a VMBus server and its devices on
// one EventLoop thread, and a GuestClient, which reaches the server only through the
// paravisor's SynIC (its SIMP, SIEFP and hypercall pages are the last four pages of guest
// memory, private on an isolated VM); or, with kvm_guest, a KVM VM whose vCPU is the guest.
//
// On an isolated VM there is also the host's SynIC (untrusted view, not trusted): nothing is
// attached to it, so whatever reaches it is a leak a test can see.
#ifndef CVMBUS_PARAVISOR_VM_VIRTUAL_MACHINE_H_
#define CVMBUS_PARAVISOR_VM_VIRTUAL_MACHINE_H_

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "guestmem/memory_backing.h"
#include "hw/isolation/snp_model.h"
#include "hw/isolation/tdx_model.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/uring/event_loop.h"
#include "paravisor/client/guest_client.h"
#include "paravisor/kvm/kvm_synic.h"
#include "paravisor/server/server.h"
#include "paravisor/synic/synic.h"

namespace cvmbus::paravisor::vm {

struct VmOptions {
  uint64_t memory_bytes = 64ull << 20;
  bool trusted_port = true;  // The server's SynIC is the paravisor's own (else the host's).
  // Hardware isolation: an SNP model (or with `tdx`, a TDX one). Either way every page starts
  // shared and the guest converts what it keeps private (SNP: page-state change + PVALIDATE;
  // TDX: MapGPA + ACCEPT); under TDX that is the fixture's convention, made at creation by
  // converting all of memory to shared, where a real TD starts with its memory private.
  bool isolated = true;
  bool tdx = false;
  // A page the server may hand the guest as its monitor page (ServerOptions); made private on
  // an isolated VM, as a paravisor's own memory is.
  std::optional<uint64_t> server_monitor_page;
  // ServerOptions::on_hvsocket_connect (runs on the server's loop thread).
  std::function<bool(const HvSocketConnect&)> on_hvsocket_connect;
  // ServerOptions::resignal_after_open (off by default: tests count signals).
  std::optional<std::chrono::nanoseconds> resignal_after_open;
  // ServerOptions::max_version.
  uint32_t max_version = protocol::kVersionWin10V6_0;
  // The server's log lines: kept for TakeLog (tests, the demo), or given to the logging
  // facility (base/log.h), rate-limited, as a long-running daemon needs.
  bool capture_log = true;
  // The server loop's thread: pinned to this CPU (unset: wherever the kernel puts it), and its
  // spin before sleeping (EventLoop::Options::busy_poll).
  std::optional<int> server_cpu;
  std::chrono::nanoseconds server_busy_poll{0};
  // The guest is a KVM vCPU (hw/kvm) over the same memory, bound to the paravisor's SynIC
  // (KvmSynic), instead of the in-process GuestClient: guest() must not be used, kvm() runs
  // it. kUnavailable where there is no /dev/kvm. Needs trusted_port.
  bool kvm_guest = false;
};

class VirtualMachine {
 public:
  static absl::StatusOr<std::unique_ptr<VirtualMachine>> Create(VmOptions options = {});
  ~VirtualMachine();

  // Runs `fn` on the server's loop thread and waits for it.
  void OnServer(std::function<void()> fn);
  // Makes [gpa, gpa + len) private (SNP page-state change + PVALIDATE, or TDX MapGPA + ACCEPT);
  // without isolation it stays shared.
  absl::Status MakePrivate(uint64_t gpa, uint64_t len);

  // Servicing: saves the server's state and destroys the server (devices stay; drop them
  // next), then starts a new server on the same loop and port from that state.
  absl::StatusOr<saved::Server> SaveAndStopServer();
  absl::Status StartRestoredServer(const saved::Server& state);
  // Servicing in one step on the loop thread (nothing else on the loop sees a missing server):
  // saves the server's state, calls `drop_devices` (which must destroy every device of the
  // old server), and starts a new server from the state as serialized and parsed back. If the
  // save fails nothing has changed (kFailedPrecondition while a reset waits for devices); if
  // the restore fails the new server starts empty and the error is returned.
  absl::StatusOr<saved::Server> ServiceServerOnLoop(const std::function<void()>& drop_devices);

  hw::EventLoop* server_loop() { return loop_.get(); }
  VmbusServer& server() { return *server_; }
  ParentBus& bus() { return *bus_; }
  GuestClient& guest() { return *guest_; }      // Not with kvm_guest.
  hw::kvm::KvmVm* kvm() { return kvm_.get(); }  // Null unless kvm_guest.
  synic::Synic& synic() { return *synic_; }
  synic::Synic* host_synic() { return host_synic_.get(); }  // Null unless isolated.
  // The guest pages the client gave its SynIC.
  const GuestSynicPages& synic_pages() const { return synic_pages_; }
  const std::shared_ptr<guestmem::MemoryBacking>& memory() const { return backing_; }
  hw::isolation::SnpModel* snp() { return snp_.get(); }  // Null unless isolated under SNP.
  hw::isolation::TdxModel* tdx() { return tdx_.get(); }  // Null unless isolated under TDX.
  std::vector<std::string> TakeLog();
  // Guest memory regions up to this size are registered as the loop's io_uring fixed buffers
  // (which pins and allocates them whole).
  static constexpr uint64_t kMaxPinnedRegionBytes = 512ull << 20;
  // Why guest memory is not the loop's fixed buffers (empty: it is).
  const std::string& fixed_buffer_error() const { return fixed_buffer_error_; }

 private:
  VirtualMachine() = default;
  // Destroys the server (and its bus) and starts a new one from `state` (loop thread).
  absl::Status ReplaceServerOnLoop(const saved::Server& state);
  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::unique_ptr<hw::isolation::SnpModel> snp_;
  std::unique_ptr<hw::isolation::TdxModel> tdx_;
  std::unique_ptr<hw::kvm::KvmVm> kvm_;
  std::shared_ptr<KvmSynic> kvm_synic_;
  std::shared_ptr<synic::Synic> synic_;
  std::shared_ptr<synic::Synic> host_synic_;
  GuestSynicPages synic_pages_;
  std::unique_ptr<hw::EventLoop> loop_;
  std::unique_ptr<VmbusServer> server_;
  std::unique_ptr<ParentBus> bus_;
  std::unique_ptr<GuestClient> guest_;
  std::thread thread_;
  Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
  ServerOptions server_options_;    // Kept for restarts.
  std::string fixed_buffer_error_;  // Set on the loop thread before Create returns.
};

}  // namespace cvmbus::paravisor::vm

#endif  // CVMBUS_PARAVISOR_VM_VIRTUAL_MACHINE_H_
