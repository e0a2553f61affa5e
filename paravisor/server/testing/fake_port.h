// FakePort: a synic::ServerPort for server unit tests, with the test as the guest. It keeps
// every message the server posts with the VP and SINT it was posted to, counts the channel
// events the server raises per (VP, SINT, flag), holds the event targets the server
// registers, and can refuse posts (a full SINT queue) to exercise backpressure.
//
// Threads: any thread. The server's handlers run on the loop given to AttachServer.
#ifndef CVMBUS_PARAVISOR_SERVER_TESTING_FAKE_PORT_H_
#define CVMBUS_PARAVISOR_SERVER_TESTING_FAKE_PORT_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/synic/server_port.h"

namespace cvmbus::paravisor::testing {

class FakePort : public synic::ServerPort {
 public:
  struct Posted {
    uint32_t vp;
    uint8_t sint;
    protocol::ParsedMessage message;
  };

  explicit FakePort(bool trusted = true, uint32_t vp_count = 4)
      : trusted_(trusted), vp_count_(vp_count) {}

  // --- synic::ServerPort ---
  bool trusted() const override { return trusted_; }
  uint32_t vp_count() const override { return vp_count_; }
  absl::Status AttachServer(hw::EventLoop* loop, std::vector<uint32_t> connection_ids,
                            MessageHandler on_message, std::function<void()> on_space) override;
  void DetachServer() override;
  void HandOffServer() override { DetachServer(); }  // Tests post only while a server is there.
  void SetAccepting(bool accepting) override;
  absl::Status PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> payload) override;
  bool CanReceive(uint32_t vp, uint8_t sint) const override { return vp < vp_count_ && sint < 16; }
  std::shared_ptr<hw::Signal> GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) override;
  void SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) override;

  // --- The guest's side ---
  // HvPostMessage: hands `bytes` to the server's handler on its loop (in order). Posts made
  // while the server is not accepting wait, in order, until it accepts again.
  absl::Status Post(uint32_t connection_id, std::vector<uint8_t> bytes);
  // HvSignalEvent: raises the registered target; kNotFound if none.
  absl::Status Signal(uint32_t connection_id);
  bool HasEventTarget(uint32_t connection_id);

  // The next message of `type` the server posted (others stay for later waits).
  absl::StatusOr<Posted> WaitFor(protocol::MessageType type, std::chrono::milliseconds timeout);
  bool NothingArrives(protocol::MessageType type, std::chrono::milliseconds quiet) {
    return !WaitFor(type, quiet).ok();
  }
  std::vector<Posted> TakeAll();
  // Channel events raised on (vp, sint, flag).
  uint64_t events(uint32_t vp, uint8_t sint, uint16_t flag);

  // Refuse posts (kResourceExhausted) once `limit` messages wait unread by the test; nullopt:
  // no limit. Lowering the backlog (WaitFor, TakeAll) runs on_space.
  void SetQueueLimit(std::optional<size_t> limit);
  bool accepting();
  uint64_t messages_posted();

 private:
  class EventSignal;
  void RunOnSpace();
  void DeliverHeld() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Pump();

  const bool trusted_;
  const uint32_t vp_count_;
  Mutex mu_;
  std::condition_variable_any arrived_;
  hw::EventLoop* loop_ ABSL_GUARDED_BY(mu_) = nullptr;
  MessageHandler on_message_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_space_ ABSL_GUARDED_BY(mu_);
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::pair<uint32_t, std::vector<uint8_t>>> held_ ABSL_GUARDED_BY(mu_);
  std::deque<Posted> posted_ ABSL_GUARDED_BY(mu_);
  uint64_t messages_posted_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<size_t> queue_limit_ ABSL_GUARDED_BY(mu_);
  bool space_wanted_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::tuple<uint32_t, uint8_t, uint16_t>, uint64_t> events_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::shared_ptr<hw::Signal>> targets_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_PARAVISOR_SERVER_TESTING_FAKE_PORT_H_
