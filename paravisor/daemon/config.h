// cvmbusd's configuration (config.proto): read from a text-format file, defaults filled in,
// and every value checked before anything starts.
//
//   absl::StatusOr<daemon::Config> config = daemon::LoadConfigFile("/etc/cvmbusd.conf");
//   absl::StatusOr<daemon::Settings> settings = daemon::Resolve(*config);
//
// Errors name the field (as a path: "disk[1].subchannels") and what it allows; a file that
// does not parse names the line and column. Nothing is defaulted silently over a bad value.
#ifndef CVMBUS_PARAVISOR_DAEMON_CONFIG_H_
#define CVMBUS_PARAVISOR_DAEMON_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "base/log.h"
#include "paravisor/daemon/config.pb.h"

namespace cvmbus::paravisor::daemon {

inline constexpr uint64_t kMinMemoryMib = 16;
inline constexpr uint64_t kMaxMemoryMib = 65536;
inline constexpr uint32_t kMaxEchoChannels = 64;
inline constexpr size_t kMaxDisks = 8;
inline constexpr uint32_t kMaxDiskSubchannels = 64;
inline constexpr uint32_t kMaxEchoPacketsPerSecond = 100000;
inline constexpr uint32_t kMaxLoopCpu = 1023;  // CPU_SETSIZE - 1.
inline constexpr uint32_t kMaxBusyPollUs = 10000;

enum class IsolationKind { kNone, kSnp, kTdx };
std::string_view IsolationName(IsolationKind kind);  // "none", "snp", "tdx".

// The configuration with every default applied and every value checked.
struct Settings {
  uint64_t memory_bytes = 64ull << 20;
  IsolationKind isolation = IsolationKind::kSnp;
  bool isolated() const { return isolation != IsolationKind::kNone; }
  GuestSide guest = GUEST_NONE;
  uint32_t echo_packets_per_second = 0;
  uint32_t kvm_round_trips = 0;  // GUEST_KVM: 0 until stopped.
  uint32_t kvm_payload_bytes = 64;
  uint32_t max_version = 0;  // protocol::kVersion...
  std::optional<std::chrono::milliseconds> resignal_after_open;
  uint32_t echo_channels = 0;
  struct DiskSettings {
    std::string path;
    bool read_only = false;
    bool direct = false;
    uint16_t subchannels = 0;
  };
  std::vector<DiskSettings> disks;
  bool heartbeat = false;
  bool shutdown = false;
  bool timesync = false;
  std::chrono::milliseconds heartbeat_interval{2000};
  std::string hvsocket_prefix;  // Empty: no relay.
  std::string control_socket;
  log::Level log_level = log::Level::kInfo;
  std::optional<int> loop_cpu;
  std::chrono::microseconds loop_busy_poll{0};
};

// Parses `text` (protobuf text format); `source` names it in errors.
absl::StatusOr<Config> ParseConfig(const std::string& text, const std::string& source);
absl::StatusOr<Config> LoadConfigFile(const std::string& path);
// Checks `config` and fills in the defaults.
absl::StatusOr<Settings> Resolve(const Config& config);

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_CONFIG_H_
