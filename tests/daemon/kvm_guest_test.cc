// The daemon with a real KVM vCPU as its guest (guest.side GUEST_KVM) on an SNP VM: the
// freestanding guest negotiates 6.0 with confidential channels, opens an echo channel with its
// rings in launch-validated private memory, and runs byte-checked round trips; the inspect tree
// shows its progress and vCPU exits. Servicing while it runs: the guest, which checks every
// answer's transaction id and bytes and would halt for good on a lost one, keeps going.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "hw/kvm/testing/test_support.h"
#include "paravisor/daemon/daemon.h"
#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::daemon {
namespace {

using namespace std::chrono_literals;

Tree At(const Tree& tree, const std::string& path) {
  absl::StatusOr<Tree> at = Subtree(tree, path);
  return at.ok() ? *at : Tree();
}

Settings KvmSettings(const std::string& dir) {
  Settings settings;
  settings.guest = GUEST_KVM;
  settings.isolation = IsolationKind::kSnp;
  settings.max_version = protocol::kVersionWin10V6_0;
  settings.echo_channels = 2;
  settings.control_socket = dir + "/control.sock";
  return settings;
}

// Polls the tree until `done` says so or 20 s pass; the last tree either way.
template <typename Done>
Tree WaitFor(Daemon& daemon, Done done) {
  Tree tree;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    tree = daemon.Inspect();
    if (done(tree) || At(tree, "guest/state") == "failed") break;
    std::this_thread::sleep_for(5ms);
  }
  return tree;
}

class KvmGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CVMBUS_SKIP_WITHOUT_KVM();
    ASSERT_NE(mkdtemp(dir_), nullptr);
  }
  void TearDown() override { rmdir(dir_); }
  char dir_[32] = "/tmp/cvmbusd_kvm_XXXXXX";
};

TEST_F(KvmGuestTest, TheVcpuNegotiatesOpensAndRunsItsRoundTripsThenUnloads) {
  Settings settings = KvmSettings(dir_);
  settings.kvm_round_trips = 2000;
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const Tree tree =
      WaitFor(**daemon, [](const Tree& t) { return At(t, "guest/state") == "exited"; });
  ASSERT_EQ(At(tree, "guest/state"), "exited") << tree["guest"].dump(2);
  EXPECT_EQ(At(tree, "guest/side"), "kvm");
  EXPECT_EQ(At(tree, "guest/version"), "6.0");
  EXPECT_EQ(At(tree, "guest/features"), 0x10);          // Confidential channels granted.
  EXPECT_EQ(At(tree, "guest/round_trips"), 2000 + 10);  // And the ten untimed ones.
  EXPECT_GE(At(tree, "guest/offers"), 2);
  EXPECT_GT(At(tree, "guest/vcpu_exits/msr"), 0);  // The SynIC was set up through MSR exits.
  EXPECT_EQ(At(tree, "connection/guest_errors"), 0);
  EXPECT_GE(At(tree, "devices/echo/0/packets_echoed").get<uint64_t>() +
                At(tree, "devices/echo/1/packets_echoed").get<uint64_t>(),
            2010u);
  EXPECT_EQ(At(tree, "connection/version"), "none");  // The guest unloaded.
}

TEST_F(KvmGuestTest, ServicingWhileTheVcpuRunsLosesNothingItChecks) {
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(KvmSettings(dir_));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  Tree tree = WaitFor(**daemon, [](const Tree& t) { return At(t, "guest/round_trips") >= 200; });
  ASSERT_GE(At(tree, "guest/round_trips"), 200) << tree["guest"].dump(2);
  for (int i = 0; i < 3; ++i) {
    const absl::Status serviced = (*daemon)->Service();
    ASSERT_TRUE(serviced.ok()) << i << ": " << serviced;
    const uint64_t before = At((*daemon)->Inspect(), "guest/round_trips").get<uint64_t>();
    tree = WaitFor(**daemon, [before](const Tree& t) {
      return At(t, "guest/round_trips").get<uint64_t>() >= before + 200;
    });
    ASSERT_GE(At(tree, "guest/round_trips").get<uint64_t>(), before + 200) << i << "\n"
                                                                           << tree["guest"].dump(2);
  }
  EXPECT_EQ(At(tree, "guest/state"), "running") << At(tree, "guest/last_error");
  EXPECT_EQ(At(tree, "daemon/servicing/done"), 3);
  EXPECT_EQ(At(tree, "connection/guest_errors"), 0);
  (*daemon)->Stop();
  EXPECT_EQ(At((*daemon)->Inspect(), "guest/state"), "stopped");
}

TEST(KvmGuestConfigTest, AKvmGuestNeedsAnEchoChannelAndItsOwnFields) {
  Config config;
  config.set_control_socket("/tmp/x.sock");
  config.mutable_guest()->set_side(GUEST_KVM);
  absl::StatusOr<Settings> settings = Resolve(config);
  ASSERT_FALSE(settings.ok());
  EXPECT_NE(std::string(settings.status().message()).find("echo.channels"), std::string::npos)
      << settings.status();
  config.mutable_guest()->set_side(GUEST_CLIENT);
  config.mutable_guest()->set_kvm_round_trips(5);
  settings = Resolve(config);
  ASSERT_FALSE(settings.ok());
  EXPECT_NE(std::string(settings.status().message()).find("guest.kvm_round_trips"),
            std::string::npos)
      << settings.status();
  config.mutable_guest()->set_side(GUEST_KVM);
  config.mutable_echo()->set_channels(1);
  config.mutable_guest()->set_kvm_payload_bytes(1025);
  settings = Resolve(config);
  ASSERT_FALSE(settings.ok());
  EXPECT_NE(std::string(settings.status().message()).find("guest.kvm_payload_bytes"),
            std::string::npos)
      << settings.status();
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
