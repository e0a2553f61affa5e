#include "hw/uring/ring_endpoint.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "ring/errors.h"

namespace cvmbus::hw {

namespace {

// Waits a little between two polls of a cache line the peer writes (x86 PAUSE, ~0.5-1 us in
// all): each poll pulls the line away from the peer, so polling flat out would slow the very
// writer (or reader) we wait for.
inline void PauseBetweenPolls() {
#if defined(__x86_64__) || defined(__i386__)
  for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
#endif
}

// Calls `poll` (true: done) with pauses in between, for at most `budget` and while
// `worth_waiting()` holds. Returns true if `poll` succeeded.
template <typename Poll, typename WorthWaiting>
bool PollFor(std::chrono::nanoseconds budget, Poll poll, WorthWaiting worth_waiting) {
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (uint32_t i = 1; worth_waiting(); ++i) {
    if (poll()) return true;
    PauseBetweenPolls();
    if (i % 8 == 0 && std::chrono::steady_clock::now() >= deadline) break;
  }
  return false;
}

}  // namespace

uint64_t DrainEventFd(int fd) {
  uint64_t count = 0;
  return read(fd, &count, sizeof(count)) == sizeof(count) ? count : 0;
}

RingReader::~RingReader() {
  loop_->CancelBeforeWaiting(this);
  (void)EndBurst();
}

absl::Status RingReader::Release() {
  // Release whatever an earlier burst's signal did: the error is reported, the space is freed.
  absl::Status status = std::exchange(deferred_error_, absl::OkStatus());
  const bool signal = ring_.CommitInBurst();
  if (ring_.in_burst()) loop_->CallBeforeWaiting(this);
  if (signal) {
    ++stats_.signals_sent;
    woke_writer_ = true;
    status.Update(peer_->Raise());
  }
  return status;
}

absl::Status RingReader::EndBurst() {
  if (!ring_.EndBurst()) return absl::OkStatus();
  ++stats_.signals_sent;
  woke_writer_ = true;
  return peer_->Raise();
}

void RingReader::BeforeWaiting() {
  if (absl::Status status = EndBurst(); !status.ok() && deferred_error_.ok()) {
    deferred_error_ = status;
  }
}

bool RingReader::ReadableAwaiter::await_ready() {
  ring::IncomingRing& ring = reader->ring_;
  // Mask while the device drains: the writer need not signal a reader that is reading.
  ring.Mask();
  absl::StatusOr<bool> has = ring.HasPackets();
  const bool woke_writer = std::exchange(reader->woke_writer_, false);
  if (!has.ok() || *has) {
    status = has.status();
    return true;
  }
  // Nothing to read: the reader is about to wait, which ends its burst (a writer waiting for
  // the space it released must be woken).
  if (absl::Status signalled = reader->EndBurst(); !signalled.ok()) {
    status = signalled;
    return true;
  }
  const auto poll_once = [&] {
    has = ring.HasPackets();
    if (!has.ok() || *has) {
      if (has.ok()) ++reader->stats_.spin_hits;
      status = has.status();
      return true;
    }
    return false;
  };
  for (uint32_t i = 0; i < reader->spin_.polls_before_sleep; ++i) {
    if (poll_once()) return true;
  }
  if ((woke_writer || reader->woke_writer_) && reader->spin_.woken_writer_wait.count() > 0) {
    reader->woke_writer_ = false;
    if (PollFor(reader->spin_.woken_writer_wait, poll_once, [] { return true; })) return true;
  }
  // About to sleep: unmask, then re-check. A packet published before the writer could see the
  // cleared mask is caught here instead of being slept through.
  has = ring.Unmask();
  if (!has.ok() || *has) {
    if (has.ok()) ring.Mask();
    status = has.status();
    return true;
  }
  return false;
}

void RingReader::ReadableAwaiter::await_suspend(std::coroutine_handle<> handle) {
  ++reader->stats_.sleeps;
  poll = reader->loop_->Readable(reader->wake_fd_);
  poll.await_suspend(handle);
}

absl::Status RingReader::ReadableAwaiter::await_resume() {
  if (!status.ok()) return status;
  if (poll.loop != nullptr) {  // We slept: consume the wake-up, mask again for the drain.
    if (!poll.status.ok()) return poll.status;
    DrainEventFd(reader->wake_fd_);
    reader->ring_.Mask();
  }
  return absl::OkStatus();
}

RingWriter::~RingWriter() {
  loop_->CancelBeforeWaiting(this);
  (void)EndBurst();
}

absl::Status RingWriter::Publish() {
  // Publish whatever an earlier burst's signal did: the error is reported, the packets sent.
  absl::Status status = std::exchange(deferred_error_, absl::OkStatus());
  const bool signal = ring_.CommitInBurst();
  if (ring_.in_burst()) loop_->CallBeforeWaiting(this);
  if (signal) {
    ++stats_.signals_sent;
    status.Update(peer_->Raise());
  }
  return status;
}

absl::Status RingWriter::Flush() {
  absl::Status status = std::exchange(deferred_error_, absl::OkStatus());
  if (ring_.Commit()) {
    ++stats_.signals_sent;
    status.Update(peer_->Raise());
  }
  return status;
}

absl::Status RingWriter::EndBurst() {
  if (!ring_.EndBurst()) return absl::OkStatus();
  ++stats_.signals_sent;
  return peer_->Raise();
}

void RingWriter::BeforeWaiting() {
  if (absl::Status status = EndBurst(); !status.ok() && deferred_error_.ok()) {
    deferred_error_ = status;
  }
}

bool RingWriter::WritableAwaiter::await_ready() {
  ring::OutgoingRing& ring = writer->ring_;
  absl::StatusOr<uint32_t> free_bytes = ring.FreeBytes();
  if (!free_bytes.ok()) {
    status = free_bytes.status();
    return true;
  }
  if (*free_bytes > packet_bytes) return true;
  if (packet_bytes >= ring.data_size()) {
    status = ring::MakeRingError(ring::RingError::kTooLarge,
                                 "ring writer: a packet larger than the ring never fits");
    return true;
  }
  // Waiting ends a burst: a reader that went to sleep during it must be woken to free space.
  if (absl::Status signalled = writer->EndBurst(); !signalled.ok()) {
    status = signalled;
    return true;
  }
  const auto poll_once = [&] {
    free_bytes = ring.FreeBytes();
    if (!free_bytes.ok() || *free_bytes > packet_bytes) {
      if (free_bytes.ok()) ++writer->stats_.spin_hits;
      status = free_bytes.status();
      return true;
    }
    return false;
  };
  for (uint32_t i = 0; i < writer->spin_.polls_before_sleep; ++i) {
    if (poll_once()) return true;
  }
  // interrupt_mask is the guest's to set: spin only while spinning has lately found space.
  if (writer->spin_.busy_reader_wait.count() > 0 && ring.ReaderDraining()) {
    if (writer->busy_waits_to_skip_ > 0) {
      --writer->busy_waits_to_skip_;
      ++writer->stats_.busy_waits_skipped;
    } else {
      ++writer->stats_.busy_waits;
      if (PollFor(writer->spin_.busy_reader_wait, poll_once,
                  [&] { return ring.ReaderDraining(); })) {
        writer->busy_wait_misses_ = 0;
        return true;
      }
      writer->busy_wait_misses_ =
          std::min(writer->busy_wait_misses_ + 1, SpinPolicy::kMaxBusyWaitBackoff);
      writer->busy_waits_to_skip_ = (uint32_t{1} << writer->busy_wait_misses_) - 1;
    }
  }
  // Ask the reader to signal when the packet fits, then re-check (no lost wake-up).
  absl::StatusOr<bool> fits = ring.RequestSpace(packet_bytes);
  if (!fits.ok() || *fits) {
    status = fits.status();
    return true;
  }
  return false;
}

void RingWriter::WritableAwaiter::await_suspend(std::coroutine_handle<> handle) {
  ++writer->stats_.sleeps;
  poll = writer->loop_->Readable(writer->wake_fd_);
  poll.await_suspend(handle);
}

absl::Status RingWriter::WritableAwaiter::await_resume() {
  if (!status.ok()) return status;
  if (poll.loop != nullptr) {
    if (!poll.status.ok()) return poll.status;
    DrainEventFd(writer->wake_fd_);
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::hw
