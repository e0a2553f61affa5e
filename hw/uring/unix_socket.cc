#include "hw/uring/unix_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

namespace cvmbus::hw {
namespace {

absl::Status PathError(const std::string& path, const char* operation, int error) {
  return absl::Status(absl::ErrnoToStatusCode(error),
                      fmt::format("unix socket {}: {}: {} (errno {})", path, operation,
                                  std::strerror(error), error));
}

absl::StatusOr<sockaddr_un> Address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(fmt::format(
        "unix socket {}: the path must have 1 to {} bytes", path, sizeof(address.sun_path) - 1));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

// Clears O_NONBLOCK: io_uring then waits on its own poll instead of failing with EAGAIN.
bool MakeBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  return flags >= 0 && fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0;
}

// True once SIGPIPE cannot end the process from this thread (blocked here, or ignored).
thread_local bool sigpipe_handled = false;
thread_local bool sigpipe_blocked_by_us = false;

void HandleSigpipeOnThisThread() {
  if (sigpipe_handled) return;
  sigpipe_handled = true;
  struct sigaction action {};
  if (sigaction(SIGPIPE, nullptr, &action) == 0 && action.sa_handler == SIG_IGN) return;
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigset_t old;
  if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) == 0 && !sigismember(&old, SIGPIPE)) {
    sigpipe_blocked_by_us = true;
  }
}

// Takes the SIGPIPE an EPIPE write raised at this thread, so that blocked signals do not pile
// up for whoever unblocks SIGPIPE later.
void ConsumeSigpipe() {
  if (!sigpipe_blocked_by_us) return;
  sigset_t pipe_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  const timespec zero{0, 0};
  while (sigtimedwait(&pipe_set, nullptr, &zero) == SIGPIPE) {
  }
}

}  // namespace

absl::StatusOr<UnixStream> UnixStream::Connect(std::string path) {
  absl::StatusOr<sockaddr_un> address = Address(path);
  if (!address.ok()) return address.status();
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return PathError(path, "socket", errno);
  UnixStream stream(fd, std::move(path));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    // AF_UNIX never answers EINPROGRESS: EAGAIN is a full backlog, which we do not wait out.
    return stream.Error("connect", errno);
  }
  if (!MakeBlocking(fd)) return stream.Error("fcntl", errno);
  return stream;
}

absl::StatusOr<std::pair<UnixStream, UnixStream>> UnixStream::Pair(std::string name) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return PathError(name, "socketpair", errno);
  }
  return std::pair<UnixStream, UnixStream>(UnixStream(fds[0], name), UnixStream(fds[1], name));
}

UnixStream& UnixStream::operator=(UnixStream&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

absl::Status UnixStream::Error(const char* operation, int error) const {
  return PathError(path_, operation, error);
}

absl::Status UnixStream::ShutdownWrite() {
  if (fd_ < 0) return absl::FailedPreconditionError("unix socket: not connected");
  if (shutdown(fd_, SHUT_WR) != 0) return Error("shutdown", errno);
  return absl::OkStatus();
}

void UnixStream::Abort() {
  if (fd_ >= 0) (void)shutdown(fd_, SHUT_RDWR);
}

void UnixStream::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

bool UnixStream::IoAwaiter::await_ready() noexcept {
  if (stream_->fd_ < 0) {
    failed_ = absl::FailedPreconditionError(fmt::format("unix socket {}: {} on a closed stream",
                                                        stream_->path_, write_ ? "write" : "read"));
    return true;
  }
  if (iov_.iov_len == 0) return true;
  if (write_) HandleSigpipeOnThisThread();
  const absl::Span<const iovec> iovecs(&iov_, 1);
  // Offset 0: sockets take no position (sock_read_iter refuses any other with ESPIPE).
  inner_.emplace(write_ ? loop_->WriteV(stream_->fd_, 0, iovecs)
                        : loop_->ReadV(stream_->fd_, 0, iovecs));
  return inner_->await_ready();
}

absl::StatusOr<size_t> UnixStream::IoAwaiter::await_resume() {
  if (!failed_.ok()) return failed_;
  if (!inner_.has_value()) return size_t{0};  // An empty span.
  const char* operation = write_ ? "write" : "read";
  if (!inner_->failed.ok()) {
    return absl::Status(inner_->failed.code(),
                        fmt::format("unix socket {}: {}: {}", stream_->path_, operation,
                                    std::string(inner_->failed.message())));
  }
  if (inner_->result < 0) {
    const int error = -inner_->result;
    if (error == EPIPE) ConsumeSigpipe();
    return stream_->Error(operation, error);
  }
  return static_cast<size_t>(inner_->result);
}

absl::StatusOr<UnixListener> UnixListener::Listen(std::string path, int backlog) {
  absl::StatusOr<sockaddr_un> address = Address(path);
  if (!address.ok()) return address.status();
  struct stat existing {};
  if (lstat(path.c_str(), &existing) == 0) {
    return absl::AlreadyExistsError(fmt::format("unix socket {}: the path exists", path));
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return PathError(path, "socket", errno);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    const int error = errno;
    close(fd);
    return PathError(path, "bind", error);
  }
  UnixListener listener(fd, std::move(path));  // Owns the path from here: unlinks it.
  if (listen(fd, backlog) != 0) return PathError(listener.path_, "listen", errno);
  return listener;
}

UnixListener::~UnixListener() {
  if (fd_ < 0) return;
  close(fd_);
  (void)unlink(path_.c_str());
}

absl::StatusOr<std::optional<UnixStream>> UnixListener::TryAccept() {
  if (shut_down_) {
    return absl::CancelledError(fmt::format("unix socket {}: the listener is shut down", path_));
  }
  // Accepted sockets come without O_NONBLOCK (no SOCK_NONBLOCK): see the header.
  const int fd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd >= 0) return std::optional<UnixStream>(UnixStream(fd, path_));
  const int error = errno;
  // Nothing waiting, or a client that gave up before we took it: not the listener's failure.
  if (error == EAGAIN || error == EWOULDBLOCK || error == ECONNABORTED || error == EINTR) {
    return std::optional<UnixStream>();
  }
  return PathError(path_, "accept", error);
}

void UnixListener::Shutdown() {
  shut_down_ = true;
  // Wakes a poll in flight (the socket reports POLLHUP from here on).
  if (fd_ >= 0) (void)shutdown(fd_, SHUT_RDWR);
}

}  // namespace cvmbus::hw
