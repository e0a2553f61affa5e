#include "paravisor/daemon/control_server.h"

#include <fmt/format.h>
#include <sys/socket.h>

#include "absl/strings/str_split.h"

namespace cvmbus::paravisor::daemon {

absl::StatusOr<std::vector<std::string>> SplitRequest(std::string_view line) {
  for (const char c : line) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(
          fmt::format("request holds byte {:#04x}, which is not printable ASCII",
                      static_cast<unsigned char>(c)));
    }
  }
  std::vector<std::string> words =
      absl::StrSplit(absl::string_view(line.data(), line.size()), ' ', absl::SkipEmpty());
  if (words.empty()) return absl::InvalidArgumentError("empty request");
  return words;
}

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Create(hw::EventLoop* loop,
                                                                     std::string path,
                                                                     ControlHandler handler) {
  absl::StatusOr<hw::UnixListener> listener = hw::UnixListener::Listen(std::move(path));
  if (!listener.ok()) return listener.status();
  std::unique_ptr<ControlServer> server(new ControlServer(loop, std::move(handler)));
  server->listener_.emplace(*std::move(listener));
  server->Accept();
  return server;
}

ControlServer::~ControlServer() {
  *alive_ = false;
  listener_->Shutdown();  // The accept task wakes and returns.
}

hw::Task ControlServer::Accept() {
  std::shared_ptr<bool> alive = alive_;
  while (true) {
    absl::StatusOr<std::optional<hw::UnixStream>> accepted = listener_->TryAccept();
    if (!accepted.ok()) co_return;  // Shut down (or the listener failed: nothing to serve).
    if (accepted->has_value()) {
      if (clients_ >= kMaxClients) {
        ++refused_;  // Dropping the stream closes it.
      } else {
        Serve(std::move(**accepted));
      }
      continue;
    }
    (void)co_await listener_->WaitForConnection(loop_);
    if (!*alive) co_return;
  }
}

hw::Task ControlServer::Serve(hw::UnixStream stream) {
  std::shared_ptr<bool> alive = alive_;
  ++clients_;
  struct Leave {  // However this task ends: one client fewer, and the timer is disarmed.
    ControlServer* server;
    std::shared_ptr<bool> alive;
    std::shared_ptr<bool> reading = std::make_shared<bool>(true);
    ~Leave() {
      *reading = false;
      if (*alive) --server->clients_;
    }
  } leave{this, alive};
  const int fd = stream.fd();
  (void)loop_->AddTimer(kRequestTimeout, [reading = leave.reading, fd] {
    if (*reading) (void)shutdown(fd, SHUT_RDWR);  // Ends the read in flight.
  });
  std::string request;
  std::vector<uint8_t> buffer(kMaxRequestBytes);
  std::optional<size_t> newline;
  absl::Status failure;
  while (!newline.has_value()) {
    if (request.size() >= kMaxRequestBytes) {
      failure =
          absl::InvalidArgumentError(fmt::format("request longer than {} bytes", kMaxRequestBytes));
      break;
    }
    absl::StatusOr<size_t> got = co_await stream.Read(
        loop_, absl::MakeSpan(buffer).subspan(0, kMaxRequestBytes - request.size()));
    if (!*alive) co_return;
    if (!got.ok()) co_return;  // The peer went away (or timed out): nobody to answer.
    if (*got == 0) {
      failure = absl::InvalidArgumentError("request ended without a newline");
      break;
    }
    request.append(reinterpret_cast<const char*>(buffer.data()), *got);
    const size_t at = request.find('\n');
    if (at != std::string::npos) newline = at;
  }
  *leave.reading = false;
  std::string reply;
  if (failure.ok()) {
    ++requests_;
    absl::StatusOr<std::vector<std::string>> words =
        SplitRequest(std::string_view(request).substr(0, *newline));
    absl::StatusOr<std::string> body =
        words.ok() ? handler_(*words) : absl::StatusOr<std::string>(words.status());
    reply = body.ok() ? "ok\n" + *body
                      : fmt::format("error {}\n", std::string(body.status().message()));
  } else {
    reply = fmt::format("error {}\n", std::string(failure.message()));
  }
  size_t written = 0;
  while (written < reply.size()) {
    absl::StatusOr<size_t> wrote = co_await stream.Write(
        loop_, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(reply.data()) + written,
                                   reply.size() - written));
    if (!*alive || !wrote.ok() || *wrote == 0) co_return;
    written += *wrote;
  }
}

}  // namespace cvmbus::paravisor::daemon
