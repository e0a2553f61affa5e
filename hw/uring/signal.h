// Signal: how one side tells the other "look at the ring". Paravisor -> guest interrupts and
// loop -> loop wake-ups are Signals; guest -> paravisor doorbells arrive as eventfds the
// EventLoop watches (a KVM ioeventfd is one).
#ifndef CVMBUS_HW_URING_SIGNAL_H_
#define CVMBUS_HW_URING_SIGNAL_H_

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "hw/uring/event_loop.h"

namespace cvmbus::hw {

class Signal {
 public:
  virtual ~Signal() = default;
  // Raises the signal. Never blocks. Thread: as the implementation documents.
  virtual absl::Status Raise() = 0;
};

// write(2) of 1 to an eventfd: an EventLoop watch, a KVM irqfd, a thread blocked in read(2).
// The fd is not owned. Any thread.
class EventFdSignal : public Signal {
 public:
  explicit EventFdSignal(int fd) : fd_(fd) {}
  absl::Status Raise() override {
    const uint64_t one = 1;
    if (write(fd_, &one, sizeof(one)) == sizeof(one)) return absl::OkStatus();
    return absl::InternalError("eventfd signal: write failed");
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

// IORING_OP_MSG_RING from `from` (a loop; Raise must be called on its thread) to the loop
// whose ring is `target_ring_fd`, which receives `value` in its OnMessage handler.
class MsgRingSignal : public Signal {
 public:
  MsgRingSignal(EventLoop* from, int target_ring_fd, uint64_t value)
      : from_(from), target_ring_fd_(target_ring_fd), value_(value) {}
  absl::Status Raise() override { return from_->SendMessage(target_ring_fd_, value_); }

 private:
  EventLoop* from_;
  int target_ring_fd_;
  uint64_t value_;
};

// A callback, for tests. Counts raises. Thread: the callback's.
class CallbackSignal : public Signal {
 public:
  explicit CallbackSignal(std::function<void()> fn = nullptr) : fn_(std::move(fn)) {}
  absl::Status Raise() override {
    raised_.fetch_add(1, std::memory_order_relaxed);
    if (fn_) fn_();
    return absl::OkStatus();
  }
  uint64_t raised() const { return raised_.load(std::memory_order_relaxed); }

 private:
  std::function<void()> fn_;
  std::atomic<uint64_t> raised_{0};
};

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_URING_SIGNAL_H_
