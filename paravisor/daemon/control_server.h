// cvmbusd's control socket: a Unix stream socket on the server's loop where cvmbusctl sends
// one request line and reads one reply, after which the daemon closes the connection.
//
//   request:  "<command> [argument...]\n"   (at most kMaxRequestBytes, within kRequestTimeout)
//   reply:    "ok\n<body>"  or  "error <message>\n"
//
// The handler runs on the loop thread and returns the reply's body or an error. A client that
// sends an overlong, unterminated or late line gets "error ..." (or, if it never finishes, a
// closed socket); past kMaxClients connections at once, new ones are closed unanswered.
//
// Threads: everything on `loop`'s thread (Create included). The socket file is removed when the
// server is destroyed; connections still being answered finish on their own.
#ifndef CVMBUS_PARAVISOR_DAEMON_CONTROL_SERVER_H_
#define CVMBUS_PARAVISOR_DAEMON_CONTROL_SERVER_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "hw/uring/unix_socket.h"

namespace cvmbus::paravisor::daemon {

inline constexpr size_t kMaxRequestBytes = 4096;
inline constexpr size_t kMaxClients = 16;
inline constexpr std::chrono::seconds kRequestTimeout{5};

// A request split into its words: words[0] is the command.
using ControlHandler =
    std::function<absl::StatusOr<std::string>(const std::vector<std::string>& words)>;

class ControlServer {
 public:
  // Binds `path` (which must not exist) and starts accepting.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Create(hw::EventLoop* loop,
                                                               std::string path,
                                                               ControlHandler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& path() const { return listener_->path(); }
  uint64_t requests() const { return requests_; }
  uint64_t refused() const { return refused_; }

 private:
  ControlServer(hw::EventLoop* loop, ControlHandler handler)
      : loop_(loop), handler_(std::move(handler)) {}
  hw::Task Accept();
  hw::Task Serve(hw::UnixStream stream);

  hw::EventLoop* const loop_;
  ControlHandler handler_;
  std::optional<hw::UnixListener> listener_;
  size_t clients_ = 0;
  uint64_t requests_ = 0;
  uint64_t refused_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Splits a request line (without its newline) into words separated by spaces; an empty line
// or a byte outside printable ASCII is an error.
absl::StatusOr<std::vector<std::string>> SplitRequest(std::string_view line);

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_CONTROL_SERVER_H_
