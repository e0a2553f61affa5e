// Async ring endpoints: ring/'s IncomingRing and OutgoingRing driven by an EventLoop.
//
// RingReader:
//   absl::Status status = co_await reader.Readable();   // packets are available (or error)
//   while (*reader.ring().Read(&buffer)) { ... }          // drain
//   reader.Release();                                      // publish; signals if the rules say
// Readable() keeps interrupt_mask set while the device drains, and before sleeping clears it
// and re-checks the ring (no lost wake-up); with a spin budget it polls a bounded number of
// times before sleeping.
//
// RingWriter:
//   co_await writer.Writable(bytes);   // waits for space: pending_send_sz, then sleeps until
//                                      // the reader signals
//   writer.ring().Append(packet);
//   writer.Publish();                  // visible at once; the signal check is per burst
// Publish() pays the signalling rule's full barrier once per burst of packets, not per packet:
// the burst ends when the loop goes idle (EventLoop::IdleHook), when the writer waits for
// space, at Flush(), or every OutgoingRing::kBurstCheckInterval packets.
//
// Both wait on `wake_fd`, the eventfd the peer signals (one per channel is normal: VMBus uses a
// single interrupt for "packets arrived" and "space freed"), and signal the peer through a
// Signal. The loop and the Signal must outlive the endpoint: its destructor ends a burst in
// progress, which may signal. Several endpoints on one loop share nothing but the loop.
//
// Threads: an endpoint and its tasks belong to the loop's thread.
#ifndef CVMBUS_HW_URING_RING_ENDPOINT_H_
#define CVMBUS_HW_URING_RING_ENDPOINT_H_

#include <chrono>
#include <coroutine>
#include <cstdint>

#include "absl/status/status.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "ring/ring.h"

namespace cvmbus::hw {

struct SpinPolicy {
  // Polls of the ring before sleeping on the wake fd (0: sleep at once). Bounded so an idle
  // channel costs no CPU.
  uint32_t polls_before_sleep = 0;
  // A writer that finds the ring full while the reader is draining it (interrupt_mask set)
  // polls for space up to this long before sleeping: a draining reader frees space within
  // microseconds, while a sleep costs a wake-up on each side (25-45 us here, limits.md) and
  // usually lets the reader run dry meanwhile, so that it sleeps too. 0: never.
  // interrupt_mask is the guest's to set, and the spin runs on the loop's thread, which serves
  // every channel on it: so a writer backs off from a reader whose spins do not pay. After k
  // spins in a row that ended without space (k <= kMaxBusyWaitBackoff), it skips the spin on
  // its next 2^k - 1 waits, sleeping at once: a reader that keeps interrupt_mask set and never
  // drains costs at most one spin in 2^kMaxBusyWaitBackoff waits. A spin that finds space
  // resets k. Counted in EndpointStats::busy_waits and busy_waits_skipped.
  std::chrono::nanoseconds busy_reader_wait = std::chrono::microseconds(20);
  static constexpr uint32_t kMaxBusyWaitBackoff = 6;
  // A reader that finds the ring empty after signalling a writer that waited for space (which
  // is waking up and will write at once) polls up to this long before sleeping, instead of
  // sleeping through the writer's wake-up and costing it a signal. 0: never.
  std::chrono::nanoseconds woken_writer_wait = std::chrono::microseconds(50);
};

struct EndpointStats {
  uint64_t signals_sent = 0;  // Signals raised to the peer.
  uint64_t sleeps = 0;        // Times we waited on the wake fd.
  uint64_t spin_hits = 0;     // Times spinning found work and avoided a sleep.
  // Writer: busy-reader spins run (SpinPolicy::busy_reader_wait; those that found space are
  // among spin_hits), and spins skipped, the ring full and the reader masked, because the
  // last ones found no space.
  uint64_t busy_waits = 0;
  uint64_t busy_waits_skipped = 0;
};

class RingReader : private EventLoop::IdleHook {
 public:
  RingReader(EventLoop* loop, ring::IncomingRing ring, int wake_fd, Signal* peer,
             SpinPolicy spin = {})
      : loop_(loop), ring_(std::move(ring)), wake_fd_(wake_fd), peer_(peer), spin_(spin) {}
  // Ends a burst in progress (signalling if the rule says so).
  ~RingReader();
  RingReader(const RingReader&) = delete;
  RingReader& operator=(const RingReader&) = delete;

  ring::IncomingRing& ring() { return ring_; }
  const ring::IncomingRing& ring() const { return ring_; }
  const EndpointStats& stats() const { return stats_; }

  // Publishes what was read at once, signalling now if a waiting writer's request is visibly
  // met; the pending_send_sz rule's full check follows at the end of the burst (when the loop
  // goes idle, before Readable() sleeps, or every IncomingRing::kBurstCheckInterval releases).
  // Releases in any case, then returns the error of a signal raised at the end of an earlier
  // burst, if one failed, else that of its own signal.
  absl::Status Release();

  struct ReadableAwaiter {
    RingReader* reader;
    absl::Status status;
    EventLoop::PollAwaiter poll{nullptr, -1, absl::OkStatus()};
    bool await_ready();
    void await_suspend(std::coroutine_handle<> handle);
    absl::Status await_resume();
  };
  // Completes when the ring has packets (or is corrupt: the error).
  ReadableAwaiter Readable() { return ReadableAwaiter{this, absl::OkStatus()}; }

 private:
  void BeforeWaiting() override;
  // Ends the burst; signals if the rule says so.
  absl::Status EndBurst();

  EventLoop* loop_;
  ring::IncomingRing ring_;
  int wake_fd_;
  Signal* peer_;
  SpinPolicy spin_;
  EndpointStats stats_;
  absl::Status deferred_error_;  // A signal that failed at the end of a burst.
  bool woke_writer_ = false;     // We signalled the writer since the last Readable().
};

class RingWriter : private EventLoop::IdleHook {
 public:
  RingWriter(EventLoop* loop, ring::OutgoingRing ring, int wake_fd, Signal* peer,
             SpinPolicy spin = {})
      : loop_(loop), ring_(std::move(ring)), wake_fd_(wake_fd), peer_(peer), spin_(spin) {}
  // Ends a burst in progress (signalling if the rule says so).
  ~RingWriter();
  RingWriter(const RingWriter&) = delete;
  RingWriter& operator=(const RingWriter&) = delete;

  ring::OutgoingRing& ring() { return ring_; }
  const ring::OutgoingRing& ring() const { return ring_; }
  const EndpointStats& stats() const { return stats_; }

  // Publishes appended packets (ring().Append) at once, signalling now if the reader is
  // visibly idle; the full signal check follows when the burst ends (see above). Publishes in
  // any case, then returns the error of a signal raised at the end of an earlier burst, if one
  // failed, else that of its own signal.
  absl::Status Publish();
  // Publishes appended packets with the full check now (ending any burst); signals if the
  // rules say so. Errors as Publish's.
  absl::Status Flush();

  struct WritableAwaiter {
    RingWriter* writer;
    uint32_t packet_bytes;
    absl::Status status;
    EventLoop::PollAwaiter poll{nullptr, -1, absl::OkStatus()};
    bool await_ready();
    void await_suspend(std::coroutine_handle<> handle);
    absl::Status await_resume();
  };
  // Completes when a packet of `packet_bytes` (length + trailer) fits. Before sleeping it may
  // spin for a draining reader (SpinPolicy::busy_reader_wait, with its backoff).
  WritableAwaiter Writable(uint32_t packet_bytes) {
    return WritableAwaiter{this, packet_bytes, absl::OkStatus()};
  }

 private:
  friend struct WritableAwaiter;
  void BeforeWaiting() override;
  // Ends the burst; signals if the rule says so.
  absl::Status EndBurst();

  EventLoop* loop_;
  ring::OutgoingRing ring_;
  int wake_fd_;
  Signal* peer_;
  SpinPolicy spin_;
  EndpointStats stats_;
  absl::Status deferred_error_;  // A signal that failed at the end of a burst.
  // The busy-reader spin's backoff: spins in a row that found no space (capped at
  // SpinPolicy::kMaxBusyWaitBackoff), and waits left that skip the spin.
  uint32_t busy_wait_misses_ = 0;
  uint32_t busy_waits_to_skip_ = 0;
};

// Reads and discards an eventfd's counter (EFD_NONBLOCK); returns the count (0 if none).
uint64_t DrainEventFd(int fd);

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_URING_RING_ENDPOINT_H_
