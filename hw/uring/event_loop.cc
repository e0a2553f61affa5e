#include "hw/uring/event_loop.h"

#include <fmt/format.h>
#include <limits.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

namespace cvmbus::hw {
namespace {

// user_data tags. Plain values are operation ids (never zero, below 2^62).
constexpr uint64_t kMessageTag = uint64_t{1} << 63;   // A MSG_RING message from another loop.
constexpr uint64_t kInternalTag = uint64_t{1} << 62;  // Completions we do not track.
constexpr uint64_t kMaxMessage = (uint64_t{1} << 62) - 1;

absl::Status Errno(const char* what, int error) {
  return absl::InternalError(fmt::format("event loop: {}: {}", what, std::strerror(error)));
}

__kernel_timespec ToTimespec(std::chrono::nanoseconds duration) {
  const int64_t ns = std::max<int64_t>(duration.count(), 0);
  return __kernel_timespec{ns / 1000000000, ns % 1000000000};
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(Options options) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  if (absl::Status status = loop->Init(options); !status.ok()) return status;
  return loop;
}

absl::Status EventLoop::Init(const Options& options) {
  struct Attempt {
    unsigned flags;
    const char* name;
  };
  std::vector<Attempt> attempts;
  if (options.allow_defer_taskrun) {
    attempts.push_back(
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "single_issuer+defer_taskrun"});
  }
  attempts.push_back({IORING_SETUP_COOP_TASKRUN, "coop_taskrun"});
  attempts.push_back({0, "plain"});
  int result = -EINVAL;
  for (const Attempt& attempt : attempts) {
    io_uring_params params{};
    params.flags = attempt.flags;
    result = io_uring_queue_init_params(options.entries, &ring_, &params);
    if (result == 0) {
      setup_description_ = attempt.name;
      break;
    }
  }
  if (result != 0) return Errno("io_uring_queue_init_params", -result);
  ring_ready_ = true;
  busy_poll_ = options.busy_poll;

  const int post_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (post_fd < 0) return Errno("eventfd", errno);
  poster_ = std::shared_ptr<Poster>(new Poster(post_fd));
  absl::StatusOr<Id> watch = WatchEventFd(post_fd, [this](uint64_t) { DrainPosted(); });
  return watch.status();
}

EventLoop::~EventLoop() {
  if (ring_ready_) {
    // Work posted but not run yet is often a coroutine resumption (a closed channel, a dropped
    // reply): run it so those tasks finish and free their frames, instead of leaking them.
    // Cancelling destroys suspended coroutines, whose frames may drop replies that other
    // coroutines wait for: those wake-ups are posted in turn, so drain and cancel until both
    // are empty (bounded: a task that keeps re-posting must not hang teardown).
    // Only then are parked tasks destroyed: one whose wake-up arrived, even from a frame
    // destroyed here, has resumed by now, and the rest will never be woken by this loop.
    // Destroying them may post more (a Receiver or an Rpc in a frame): round again.
    // The queue stays open to other threads until all that is done, so their wake-ups of this
    // teardown's tasks still run; shutting it then leaves nothing queued by an earlier Post.
    for (int round = 0; round < 16; ++round) {
      for (int drain = 0; drain < 16 && HasPosted(); ++drain) DrainPosted();
      RunIdleHooks();
      CancelAll();
      if (HasPosted() || DestroyParked()) continue;
      if (poster_ == nullptr || poster_->Shut()) break;
    }
    DestroyParked();  // Past the bound: destroyed, never resumed, rather than leaked.
    io_uring_queue_exit(&ring_);
  }
  if (poster_ != nullptr) {
    poster_->Shut();
    // Work left past the bound (or posted by the loop's own frames above) is destroyed unrun,
    // here, not whenever the last Waker lets the Poster go.
    poster_->TakeQueued();
  }
}

bool EventLoop::HasPosted() { return poster_ != nullptr && poster_->HasQueued(); }

EventLoop::Poster::~Poster() { close(fd_); }

bool EventLoop::Poster::Post(std::function<void()> fn) {
  return Enqueue(std::move(fn), /*even_if_shut=*/false);
}

bool EventLoop::Poster::Enqueue(std::function<void()> fn, bool even_if_shut) {
  {
    MutexLock lock(&mu_);
    if (shut_ && !even_if_shut) return false;  // `fn` is destroyed by our caller, unrun.
    queue_.push_back(std::move(fn));
  }
  // After the unlock: the fd is ours, so a loop shut meanwhile costs a stray count, no more.
  const uint64_t one = 1;
  (void)!write(fd_, &one, sizeof(one));
  return true;
}

bool EventLoop::Poster::HasQueued() {
  MutexLock lock(&mu_);
  return !queue_.empty();
}

std::deque<std::function<void()>> EventLoop::Poster::TakeQueued() {
  std::deque<std::function<void()>> batch;
  MutexLock lock(&mu_);
  batch.swap(queue_);
  return batch;
}

bool EventLoop::Poster::Shut() {
  MutexLock lock(&mu_);
  shut_ = true;
  return queue_.empty();
}

EventLoop::Waker EventLoop::Park(std::coroutine_handle<> handle) {
  Id id;
  {
    MutexLock lock(&parked_mu_);
    id = next_parked_id_++;
    parked_.emplace(id, handle);
  }
  return Waker(poster_, this, id);
}

void EventLoop::Unpark(const Waker& waker) {
  MutexLock lock(&parked_mu_);
  parked_.erase(waker.id_);
}

bool EventLoop::Waker::Wake() const {
  if (poster_ == nullptr) return false;
  // Runs only on the live loop (the Poster refuses work once the loop is shutting down).
  return poster_->Post([loop = loop_, id = id_] { loop->ResumeParked(id); });
}

void EventLoop::ResumeParked(Id id) {
  std::coroutine_handle<> handle;
  {
    MutexLock lock(&parked_mu_);
    auto it = parked_.find(id);
    if (it == parked_.end()) return;  // Woken already, unparked, or destroyed by the teardown.
    handle = it->second;
    parked_.erase(it);
  }
  handle.resume();
}

bool EventLoop::DestroyParked() {
  absl::flat_hash_map<Id, std::coroutine_handle<>> parked;
  {
    MutexLock lock(&parked_mu_);
    parked.swap(parked_);
  }
  // Taken out first: a frame's destructor may wake its own parking, which must then find
  // nothing.
  for (auto& [id, handle] : parked) handle.destroy();
  return !parked.empty();
}

io_uring_sqe* EventLoop::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {  // Submission queue full: hand what we have to the kernel first.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

EventLoop::Id EventLoop::Submit(Operation operation,
                                const std::function<void(io_uring_sqe*, Operation&)>& prep) {
  const Id id = next_id_++;
  auto stored = std::make_unique<Operation>(std::move(operation));
  io_uring_sqe* sqe = GetSqe();
  if (sqe == nullptr) return 0;  // The kernel accepts no more: caller reports the failure.
  prep(sqe, *stored);
  io_uring_sqe_set_data64(sqe, id);
  operations_.emplace(id, std::move(stored));
  return id;
}

absl::StatusOr<EventLoop::Id> EventLoop::WatchEventFd(int fd, std::function<void(uint64_t)> fn) {
  Operation operation{.kind = Kind::kWatch, .fd = fd, .on_event = std::move(fn)};
  const Id id = Submit(std::move(operation), [fd](io_uring_sqe* sqe, Operation&) {
    io_uring_prep_poll_multishot(sqe, fd, POLLIN);
  });
  if (id == 0) return absl::ResourceExhaustedError("event loop: submission queue full");
  return id;
}

void EventLoop::Unwatch(Id id) {
  auto it = operations_.find(id);
  if (it == operations_.end() || it->second->cancelled) return;
  it->second->cancelled = true;  // No more callbacks, even for completions already queued.
  if (io_uring_sqe* sqe = GetSqe()) {
    io_uring_prep_cancel64(sqe, id, 0);
    io_uring_sqe_set_data64(sqe, kInternalTag);
  }
}

absl::StatusOr<EventLoop::Id> EventLoop::AddTimer(std::chrono::nanoseconds delay,
                                                  std::function<void()> fn) {
  Operation operation{.kind = Kind::kTimer, .on_timer = std::move(fn)};
  operation.timeout = ToTimespec(delay);
  const Id id = Submit(std::move(operation), [](io_uring_sqe* sqe, Operation& stored) {
    io_uring_prep_timeout(sqe, &stored.timeout, 0, 0);
  });
  if (id == 0) return absl::ResourceExhaustedError("event loop: submission queue full");
  return id;
}

void EventLoop::CancelTimer(Id id) {
  auto it = operations_.find(id);
  if (it == operations_.end() || it->second->kind != Kind::kTimer) return;
  it->second->cancelled = true;
  if (io_uring_sqe* sqe = GetSqe()) {
    io_uring_prep_timeout_remove(sqe, id, 0);
    io_uring_sqe_set_data64(sqe, kInternalTag);
  }
}

absl::Status EventLoop::SendMessage(int target_ring_fd, uint64_t value) {
  if (value > kMaxMessage) return absl::InvalidArgumentError("event loop: message >= 2^62");
  io_uring_sqe* sqe = GetSqe();
  if (sqe == nullptr) return absl::ResourceExhaustedError("event loop: submission queue full");
  io_uring_prep_msg_ring(sqe, target_ring_fd, 0, kMessageTag | value, 0);
  io_uring_sqe_set_data64(sqe, kInternalTag);
  // Submit now: a signal must not wait for our next wait.
  const int submitted = io_uring_submit(&ring_);
  if (submitted < 0) return Errno("io_uring_submit (MSG_RING)", -submitted);
  return absl::OkStatus();
}

void EventLoop::PollAwaiter::await_suspend(std::coroutine_handle<> handle) {
  Operation operation{.kind = Kind::kPoll, .fd = fd, .waiter = handle, .result = &status};
  const int poll_fd = fd;
  if (loop->Submit(std::move(operation), [poll_fd](io_uring_sqe* sqe, Operation&) {
        io_uring_prep_poll_add(sqe, poll_fd, POLLIN);
      }) == 0) {
    status = absl::ResourceExhaustedError("event loop: submission queue full");
    loop->Post([handle] { handle.resume(); });
  }
}

void EventLoop::SleepAwaiter::await_suspend(std::coroutine_handle<> handle) {
  Operation operation{.kind = Kind::kSleep, .waiter = handle};
  operation.timeout = ToTimespec(delay);
  if (loop->Submit(std::move(operation), [](io_uring_sqe* sqe, Operation& stored) {
        io_uring_prep_timeout(sqe, &stored.timeout, 0, 0);
      }) == 0) {
    loop->Post([handle] { handle.resume(); });
  }
}

bool EventLoop::FileIoAwaiter::await_ready() noexcept {
  const char* name = op == Op::kReadV ? "readv" : "writev";
  if (offset_bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    // io_uring reads (u64)-1 as "the file position": never let an offset mean that.
    failed = absl::InvalidArgumentError(
        fmt::format("event loop: {} fd {} at {}: offset beyond INT64_MAX", name, fd, offset_bytes));
  } else if (iovecs.size() > IOV_MAX) {
    failed =
        absl::InvalidArgumentError(fmt::format("event loop: {} fd {} at {}: {} iovecs > {}", name,
                                               fd, offset_bytes, iovecs.size(), IOV_MAX));
  }
  return !failed.ok();
}

absl::Status EventLoop::RegisterFixedBuffer(void* base, size_t len) {
  if (fixed_buffers_.size() == kMaxFixedBuffers) {
    return absl::ResourceExhaustedError(
        fmt::format("event loop: register buffer: all {} fixed buffers in use", kMaxFixedBuffers));
  }
  if (!fixed_table_) {
    if (const int r = io_uring_register_buffers_sparse(&ring_, kMaxFixedBuffers); r < 0) {
      return absl::ErrnoToStatus(-r, "event loop: register buffers (sparse table)");
    }
    fixed_table_ = true;
  }
  const iovec range{.iov_base = base, .iov_len = len};
  const auto index = static_cast<unsigned>(fixed_buffers_.size());
  const __u64 tag = 0;
  if (const int r = io_uring_register_buffers_update_tag(&ring_, index, &range, &tag, 1); r < 0) {
    return absl::ErrnoToStatus(
        -r, fmt::format("event loop: register buffer {} ({} bytes)", index, len));
  }
  fixed_buffers_.push_back({reinterpret_cast<uintptr_t>(base), len});
  return absl::OkStatus();
}

std::optional<uint16_t> EventLoop::FixedBufferOf(const void* base, size_t len) const {
  const auto address = reinterpret_cast<uintptr_t>(base);
  for (size_t i = 0; i < fixed_buffers_.size(); ++i) {
    const FixedBuffer& buffer = fixed_buffers_[i];
    if (address >= buffer.base && len <= buffer.len && address - buffer.base <= buffer.len - len) {
      return static_cast<uint16_t>(i);
    }
  }
  return std::nullopt;
}

void EventLoop::FileIoAwaiter::await_suspend(std::coroutine_handle<> handle) {
  Operation operation{.kind = Kind::kFileIo, .fd = fd, .waiter = handle, .cqe_result = &result};
  const bool read = op == Op::kReadV;
  const int io_fd = fd;
  const iovec* vecs = iovecs.data();
  const auto count = static_cast<unsigned>(iovecs.size());
  const uint64_t offset = offset_bytes;
  // One piece inside registered memory: the fixed-buffer op, with no per-request pinning.
  std::optional<uint16_t> fixed;
  if (count == 1 && vecs[0].iov_len <= UINT32_MAX) {
    fixed = loop->FixedBufferOf(vecs[0].iov_base, vecs[0].iov_len);
  }
  ++(fixed.has_value() ? loop->file_io_stats_.fixed : loop->file_io_stats_.vector);
  if (loop->Submit(std::move(operation), [=](io_uring_sqe* sqe, Operation&) {
        if (fixed.has_value()) {
          const auto bytes = static_cast<unsigned>(vecs[0].iov_len);
          if (read) {
            io_uring_prep_read_fixed(sqe, io_fd, vecs[0].iov_base, bytes, offset, *fixed);
          } else {
            io_uring_prep_write_fixed(sqe, io_fd, vecs[0].iov_base, bytes, offset, *fixed);
          }
        } else if (read) {
          io_uring_prep_readv(sqe, io_fd, vecs, count, offset);
        } else {
          io_uring_prep_writev(sqe, io_fd, vecs, count, offset);
        }
      }) == 0) {
    failed = absl::ResourceExhaustedError("event loop: submission queue full");
    loop->Post([handle] { handle.resume(); });
  }
}

absl::StatusOr<size_t> EventLoop::FileIoAwaiter::await_resume() const {
  if (!failed.ok()) return failed;
  if (result < 0) {
    return absl::ErrnoToStatus(
        -result, fmt::format("event loop: {} fd {} at {}", op == Op::kReadV ? "readv" : "writev",
                             fd, offset_bytes));
  }
  return static_cast<size_t>(result);
}

void EventLoop::SyncAwaiter::await_suspend(std::coroutine_handle<> handle) {
  Operation operation{.kind = Kind::kFileIo, .fd = fd, .waiter = handle, .cqe_result = &result};
  const int sync_fd = fd;
  const unsigned flags = datasync ? IORING_FSYNC_DATASYNC : 0;
  if (loop->Submit(std::move(operation), [=](io_uring_sqe* sqe, Operation&) {
        io_uring_prep_fsync(sqe, sync_fd, flags);
      }) == 0) {
    failed = absl::ResourceExhaustedError("event loop: submission queue full");
    loop->Post([handle] { handle.resume(); });
  }
}

void EventLoop::FallocateAwaiter::await_suspend(std::coroutine_handle<> handle) {
  Operation operation{.kind = Kind::kFileIo, .fd = fd, .waiter = handle, .cqe_result = &result};
  const int io_fd = fd, io_mode = mode;
  const uint64_t offset = offset_bytes, bytes = len;
  if (offset > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    failed = absl::InvalidArgumentError(fmt::format(
        "event loop: fallocate fd {} at {} (+{}): beyond INT64_MAX", fd, offset, bytes));
    loop->Post([handle] { handle.resume(); });
    return;
  }
  if (loop->Submit(std::move(operation), [=](io_uring_sqe* sqe, Operation&) {
        io_uring_prep_fallocate(sqe, io_fd, io_mode, offset, bytes);
      }) == 0) {
    failed = absl::ResourceExhaustedError("event loop: submission queue full");
    loop->Post([handle] { handle.resume(); });
  }
}

absl::Status EventLoop::FallocateAwaiter::await_resume() const {
  if (!failed.ok()) return failed;
  if (result < 0) {
    return absl::ErrnoToStatus(
        -result, fmt::format("event loop: fallocate fd {} at {} (+{})", fd, offset_bytes, len));
  }
  return absl::OkStatus();
}

absl::Status EventLoop::SyncAwaiter::await_resume() const {
  if (!failed.ok()) return failed;
  if (result < 0) {
    return absl::ErrnoToStatus(
        -result, fmt::format("event loop: {} fd {}", datasync ? "fdatasync" : "fsync", fd));
  }
  return absl::OkStatus();
}

void EventLoop::Post(std::function<void()> fn) {
  // The loop is alive (the caller's contract): its own teardown's posts must still run.
  poster_->Enqueue(std::move(fn), /*even_if_shut=*/true);
}

void EventLoop::Stop() {
  stop_from_other_thread_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!write(poster_->fd_, &one, sizeof(one));
}

void EventLoop::DrainPosted() {
  std::deque<std::function<void()>> batch = poster_->TakeQueued();
  for (auto& fn : batch) fn();
  if (stop_from_other_thread_.exchange(false, std::memory_order_acq_rel)) stop_requested_ = true;
}

void EventLoop::Dispatch(const io_uring_cqe& cqe) {
  const uint64_t data = cqe.user_data;
  if (data & kMessageTag) {
    if (on_message_) on_message_(data & kMaxMessage);
    return;
  }
  if (data & kInternalTag) return;
  auto it = operations_.find(data);
  if (it == operations_.end()) return;
  Operation& operation = *it->second;
  const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
  switch (operation.kind) {
    case Kind::kWatch: {
      if (!operation.cancelled && cqe.res >= 0) {
        uint64_t count = 0;
        if (read(operation.fd, &count, sizeof(count)) == sizeof(count) && count > 0) {
          operation.on_event(count);  // May Unwatch this very operation: `it` stays valid.
        }
      }
      if (!more) {
        auto again = operations_.find(data);
        if (again == operations_.end()) return;
        if (again->second->cancelled || cqe.res < 0) {
          operations_.erase(again);
        } else if (io_uring_sqe* sqe = GetSqe()) {  // The kernel ended the multishot: re-arm.
          io_uring_prep_poll_multishot(sqe, again->second->fd, POLLIN);
          io_uring_sqe_set_data64(sqe, data);
        }
      }
      return;
    }
    case Kind::kTimer: {
      std::unique_ptr<Operation> owned = std::move(it->second);
      operations_.erase(it);
      if (!owned->cancelled && cqe.res == -ETIME) owned->on_timer();
      return;
    }
    case Kind::kPoll:
    case Kind::kSleep: {
      std::unique_ptr<Operation> owned = std::move(it->second);
      operations_.erase(it);
      if (owned->kind == Kind::kPoll && cqe.res < 0) {
        *owned->result = Errno("poll", -cqe.res);
      }
      owned->waiter.resume();
      return;
    }
    case Kind::kFileIo: {
      std::unique_ptr<Operation> owned = std::move(it->second);
      operations_.erase(it);
      *owned->cqe_result = cqe.res;
      owned->waiter.resume();
      return;
    }
    case Kind::kSendMessage:
    case Kind::kCancel:
      operations_.erase(it);
      return;
  }
}

void EventLoop::CallBeforeWaiting(IdleHook* hook) {
  if (hook->scheduled_) return;  // Called per packet by a writer in a burst: O(1).
  hook->scheduled_ = true;
  idle_hooks_.push_back(hook);
}

void EventLoop::CancelBeforeWaiting(IdleHook* hook) {
  if (!hook->scheduled_) return;
  hook->scheduled_ = false;
  idle_hooks_.erase(std::remove(idle_hooks_.begin(), idle_hooks_.end(), hook), idle_hooks_.end());
}

void EventLoop::RunIdleHooks() {
  // One at a time from the queue: a hook may register others (a signal that resumes a writer
  // which writes again) or cancel them (a task it resumes destroys an endpoint).
  while (!idle_hooks_.empty()) {
    IdleHook* hook = idle_hooks_.front();
    idle_hooks_.pop_front();
    hook->scheduled_ = false;
    hook->BeforeWaiting();
  }
}

void EventLoop::SpinForCompletions(std::chrono::nanoseconds budget) {
  io_uring_submit(&ring_);  // What was prepared must be under way before we wait for it.
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (uint32_t i = 1;; ++i) {
    io_uring_get_events(&ring_);
    if (io_uring_cq_ready(&ring_) > 0) {
      ++spin_stats_.hits;
      return;
    }
    // The clock costs about as much as the poll: look at it every few rounds.
    if (i % 4 == 0 && std::chrono::steady_clock::now() >= deadline) break;
  }
  ++spin_stats_.misses;
}

absl::Status EventLoop::RunOnce(std::chrono::nanoseconds timeout) {
  RunIdleHooks();
  if (busy_poll_.count() > 0 && timeout.count() > 0 && io_uring_cq_ready(&ring_) == 0) {
    SpinForCompletions(std::min(busy_poll_, timeout));
  }
  __kernel_timespec wait = ToTimespec(timeout);
  io_uring_cqe* first = nullptr;
  const int result = io_uring_submit_and_wait_timeout(&ring_, &first, 1, &wait, nullptr);
  if (result < 0 && result != -ETIME && result != -EINTR) {
    return Errno("io_uring_submit_and_wait_timeout", -result);
  }
  // Dispatch a snapshot of the ready completions; callbacks may submit more.
  std::vector<io_uring_cqe> ready;
  unsigned head;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) { ready.push_back(*cqe); }
  io_uring_cq_advance(&ring_, static_cast<unsigned>(ready.size()));
  for (const io_uring_cqe& completion : ready) Dispatch(completion);
  return absl::OkStatus();
}

absl::Status EventLoop::Run() {
  stop_requested_ = false;
  while (!stop_requested_) {
    if (absl::Status status = RunOnce(std::chrono::seconds(1)); !status.ok()) return status;
  }
  RunIdleHooks();
  return absl::OkStatus();
}

void EventLoop::CancelAll() {
  for (auto& [id, operation] : operations_) operation->cancelled = true;
  if (io_uring_sqe* sqe = GetSqe()) {
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
    io_uring_sqe_set_data64(sqe, kInternalTag);
  }
  // Reap until every operation has completed (cancelled). Suspended coroutines are destroyed,
  // never resumed. Bounded: a kernel that never completes a cancel must not hang teardown.
  for (int round = 0; round < 100 && !operations_.empty(); ++round) {
    __kernel_timespec wait = ToTimespec(std::chrono::milliseconds(10));
    io_uring_cqe* first = nullptr;
    io_uring_submit_and_wait_timeout(&ring_, &first, 1, &wait, nullptr);
    unsigned head;
    io_uring_cqe* cqe;
    std::vector<uint64_t> finished;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (!(cqe->user_data & (kMessageTag | kInternalTag)) && !(cqe->flags & IORING_CQE_F_MORE)) {
        finished.push_back(cqe->user_data);
      }
    }
    io_uring_cq_advance(&ring_, io_uring_cq_ready(&ring_));
    for (uint64_t id : finished) {
      auto it = operations_.find(id);
      if (it == operations_.end()) continue;
      std::unique_ptr<Operation> owned = std::move(it->second);
      operations_.erase(it);
      if (owned->waiter) owned->waiter.destroy();
    }
  }
  for (auto& [id, operation] : operations_) {
    // A file read the kernel has not completed may still write into buffers in the waiter's
    // frame after the ring closes: leak that frame rather than free memory the kernel owns.
    if (operation->waiter && operation->kind != Kind::kFileIo) operation->waiter.destroy();
  }
  operations_.clear();
}

}  // namespace cvmbus::hw
