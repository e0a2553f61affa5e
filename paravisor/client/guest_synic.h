// GuestSynic: the guest kernel's half of the SynIC, for in-process guests (the guest client,
// the replay tool). It does what Linux's hv.c and vmbus_drv.c do, through the same registers
// and pages a guest kernel uses:
//   - setup: GUEST_OS_ID, HYPERCALL, SIMP, SIEFP, SINT (vector, unmasked, explicit EOI),
//     SCONTROL, in Linux's order (hv_synic_enable_regs);
//   - HvPostMessage: the message is written into the guest's own hypercall input page, then
//     the hypercall names that page;
//   - HvSignalEvent: the fast form, connection id in RDX;
//   - the interrupt: the SINT's event flags are taken (each set word cleared atomically, as
//     vmbus_chan_sched's sync_test_and_clear_bit) and the message slot is drained as
//     vmbus_on_msg_dpc does: read message_type, copy the payload, store message_type = 0, full
//     barrier, and write EOM only if message_pending is then set.
//
// Threads: PostMessage and SignalEvent may be called from any thread (posts are serialized:
// there is one input page). on_event runs on the interrupting thread and must not block;
// on_message runs on `loop`'s thread, in order.
#ifndef CVMBUS_PARAVISOR_CLIENT_GUEST_SYNIC_H_
#define CVMBUS_PARAVISOR_CLIENT_GUEST_SYNIC_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "paravisor/synic/synic.h"

namespace cvmbus::paravisor {

// Four guest pages the guest kernel gives its SynIC (page-aligned GPAs).
struct GuestSynicPages {
  uint64_t simp = 0;
  uint64_t siefp = 0;
  uint64_t hypercall = 0;  // The hypercall page the hypervisor overlays.
  uint64_t input = 0;      // The hypercall input page.
};

struct GuestSynicOptions {
  std::shared_ptr<synic::Synic> synic;
  guestmem::GuestMemory memory;  // The guest's view of its pages (private on a CVM).
  uint32_t vp = 0;
  uint8_t sint = 2;       // VMBUS_MESSAGE_SINT.
  uint8_t vector = 0xf3;  // HYPERVISOR_CALLBACK_VECTOR.
  GuestSynicPages pages;
  std::function<void(std::vector<uint8_t>)> on_message;
  std::function<void(uint16_t flag)> on_event;
};

class GuestSynic {
 public:
  // Programs the SynIC's registers; errors name the register (a #GP the guest would take).
  // `loop` runs on_message and must outlive the GuestSynic.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<GuestSynic>> Create(GuestSynicOptions options,
                                                                          hw::EventLoop* loop);
  // Stops taking interrupts (waits for one in progress), masks the SINT and turns the SynIC
  // off, as a kernel going down does.
  ~GuestSynic();

  // HvPostMessage (message type 1); the HV_STATUS the hypercall returned.
  uint64_t PostMessage(uint32_t connection_id, absl::Span<const uint8_t> payload);
  // HvSignalEvent, fast; the HV_STATUS.
  uint64_t SignalEvent(uint32_t connection_id, uint16_t flag_number = 0);

  // The event flags seen and the messages taken so far.
  uint64_t events_taken() const { return events_taken_.load(std::memory_order_relaxed); }
  uint64_t messages_taken() const { return messages_taken_.load(std::memory_order_relaxed); }

 private:
  class Sink;
  GuestSynic(GuestSynicOptions options, hw::EventLoop* loop)
      : options_(std::move(options)), loop_(loop) {}
  // The interrupt handler: event flags at once, the message slot on the loop.
  void OnInterrupt();
  void DrainSlot();

  const GuestSynicOptions options_;
  hw::EventLoop* const loop_;
  std::shared_ptr<Sink> sink_;
  Mutex post_mu_;  // Serializes use of the input page.
  std::atomic<bool> drain_posted_{false};
  std::atomic<uint64_t> events_taken_{0};
  std::atomic<uint64_t> messages_taken_{0};
  // Shared with posted drains, which may run after the destructor on a loop that lives on.
  std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(true);
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_CLIENT_GUEST_SYNIC_H_
