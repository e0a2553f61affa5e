#include "paravisor/demo/hvsocket_demo.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "paravisor/testing/guest_hvsocket.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;

// The guest socket's rings and GPADL id, clear of the other demo channels'.
constexpr uint64_t kRingGpn = 0x3100;
constexpr uint32_t kGpadlId = 400;
constexpr uint32_t kGuestPort = 1025;  // Linux's first ephemeral vsock port.

absl::Status Step(const std::string& what, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      fmt::format("hvsocket demo: {}: {}", what, std::string(status.message())));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HvSocketDemo>> HvSocketDemo::Create(daemon::Daemon* daemon,
                                                                   const std::string& dir) {
  std::unique_ptr<HvSocketDemo> demo(new HvSocketDemo(daemon, dir));
  const std::string host_path = dir + "/host_" + std::to_string(kHostPort);
  sockaddr_un address{};
  if (host_path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(fmt::format("hvsocket demo: {} is too long", host_path));
  }
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, host_path.c_str(), host_path.size() + 1);
  demo->listener_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (demo->listener_ < 0 ||
      bind(demo->listener_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(demo->listener_, 4) != 0) {
    return absl::UnavailableError(
        fmt::format("hvsocket demo: listening on {}: {}", host_path, std::strerror(errno)));
  }
  demo->host_ = std::thread([d = demo.get()] { d->ServeHost(d->listener_); });
  return demo;
}

HvSocketDemo::~HvSocketDemo() {
  if (listener_ >= 0) shutdown(listener_, SHUT_RDWR);  // Ends an accept that still waits.
  if (host_.joinable()) host_.join();
  if (listener_ >= 0) close(listener_);
}

void HvSocketDemo::ServeHost(int listener) {
  const int connection = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (connection < 0) return;
  std::vector<uint8_t> received;
  uint8_t buffer[4096];
  for (;;) {
    const ssize_t n = read(connection, buffer, sizeof(buffer));
    if (n <= 0) break;  // End of stream (the guest's FIN), or an error.
    received.insert(received.end(), buffer, buffer + n);
  }
  std::string answer = "host got: ";
  for (uint8_t byte : received) answer.push_back(static_cast<char>(std::toupper(byte)));
  size_t sent = 0;
  while (sent < answer.size()) {
    const ssize_t n = send(connection, answer.data() + sent, answer.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  close(connection);
}

absl::Status HvSocketDemo::Run() {
  absl::StatusOr<std::unique_ptr<testing::GuestHvSocket>> socket = testing::GuestHvSocket::Connect(
      &daemon_->vm(), kGuestPort, kHostPort, {.gpadl_id = kGpadlId, .first_gpn = kRingGpn});
  if (!socket.ok()) return Step("connect to port 5000", socket.status());
  fmt::print(
      "   hvsocket: guest port {} connected to host port {} (relid {}, rings in private "
      "memory), relayed to {}/host_{}\n",
      kGuestPort, kHostPort, (*socket)->relid(), dir_, kHostPort);
  const std::string line = "hello from the confidential guest";
  std::vector<uint8_t> answer;
  absl::Status exchanged = (*socket)->Exchange(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(line.data()), line.size()),
      /*fin=*/true, SIZE_MAX, &answer, 5s);
  if (!exchanged.ok()) return Step("send, half-close and read", exchanged);
  fmt::print("   hvsocket: sent \"{}\" and a FIN; read \"{}\" and the host's FIN\n", line,
             std::string(answer.begin(), answer.end()));
  if (absl::Status closed = (*socket)->Close(5s); !closed.ok()) return Step("close", closed);
  const daemon::Tree relay = daemon_->Inspect()["devices"]["hvsocket"];
  fmt::print(
      "   hvsocket: closed as Linux closes (FIN, the host's rescind, CLOSECHANNEL); relay: "
      "{} guest connects, {} refused, {} finished\n",
      relay.value("guest_connects", 0), relay.value("guest_refused", 0),
      relay.value("finished", 0));
  const std::string expected = "host got: HELLO FROM THE CONFIDENTIAL GUEST";
  if (std::string(answer.begin(), answer.end()) != expected) {
    return absl::DataLossError("hvsocket demo: the host's answer is not what it sent");
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
