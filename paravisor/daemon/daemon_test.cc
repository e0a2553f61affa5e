// The daemon in-process: started from Settings with every kind of device and the in-process
// guest, inspected while the guest runs traffic, and stopped in order.
#include "paravisor/daemon/daemon.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <set>
#include <thread>

#include "paravisor/protocol/channel_messages.h"

namespace cvmbus::paravisor::daemon {
namespace {

using namespace std::chrono_literals;

// A directory of this test's own under /tmp: Bazel's TEST_TMPDIR is too long a path for a
// Unix socket.
std::string TempPath(const std::string& name) {
  static const std::string* dir = [] {
    char pattern[] = "/tmp/cvmbusd_test.XXXXXX";
    return new std::string(mkdtemp(pattern) != nullptr ? pattern : "/tmp");
  }();
  return *dir + "/" + name;
}

// A 1 MiB disk image.
std::string MakeDisk(const std::string& name) {
  const std::string path = TempPath(name);
  const int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(ftruncate(fd, 1 << 20), 0);
  close(fd);
  return path;
}

// The value at `path` ("a/b/c"), or null if there is none.
Tree At(const Tree& tree, const std::string& path) {
  absl::StatusOr<Tree> at = Subtree(tree, path);
  return at.ok() ? *at : Tree();
}

Settings FullSettings(const std::string& tag) {
  Settings settings;
  settings.guest = GUEST_CLIENT;
  settings.echo_packets_per_second = 500;
  settings.max_version = protocol::kVersionWin10V6_0;
  settings.echo_channels = 2;
  settings.disks.push_back({.path = MakeDisk(tag + ".img")});
  settings.heartbeat = settings.shutdown = settings.timesync = true;
  settings.heartbeat_interval = 100ms;
  settings.control_socket = TempPath(tag + ".sock");
  unlink(settings.control_socket.c_str());
  return settings;
}

TEST(DaemonTest, AConfidentialGuestRunsTrafficThatTheInspectTreeShows) {
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(FullSettings("full"), {});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  Tree tree;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    tree = (*daemon)->Inspect();
    if (At(tree, "guest/round_trips") >= 50) break;
    ASSERT_NE(At(tree, "guest/state"), "failed") << At(tree, "guest/last_error");
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GE(At(tree, "guest/round_trips"), 50);
  EXPECT_EQ(At(tree, "guest/state"), "running");
  EXPECT_EQ(At(tree, "guest/channels_open"), 2);
  EXPECT_EQ(At(tree, "connection/version"), "6.0");
  const uint32_t features = At(tree, "connection/feature_flags").is_number()
                                ? At(tree, "connection/feature_flags").get<uint32_t>()
                                : 0;
  EXPECT_NE(features & protocol::kFeatureConfidentialChannels, 0u);
  EXPECT_EQ(At(tree, "connection/guest_errors"), 0);
  // Two echo channels, the disk and three ICs, in offer order.
  EXPECT_EQ(At(tree, "channels").size(), 6u);
  EXPECT_EQ(At(tree, "channels/1/state"), "open");
  EXPECT_EQ(At(tree, "channels/2/state"), "open");
  EXPECT_EQ(At(tree, "channels/3/interface_name"), "storvsp");
  EXPECT_EQ(At(tree, "devices/echo/0/ring_view"), "private");
  EXPECT_GT(At(tree, "devices/echo/0/packets_echoed"), 0);
  EXPECT_EQ(At(tree, "devices/disks/0/size_bytes"), 1 << 20);
  EXPECT_EQ(At(tree, "devices/heartbeat/channel/state"), "closed");
  EXPECT_EQ(At(tree, "vm/isolation"), "snp");
  // The echo rings are private, and the summary reads their control pages.
  EXPECT_EQ(At(tree, "channels/1/rings/view"), "private");
  EXPECT_EQ(At(tree, "channels/1/rings/guest_to_host/data_bytes"), 15 * 4096);
  EXPECT_TRUE(At(tree, "channels/1/rings/host_to_guest/free_bytes").is_number());
  EXPECT_FALSE(At(tree, "channels/4").contains("rings"));  // An IC nobody opened.
  // Both directions are counted: the guest's doorbells through the SynIC, the device's
  // interrupts through the server (each round trip signals at least once each way).
  EXPECT_GT(At(tree, "channels/1/signals_from_guest"), 0);
  EXPECT_GT(At(tree, "channels/1/interrupts_to_guest"), 0);
  EXPECT_FALSE(At(tree, "channels/4").contains("signals_from_guest"));
  // Packets each way, as the echo device's rings counted them: every request answered once.
  const uint64_t from_guest = At(tree, "channels/1/traffic/guest_to_host/packets").get<uint64_t>();
  const uint64_t to_guest = At(tree, "channels/1/traffic/host_to_guest/packets").get<uint64_t>();
  EXPECT_GT(from_guest, 0u);
  EXPECT_LE(to_guest, from_guest);
  EXPECT_GE(to_guest + 1, from_guest);  // At most the one in flight when the tree was built.
  EXPECT_GT(At(tree, "channels/1/traffic/guest_to_host/bytes"), from_guest * 16);
  EXPECT_EQ(At(tree, "channels/1/traffic/error"), "none");
  EXPECT_FALSE(At(tree, "channels/4").contains("traffic"));
  EXPECT_GT(At(tree, "synic/signals"), 0);
  EXPECT_GT(At(tree, "synic/messages_delivered"), 0);
  // The guest's rings are GPADLs the tree lists.
  EXPECT_EQ(At(tree, "gpadls/100/relid"), 1);
  EXPECT_EQ(At(tree, "gpadls/100/state"), "accepted");

  (*daemon)->Stop();
  // Every offer was revoked: the guest is sent one rescind per channel.
  std::set<uint32_t> rescinded;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<protocol::ParsedMessage> rescind =
        (*daemon)->vm().guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 5000ms);
    ASSERT_TRUE(rescind.ok()) << i << ": " << rescind.status() << "\n"
                              << ToLines(At((*daemon)->Inspect(), "channels"));
    rescinded.insert(std::get<protocol::RescindChannelOffer>(rescind->body).child_relid);
  }
  EXPECT_EQ(rescinded, (std::set<uint32_t>{1, 2, 3, 4, 5, 6}));
  tree = (*daemon)->Inspect();
  const Tree channels = At(tree, "channels");
  ASSERT_EQ(channels.size(), 6u);
  for (const auto& item : channels.items()) {
    EXPECT_EQ(item.value()["state"], "revoked") << item.key();
  }
  EXPECT_EQ(access(TempPath("full.sock").c_str(), F_OK), -1);  // The socket file is gone.
}

// Waits until the in-process guest has done `count` round trips in all; false if it failed or
// took longer than 20 s.
bool WaitForRoundTrips(Daemon& daemon, uint64_t count, Tree* tree) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    *tree = daemon.Inspect();
    if (At(*tree, "guest/state") == "failed") return false;
    if (At(*tree, "guest/round_trips").is_number() &&
        At(*tree, "guest/round_trips").get<uint64_t>() >= count) {
      return true;
    }
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// Servicing while the guest's traffic runs: every round trip checks that the answer carries the
// transaction id just sent, so a packet lost across the restore would stall the guest (its 5 s
// receive times out and it fails) and one repeated would be a wrong id.
TEST(DaemonTest, ServicingMidTrafficLosesAndRepeatsNothing) {
  Settings settings;
  settings.guest = GUEST_CLIENT;
  settings.echo_packets_per_second = 2000;
  settings.max_version = protocol::kVersionWin10V6_0;
  settings.echo_channels = 3;
  settings.heartbeat = settings.shutdown = settings.timesync = true;  // Restored closed.
  settings.control_socket = TempPath("service.sock");
  unlink(settings.control_socket.c_str());
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  Tree tree;
  ASSERT_TRUE(WaitForRoundTrips(**daemon, 100, &tree)) << tree.dump(2);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*daemon)->Service().ok()) << i;
    const uint64_t before = At((*daemon)->Inspect(), "guest/round_trips").get<uint64_t>();
    ASSERT_TRUE(WaitForRoundTrips(**daemon, before + 60, &tree)) << i << "\n" << tree.dump(2);
  }
  tree = (*daemon)->Inspect();
  EXPECT_EQ(At(tree, "guest/state"), "running") << At(tree, "guest/last_error");
  EXPECT_EQ(At(tree, "guest/channels_open"), 3);
  EXPECT_EQ(At(tree, "daemon/servicing/done"), 5);
  EXPECT_EQ(At(tree, "daemon/servicing/failed"), 0);
  EXPECT_GT(At(tree, "daemon/servicing/last_state_bytes"), 0);
  EXPECT_EQ(At(tree, "connection/guest_errors"), 0);
  EXPECT_EQ(At(tree, "connection/version"), "6.0");  // The same connection, restored.
  for (const char* relid : {"1", "2", "3"}) {
    EXPECT_EQ(At(tree, std::string("channels/") + relid + "/state"), "open") << relid;
  }
  EXPECT_EQ(At(tree, "channels/4/state"), "closed");  // The heartbeat, offered all along.
  EXPECT_EQ(At(tree, "devices/heartbeat/channel/state"), "closed");
  // The restored devices took over the open rings, and the tree counts from the start: every
  // round trip the guest finished was echoed by one device or another (the guest counts after
  // the device).
  uint64_t echoed = 0;
  for (const char* i : {"0", "1", "2"}) {
    echoed += At(tree, std::string("devices/echo/") + i + "/packets_echoed").get<uint64_t>();
  }
  EXPECT_GE(echoed, At(tree, "guest/round_trips").get<uint64_t>());
  EXPECT_GT(At(tree, "devices/echo/0/packets_echoed"), 0);
  EXPECT_EQ(At(tree, "devices/echo/0/ring_view"), "private");
  // The guest never saw the paravisor change: no second offer of any channel.
  EXPECT_TRUE((*daemon)->vm().guest().NothingArrives(protocol::MessageType::kOfferChannel, 50ms));
}

// The same guest and devices under the TDX model: rings made private by MapGPA + ACCEPT.
TEST(DaemonTest, AConfidentialGuestRunsUnderTdxToo) {
  Settings settings = FullSettings("tdx");
  settings.isolation = IsolationKind::kTdx;
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ASSERT_NE((*daemon)->vm().tdx(), nullptr);
  EXPECT_EQ((*daemon)->vm().snp(), nullptr);
  Tree tree;
  ASSERT_TRUE(WaitForRoundTrips(**daemon, 50, &tree)) << tree.dump(2);
  EXPECT_EQ(At(tree, "vm/isolation"), "tdx");
  EXPECT_EQ(At(tree, "connection/version"), "6.0");
  EXPECT_EQ(At(tree, "channels/1/rings/view"), "private");
  EXPECT_EQ(At(tree, "devices/echo/0/ring_view"), "private");
  // The ring's first page is accepted private memory; the host's shared alias of it is gone.
  absl::StatusOr<hw::isolation::TdxPageState> state =
      (*daemon)->vm().tdx()->PageState(0x100 * 4096);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, hw::isolation::TdxPageState::kAccepted);
  std::vector<uint8_t> bytes(16);
  EXPECT_FALSE(guestmem::GuestMemory::Untrusted((*daemon)->vm().memory())
                   .Read(0x100 * 4096, absl::MakeSpan(bytes))
                   .ok());
  // The tree counts that refusal and the conversions behind it.
  tree = (*daemon)->Inspect();
  EXPECT_EQ(At(tree, "isolation/model"), "tdx");
  EXPECT_GE(At(tree, "isolation/refused_untrusted_accesses"), 1);
  EXPECT_GT(At(tree, "isolation/page_state_changes"), 0);
}

// With a disk and the hvsocket relay too: the disk pauses and drains, the relay stops and
// listens again, and the guest's echo traffic runs on through each servicing.
TEST(DaemonTest, ServicingWithADiskAndTheRelayKeepsTheGuestRunning) {
  Settings settings = FullSettings("service_all");
  char dir[] = "/tmp/cvmbusd_relay_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  settings.hvsocket_prefix = std::string(dir) + "/hv";
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  Tree tree;
  ASSERT_TRUE(WaitForRoundTrips(**daemon, 20, &tree)) << tree.dump(2);
  for (int i = 0; i < 3; ++i) {
    const absl::Status serviced = (*daemon)->Service();
    ASSERT_TRUE(serviced.ok()) << i << ": " << serviced;
    EXPECT_EQ(access(settings.hvsocket_prefix.c_str(), F_OK), 0) << "the relay listens again";
    const uint64_t before = At((*daemon)->Inspect(), "guest/round_trips").get<uint64_t>();
    ASSERT_TRUE(WaitForRoundTrips(**daemon, before + 20, &tree)) << i << "\n" << tree.dump(2);
  }
  tree = (*daemon)->Inspect();
  EXPECT_EQ(At(tree, "daemon/servicing/done"), 3);
  EXPECT_EQ(At(tree, "daemon/servicing/hvsocket_connections_reset"), 0);
  EXPECT_EQ(At(tree, "devices/disks/0/path"), settings.disks[0].path);
  EXPECT_EQ(At(tree, "guest/state"), "running") << At(tree, "guest/last_error");
  (*daemon)->Stop();
  EXPECT_EQ(access(settings.hvsocket_prefix.c_str(), F_OK), -1);
  rmdir(dir);
}

TEST(DaemonTest, APartThatCannotStartStopsEverythingAndIsNamed) {
  Settings settings = FullSettings("bad_disk");
  settings.disks[0].path = TempPath("no_such_disk.img");
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings, {});
  ASSERT_FALSE(daemon.ok());
  EXPECT_EQ(daemon.status().code(), absl::StatusCode::kNotFound) << daemon.status();
  EXPECT_EQ(std::string(daemon.status().message()).rfind("disk[0] " + settings.disks[0].path, 0),
            0u)
      << daemon.status();
  EXPECT_EQ(access(settings.control_socket.c_str(), F_OK), -1);
}

TEST(DaemonTest, TheServerLoopRunsOnItsCpuOrTheCpuIsNamed) {
  Settings settings;
  settings.echo_channels = 1;
  settings.control_socket = TempPath("pinned.sock");
  unlink(settings.control_socket.c_str());
  settings.loop_cpu = 0;
  settings.loop_busy_poll = std::chrono::microseconds(20);
  {
    absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    int cpu = -1;
    (*daemon)->vm().OnServer([&] { cpu = sched_getcpu(); });
    EXPECT_EQ(cpu, 0);
    const Tree tree = (*daemon)->Inspect();
    EXPECT_EQ(At(tree, "loop/cpu"), 0);
    EXPECT_EQ(At(tree, "loop/busy_poll_us"), 20);
  }
  settings.loop_cpu = 1000;  // No such CPU here.
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
  ASSERT_FALSE(daemon.ok());
  EXPECT_EQ(daemon.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(daemon.status().message())
                .rfind("the VM: the server loop's thread: pinning to CPU 1000: ", 0),
            0u)
      << daemon.status();
}

TEST(DaemonTest, ATakenControlSocketIsRefused) {
  Settings settings = FullSettings("taken");
  settings.disks.clear();
  const int fd = open(settings.control_socket.c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings, {});
  ASSERT_FALSE(daemon.ok());
  EXPECT_EQ(daemon.status().code(), absl::StatusCode::kAlreadyExists) << daemon.status();
  EXPECT_EQ(std::string(daemon.status().message()).rfind("control socket: ", 0), 0u)
      << daemon.status();
  EXPECT_EQ(access(settings.control_socket.c_str(), F_OK), 0);  // Not someone else's to remove.
  unlink(settings.control_socket.c_str());
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
