// EventLoop: one io_uring per thread that waits on many eventfds at once, runs timers, accepts
// work and messages from other threads and loops, and resumes coroutines (task.h).
//
// Setup: IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN where the kernel has them (completions run
// only when this thread waits, with no cross-CPU task work), else COOP_TASKRUN, else plain. The
// loop must be created on the thread that runs it ("one loop per thread"); everything but
// Post(), Stop(), ring_fd(), poster(), Park() and Unpark() must be called on that thread.
//
// Signalling another party: a plain write(2) to an eventfd (EventFdSignal) or an io_uring
// MSG_RING to another loop (MsgRingSignal). IORING_OP_WRITE on an eventfd is not used: it is
// punted to an io-wq worker (163 us here, limits.md).
//
// Teardown: the destructor first runs work already posted (so tasks woken by a closing channel
// finish), then cancels every operation in flight (IORING_ASYNC_CANCEL_ANY), reaps their
// completions, closes nothing it does not own, and destroys coroutines still suspended in them;
// it repeats both while the destroyed frames' dropped replies post more wake-ups. Then it
// destroys the tasks still parked (Park: waiting for a channel or a reply that nothing
// delivered), repeating from the start while that posts more, and last shuts its Poster: from
// then on nothing posted from another thread reaches it (Poster::Post and Waker::Wake return
// false). So when the destructor returns, every Task of the loop has finished or been destroyed
// (short of FileIoAwaiter's deliberate leak and the bounds on the rounds).
// The destructor may run on another thread once the loop's own thread has finished with it;
// the kernel then cancels what is left when the ring closes.
#ifndef CVMBUS_HW_URING_EVENT_LOOP_H_
#define CVMBUS_HW_URING_EVENT_LOOP_H_

#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"

namespace cvmbus::hw {

class EventLoop {
 public:
  struct Options {
    unsigned entries = 256;
    bool allow_defer_taskrun = true;  // Off: measure or debug the fallback.
    // Spin-then-sleep: before sleeping, keep asking the kernel for completions for up to this
    // long (io_uring_get_events runs the deferred task work without sleeping). A completion
    // that arrives meanwhile (a file read, a peer's doorbell on a watched eventfd, posted work)
    // then costs no sleep and wake-up of this thread, at the price of the CPU spent spinning:
    // the trade QEMU's iothread poll-max-ns makes. 0: sleep at once.
    std::chrono::nanoseconds busy_poll{0};
  };
  using Id = uint64_t;

  // Creates the loop for the calling thread.
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(Options options);
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create() { return Create(Options()); }
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Which setup flags the kernel accepted, e.g. "single_issuer+defer_taskrun".
  const std::string& setup_description() const { return setup_description_; }
  int ring_fd() const { return ring_.ring_fd; }

  // Dispatches completions until Stop(). RunOnce waits at most `timeout` for one batch.
  absl::Status Run();
  absl::Status RunOnce(std::chrono::nanoseconds timeout);
  // Thread-safe. Makes Run() return after the current batch.
  void Stop();

  // Options::busy_poll, changed on the loop thread.
  void SetBusyPoll(std::chrono::nanoseconds budget) { busy_poll_ = budget; }
  struct SpinStats {
    uint64_t hits = 0;    // Spins that found a completion (a sleep avoided).
    uint64_t misses = 0;  // Spins that ran out of budget and slept.
  };
  const SpinStats& spin_stats() const { return spin_stats_; }

  // Thread-safe: runs `fn` on the loop thread, in order of posting. The loop must outlive the
  // call: a thread that may still post after the loop is destroyed posts through poster().
  void Post(std::function<void()> fn);

  // The loop's cross-thread queue, shared (the loop holds one reference) with threads that may
  // outlive the loop: a device's loop torn down while another thread still sends to it.
  // Thread-safe. Post() costs what EventLoop::Post does: one lock and an eventfd write.
  //
  // Lifetime: the Poster (and the eventfd the loop watched) lives until its last reference
  // goes. While the loop lives, and throughout its destructor's draining, Post queues `fn` for
  // the loop thread and returns true. Once the destructor has shut the queue (see Teardown
  // above), Post returns false and `fn` is destroyed unrun on the calling thread; the loop is
  // never touched again. Work queued but not run when the loop is gone is destroyed unrun too.
  class Poster {
   public:
    ~Poster();
    Poster(const Poster&) = delete;
    Poster& operator=(const Poster&) = delete;

    // Runs `fn` on the loop thread, in order of posting with EventLoop::Post, and returns true;
    // false once the loop is gone (or going, past its last drain).
    bool Post(std::function<void()> fn);

   private:
    friend class EventLoop;
    explicit Poster(int fd) : fd_(fd) {}
    // Queues `fn` and signals the loop, unless shut and not `even_if_shut` (the loop's own
    // posts during its teardown).
    bool Enqueue(std::function<void()> fn, bool even_if_shut);
    bool HasQueued();
    std::deque<std::function<void()>> TakeQueued();
    bool Shut();  // Refuses Post() from now on; true if nothing is queued.

    const int fd_;  // Owned: signalling it after the loop is gone is harmless.
    Mutex mu_;
    std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
    bool shut_ ABSL_GUARDED_BY(mu_) = false;
  };
  // Never null once Create() has returned the loop. Any thread.
  const std::shared_ptr<Poster>& poster() const { return poster_; }

  // Waking a task that waits for something other than the loop (a channel's next value, an
  // Rpc's reply: paravisor/bus) from the thread that delivers it. The awaiter parks the task:
  // Park(handle) records the coroutine about to suspend with the loop that runs it and returns
  // a Waker for the deliverer, who may call it on any thread, any number of times, and after
  // the loop is gone:
  //  - while the loop lives, Wake() posts the task's resumption (Poster::Post), and the task
  //    resumes on the loop thread. Only the first wake-up of a parking resumes anything; later
  //    ones, and those of a parking withdrawn or destroyed, find nothing and do nothing;
  //  - a task still parked when the loop is destroyed (no wake-up arrived before the teardown
  //    had run everything posted) is destroyed by the teardown, like one suspended in an
  //    operation: its locals' destructors run, on the destructor's thread; it never resumes;
  //  - after that, Wake() returns false and posts nothing.
  // Park and Unpark are thread-safe, but the coroutine must be one of this loop's tasks.
  class Waker {
   public:
    Waker() = default;  // Wakes nothing: Wake() returns false.
    // Thread-safe. True if a wake-up was posted to the (still live) loop.
    bool Wake() const;

   private:
    friend class EventLoop;
    Waker(std::shared_ptr<Poster> poster, EventLoop* loop, Id id)
        : poster_(std::move(poster)), loop_(loop), id_(id) {}
    std::shared_ptr<Poster> poster_;
    // Not owned; dereferenced only by the posted wake-up, on the loop thread, while it lives.
    EventLoop* loop_ = nullptr;
    Id id_ = 0;
  };
  // Call from await_suspend only when the coroutine will suspend; if it continues after all
  // (what it waits for was there), Unpark the Waker first, or the teardown would destroy a
  // running or finished task.
  [[nodiscard]] Waker Park(std::coroutine_handle<> handle);
  void Unpark(const Waker& waker);

  // Calls `fn(count)` on the loop thread each time eventfd `fd` is signalled (the counter is
  // read and reset first; `fd` should be EFD_NONBLOCK). `fd` is not owned and must outlive the
  // watch. Multishot poll: one submission for any number of signals.
  absl::StatusOr<Id> WatchEventFd(int fd, std::function<void(uint64_t count)> fn);
  void Unwatch(Id id);

  // Calls `fn` once after `delay` unless cancelled first.
  absl::StatusOr<Id> AddTimer(std::chrono::nanoseconds delay, std::function<void()> fn);
  void CancelTimer(Id id);

  // Messages from other loops (MsgRingSignal): `fn(value)` runs for each; value < 2^62.
  void OnMessage(std::function<void(uint64_t value)> fn) { on_message_ = std::move(fn); }
  // Sends `value` (< 2^62) to the loop whose ring is `target_ring_fd` with IORING_OP_MSG_RING.
  absl::Status SendMessage(int target_ring_fd, uint64_t value);

  // Awaitables for tasks. `co_await loop.Readable(fd)` resumes once `fd` is readable (one-shot
  // poll; an eventfd's counter is left for the caller to read). `co_await loop.Sleep(d)`.
  struct PollAwaiter {
    EventLoop* loop;
    int fd;
    absl::Status status;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> handle);
    absl::Status await_resume() const noexcept { return status; }
  };
  PollAwaiter Readable(int fd) { return PollAwaiter{this, fd, absl::OkStatus()}; }
  struct SleepAwaiter {
    EventLoop* loop;
    std::chrono::nanoseconds delay;
    bool await_ready() const noexcept { return delay.count() <= 0; }
    void await_suspend(std::coroutine_handle<> handle);
    void await_resume() const noexcept {}
  };
  SleepAwaiter Sleep(std::chrono::nanoseconds delay) { return SleepAwaiter{this, delay}; }

  // Positioned vectored file I/O: `co_await loop.ReadV(fd, offset_bytes, iovecs)` and
  // `co_await loop.WriteV(...)` (IORING_OP_READV / WRITEV) resume with the bytes transferred.
  // A short count (end of file, a full disk) is not an error here: the caller decides. Errors
  // name the operation, fd and offset: "event loop: readv fd 7 at 4096: Bad file descriptor",
  // with the errno's absl code (absl::ErrnoToStatusCode).
  //
  // Lifetimes: `fd` is not owned. `iovecs` and the memory they describe must stay valid, and
  // untouched by the caller, until the awaiting coroutine resumes (or is destroyed by the
  // loop's teardown). Preconditions, reported as kInvalidArgument without submitting:
  // `offset_bytes` <= INT64_MAX and at most IOV_MAX iovecs.
  //
  // Teardown: a coroutine suspended here when the loop is destroyed is cancelled and destroyed,
  // never resumed, once the kernel has completed the request. If the kernel has not completed
  // it within teardown's bound, the frame is deliberately leaked rather than freed, since the
  // kernel may still write into buffers that live in it.
  struct FileIoAwaiter {
    enum class Op { kReadV, kWriteV };
    EventLoop* loop;
    Op op;
    int fd;
    uint64_t offset_bytes;
    absl::Span<const iovec> iovecs;
    int result = 0;       // The CQE's res, written by the loop before resuming.
    absl::Status failed;  // Set when the request was never submitted.
    bool await_ready() noexcept;
    void await_suspend(std::coroutine_handle<> handle);
    absl::StatusOr<size_t> await_resume() const;
  };
  FileIoAwaiter ReadV(int fd, uint64_t offset_bytes, absl::Span<const iovec> iovecs) {
    return FileIoAwaiter{this, FileIoAwaiter::Op::kReadV, fd, offset_bytes, iovecs};
  }
  FileIoAwaiter WriteV(int fd, uint64_t offset_bytes, absl::Span<const iovec> iovecs) {
    return FileIoAwaiter{this, FileIoAwaiter::Op::kWriteV, fd, offset_bytes, iovecs};
  }
  // Fixed buffers: memory registered once with the kernel (IORING_REGISTER_BUFFERS, pinned for
  // as long as the loop lives), so a ReadV or WriteV of a single iovec inside it runs as
  // READ_FIXED / WRITE_FIXED, with no page pinning per request (get_user_pages is a visible
  // share of a small O_DIRECT request's cost). Requests of several iovecs, or outside every
  // registered range, go as readv/writev. Up to kMaxFixedBuffers ranges; registered memory is
  // charged to RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK. Loop thread only. Errors:
  // kResourceExhausted when the table is full or the kernel refuses (ENOMEM past the limit),
  // with the errno named.
  static constexpr unsigned kMaxFixedBuffers = 8;
  absl::Status RegisterFixedBuffer(void* base, size_t len);
  struct FileIoStats {
    uint64_t fixed = 0;   // Requests that went as READ_FIXED / WRITE_FIXED.
    uint64_t vector = 0;  // Requests that went as readv / writev.
  };
  const FileIoStats& file_io_stats() const { return file_io_stats_; }

  // `co_await loop.Sync(fd, datasync)`: IORING_OP_FSYNC, with IORING_FSYNC_DATASYNC (only the
  // data and the metadata needed to read it back, like fdatasync(2)) when `datasync`. Errors:
  // "event loop: fdatasync fd 7: Bad file descriptor". Teardown as for FileIoAwaiter.
  struct SyncAwaiter {
    EventLoop* loop;
    int fd;
    bool datasync;
    int result = 0;       // The CQE's res, written by the loop before resuming.
    absl::Status failed;  // Set when the request was never submitted.
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> handle);
    absl::Status await_resume() const;
  };
  SyncAwaiter Sync(int fd, bool datasync) { return SyncAwaiter{this, fd, datasync}; }
  // `co_await loop.Fallocate(fd, mode, offset, len)`: IORING_OP_FALLOCATE, fallocate(2)'s
  // `mode` (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE deallocates a range, which then reads as
  // zeros). Errors: "event loop: fallocate fd 7 at 4096 (+512): Operation not supported".
  // Teardown as for FileIoAwaiter.
  struct FallocateAwaiter {
    EventLoop* loop;
    int fd;
    int mode;
    uint64_t offset_bytes;
    uint64_t len;
    int result = 0;       // The CQE's res, written by the loop before resuming.
    absl::Status failed;  // Set when the request was never submitted.
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> handle);
    absl::Status await_resume() const;
  };
  FallocateAwaiter Fallocate(int fd, int mode, uint64_t offset_bytes, uint64_t len) {
    return FallocateAwaiter{this, fd, mode, offset_bytes, len};
  }

  // Work deferred until the loop goes idle. BeforeWaiting() runs once, on the loop thread, after
  // the loop has dispatched everything ready and before it waits for more (and before Run()
  // returns). For work that batches until then, such as a ring writer's end-of-burst signal
  // check. Registering a hook already pending does nothing; a hook must not register itself
  // again from BeforeWaiting(). Loop thread only.
  class IdleHook {
   public:
    virtual void BeforeWaiting() = 0;

   protected:
    ~IdleHook() = default;

   private:
    friend class EventLoop;
    bool scheduled_ = false;  // In the loop's queue (so registering again is O(1)).
  };
  void CallBeforeWaiting(IdleHook* hook);
  void CancelBeforeWaiting(IdleHook* hook);

  // The registered buffer holding [base, base + len), if one does.
  std::optional<uint16_t> FixedBufferOf(const void* base, size_t len) const;

  // Operations in flight (for tests of teardown and leaks).
  size_t operations_in_flight() const { return operations_.size(); }
  // Runs the work posted so far (Post, Poster::Post, Wakers' wake-ups) at once, in order, as
  // RunOnce would once the kernel reported it; false if none was queued. Loop thread only. For
  // a driver that runs the loop by hand and never waits on timers or I/O (a fuzzer: `while
  // (loop.RunPostedWork()) {}` leaves it idle, timers unfired, with no system call but the
  // posts' own eventfd writes).
  bool RunPostedWork() {
    if (!HasPosted()) return false;
    DrainPosted();
    return true;
  }

 private:
  // kFileIo: readv, writev and fsync, whose kernel side may write into the waiter's memory.
  enum class Kind { kWatch, kTimer, kPoll, kSleep, kFileIo, kSendMessage, kCancel };
  struct Operation {
    Kind kind;
    int fd = -1;
    std::function<void(uint64_t)> on_event;  // kWatch
    std::function<void()> on_timer;          // kTimer
    std::coroutine_handle<> waiter;          // kPoll, kSleep, kFileIo
    absl::Status* result = nullptr;          // kPoll: where to put the outcome
    int* cqe_result = nullptr;               // kFileIo: where to put the CQE's res
    __kernel_timespec timeout{};             // kTimer, kSleep: must outlive the SQE
    bool cancelled = false;
  };

  EventLoop() = default;
  absl::Status Init(const Options& options);
  io_uring_sqe* GetSqe();
  Id Submit(Operation operation, const std::function<void(io_uring_sqe*, Operation&)>& prep);
  void Dispatch(const io_uring_cqe& cqe);
  void DrainPosted();
  bool HasPosted();
  // Loop thread (or the destructor's). A parking's wake-up: resumes it if still parked.
  void ResumeParked(Id id);
  // Destroys every parked task; true if there was one.
  bool DestroyParked();
  void RunIdleHooks();
  // Busy-polls for a completion for at most `budget` (the spin-then-sleep phase).
  void SpinForCompletions(std::chrono::nanoseconds budget);
  void CancelAll();

  io_uring ring_{};
  bool ring_ready_ = false;
  std::string setup_description_;
  // Registered fixed buffers, by table index (the table is made sparse on first use).
  struct FixedBuffer {
    uintptr_t base;
    size_t len;
  };
  std::vector<FixedBuffer> fixed_buffers_;
  bool fixed_table_ = false;
  FileIoStats file_io_stats_;
  Id next_id_ = 1;
  absl::flat_hash_map<Id, std::unique_ptr<Operation>> operations_;
  std::function<void(uint64_t)> on_message_;
  bool stop_requested_ = false;            // Loop thread only.
  std::chrono::nanoseconds busy_poll_{0};  // Loop thread only.
  SpinStats spin_stats_;                   // Loop thread only.
  std::deque<IdleHook*> idle_hooks_;       // Pending BeforeWaiting calls; loop thread only.

  // Cross-thread posting: a queue and an eventfd the loop watches.
  std::shared_ptr<Poster> poster_;
  std::atomic<bool> stop_from_other_thread_{false};
  // Parked tasks (Park), by parking id. Guarded rather than loop-thread-only: the bus awaiters
  // never required the loop's thread at a task's first co_await (before its loop runs).
  Mutex parked_mu_;
  absl::flat_hash_map<Id, std::coroutine_handle<>> parked_ ABSL_GUARDED_BY(parked_mu_);
  Id next_parked_id_ ABSL_GUARDED_BY(parked_mu_) = 1;
};

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_URING_EVENT_LOOP_H_
