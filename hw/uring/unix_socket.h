// AF_UNIX stream sockets on an EventLoop: connect, listen, accept, and reads and writes that
// run as io_uring operations.
//
//   absl::StatusOr<UnixStream> stream = UnixStream::Connect("/run/vm.sock_5000");
//   absl::StatusOr<size_t> n = co_await stream->Read(loop, buffer);   // 0: end of stream
//   absl::StatusOr<size_t> m = co_await stream->Write(loop, bytes);   // may be short
//
// Nothing here blocks the calling thread. Connect and accept are non-blocking calls (an
// AF_UNIX connect completes or fails at once; a full backlog is kUnavailable, not a wait).
// A connected stream is then switched to blocking mode on purpose: io_uring parks a read or
// write of a blocking socket on its internal poll until it can make progress, whereas with
// O_NONBLOCK it completes with EAGAIN and the caller would need a POLLOUT wait, which the
// EventLoop does not offer. So every read and write of a stream must go through Read/Write
// (never read(2)/write(2) on fd()).
//
// SIGPIPE: IORING_OP_WRITEV has no MSG_NOSIGNAL, so a write to a peer that has gone raises
// SIGPIPE at the writing thread. The first Write on a thread blocks SIGPIPE on that thread
// (unless it is already ignored or blocked), and a write that fails with EPIPE consumes the
// signal it raised: a peer that disappears is an error value, never the end of the process.
//
// Stopping: Abort() (shutdown(SHUT_RDWR)) makes every read and write in flight complete (a
// read with 0, a write with EPIPE), so a task waiting on a peer that never answers can be
// ended; close the descriptor (destroy the stream) only after those tasks have resumed.
//
// Errors name the socket's path, the operation and the errno, with the errno's absl code:
// "unix socket /run/vm.sock_5000: connect: No such file or directory (errno 2)" (kNotFound).
//
// Threads: a stream or listener and its awaiters belong to one loop thread.
#ifndef CVMBUS_HW_URING_UNIX_SOCKET_H_
#define CVMBUS_HW_URING_UNIX_SOCKET_H_

#include <sys/uio.h>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hw/uring/event_loop.h"

namespace cvmbus::hw {

class UnixStream {
 public:
  // Connects to the listener at `path`. kNotFound: no such socket file; kUnavailable: nobody
  // listens there (ECONNREFUSED) or its backlog is full (EAGAIN); kInvalidArgument: the path
  // does not fit sockaddr_un.
  static absl::StatusOr<UnixStream> Connect(std::string path);
  // A connected pair (socketpair), both in blocking mode; `name` labels their errors.
  static absl::StatusOr<std::pair<UnixStream, UnixStream>> Pair(std::string name);

  UnixStream() = default;
  UnixStream(UnixStream&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}
  UnixStream& operator=(UnixStream&& other) noexcept;
  UnixStream(const UnixStream&) = delete;
  UnixStream& operator=(const UnixStream&) = delete;
  ~UnixStream() { Close(); }

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  // `co_await Read(...)` / `co_await Write(...)`: an io_uring READV / WRITEV of the socket.
  // Lifetimes: the stream and the bytes must stay valid and untouched until the awaiting
  // coroutine resumes (or the loop's teardown destroys it). A read resumes with the bytes
  // read (0: the peer shut down its writes, or we aborted); a write with the bytes written,
  // possibly fewer than asked. An empty span completes at once with 0.
  class IoAwaiter {
   public:
    IoAwaiter(EventLoop* loop, const UnixStream* stream, bool write, void* data, size_t size)
        : loop_(loop), stream_(stream), write_(write), iov_{data, size} {}
    IoAwaiter(const IoAwaiter&) = delete;  // iovecs point into the awaiter: it never moves.
    IoAwaiter& operator=(const IoAwaiter&) = delete;
    bool await_ready() noexcept;
    void await_suspend(std::coroutine_handle<> handle) { inner_->await_suspend(handle); }
    absl::StatusOr<size_t> await_resume();

   private:
    EventLoop* loop_;
    const UnixStream* stream_;
    bool write_;
    iovec iov_;
    std::optional<EventLoop::FileIoAwaiter> inner_;
    absl::Status failed_;  // Set by await_ready when nothing was submitted.
  };
  IoAwaiter Read(EventLoop* loop, absl::Span<uint8_t> buffer) const {
    return IoAwaiter(loop, this, /*write=*/false, buffer.data(), buffer.size());
  }
  IoAwaiter Write(EventLoop* loop, absl::Span<const uint8_t> bytes) const {
    return IoAwaiter(loop, this, /*write=*/true, const_cast<uint8_t*>(bytes.data()), bytes.size());
  }

  // shutdown(SHUT_WR): the peer reads end-of-stream once it has read what we wrote.
  absl::Status ShutdownWrite();
  // shutdown(SHUT_RDWR): ends every read and write in flight (see "Stopping" above). Errors
  // are ignored (the peer may be gone already).
  void Abort();
  void Close();

 private:
  UnixStream(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  friend class UnixListener;
  // An error for `operation` and `error` (an errno) naming the path.
  absl::Status Error(const char* operation, int error) const;

  int fd_ = -1;
  std::string path_;
};

// A listening socket bound to a path, which it removes when destroyed.
class UnixListener {
 public:
  // Binds `path` (which must not exist: kAlreadyExists if it does, so another program's socket
  // is never taken over) and listens with `backlog`.
  static absl::StatusOr<UnixListener> Listen(std::string path, int backlog = 64);

  UnixListener(UnixListener&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)),
        path_(std::move(other.path_)),
        shut_down_(other.shut_down_) {}
  UnixListener& operator=(UnixListener&&) = delete;
  UnixListener(const UnixListener&) = delete;
  ~UnixListener();

  const std::string& path() const { return path_; }

  // The next pending connection (a blocking-mode stream, see above), or nullopt if none is
  // waiting. kCancelled after Shutdown().
  absl::StatusOr<std::optional<UnixStream>> TryAccept();
  // `co_await WaitForConnection(loop)` resumes once TryAccept may have one (or after
  // Shutdown()). Spurious wake-ups are possible: call TryAccept again.
  EventLoop::PollAwaiter WaitForConnection(EventLoop* loop) { return loop->Readable(fd_); }
  // Wakes a WaitForConnection in flight; TryAccept then fails with kCancelled.
  void Shutdown();

 private:
  UnixListener(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
  bool shut_down_ = false;
};

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_URING_UNIX_SOCKET_H_
