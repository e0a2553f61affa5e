// ServerPort: what the paravisor's VMBus server sees of the SynIC it serves.
//
// The guest reaches the server only through a SynIC: its HvPostMessage calls to the server's
// connection ids arrive as messages, its HvSignalEvent calls on a channel's connection id
// raise that channel's target, and the server's messages land in the guest's SIMP slot with an
// interrupt, its channel events as SIEFP flags with an interrupt.
//
// Backpressure. A guest cannot make the server or the SynIC grow without bound: the SynIC
// queues at most a fixed number of messages per SINT and refuses more (PostToGuest:
// kResourceExhausted, then `on_space` once there is room). A server that has messages it could
// not post stops taking guest requests (SetAccepting(false)); guest posts then wait in the
// SynIC's bounded inbound queue, and past it HvPostMessage returns
// HV_STATUS_INSUFFICIENT_BUFFERS, which guests retry.
//
// Threads: every member may be called from any thread. The handlers run on the loop given to
// AttachServer, one at a time, in order.
#ifndef CVMBUS_PARAVISOR_SYNIC_SERVER_PORT_H_
#define CVMBUS_PARAVISOR_SYNIC_SERVER_PORT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"

namespace cvmbus::paravisor::synic {

class ServerPort {
 public:
  // A guest message posted to `connection_id`: its payload (at most 240 bytes), copied.
  using MessageHandler = std::function<void(uint32_t connection_id, std::vector<uint8_t> payload)>;

  virtual ~ServerPort() = default;

  // True for the paravisor's own (trusted) SynIC: confidential channels may be negotiated.
  virtual bool trusted() const = 0;

  // How many VPs the guest has (VP indexes 0..vp_count()-1): the targets a channel may name.
  virtual uint32_t vp_count() const = 0;

  // Registers the server for guest posts to `connection_ids` (kInvalidArgument for an id
  // outside 1..0xffffff, kAlreadyExists if another server has it). A null `loop` detaches:
  // no handler runs after Detach returns on the loop's thread, and guest posts to the ids
  // fail with HV_STATUS_INVALID_CONNECTION_ID again. The server starts accepting.
  [[nodiscard]] virtual absl::Status AttachServer(hw::EventLoop* loop,
                                                  std::vector<uint32_t> connection_ids,
                                                  MessageHandler on_message,
                                                  std::function<void()> on_space) = 0;
  virtual void DetachServer() = 0;
  // Servicing: detaches as DetachServer does (no handler runs after it returns on the loop's
  // thread), but for a successor, so that the guest sees no gap until the next AttachServer:
  // its posts to the connection ids are still taken and wait (bounded as while not
  // accepting: past the bound HV_STATUS_INSUFFICIENT_BUFFERS, which guests retry), and every
  // event port stays registered, its HvSignalEvent held (not raised on the old target, whose
  // device may be gone) and raised once on the target set for it next.
  virtual void HandOffServer() = 0;

  // While false, guest posts are held (bounded, see above) instead of handed to on_message.
  virtual void SetAccepting(bool accepting) = 0;

  // Queues a VMBus message for VP `vp`'s SINT `sint`. kInvalidArgument past 240 bytes or for
  // a VP or SINT that does not exist; kResourceExhausted when that SINT's queue is full (the
  // message is not taken; on_space runs once room appears).
  [[nodiscard]] virtual absl::Status PostToGuest(uint32_t vp, uint8_t sint,
                                                 absl::Span<const uint8_t> payload) = 0;

  // True if VP `vp`'s SINT `sint` can take messages now (the VP exists, its SynIC and message
  // page are on, the SINT unmasked). A guest kernel sets this up before INITIATE_CONTACT.
  virtual bool CanReceive(uint32_t vp, uint8_t sint) const = 0;

  // A signal that sets event flag `flag` in VP `vp`'s SIEFP block for `sint` and interrupts
  // the VP (a channel's host -> guest interrupt). Raising it never blocks. An invalid VP,
  // SINT or flag is an error on Raise.
  virtual std::shared_ptr<hw::Signal> GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) = 0;

  // Makes the guest's HvSignalEvent on `connection_id` (flag number 0) raise `target`; null
  // unregisters it (HvSignalEvent then returns HV_STATUS_INVALID_CONNECTION_ID). The port
  // keeps `target` alive while registered.
  virtual void SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) = 0;
};

}  // namespace cvmbus::paravisor::synic

#endif  // CVMBUS_PARAVISOR_SYNIC_SERVER_PORT_H_
