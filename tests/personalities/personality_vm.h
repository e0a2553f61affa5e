// The machine the personality tests run guest kernels on:
//   - 16 MiB of guest memory; on an isolated VM an SEV-SNP model (pages start shared and the
//     guest converts them), the server then has the private view too;
//   - the paravisor's SynIC (trusted) with two VPs, over the private view on an isolated VM;
//   - the VMBus server, with the ServerOptions a test picks (max_version), and its devices on
//     one EventLoop thread;
//   - guest kernels (PersonalityGuests) that come and go on that SynIC: every kernel uses the
//     same SynIC pages (the last four pages), the same two monitor pages (GPN 0x10, shared)
//     and, through GuestRing, ring pages from GPN 0x100 up, so a kexec'd kernel reuses the
//     pages its predecessor gave the host.
//
// The VM fixture in paravisor/testing owns exactly one guest client for its whole life and
// takes no ServerOptions; these tests need kernels that replace each other and servers with a
// version cap.
//
// Threads: OnServer and WaitUntil block the caller until the server's loop ran the function;
// the rest may be called from the test's thread.
#ifndef CVMBUS_TESTS_PERSONALITIES_PERSONALITY_VM_H_
#define CVMBUS_TESTS_PERSONALITIES_PERSONALITY_VM_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "guestmem/memory_backing.h"
#include "hw/isolation/snp_model.h"
#include "hw/uring/event_loop.h"
#include "paravisor/client/guest_personality.h"
#include "paravisor/server/server.h"
#include "paravisor/synic/synic.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::testing {

inline constexpr uint64_t kVmMemoryBytes = uint64_t{16} << 20;
inline constexpr uint64_t kMonitorPagesGpa = 0x10000;  // Two pages.
inline constexpr uint64_t kFirstRingGpn = 0x100;

struct PersonalityVmOptions {
  bool isolated = false;  // An SEV-SNP VM (for guests that run on one).
  uint32_t max_version = protocol::kVersionWin10V6_0;
};

class PersonalityVm {
 public:
  static absl::StatusOr<std::unique_ptr<PersonalityVm>> Create(PersonalityVmOptions options);
  ~PersonalityVm();

  // Runs `fn` on the server's loop thread and waits for it.
  void OnServer(const std::function<void()>& fn);
  // Polls `condition` on the server's loop until it holds or `timeout` passes.
  bool WaitUntil(const std::function<bool()>& condition,
                 std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // A kernel of `personality` on this VM's SynIC, started, not booted.
  absl::StatusOr<std::unique_ptr<PersonalityGuest>> StartKernel(GuestPersonality personality);
  PersonalityGuestOptions KernelOptions() const;

  // Makes `count` pages from `first_gpn` private (SNP page-state change and PVALIDATE) or
  // shared, whatever they were; a no-op on a VM that is not isolated.
  absl::Status SetPagesPrivate(uint64_t first_gpn, uint64_t count, bool make_private);
  // The guest's view of its own pages: private or shared.
  guestmem::GuestMemory View(bool private_view) const;

  bool isolated() const { return snp_ != nullptr; }
  hw::EventLoop* server_loop() { return loop_.get(); }
  VmbusServer& server() { return *server_; }
  ParentBus& bus() { return *bus_; }
  synic::Synic& synic() { return *synic_; }
  std::vector<std::string> TakeLog();

 private:
  PersonalityVm() = default;

  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::unique_ptr<hw::isolation::SnpModel> snp_;
  std::set<uint64_t> private_gpns_;  // Pages converted to private so far.
  std::shared_ptr<synic::Synic> synic_;
  GuestSynicPages synic_pages_;
  std::unique_ptr<hw::EventLoop> loop_;
  std::unique_ptr<VmbusServer> server_;
  std::unique_ptr<ParentBus> bus_;
  std::thread thread_;
  Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
};

// The guest's end of an open channel, as a driver lays it out: two rings of `ring_pages`
// pages each (guest -> host first), in private memory when the offer asks for a confidential
// ring, a GPADL over them and OPENCHANNEL, all through `guest`; then packets and their echoes
// with the ring rules and the channel's interrupt. Both pointers must outlive the GuestRing;
// destroy it before another kernel reuses its pages (it pins them, as a mapping would).
class GuestRing {
 public:
  static absl::StatusOr<std::unique_ptr<GuestRing>> Open(PersonalityVm* vm, PersonalityGuest* guest,
                                                         const protocol::OfferChannel& offer,
                                                         uint64_t first_gpn,
                                                         uint32_t ring_pages = 2,
                                                         uint32_t target_vp = 0);
  // `count` packets (transaction ids from `first_id`), each answered by its echo (same id)
  // within `timeout`.
  absl::Status Echo(uint64_t first_id, int count,
                    std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // CLOSECHANNEL, then the ring's GPADL_TEARDOWN (vmbus_close).
  absl::Status Close();

  uint32_t relid() const { return relid_; }
  uint32_t gpadl_id() const { return gpadl_id_; }
  bool confidential() const { return confidential_; }

 private:
  GuestRing(PersonalityGuest* guest, uint32_t relid, uint32_t gpadl_id, bool confidential,
            ring::OutgoingRing out, ring::IncomingRing in)
      : guest_(guest),
        relid_(relid),
        gpadl_id_(gpadl_id),
        confidential_(confidential),
        out_(std::move(out)),
        in_(std::move(in)) {}
  absl::Status Receive(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout);

  PersonalityGuest* guest_;
  uint32_t relid_;
  uint32_t gpadl_id_;
  bool confidential_;
  ring::OutgoingRing out_;
  ring::IncomingRing in_;
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_TESTS_PERSONALITIES_PERSONALITY_VM_H_
