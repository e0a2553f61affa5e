// One offered channel's state, as the VMBus server keeps it: an explicit state machine whose
// states own the device operation in flight, so a reply that arrives for an operation the
// channel no longer waits for has nowhere to land and is dropped.
//
//   Released --REQUESTOFFERS/offer--> Closed --OPENCHANNEL--> Opening --reply ok--> Open
//      ^                                ^  ^                      |  reply failed    |
//      |  (connection reset, guest      |  +----------------------+                  |
//      |   released an unrevoked offer) |                                   CLOSECHANNEL
//      |                                +--------------- Closing <-------------------+
//      |                                   close replied   (a reopen waits here)
//   Revoked: rescinded (device revoked, or an hvsocket channel the guest closed); only
//   RELID_RELEASED is left. No device operation is pending in it.
//
// Identity: relids are reused after RELID_RELEASED, so a completion never finds its channel
// by relid. Every offer has an OfferId and every request sent to a device an OpId, both
// unique for the server's life; a completion carries both and is applied only if the channel
// with that OfferId is still waiting for exactly that OpId. Guest-facing answers also carry the
// connection epoch they belong to: after a reset (UNLOAD, or INITIATE_CONTACT while connected)
// nothing is sent for the old connection.
//
// Threads: the server's loop thread, except EventLatch and GuestInterrupt (any thread).
#ifndef CVMBUS_PARAVISOR_SERVER_CHANNEL_H_
#define CVMBUS_PARAVISOR_SERVER_CHANNEL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "base/mutex.h"
#include "hw/uring/signal.h"
#include "paravisor/bus/bus.h"

namespace cvmbus::paravisor::internal {

using OfferId = uint64_t;  // One per AddChild (and per restored channel); never reused.
using OpId = uint64_t;     // One per request sent to a device; never reused; 0: none.

// The guest -> host event of one open, registered with the SynIC at OPENCHANNEL time, before
// the device answered: raises before the device's target is known are latched and delivered
// once when it arrives (OpenVMM #1850). Once the device's signal is known the server registers
// it with the SynIC directly (a VMM may bind it to a kernel doorbell); a raise that was already
// on its way through the latch is forwarded. After Disconnect() raises go nowhere, and since the
// device's signal is raised with the latch's lock held, nothing that went through the latch
// touches the device's signal after Disconnect() returns. Any thread.
class EventLatch : public hw::Signal {
 public:
  absl::Status Raise() override;
  // Installs the device's target; raises it once if a raise was latched. (Whatever the
  // device's signal throws comes back as an error status, here and from Raise.)
  absl::Status Connect(std::shared_ptr<hw::Signal> target);
  void Disconnect();
  bool latched();

 private:
  Mutex mu_;
  std::shared_ptr<hw::Signal> target_ ABSL_GUARDED_BY(mu_);
  bool latched_ ABSL_GUARDED_BY(mu_) = false;
  bool disconnected_ ABSL_GUARDED_BY(mu_) = false;
};

// The host -> guest interrupt a device gets in its OpenRequest: the SynIC's event for the
// channel's VP, SINT and flag, retargeted by MODIFYCHANNEL, cut off at close so that a device
// that keeps raising a stale interrupt cannot reach a channel that reused the relid.
// Any thread.
class GuestInterrupt : public hw::Signal {
 public:
  explicit GuestInterrupt(std::shared_ptr<hw::Signal> target) : target_(std::move(target)) {}
  absl::Status Raise() override;
  void Retarget(std::shared_ptr<hw::Signal> target);
  void Disconnect() { Retarget(nullptr); }
  // Raises that reached the guest's event (not those after Disconnect).
  uint64_t raised() const { return raised_.load(std::memory_order_relaxed); }

 private:
  Mutex mu_;
  std::shared_ptr<hw::Signal> target_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> raised_{0};
};

// An OPENCHANNEL the server has accepted, as the device will see it.
struct OpenParams {
  OpenData data;
  uint32_t open_id = 0;  // Echoed in OPENCHANNEL_RESULT.
  uint64_t connection_epoch = 0;
};

// --- The states. ---
struct Released {
  // The guest released this offer without a rescind (it could not register it): not offered
  // again on this connection.
  bool declined_by_guest = false;
};
struct Closed {};
struct Opening {
  OpId op = 0;
  OpenParams params;
  std::shared_ptr<EventLatch> latch;
  std::shared_ptr<GuestInterrupt> interrupt;
  bool released = false;  // The connection was reset: close whatever the reply opened.
};
struct Open {
  OpId op = 0;  // The open's: identifies this open for its delayed re-signal.
  OpenParams params;
  std::shared_ptr<EventLatch> latch;
  std::shared_ptr<GuestInterrupt> interrupt;
  std::shared_ptr<hw::Signal> device_signal;  // Shared with the device; dropped at close.
};
struct Closing {
  OpId op = 0;
  OpenParams params;  // Of the open being closed.
  bool released = false;
  std::optional<OpenParams> reopen;  // An OPENCHANNEL that arrived while closing.
};
struct Revoked {};
using ChannelPhase = std::variant<Released, Closed, Opening, Open, Closing, Revoked>;

std::string_view StateName(const ChannelPhase& state);

struct PendingModify {
  OpId op = 0;
  uint32_t target_vp = 0;
  uint64_t connection_epoch = 0;
};

struct Channel {
  OfferId offer = 0;
  uint32_t relid = 0;
  OfferParams params;
  uint16_t offer_flags = 0;  // As offered (before masking by the connection's features).
  ChannelPhase state = Released{};
  Sender<ChannelRequest> requests;
  bool device_attached = false;  // False for a restored channel whose device has not offered.
  std::optional<uint8_t> monitor_id;
  std::vector<PendingModify> modifies;  // Answered in completion order.
  // Restored from saved state; the device must confirm it with RestoreChannel.
  bool awaiting_restore = false;

  bool revoked() const { return std::holds_alternative<Revoked>(state); }
  bool released() const { return std::holds_alternative<Released>(state); }
  bool is_hvsocket() const { return std::holds_alternative<HvSocketChannel>(params.channel_type); }
  // The open data of an open or opening channel (or one being closed).
  const OpenParams* open_params() const;
  // Waiting for a device reply to an open or a close.
  bool busy() const {
    return std::holds_alternative<Opening>(state) || std::holds_alternative<Closing>(state);
  }
};

}  // namespace cvmbus::paravisor::internal

#endif  // CVMBUS_PARAVISOR_SERVER_CHANNEL_H_
