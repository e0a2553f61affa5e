// A channel from many senders to one receiver that wakes the receiver's io_uring loop:
// the server sends ChannelRequests to a device, the device sends ChannelServerRequests back.
//
//   auto [sender, receiver] = MakeChannel<ChannelRequest>();
//   sender.Send(request);                                  // any thread
//   std::optional<T> next = co_await receiver.Next(loop);  // nullopt: every sender is gone
//
// Send fails (kFailedPrecondition) once the receiver is gone. Senders are copyable.
//
// Loops and lifetimes: `co_await receiver.Next(loop)` parks the task on `loop`
// (EventLoop::Park), which must be the live loop that runs the task; it resumes on that loop's
// thread. Senders may outlive that loop: if it is destroyed while the task waits, its teardown
// destroys the task (it never resumes), and a later Send (or the last Sender's destruction)
// still queues its value (or ends the channel) for whoever awaits next, but posts nothing to
// the loop that is gone.
#ifndef CVMBUS_PARAVISOR_BUS_MPSC_H_
#define CVMBUS_PARAVISOR_BUS_MPSC_H_

#include <coroutine>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "base/mutex.h"
#include "hw/uring/event_loop.h"

namespace cvmbus::paravisor {

namespace internal {
template <typename T>
struct ChannelState {
  Mutex mu;
  std::deque<T> queue ABSL_GUARDED_BY(mu);
  int senders ABSL_GUARDED_BY(mu) = 0;
  bool receiver_alive ABSL_GUARDED_BY(mu) = true;
  hw::EventLoop::Waker waker ABSL_GUARDED_BY(mu);  // The parked receiving task, if any.

  void Wake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    // At most posts to a loop, never resumes here: safe under the lock. A Waker whose loop is
    // gone posts nothing.
    std::exchange(waker, hw::EventLoop::Waker()).Wake();
  }
};
}  // namespace internal

template <typename T>
class Sender {
 public:
  Sender() = default;  // Connected to nothing: Send fails.
  explicit Sender(std::shared_ptr<internal::ChannelState<T>> state) : state_(std::move(state)) {
    MutexLock lock(&state_->mu);
    ++state_->senders;
  }
  Sender(const Sender& other) : Sender(other.state_) {}
  Sender(Sender&& other) noexcept : state_(std::move(other.state_)) {}
  Sender& operator=(Sender other) noexcept {
    std::swap(state_, other.state_);
    return *this;
  }
  ~Sender() {
    if (!state_) return;
    MutexLock lock(&state_->mu);
    if (--state_->senders == 0) state_->Wake();
  }

  absl::Status Send(T value) const {
    if (!state_) return absl::FailedPreconditionError("channel: sender was moved from");
    MutexLock lock(&state_->mu);
    if (!state_->receiver_alive) {
      return absl::FailedPreconditionError("channel: the receiver is gone");
    }
    state_->queue.push_back(std::move(value));
    state_->Wake();
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<internal::ChannelState<T>> state_;
};

template <typename T>
class Receiver {
 public:
  explicit Receiver(std::shared_ptr<internal::ChannelState<T>> state) : state_(std::move(state)) {}
  Receiver(Receiver&&) noexcept = default;
  Receiver& operator=(Receiver&&) noexcept = default;
  ~Receiver() {
    if (!state_) return;
    std::deque<T> dropped;  // Pending Rpcs are dropped here: their callers see kCancelled.
    MutexLock lock(&state_->mu);
    state_->receiver_alive = false;
    dropped.swap(state_->queue);
    state_->Wake();  // A task still waiting resumes, finds the channel closed, and returns.
  }

  // The next value if one is queued.
  std::optional<T> TryNext() {
    MutexLock lock(&state_->mu);
    if (state_->queue.empty()) return std::nullopt;
    T value = std::move(state_->queue.front());
    state_->queue.pop_front();
    return value;
  }
  bool closed() {
    MutexLock lock(&state_->mu);
    return state_->queue.empty() && state_->senders == 0;
  }

  // Holds the channel state, not the Receiver: a task may be resumed after its owner (and the
  // Receiver) is gone, and must then find a closed channel, not freed memory.
  struct Awaiter {
    std::shared_ptr<internal::ChannelState<T>> state;
    hw::EventLoop* loop;  // Not owned: the loop running the task, alive at the co_await.
    bool await_ready() {
      MutexLock lock(&state->mu);
      return !state->queue.empty() || state->senders == 0 || !state->receiver_alive;
    }
    bool await_suspend(std::coroutine_handle<> handle) {
      MutexLock lock(&state->mu);
      if (!state->queue.empty() || state->senders == 0 || !state->receiver_alive) return false;
      state->waker = loop->Park(handle);
      return true;
    }
    std::optional<T> await_resume() {
      MutexLock lock(&state->mu);
      if (state->queue.empty()) return std::nullopt;
      T value = std::move(state->queue.front());
      state->queue.pop_front();
      return value;
    }
  };
  // Completes with the next value, or nullopt once every sender is gone and the queue is empty.
  Awaiter Next(hw::EventLoop* loop) { return Awaiter{state_, loop}; }

 private:
  std::shared_ptr<internal::ChannelState<T>> state_;
};

template <typename T>
std::pair<Sender<T>, Receiver<T>> MakeChannel() {
  auto state = std::make_shared<internal::ChannelState<T>>();
  return {Sender<T>(state), Receiver<T>(state)};
}

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_BUS_MPSC_H_
