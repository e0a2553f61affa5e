// MessagePort: the SynIC between the guest's VMBus client and the paravisor's server.
//
// This is an in-process port equivalent to the trusted (paravisor) SynIC: guest -> host
// messages are HvPostMessage (a connection id and at most 240 payload bytes, copied once at
// the port), host -> guest messages go to SINT 2 in order, and each channel has an event
// (HvSignalEvent, guest -> host, by connection id) and an interrupt (host -> guest, by relid).
// It does not emulate the SIMP/SIEFP pages in guest memory; a guest kernel would need that, the
// in-process guest client (paravisor/client) does not.
//
// Threads: each side registers a handler that runs on its own EventLoop (delivery is posted);
// Post*/Signal* may be called from any thread.
#ifndef CVMBUS_PARAVISOR_SERVER_MESSAGE_PORT_H_
#define CVMBUS_PARAVISOR_SERVER_MESSAGE_PORT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "paravisor/synic/server_port.h"

namespace cvmbus::paravisor {

class MessagePort : public synic::ServerPort {
 public:
  // `trusted`: this is the paravisor's own SynIC (confidential channels may be negotiated).
  explicit MessagePort(bool trusted) : trusted_(trusted) {}
  bool trusted() const override { return trusted_; }

  // --- Server side (synic::ServerPort; VP and SINT are ignored, nothing is bounded) ---
  absl::Status AttachServer(hw::EventLoop* loop, std::vector<uint32_t> connection_ids,
                            MessageHandler on_message, std::function<void()> on_space) override;
  void DetachServer() override;
  void SetAccepting(bool) override {}
  absl::Status PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> message) override;
  // The interrupt for event flag `flag` (the guest registers what it wakes by flag).
  std::shared_ptr<hw::Signal> GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) override;
  void SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) override;

  // --- Guest side ---
  void AttachGuest(hw::EventLoop* loop, std::function<void(std::vector<uint8_t>)> on_message);
  absl::Status PostToHost(uint32_t connection_id, absl::Span<const uint8_t> message);
  absl::Status SignalHost(uint32_t connection_id);
  // What channel `relid`'s interrupt raises (typically an EventFdSignal on the guest's loop).
  void SetGuestInterruptTarget(uint32_t relid, std::shared_ptr<hw::Signal> target);

  uint64_t messages_to_guest() const { return messages_to_guest_.load(); }
  uint64_t messages_to_host() const { return messages_to_host_.load(); }

 private:
  class ChannelInterrupt;
  const bool trusted_;
  Mutex mu_;
  hw::EventLoop* server_loop_ ABSL_GUARDED_BY(mu_) = nullptr;
  MessageHandler on_host_message_ ABSL_GUARDED_BY(mu_);
  hw::EventLoop* guest_loop_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::function<void(std::vector<uint8_t>)> on_guest_message_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::shared_ptr<hw::Signal>> guest_targets_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::shared_ptr<hw::Signal>> host_targets_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> messages_to_guest_{0};
  std::atomic<uint64_t> messages_to_host_{0};
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_MESSAGE_PORT_H_
