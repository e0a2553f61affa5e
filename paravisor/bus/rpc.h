// Rpc: a request that carries a one-shot reply, between the VMBus server and a device.
//
//   auto [rpc, reply] = MakeRpc<OpenRequest, std::optional<OpenResult>>(request);
//   device_channel.Send(ChannelRequest::Open(std::move(rpc)));
//   absl::StatusOr<std::optional<OpenResult>> result = co_await reply.On(loop);
//
// The replier calls `std::move(rpc).Reply(value)` once. If it drops the Rpc without replying
// (a device that crashed or forgot), the waiting side gets kCancelled "dropped without a
// reply" instead of hanging. FailableRpc<I, R> is Rpc<I, absl::StatusOr<R>>: the replier may
// answer with an error.
//
// Threads: the Rpc and the ReplyFuture may live on different threads (or loops); the reply
// wakes the waiting coroutine on its own loop (EventLoop::Park and its Waker).
//
// Lifetimes: the Rpc may outlive the waiting task's loop (a device torn down with its loop
// while the server still holds the request). If the loop is destroyed while the task waits,
// its teardown destroys the task (it never resumes), and the later Reply or drop stores the
// answer in the slot and posts nothing to the loop that is gone.
#ifndef CVMBUS_PARAVISOR_BUS_RPC_H_
#define CVMBUS_PARAVISOR_BUS_RPC_H_

#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "hw/uring/event_loop.h"

namespace cvmbus::paravisor {

namespace internal {
template <typename R>
class ReplySlot {
 public:
  void Set(absl::StatusOr<R> value) {
    hw::EventLoop::Waker waker;
    {
      MutexLock lock(&mu_);
      if (value_.has_value()) return;  // First answer wins (a reply, or the drop).
      value_ = std::move(value);
      waker = std::exchange(waker_, hw::EventLoop::Waker());
    }
    ready_.notify_all();
    waker.Wake();  // Posts nothing if the waiting task's loop is gone.
  }
  // Registers `waker` unless a value is already there (then returns false: don't wait).
  bool SetWaker(hw::EventLoop::Waker waker) {
    MutexLock lock(&mu_);
    if (value_.has_value()) return false;
    waker_ = std::move(waker);
    return true;
  }
  bool ready() {
    MutexLock lock(&mu_);
    return value_.has_value();
  }
  absl::StatusOr<R> Take() {
    MutexLock lock(&mu_);
    if (!value_.has_value()) return absl::FailedPreconditionError("rpc: no reply yet");
    absl::StatusOr<R> value = std::move(*value_);
    value_ = absl::FailedPreconditionError("rpc: reply already taken");
    return value;
  }
  absl::StatusOr<R> Wait(std::chrono::nanoseconds timeout) {
    {
      MutexLock lock(&mu_);
      std::unique_lock<Mutex> wait_lock(mu_, std::adopt_lock);
      const bool arrived = ready_.wait_for(wait_lock, timeout, [&] { return value_.has_value(); });
      wait_lock.release();
      if (!arrived) return absl::DeadlineExceededError("rpc: no reply before the deadline");
    }
    return Take();
  }

 private:
  Mutex mu_;
  std::condition_variable_any ready_;
  std::optional<absl::StatusOr<R>> value_ ABSL_GUARDED_BY(mu_);
  hw::EventLoop::Waker waker_ ABSL_GUARDED_BY(mu_);
};
}  // namespace internal

// The waiting side of an Rpc.
template <typename R>
class ReplyFuture {
 public:
  explicit ReplyFuture(std::shared_ptr<internal::ReplySlot<R>> slot) : slot_(std::move(slot)) {}

  bool ready() const { return slot_->ready(); }
  // The reply, or kCancelled if the Rpc was dropped unanswered. Once.
  absl::StatusOr<R> Take() { return slot_->Take(); }
  // Blocks the calling thread (tests, synchronous callers); kDeadlineExceeded on timeout.
  absl::StatusOr<R> Wait(std::chrono::nanoseconds timeout) { return slot_->Wait(timeout); }

  // `co_await future.On(loop)`: suspends the task until the reply (or the drop) arrives; the
  // task resumes on `loop`'s thread. `loop` is the live loop that runs the task (see
  // Lifetimes above for what happens if it goes first).
  struct Awaiter {
    std::shared_ptr<internal::ReplySlot<R>> slot;
    hw::EventLoop* loop;  // Not owned.
    bool await_ready() { return slot->ready(); }
    bool await_suspend(std::coroutine_handle<> handle) {
      hw::EventLoop::Waker waker = loop->Park(handle);
      if (slot->SetWaker(waker)) return true;
      loop->Unpark(waker);  // The answer came first: continue without suspending.
      return false;
    }
    absl::StatusOr<R> await_resume() { return slot->Take(); }
  };
  Awaiter On(hw::EventLoop* loop) { return Awaiter{slot_, loop}; }

 private:
  std::shared_ptr<internal::ReplySlot<R>> slot_;
};

template <typename I, typename R>
class Rpc {
 public:
  Rpc(I input, std::shared_ptr<internal::ReplySlot<R>> slot)
      : input_(std::move(input)), slot_(std::move(slot)) {}
  Rpc(Rpc&&) noexcept = default;
  Rpc& operator=(Rpc&& other) noexcept {
    if (this != &other) {
      Drop();
      input_ = std::move(other.input_);
      slot_ = std::move(other.slot_);
    }
    return *this;
  }
  ~Rpc() { Drop(); }

  const I& input() const { return input_; }
  I& input() { return input_; }

  // Answers the request. Consumes the Rpc.
  void Reply(R value) && {
    if (slot_) slot_->Set(std::move(value));
    slot_.reset();
  }

 private:
  void Drop() {
    if (slot_) slot_->Set(absl::CancelledError("rpc: request dropped without a reply"));
    slot_.reset();
  }
  I input_;
  std::shared_ptr<internal::ReplySlot<R>> slot_;
};

template <typename I, typename R>
std::pair<Rpc<I, R>, ReplyFuture<R>> MakeRpc(I input) {
  auto slot = std::make_shared<internal::ReplySlot<R>>();
  return {Rpc<I, R>(std::move(input), slot), ReplyFuture<R>(slot)};
}

template <typename I, typename R>
using FailableRpc = Rpc<I, absl::StatusOr<R>>;

// Flattens a FailableRpc's reply: the transport error or the replier's error, else the value.
template <typename R>
absl::StatusOr<R> Flatten(absl::StatusOr<absl::StatusOr<R>> reply) {
  if (!reply.ok()) return reply.status();
  return *std::move(reply);
}

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_BUS_RPC_H_
