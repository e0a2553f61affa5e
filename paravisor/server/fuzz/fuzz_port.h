// FuzzPort: the synic::ServerPort that server_fuzz's VmbusServer talks to, run on the fuzzer's
// one thread (which runs the server's loop too), with the fuzzer as the guest.
//
// It behaves as the paravisor's SynIC does where the server can tell: a trusted port of four
// VPs; guest posts handed to the server one at a time on its loop, held while it is not
// accepting (at most kMaxInbound, then refused as HvPostMessage refuses them); each SINT's
// queue bounded by SetQueueLimit (PostToGuest then fails with kResourceExhausted and on_space
// runs on the loop once the guest has read its messages); HandOffServer keeps the held posts
// and the event ports for the successor, a guest signal on a handed-off port being held and
// raised once on the next target set for it.
//
// Every guest message the server is handed and every message it posts go to a PortObserver
// first, in the order they happen: the guest model (guest_model.h) sees exactly the
// interleaving the server saw. A message the server posts that does not parse, or that names
// a VP or SINT that does not exist, is an invariant violation (the server checked both before
// it connected).
//
// Threads: the fuzzer's thread only; the loop given to the constructor runs there.
#ifndef CVMBUS_PARAVISOR_SERVER_FUZZ_FUZZ_PORT_H_
#define CVMBUS_PARAVISOR_SERVER_FUZZ_FUZZ_PORT_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/synic/server_port.h"

namespace cvmbus::paravisor::fuzz {

class PortObserver {
 public:
  virtual ~PortObserver() = default;
  // The server's handler is about to run for this guest post.
  virtual void Delivered(const std::vector<uint8_t>& bytes) = 0;
  // The server posted `message` (it parsed) to the guest.
  virtual void Posted(const protocol::ParsedMessage& message) = 0;
};

class FuzzPort : public synic::ServerPort {
 public:
  static constexpr uint32_t kVpCount = 4;
  // Guest posts held while the server does not accept, as the SynIC's inbound queue.
  static constexpr size_t kMaxInbound = 32;

  // `loop` and `observer` must outlive the port; the loop's work that names the port must have
  // run before the port is destroyed (the fixture drains the loop first).
  FuzzPort(hw::EventLoop* loop, PortObserver* observer) : loop_(loop), observer_(observer) {}
  ~FuzzPort() override { *alive_ = false; }

  // --- synic::ServerPort ---
  bool trusted() const override { return true; }
  uint32_t vp_count() const override { return kVpCount; }
  absl::Status AttachServer(hw::EventLoop* loop, std::vector<uint32_t> connection_ids,
                            MessageHandler on_message, std::function<void()> on_space) override;
  void DetachServer() override;
  void HandOffServer() override;
  void SetAccepting(bool accepting) override;
  absl::Status PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> payload) override;
  bool CanReceive(uint32_t vp, uint8_t sint) const override { return vp < kVpCount && sint < 16; }
  std::shared_ptr<hw::Signal> GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) override;
  void SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) override;

  // --- The guest's side ---
  // HvPostMessage: kFailedPrecondition with no server (and none handed off to), or
  // kResourceExhausted with kMaxInbound posts held; the post is not taken then.
  absl::Status Post(uint32_t connection_id, std::vector<uint8_t> bytes);
  // HvSignalEvent on `connection_id`: kNotFound if nothing is registered. Exceptions of the
  // target (a throwing device signal) are caught, as the SynIC catches them.
  absl::Status Signal(uint32_t connection_id);
  // The guest reads every message in its SINT queues; a server waiting for room is told.
  void ReadAll();
  // At most `limit` unread messages (nullopt: no bound, the guest reads as they come),
  // counting from now.
  void SetQueueLimit(std::optional<size_t> limit);
  std::optional<size_t> queue_limit() const { return queue_limit_; }

  // --- For the invariants ---
  // Registered event ports, and which of them are still the predecessor's (handed off).
  const std::map<uint32_t, std::shared_ptr<hw::Signal>>& targets() const { return targets_; }
  const std::set<uint32_t>& handed_off_targets() const { return handed_off_; }
  // Raises of the guest events the server made (any VP, SINT and flag).
  uint64_t guest_events() const { return counters_->events; }
  // Changes with anything the port saw: the fuzzer's test for a loop that went idle.
  uint64_t activity() const { return activity_ + counters_->events; }
  size_t held_posts() const { return inbound_.size(); }

 private:
  struct Counters {
    uint64_t events = 0;
  };
  class EventSignal;
  void Schedule();
  void Pump();

  hw::EventLoop* const loop_;
  PortObserver* const observer_;
  MessageHandler on_message_;
  std::function<void()> on_space_;
  bool attached_ = false;
  bool handed_off_server_ = false;
  bool accepting_ = true;
  bool pump_posted_ = false;
  std::deque<std::pair<uint32_t, std::vector<uint8_t>>> inbound_;
  size_t unread_ = 0;
  std::optional<size_t> queue_limit_;
  bool space_wanted_ = false;
  std::map<uint32_t, std::shared_ptr<hw::Signal>> targets_;
  std::set<uint32_t> handed_off_;    // Targets of the predecessor, not raised any more.
  std::set<uint32_t> signals_held_;  // Guest signals on handed-off targets.
  uint64_t activity_ = 0;
  // The guest events the server holds may outlive the port (a device keeps its OpenRequest).
  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cvmbus::paravisor::fuzz

#endif  // CVMBUS_PARAVISOR_SERVER_FUZZ_FUZZ_PORT_H_
