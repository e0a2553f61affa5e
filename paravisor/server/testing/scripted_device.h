// ScriptedDevice: a fake VMBus device for server tests that implements the real bus contract
// (paravisor/bus/bus.h) and misbehaves on demand: it can answer each kind of request at once,
// hold it until the test releases it (a slow device), or drop it unanswered; revoke its offer
// in the middle of an open; hand out a guest -> host signal that throws when raised. It never
// touches guest memory, so GPADLs may name any pages.
//
// Every request it sees is logged as a short line ("open 3", "close", "gpadl 7", "teardown 7",
// "modify 2"), so a test can assert what the server told the device and in which order.
//
// Threads: everything runs on `loop`'s thread (the server's loop in the VM fixture); call
// every member there (vm::VirtualMachine::OnServer). The signals it hands out may be raised from
// any thread.
#ifndef CVMBUS_PARAVISOR_SERVER_TESTING_SCRIPTED_DEVICE_H_
#define CVMBUS_PARAVISOR_SERVER_TESTING_SCRIPTED_DEVICE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"

namespace cvmbus::paravisor::testing {

// What the device does with one kind of request.
enum class Answer {
  kNow,   // Reply at once, as scripted.
  kHold,  // Keep the request until the test releases it.
  kDrop,  // Drop the Rpc unanswered (the server sees kCancelled).
};

struct DeviceScript {
  Answer open = Answer::kNow;
  Answer close = Answer::kNow;
  Answer gpadl = Answer::kNow;
  Answer teardown = Answer::kNow;
  Answer modify = Answer::kNow;
  bool accept_open = true;   // For kNow opens.
  bool accept_gpadl = true;  // For kNow GPADLs.
  int32_t modify_status = 0;
  // Revoke the offer as soon as an open arrives (before answering it, whatever `open` says).
  bool revoke_on_open = false;
  // The guest -> host signal of each open throws std::runtime_error when raised.
  bool throwing_signal = false;
  // Hand out an hw::OwnedEventFdSignal instead (last_eventfd_signal()).
  bool eventfd_signal = false;
};

// A guest -> host signal that counts its raises (any thread).
class CountingSignal : public hw::Signal {
 public:
  explicit CountingSignal(bool throws) : throws_(throws) {}
  absl::Status Raise() override;
  uint64_t raised() const { return raised_.load(); }

 private:
  const bool throws_;
  std::atomic<uint64_t> raised_{0};
};

class ScriptedDevice {
 public:
  ScriptedDevice(hw::EventLoop* loop, ParentBus* bus, OfferParams params, DeviceScript script = {})
      : loop_(loop), bus_(bus), params_(std::move(params)), script_(script) {}
  ~ScriptedDevice();
  ScriptedDevice(const ScriptedDevice&) = delete;
  ScriptedDevice& operator=(const ScriptedDevice&) = delete;

  // Offers the channel and starts serving requests.
  absl::Status Offer();
  // After servicing: offers again and sends RestoreChannel (with an OpenResult if `open`).
  // The reply lands in restore_result().
  absl::Status OfferRestored(bool open);
  // RevokeChannel; the server's reply is counted in revokes_completed().
  absl::Status Revoke();
  // Drops both ends of the offer: the server sees the device gone.
  void DropOffer();

  DeviceScript& script() { return script_; }

  // Held requests, oldest first. Each Release* answers the oldest one of its kind and returns
  // false if none is held.
  size_t held_opens() const { return opens_.size(); }
  size_t held_closes() const { return closes_.size(); }
  size_t held_gpadls() const { return gpadls_.size(); }
  size_t held_teardowns() const { return teardowns_.size(); }
  size_t held_modifies() const { return modifies_.size(); }
  bool ReleaseOpen(bool accept);
  bool ReleaseClose();
  bool ReleaseGpadl(bool accept);
  bool ReleaseTeardown();
  bool ReleaseModify(int32_t status);

  const std::vector<std::string>& events() const { return events_; }
  std::string EventsText() const;  // "open 3, close, ..." for failure messages.
  // The OpenRequest of the last open, and the signal the device handed out for it.
  const std::optional<OpenRequest>& last_open() const { return last_open_; }
  const std::shared_ptr<CountingSignal>& last_signal() const { return last_signal_; }
  // With `eventfd_signal`: the last one handed out. Dropping it here leaves the server's
  // references (if any) as the only ones.
  std::shared_ptr<hw::OwnedEventFdSignal>& last_eventfd_signal() { return last_eventfd_; }
  // The server's reply to OfferRestored, once it arrived.
  const std::optional<absl::StatusOr<RestoreResult>>& restore_result() const {
    return restore_result_;
  }
  int revokes_completed() const { return revokes_completed_; }
  bool requests_closed() const { return requests_closed_; }  // The server dropped its sender.

 private:
  hw::Task Serve();
  hw::Task AwaitRestore(ReplyFuture<absl::StatusOr<RestoreResult>> reply);
  hw::Task AwaitRevoke(ReplyFuture<Unit> reply);
  std::optional<OpenResult> MakeOpenResult(bool accept);
  absl::Status MakeOffer();

  hw::EventLoop* loop_;
  ParentBus* bus_;
  OfferParams params_;
  DeviceScript script_;
  std::unique_ptr<Receiver<ChannelRequest>> requests_;
  std::optional<Sender<ChannelServerRequest>> to_server_;
  std::deque<Rpc<OpenRequest, std::optional<OpenResult>>> opens_;
  std::deque<Rpc<Unit, Unit>> closes_;
  std::deque<Rpc<GpadlRequest, bool>> gpadls_;
  std::deque<Rpc<GpadlId, Unit>> teardowns_;
  std::deque<Rpc<ModifyRequest, int32_t>> modifies_;
  std::vector<std::string> events_;
  std::optional<OpenRequest> last_open_;
  std::shared_ptr<CountingSignal> last_signal_;
  std::shared_ptr<hw::OwnedEventFdSignal> last_eventfd_;
  std::optional<absl::StatusOr<RestoreResult>> restore_result_;
  int revokes_completed_ = 0;
  bool requests_closed_ = false;
  uint64_t generation_ = 0;  // Bumped by each offer and drop: a Serve task of an older one ends.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_PARAVISOR_SERVER_TESTING_SCRIPTED_DEVICE_H_
