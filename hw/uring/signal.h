// Signal: how one side tells the other "look at the ring". Paravisor -> guest interrupts and
// loop -> loop wake-ups are Signals; guest -> paravisor doorbells arrive as eventfds the
// EventLoop watches (a KVM ioeventfd is one).
#ifndef CVMBUS_HW_URING_SIGNAL_H_
#define CVMBUS_HW_URING_SIGNAL_H_

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hw/uring/event_loop.h"

namespace cvmbus::hw {

class Signal {
 public:
  virtual ~Signal() = default;
  // Raises the signal. Never blocks. Thread: as the implementation documents.
  virtual absl::Status Raise() = 0;
};

// write(2) of 1 to an eventfd: an EventLoop watch, a KVM irqfd, a thread blocked in read(2).
// The fd is not owned: its owner must outlive every reference (OwnedEventFdSignal owns it).
// Any thread.
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

// An EventFdSignal that owns its eventfd: the fd is closed when the last reference goes. Hand
// this (shared) to whoever raises it (the VMBus server, a SynIC event port) and keep a
// reference for as long as you read the fd: no party can then write to a closed or reused fd,
// whatever order the references go in. Any thread.
class OwnedEventFdSignal : public EventFdSignal {
 public:
  // A new non-blocking, close-on-exec eventfd.
  static absl::StatusOr<std::shared_ptr<OwnedEventFdSignal>> Create() {
    const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return absl::InternalError("eventfd signal: eventfd failed");
    return std::shared_ptr<OwnedEventFdSignal>(new OwnedEventFdSignal(fd));
  }
  ~OwnedEventFdSignal() override { close(fd()); }
  OwnedEventFdSignal(const OwnedEventFdSignal&) = delete;
  OwnedEventFdSignal& operator=(const OwnedEventFdSignal&) = delete;

 private:
  explicit OwnedEventFdSignal(int fd) : EventFdSignal(fd) {}
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
