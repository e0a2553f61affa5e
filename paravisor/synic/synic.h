// Synic: the paravisor's synthetic interrupt controller, the one boundary between a guest and
// the VMBus server.
//
// Guest side (what a guest kernel does, through an injected transport: a KVM vCPU's MSR and
// hypercall exits, or an in-process guest calling these members directly):
//   - ReadMsr/WriteMsr: the synthetic MSRs of linux-guest.md with the architectural reset
//     values (everything 0, SINTs masked, SVERSION 1). A write with reserved bits set, a write
//     to a read-only MSR, an unmasked SINT with a vector below 16, a page that is not guest
//     memory in this SynIC's view, or an MSR outside the set is an error: the guest gets #GP.
//   - Hypercall: HvPostMessage (0x5c, slow) and HvSignalEvent (0x5d, fast or slow), with the
//     HV_STATUS results guests act on (hv_abi.h). Anything else: INVALID_HYPERCALL_CODE.
//     Calls before the guest enabled its hypercall page get ACCESS_DENIED (a real guest would
//     have no page to call through).
//
// Host side: ServerPort (server_port.h) for the VMBus server.
//
// Message slots follow the TLFS protocol exactly: the payload, size and flags are written
// first and message_type last (a release store); a busy slot gets message_pending set and the
// message waits for the guest's EOM; after each delivery message_pending tells whether more
// are queued. Messages wait (never dropped) while SCONTROL, SIMP or the SINT is off, and go
// out when the guest turns them on. Each SINT queues at most `max_queued_per_sint` messages.
//
// Event flags: a channel event sets its bit in the SIEFP block with an atomic OR and
// interrupts the VP only on a 0 -> 1 edge (a set bit means the guest has not looked yet). An
// event while SCONTROL or SIEFP is off is lost, as on hardware, and counted.
//
// Memory: SIMP, SIEFP and hypercall input pages are read and written through `memory`, the
// view this SynIC is trusted with: the private view for the paravisor's SynIC on a
// confidential VM (so a guest cannot point it at pages the host can see), the untrusted view
// for the host's SynIC. The hypercall input page is copied once, then validated.
//
// Interrupts leave through an InterruptSink (a KVM vCPU's irqfd, or a callback for an
// in-process guest), always called without the SynIC's lock held.
//
// Threads: every member may be called from any thread. The Synic is shared-owned
// (Create returns a shared_ptr): work it posts to the server's loop holds a weak reference.
#ifndef CVMBUS_PARAVISOR_SYNIC_SYNIC_H_
#define CVMBUS_PARAVISOR_SYNIC_SYNIC_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "paravisor/synic/hv_abi.h"
#include "paravisor/synic/server_port.h"

namespace cvmbus::paravisor::synic {

// How a SINT interrupt reaches a VP.
class InterruptSink {
 public:
  virtual ~InterruptSink() = default;
  // Asserts `vector` on VP `vp`. Called without any SynIC lock, from any thread (the guest's
  // own when it unmasks or EOMs, the server's, a device's); must not block. It may call back
  // into the Synic.
  virtual void Assert(uint32_t vp, uint8_t vector) = 0;
};

struct SynicOptions {
  std::string name = "synic";  // For messages: "synic 'paravisor' VP 0: ...".
  guestmem::GuestMemory memory;
  uint32_t vp_count = 1;
  bool trusted = true;  // The paravisor's own SynIC (ServerPort::trusted).
  size_t max_queued_per_sint = 64;
  size_t max_inbound = 64;  // Guest posts waiting for a server that stopped accepting.
  // The guest enabled its hypercall page at `gpa`: the VMM overlays its stub there (a KVM
  // VM writes the page; an in-process guest needs none). An error refuses the MSR write.
  std::function<absl::Status(uint64_t gpa)> on_hypercall_page;
  // An event port was registered (target set) or removed (null): a VMM may bind the
  // connection id to a kernel doorbell so HvSignalEvent never leaves the kernel. Called
  // without the SynIC's lock.
  std::function<void(uint32_t connection_id, const std::shared_ptr<hw::Signal>& target)>
      on_event_port;
};

struct SynicStats {
  uint64_t messages_posted = 0;     // HvPostMessage calls that returned success.
  uint64_t messages_delivered = 0;  // Written into a slot.
  uint64_t messages_waited = 0;     // Found their slot busy (message_pending set).
  uint64_t events_set = 0;          // 0 -> 1 flag edges.
  uint64_t events_coalesced = 0;    // Flag already set: no interrupt.
  uint64_t events_lost = 0;         // SCONTROL or SIEFP off.
  uint64_t interrupts = 0;
  uint64_t insufficient_buffers = 0;
  uint64_t signals = 0;          // HvSignalEvent calls that reached a port.
  uint64_t signals_refused = 0;  // ... that named no port (HV_STATUS_INVALID_CONNECTION_ID).
};

class Synic : public ServerPort, public std::enable_shared_from_this<Synic> {
 public:
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<Synic>> Create(SynicOptions options);
  ~Synic() override;

  void SetInterruptSink(std::shared_ptr<InterruptSink> sink);

  // --- The guest's side ---
  [[nodiscard]] absl::StatusOr<uint64_t> ReadMsr(uint32_t vp, uint32_t msr);
  [[nodiscard]] absl::Status WriteMsr(uint32_t vp, uint32_t msr, uint64_t value);
  // RCX, RDX, R8 of the call; returns RAX (an HV_STATUS).
  uint64_t Hypercall(uint32_t vp, uint64_t control, uint64_t input, uint64_t output);

  // --- ServerPort ---
  bool trusted() const override { return options_.trusted; }
  absl::Status AttachServer(hw::EventLoop* loop, std::vector<uint32_t> connection_ids,
                            MessageHandler on_message, std::function<void()> on_space) override;
  void DetachServer() override;
  void HandOffServer() override;
  void SetAccepting(bool accepting) override;
  absl::Status PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> payload) override;
  bool CanReceive(uint32_t vp, uint8_t sint) const override;
  std::shared_ptr<hw::Signal> GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) override;
  void SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) override;

  // Sets `flag` in VP `vp`'s SIEFP block for `sint` and interrupts on the edge (what a
  // GuestEvent signal does).
  absl::Status SetEvent(uint32_t vp, uint8_t sint, uint16_t flag);

  SynicStats stats() const;
  // HvSignalEvent calls that reached the port `connection_id` since its target was last set
  // from none (an open); 0 for a port without a target. A doorbell that never leaves the
  // kernel (KVM's ioeventfd binding) is not counted here.
  uint64_t SignalsReceived(uint32_t connection_id) const;
  uint32_t vp_count() const override { return options_.vp_count; }
  const guestmem::GuestMemory& memory() const { return options_.memory; }

 private:
  struct Vp {
    uint64_t scontrol = 0;
    uint64_t simp = 0;
    uint64_t siefp = 0;
    uint64_t vp_assist_page = 0;
    std::array<uint64_t, kSintCount> sint;
    std::array<std::deque<std::vector<uint8_t>>, kSintCount> queued;
  };
  struct Interrupt {
    uint32_t vp;
    uint8_t vector;
  };
  struct Inbound {
    uint32_t connection_id;
    std::vector<uint8_t> payload;
  };

  explicit Synic(SynicOptions options);
  std::string Where(uint32_t vp) const;
  absl::Status MsrError(uint32_t vp, uint32_t msr, std::string_view what) const;
  absl::Status WriteSintMsr(uint32_t vp, uint8_t sint, uint64_t value,
                            std::vector<Interrupt>* interrupts) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EnablePage(uint32_t vp, uint32_t msr, uint64_t value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves queued messages of (vp, sint) into the slot while it is free; appends the
  // interrupts to raise once the lock is released.
  void TryDeliver(uint32_t vp, uint8_t sint, std::vector<Interrupt>* interrupts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TryDeliverAll(uint32_t vp, std::vector<Interrupt>* interrupts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The SINT's interrupt, if it is deliverable now.
  void QueueInterrupt(uint32_t vp, uint8_t sint, std::vector<Interrupt>* interrupts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SintLive(const Vp& vp, uint8_t sint) const;
  void Raise(const std::vector<Interrupt>& interrupts);
  uint64_t PostMessage(uint32_t vp, uint64_t control, uint64_t input_gpa);
  uint64_t SignalEvent(uint32_t vp, uint64_t control, uint64_t input);
  void ScheduleDrain() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Drain(uint64_t epoch);
  void ScheduleSpace() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // What the hot paths (a channel event, a guest doorbell) need, readable without mu_:
  // written under mu_ whenever the register changes.
  struct LiveVp {
    std::atomic<uint64_t> scontrol{0};
    std::atomic<uint64_t> siefp{0};
    std::array<std::atomic<uint64_t>, kSintCount> sint;
  };
  void PublishLive(uint32_t vp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SynicOptions options_;
  const std::chrono::steady_clock::time_point created_ = std::chrono::steady_clock::now();
  const std::unique_ptr<LiveVp[]> live_;
  std::atomic<bool> hypercall_enabled_{false};
  std::atomic<uint64_t> events_set_{0};
  std::atomic<uint64_t> events_coalesced_{0};
  std::atomic<uint64_t> events_lost_{0};
  std::atomic<uint64_t> interrupts_{0};
  Mutex sink_mu_;
  std::shared_ptr<InterruptSink> sink_ ABSL_GUARDED_BY(sink_mu_);
  mutable Mutex ports_mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<hw::Signal>> event_ports_
      ABSL_GUARDED_BY(ports_mu_);
  // Ports whose target HandOffServer replaced with a holder, until a target is set again.
  class HeldEvent;
  absl::flat_hash_map<uint32_t, std::shared_ptr<HeldEvent>> held_ports_ ABSL_GUARDED_BY(ports_mu_);
  // Per port with a target, erased with it: bounded by the ports the server registered.
  absl::flat_hash_map<uint32_t, uint64_t> signals_by_port_ ABSL_GUARDED_BY(ports_mu_);
  std::atomic<uint64_t> signals_{0};
  std::atomic<uint64_t> signals_refused_{0};
  mutable Mutex mu_;
  uint64_t guest_os_id_ ABSL_GUARDED_BY(mu_) = 0;  // Partition-wide, as HYPERCALL.
  uint64_t hypercall_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Vp> vps_ ABSL_GUARDED_BY(mu_);
  // The attached server.
  hw::EventLoop* server_loop_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool handing_off_ ABSL_GUARDED_BY(mu_) = false;   // HandOffServer until the next attach.
  uint64_t attach_epoch_ ABSL_GUARDED_BY(mu_) = 0;  // Bumped by every attach and detach.
  std::vector<uint32_t> message_ids_ ABSL_GUARDED_BY(mu_);
  MessageHandler on_message_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_space_ ABSL_GUARDED_BY(mu_);
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool drain_scheduled_ ABSL_GUARDED_BY(mu_) = false;
  bool space_wanted_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Inbound> inbound_ ABSL_GUARDED_BY(mu_);
  SynicStats stats_ ABSL_GUARDED_BY(mu_);  // The event and interrupt counts are atomics above.
};

}  // namespace cvmbus::paravisor::synic

#endif  // CVMBUS_PARAVISOR_SYNIC_SYNIC_H_
