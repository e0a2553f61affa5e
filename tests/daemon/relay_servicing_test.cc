// Servicing the daemon while a guest hvsocket stream runs through the relay: a host socket
// cannot be saved, so the connection ends as if the host went away (the host end reads EOF,
// the guest gets the rescind Linux's hyperv_transport waits for) and is counted; the relay
// listens again after the restore and a new connection carries bytes both ways.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "paravisor/daemon/daemon.h"
#include "paravisor/testing/guest_hvsocket.h"

namespace cvmbus::paravisor::daemon {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kHostPort = 5000;

Tree At(const Tree& tree, const std::string& path) {
  absl::StatusOr<Tree> at = Subtree(tree, path);
  return at.ok() ? *at : Tree();
}

int Listen(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_EQ(bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(listen(fd, 4), 0);
  return fd;
}

// The host end of one connection: accepts, writes `greeting`, then reads until EOF and returns
// what it read.
std::string HostEnd(int listener, const std::string& greeting) {
  const int connection = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (connection < 0) return "accept failed";
  (void)send(connection, greeting.data(), greeting.size(), MSG_NOSIGNAL);
  std::string received;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(connection, buffer, sizeof(buffer));
    if (n <= 0) break;
    received.append(buffer, static_cast<size_t>(n));
  }
  close(connection);
  return received;
}

TEST(RelayServicingTest, AStreamEndsAtServicingAndANewOneRunsAfter) {
  char dir[] = "/tmp/cvmbusd_relay_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  Settings settings;
  settings.guest = GUEST_NONE;  // The test is the guest.
  settings.max_version = protocol::kVersionWin10V6_0;
  settings.hvsocket_prefix = std::string(dir) + "/hv";
  settings.control_socket = std::string(dir) + "/control.sock";
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  vm::VirtualMachine& vm = (*daemon)->vm();
  ASSERT_TRUE(
      vm.guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels).ok());
  ASSERT_TRUE(vm.guest().RequestOffers().ok());
  const std::string host_path = settings.hvsocket_prefix + "_" + std::to_string(kHostPort);
  const int listener = Listen(host_path);

  std::future<std::string> first_host =
      std::async(std::launch::async, [&] { return HostEnd(listener, "before"); });
  auto first =
      testing::GuestHvSocket::Connect(&vm, 1025, kHostPort, {.gpadl_id = 400, .first_gpn = 0x3100});
  ASSERT_TRUE(first.ok()) << first.status();
  std::vector<uint8_t> got;
  ASSERT_TRUE((*first)->Exchange({}, false, 6, &got, 5s).ok());
  EXPECT_EQ(std::string(got.begin(), got.end()), "before");

  const absl::Status serviced = (*daemon)->Service();
  ASSERT_TRUE(serviced.ok()) << serviced;
  ASSERT_EQ(first_host.wait_for(5s), std::future_status::ready) << "the host end never saw EOF";
  EXPECT_EQ(first_host.get(), "");
  EXPECT_TRUE((*first)->WaitForRescind(5s).ok());
  EXPECT_TRUE((*first)->Close(5s).ok());
  Tree tree = (*daemon)->Inspect();
  EXPECT_EQ(At(tree, "daemon/servicing/hvsocket_connections_reset"), 1);
  EXPECT_EQ(At(tree, "daemon/servicing/done"), 1);

  std::future<std::string> second_host =
      std::async(std::launch::async, [&] { return HostEnd(listener, "after"); });
  auto second =
      testing::GuestHvSocket::Connect(&vm, 1026, kHostPort, {.gpadl_id = 410, .first_gpn = 0x3200});
  ASSERT_TRUE(second.ok()) << second.status();
  const std::string line = "the guest, after servicing";
  got.clear();
  ASSERT_TRUE((*second)
                  ->Exchange(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(line.data()),
                                                 line.size()),
                             /*fin=*/true, 5, &got, 5s)
                  .ok());
  EXPECT_EQ(std::string(got.begin(), got.end()), "after");
  ASSERT_EQ(second_host.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(second_host.get(), line);
  EXPECT_TRUE((*second)->Close(5s).ok());
  (*daemon)->Stop();
  close(listener);
  unlink(host_path.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
