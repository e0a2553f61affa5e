#include "paravisor/devices/hvsocket/hvsocket_relay.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <string_view>
#include <utility>

#include "base/format.h"
#include "paravisor/devices/hvsocket/hvsocket_protocol.h"
#include "paravisor/devices/hvsocket/hybrid_vsock.h"

namespace cvmbus::paravisor::hvsocket {

HvSocketRelay::HvSocketRelay(hw::EventLoop* loop, ParentBus* bus, HvSocketRelayOptions options)
    : loop_(loop), bus_(bus), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<HvSocketRelay>> HvSocketRelay::Create(hw::EventLoop* loop,
                                                                     ParentBus* bus,
                                                                     HvSocketRelayOptions options) {
  std::unique_ptr<HvSocketRelay> relay(new HvSocketRelay(loop, bus, std::move(options)));
  if (!relay->options_.listener_path.empty()) {
    absl::StatusOr<hw::UnixListener> listener =
        hw::UnixListener::Listen(relay->options_.listener_path);
    if (!listener.ok()) return listener.status();
    relay->listener_.emplace(*std::move(listener));
    relay->AcceptHostConnections();
  }
  return relay;
}

HvSocketRelay::~HvSocketRelay() {
  *alive_ = false;
  if (listener_.has_value()) listener_->Shutdown();  // The accept task wakes and returns.
  // Connections outlive the relay until their channels are gone; they no longer report here.
  for (auto& [id, connection] : std::exchange(connections_, {})) {
    connection->Abort(ConnectionEnd::kRelayStopped, absl::CancelledError("hvsocket relay stopped"));
  }
}

void HvSocketRelay::Log(const std::string& line) {
  if (options_.log) {
    options_.log(line);
  } else {
    logger_.Warning(line);
  }
}

std::vector<ConnectionStats> HvSocketRelay::Connections() const {
  std::vector<ConnectionStats> all;
  for (const auto& [id, connection] : connections_) all.push_back(connection->stats());
  return all;
}

bool HvSocketRelay::OnGuestConnect(const HvSocketConnect& connect) {
  const auto refuse = [&](const std::string& why) {
    ++stats_.guest_refused;
    Log(fmt::format("guest connect to {} from {} refused: {}", connect.service_id.ToString(),
                    connect.endpoint_id.ToString(), why));
    return false;
  };
  if (options_.host_socket_base.empty()) return refuse("no host sockets configured");
  const std::optional<uint32_t> port = PortOfServiceId(connect.service_id);
  if (!port.has_value()) return refuse("not a vsock service id");
  if (connections_.size() >= options_.max_connections) return refuse("too many connections");
  const OfferKey key{connect.service_id, connect.endpoint_id, 0};
  for (const auto& [id, connection] : connections_) {
    if (connection->key() == key) return refuse("that connection exists");
  }
  const std::string path = HostSocketPath(options_.host_socket_base, *port);
  struct stat file {};
  if (stat(path.c_str(), &file) != 0 || !S_ISSOCK(file.st_mode)) {
    return refuse(fmt::format("no listener at {}", path));
  }
  HvSocketConnection::Params params{.offer = {.interface_name = "hvsocket",
                                              .instance_id = connect.endpoint_id,
                                              .interface_id = connect.service_id,
                                              .channel_type = HvSocketChannel{.is_connect = false}},
                                    .socket_path = path,
                                    .open_timeout = options_.open_timeout};
  if (!StartConnection(std::move(params))) return refuse("the offer failed");
  ++stats_.guest_connects;
  return true;
}

bool HvSocketRelay::StartConnection(HvSocketConnection::Params params) {
  const uint64_t id = next_id_++;
  params.id = id;
  std::shared_ptr<bool> alive = alive_;
  params.on_finished = [this, alive](const ConnectionStats& stats) {
    if (*alive) Finished(stats);
  };
  absl::StatusOr<std::shared_ptr<HvSocketConnection>> connection =
      HvSocketConnection::Start(loop_, bus_, std::move(params));
  if (!connection.ok()) {
    Log(fmt::format("connection {}: {}", id, connection.status()));
    return false;
  }
  connections_[id] = *std::move(connection);
  return true;
}

void HvSocketRelay::Finished(const ConnectionStats& stats) {
  connections_.erase(stats.id);
  ++stats_.finished;
  if (stats.end != ConnectionEnd::kClosed) {
    Log(fmt::format("connection {} ({}): {}{}{}", stats.id, stats.socket_path,
                    ConnectionEndName(stats.end), stats.error.ok() ? "" : ": ",
                    stats.error.ok() ? std::string() : stats.error.ToString()));
  }
  finished_.push_back(stats);
  while (finished_.size() > options_.finished_history) finished_.pop_front();
}

Guid HvSocketRelay::NewInstanceId(uint32_t host_port) {
  // The port is what a Linux guest reports as its peer's (get_port_by_srv_id(if_instance));
  // the rest only makes the offer's key unique.
  Guid id;
  id.data1 = host_port;
  const uint64_t a = random_();
  const uint64_t b = random_();
  id.data2 = static_cast<uint16_t>(a);
  id.data3 = static_cast<uint16_t>(a >> 16);
  for (int i = 0; i < 8; ++i) id.data4[i] = static_cast<uint8_t>(b >> (8 * i));
  return id;
}

hw::Task HvSocketRelay::AcceptHostConnections() {
  std::shared_ptr<bool> alive = alive_;
  while (true) {
    absl::StatusOr<std::optional<hw::UnixStream>> accepted = listener_->TryAccept();
    if (!accepted.ok()) {
      if (!absl::IsCancelled(accepted.status())) Log(fmt::format("{}", accepted.status()));
      co_return;
    }
    if (accepted->has_value()) {
      HandleHostConnection(std::move(**accepted));
      continue;
    }
    (void)co_await listener_->WaitForConnection(loop_);
    if (!*alive) co_return;
  }
}

hw::Task HvSocketRelay::HandleHostConnection(hw::UnixStream socket) {
  std::shared_ptr<bool> alive = alive_;
  // A program that never finishes its line is cut off: the timer aborts the read. The flag
  // (shared with the timer) says whether the request is still being read.
  auto reading = std::make_shared<bool>(true);
  struct ClearOnExit {  // However this task ends, the timer must not touch the fd afterwards.
    std::shared_ptr<bool> flag;
    ~ClearOnExit() { *flag = false; }
  } clear_on_exit{reading};
  const int fd = socket.fd();
  (void)loop_->AddTimer(options_.request_timeout, [reading, fd] {
    if (*reading) (void)shutdown(fd, SHUT_RDWR);
  });
  std::string bytes;
  std::vector<uint8_t> buffer(kMaxConnectLineBytes);
  std::optional<size_t> line_end;
  absl::Status failure;
  while (!line_end.has_value()) {
    absl::StatusOr<size_t> got = co_await socket.Read(
        loop_, absl::MakeSpan(buffer).subspan(0, kMaxConnectLineBytes - bytes.size()));
    if (!*alive) co_return;
    if (!got.ok() || *got == 0) {
      failure = got.ok() ? absl::DeadlineExceededError("no connect request") : got.status();
      break;
    }
    bytes.append(reinterpret_cast<const char*>(buffer.data()), *got);
    absl::StatusOr<std::optional<size_t>> found = FindConnectLine(bytes);
    if (!found.ok()) {
      failure = found.status();
      break;
    }
    line_end = *found;
  }
  *reading = false;
  absl::StatusOr<uint32_t> port =
      failure.ok() ? ParseConnectLine(std::string_view(bytes).substr(0, *line_end))
                   : absl::StatusOr<uint32_t>(failure);
  if (!port.ok()) {
    ++stats_.host_refused;
    Log(fmt::format("host connect on {}: {}", socket.path(), port.status()));
    co_return;  // Closing the socket is the answer (Firecracker and OpenVMM do the same).
  }
  const std::string rest = bytes.substr(*line_end + 1);
  const uint32_t host_port = next_host_port_++;
  HvSocketConnection::Params params{.offer = {.interface_name = "hvsocket_connect",
                                              .instance_id = NewInstanceId(host_port),
                                              .interface_id = ServiceIdForPort(*port),
                                              .channel_type = HvSocketChannel{.is_connect = true}},
                                    .socket_path = socket.path(),
                                    .socket = std::move(socket),
                                    .open_reply = OkLine(host_port),
                                    .early_bytes = std::vector<uint8_t>(rest.begin(), rest.end()),
                                    .open_timeout = options_.open_timeout};
  if (connections_.size() >= options_.max_connections || !StartConnection(std::move(params))) {
    ++stats_.host_refused;
    Log(fmt::format("host connect to guest port {}: refused", *port));
    co_return;
  }
  ++stats_.host_connects;
}

}  // namespace cvmbus::paravisor::hvsocket
