#include "paravisor/daemon/config.h"

#include <gtest/gtest.h>

#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::daemon {
namespace {

absl::StatusOr<Settings> FromText(const std::string& text) {
  absl::StatusOr<Config> config = ParseConfig(text, "test.conf");
  if (!config.ok()) return config.status();
  return Resolve(*config);
}

void ExpectRefused(const std::string& text, const std::string& message) {
  absl::StatusOr<Settings> settings = FromText(text);
  ASSERT_FALSE(settings.ok()) << text;
  EXPECT_EQ(settings.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(settings.status().message()), message);
}

TEST(ConfigTest, AMinimalConfigGetsTheDocumentedDefaults) {
  absl::StatusOr<Settings> settings = FromText(R"(control_socket: "/run/cvmbusd.sock")");
  ASSERT_TRUE(settings.ok()) << settings.status();
  EXPECT_EQ(settings->memory_bytes, 64ull << 20);
  EXPECT_EQ(settings->isolation, IsolationKind::kSnp);
  EXPECT_EQ(settings->guest, GUEST_NONE);
  EXPECT_EQ(settings->max_version, protocol::kVersionWin10V6_0);
  EXPECT_EQ(settings->resignal_after_open, std::chrono::milliseconds(100));
  EXPECT_EQ(settings->echo_channels, 0u);
  EXPECT_TRUE(settings->disks.empty());
  EXPECT_FALSE(settings->heartbeat || settings->shutdown || settings->timesync);
  EXPECT_EQ(settings->heartbeat_interval, std::chrono::milliseconds(2000));
  EXPECT_EQ(settings->log_level, log::Level::kInfo);
  EXPECT_EQ(settings->loop_cpu, std::nullopt);
  EXPECT_EQ(settings->loop_busy_poll, std::chrono::microseconds(0));
}

TEST(ConfigTest, EveryFieldIsTaken) {
  absl::StatusOr<Settings> settings = FromText(R"(
    memory { size_mib: 256 }
    isolation: ISOLATION_NONE
    guest { side: GUEST_CLIENT echo_packets_per_second: 50 }
    vmbus { max_version: "5.3" resignal_after_open_ms: 0 }
    echo { channels: 3 }
    disk { path: "/dev/vdb" subchannels: 2 direct: true }
    disk { path: "/tmp/b.img" read_only: true }
    ic { heartbeat: true shutdown: true timesync: true heartbeat_interval_ms: 500 }
    hvsocket { host_socket_prefix: "/run/vm.sock" }
    control_socket: "/run/cvmbusd.sock"
    log_level: "debug"
    loop { cpu: 1 busy_poll_us: 50 }
  )");
  ASSERT_TRUE(settings.ok()) << settings.status();
  EXPECT_EQ(settings->memory_bytes, 256ull << 20);
  EXPECT_EQ(settings->isolation, IsolationKind::kNone);
  EXPECT_EQ(settings->guest, GUEST_CLIENT);
  EXPECT_EQ(settings->echo_packets_per_second, 50u);
  EXPECT_EQ(settings->max_version, protocol::kVersionWin10V5_3);
  EXPECT_EQ(settings->resignal_after_open, std::nullopt);
  EXPECT_EQ(settings->echo_channels, 3u);
  ASSERT_EQ(settings->disks.size(), 2u);
  EXPECT_EQ(settings->disks[0].path, "/dev/vdb");
  EXPECT_EQ(settings->disks[0].subchannels, 2);
  EXPECT_TRUE(settings->disks[0].direct);
  EXPECT_TRUE(settings->disks[1].read_only);
  EXPECT_TRUE(settings->heartbeat && settings->shutdown && settings->timesync);
  EXPECT_EQ(settings->heartbeat_interval, std::chrono::milliseconds(500));
  EXPECT_EQ(settings->hvsocket_prefix, "/run/vm.sock");
  EXPECT_EQ(settings->log_level, log::Level::kDebug);
  EXPECT_EQ(settings->loop_cpu, 1);
  EXPECT_EQ(settings->loop_busy_poll, std::chrono::microseconds(50));
}

TEST(ConfigTest, AFileThatDoesNotParseNamesTheLineAndColumn) {
  ExpectRefused(
      "control_socket: \"/s\"\nmemory { size_gib: 1 }",
      "config test.conf: line 2 column 18: Message type \"cvmbus.paravisor.daemon.Memory\" has no "
      "field named \"size_gib\".");
  ExpectRefused("isolation: ISOLATION_SEV",
                "config test.conf: line 1 column 25: Unknown "
                "enumeration value of \"ISOLATION_SEV\" for field "
                "\"isolation\".");
}

TEST(ConfigTest, EachBadValueNamesItsField) {
  const std::string socket = "control_socket: \"/run/c.sock\" ";
  ExpectRefused("", "config: control_socket: required");
  ExpectRefused(socket + "memory { size_mib: 8 }",
                "config: memory.size_mib: 8 is outside 16..65536");
  ExpectRefused(socket + "memory { size_mib: 100000 }",
                "config: memory.size_mib: 100000 is outside 16..65536");
  ExpectRefused(socket + "isolation: 7", "config: isolation: 7 is not a known isolation");
  ExpectRefused(socket + "guest { side: 9 }", "config: guest.side: 9 is not a known guest side");
  ExpectRefused(socket + "guest { echo_packets_per_second: 5 }",
                "config: guest.echo_packets_per_second: needs guest.side GUEST_CLIENT");
  ExpectRefused(socket + "vmbus { max_version: \"7.0\" }",
                "config: vmbus.max_version: '7.0' is not one of 0.13, 1.1, 2.4, 3.0, 4.0, 4.1, "
                "5.0, 5.1, 5.2, 5.3, 6.0");
  ExpectRefused(socket + "vmbus { resignal_after_open_ms: 70000 }",
                "config: vmbus.resignal_after_open_ms: 70000 is more than 60000");
  ExpectRefused(socket + "echo { channels: 65 }", "config: echo.channels: 65 is more than 64");
  ExpectRefused(socket + "disk { path: \"/a\" } disk { }", "config: disk[1].path: required");
  ExpectRefused(socket + "disk { path: \"/a\" subchannels: 65 }",
                "config: disk[0].subchannels: 65 is more than 64");
  ExpectRefused(socket + "disk { path: \"/a\" } disk { path: \"/a\" }",
                "config: disk[1].path: '/a' is already another disk");
  ExpectRefused(socket + "ic { heartbeat_interval_ms: 500 }",
                "config: ic.heartbeat_interval_ms: needs ic.heartbeat");
  ExpectRefused(socket + "ic { heartbeat: true heartbeat_interval_ms: 50 }",
                "config: ic.heartbeat_interval_ms: 50 is outside 100..600000");
  ExpectRefused("control_socket: \"/" + std::string(120, 'x') + "\"",
                "config: control_socket: '/" + std::string(120, 'x') +
                    "' is longer than a Unix socket path may be");
  ExpectRefused(socket + "loop { cpu: 1024 }", "config: loop.cpu: 1024 is more than 1023");
  ExpectRefused(socket + "loop { busy_poll_us: 10001 }",
                "config: loop.busy_poll_us: 10001 is more than 10000");
  ExpectRefused(socket + "log_level: \"loud\"",
                "config: log_level: 'loud' is not one of debug, info, warning, error");
}

TEST(ConfigTest, ManyDisksAreRefused) {
  std::string text = "control_socket: \"/s\" ";
  for (int i = 0; i < 9; ++i) text += "disk { path: \"/d" + std::to_string(i) + "\" } ";
  ExpectRefused(text, "config: disk: 9 disks, more than 8");
}

TEST(ConfigTest, TheShippedDefaultConfigurationIsValid) {
  absl::StatusOr<Config> config = LoadConfigFile("paravisor/daemon/cvmbusd.conf");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<Settings> settings = Resolve(*config);
  ASSERT_TRUE(settings.ok()) << settings.status();
  EXPECT_EQ(settings->isolation, IsolationKind::kSnp);
  EXPECT_EQ(settings->guest, GUEST_CLIENT);
  EXPECT_EQ(settings->echo_channels, 2u);
  EXPECT_TRUE(settings->heartbeat && settings->shutdown && settings->timesync);
  EXPECT_EQ(settings->control_socket, "/run/cvmbusd/control.sock");
}

TEST(ConfigTest, AMissingFileIsNotFound) {
  absl::StatusOr<Config> config = LoadConfigFile("/nonexistent/cvmbusd.conf");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(config.status().message(), "config /nonexistent/cvmbusd.conf: cannot be opened");
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
