#include "paravisor/daemon/config.h"

#include <fmt/format.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <sstream>

#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::daemon {
namespace {

constexpr size_t kMaxConfigBytes = 1 << 20;

// Keeps the first parse error, with its position (protobuf counts lines and columns from 0).
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (error.empty()) error = fmt::format("line {} column {}: {}", line + 1, column + 1, message);
  }
  void AddWarning(int, int, const std::string&) override {}
  std::string error;
};

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(fmt::format("config: {}: {}", field, why));
}

struct NamedVersion {
  const char* name;
  uint32_t version;
};
constexpr NamedVersion kVersions[] = {
    {"0.13", protocol::kVersionWs2008},   {"1.1", protocol::kVersionWin7},
    {"2.4", protocol::kVersionWin8},      {"3.0", protocol::kVersionWin8_1},
    {"4.0", protocol::kVersionWin10},     {"4.1", protocol::kVersionWin10V4_1},
    {"5.0", protocol::kVersionWin10V5},   {"5.1", protocol::kVersionWin10V5_1},
    {"5.2", protocol::kVersionWin10V5_2}, {"5.3", protocol::kVersionWin10V5_3},
    {"6.0", protocol::kVersionWin10V6_0},
};

absl::StatusOr<uint32_t> ParseVersion(const std::string& text) {
  if (text.empty()) return protocol::kVersionWin10V6_0;
  std::string names;
  for (const NamedVersion& v : kVersions) {
    if (text == v.name) return v.version;
    names += names.empty() ? v.name : fmt::format(", {}", v.name);
  }
  return Bad("vmbus.max_version", fmt::format("'{}' is not one of {}", text, names));
}

// A Unix socket path fits sockaddr_un's 108 bytes with its terminator.
absl::Status CheckSocketPath(const std::string& field, const std::string& path, size_t suffix) {
  if (path.empty()) return Bad(field, "required");
  if (path.size() + suffix > 107) {
    return Bad(field, fmt::format("'{}' is longer than a Unix socket path may be", path));
  }
  if (path.find('\0') != std::string::npos) return Bad(field, "contains a NUL byte");
  return absl::OkStatus();
}

}  // namespace

std::string_view IsolationName(IsolationKind kind) {
  switch (kind) {
    case IsolationKind::kNone:
      return "none";
    case IsolationKind::kSnp:
      return "snp";
    case IsolationKind::kTdx:
      return "tdx";
  }
  return "unknown";
}

absl::StatusOr<Config> ParseConfig(const std::string& text, const std::string& source) {
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(fmt::format("config {}: {} bytes, more than the {} allowed",
                                                  source, text.size(), kMaxConfigBytes));
  }
  Config config;
  FirstError errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(fmt::format(
        "config {}: {}", source, errors.error.empty() ? "does not parse" : errors.error));
  }
  return config;
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(fmt::format("config {}: cannot be opened", path));
  std::string text;
  char chunk[4096];
  while (file.read(chunk, sizeof(chunk)) || file.gcount() > 0) {
    text.append(chunk, static_cast<size_t>(file.gcount()));
    if (text.size() > kMaxConfigBytes) break;  // ParseConfig names the size.
  }
  if (file.bad()) return absl::DataLossError(fmt::format("config {}: read failed", path));
  return ParseConfig(text, path);
}

absl::StatusOr<Settings> Resolve(const Config& config) {
  Settings out;
  const uint64_t mib = config.memory().size_mib() == 0 ? 64 : config.memory().size_mib();
  if (mib < kMinMemoryMib || mib > kMaxMemoryMib) {
    return Bad("memory.size_mib",
               fmt::format("{} is outside {}..{}", mib, kMinMemoryMib, kMaxMemoryMib));
  }
  out.memory_bytes = mib << 20;
  switch (config.isolation()) {
    case ISOLATION_DEFAULT:
    case ISOLATION_SNP:
      out.isolation = IsolationKind::kSnp;
      break;
    case ISOLATION_TDX:
      out.isolation = IsolationKind::kTdx;
      break;
    case ISOLATION_NONE:
      out.isolation = IsolationKind::kNone;
      break;
    default:
      return Bad("isolation",
                 fmt::format("{} is not a known isolation", static_cast<int>(config.isolation())));
  }
  switch (config.guest().side()) {
    case GUEST_DEFAULT:
    case GUEST_NONE:
      out.guest = GUEST_NONE;
      break;
    case GUEST_CLIENT:
      out.guest = GUEST_CLIENT;
      break;
    case GUEST_KVM:
      out.guest = GUEST_KVM;
      break;
    default:
      return Bad("guest.side", fmt::format("{} is not a known guest side",
                                           static_cast<int>(config.guest().side())));
  }
  out.echo_packets_per_second = config.guest().echo_packets_per_second();
  if (out.echo_packets_per_second > kMaxEchoPacketsPerSecond) {
    return Bad(
        "guest.echo_packets_per_second",
        fmt::format("{} is more than {}", out.echo_packets_per_second, kMaxEchoPacketsPerSecond));
  }
  if (out.echo_packets_per_second > 0 && out.guest != GUEST_CLIENT) {
    return Bad("guest.echo_packets_per_second", "needs guest.side GUEST_CLIENT");
  }
  const Guest& guest = config.guest();
  if ((guest.kvm_round_trips() != 0 || guest.kvm_payload_bytes() != 0) && out.guest != GUEST_KVM) {
    return Bad(guest.kvm_round_trips() != 0 ? "guest.kvm_round_trips" : "guest.kvm_payload_bytes",
               "needs guest.side GUEST_KVM");
  }
  if (guest.kvm_payload_bytes() > 1024) {
    return Bad("guest.kvm_payload_bytes",
               fmt::format("{} is more than 1024", guest.kvm_payload_bytes()));
  }
  out.kvm_round_trips = guest.kvm_round_trips();
  if (guest.kvm_payload_bytes() != 0) out.kvm_payload_bytes = guest.kvm_payload_bytes();
  absl::StatusOr<uint32_t> version = ParseVersion(config.vmbus().max_version());
  if (!version.ok()) return version.status();
  out.max_version = *version;
  const uint32_t resignal_ms =
      config.vmbus().has_resignal_after_open_ms() ? config.vmbus().resignal_after_open_ms() : 100;
  if (resignal_ms > 60000) {
    return Bad("vmbus.resignal_after_open_ms", fmt::format("{} is more than 60000", resignal_ms));
  }
  if (resignal_ms > 0) out.resignal_after_open = std::chrono::milliseconds(resignal_ms);
  out.echo_channels = config.echo().channels();
  if (out.echo_channels > kMaxEchoChannels) {
    return Bad("echo.channels",
               fmt::format("{} is more than {}", out.echo_channels, kMaxEchoChannels));
  }
  if (out.guest == GUEST_KVM && out.echo_channels == 0) {
    return Bad("echo.channels", "0, but guest.side GUEST_KVM opens an echo channel");
  }
  if (static_cast<size_t>(config.disk_size()) > kMaxDisks) {
    return Bad("disk", fmt::format("{} disks, more than {}", config.disk_size(), kMaxDisks));
  }
  for (int i = 0; i < config.disk_size(); ++i) {
    const Disk& disk = config.disk(i);
    const std::string field = fmt::format("disk[{}]", i);
    if (disk.path().empty()) return Bad(field + ".path", "required");
    if (disk.subchannels() > kMaxDiskSubchannels) {
      return Bad(field + ".subchannels",
                 fmt::format("{} is more than {}", disk.subchannels(), kMaxDiskSubchannels));
    }
    for (const Settings::DiskSettings& earlier : out.disks) {
      if (earlier.path == disk.path()) {
        return Bad(field + ".path", fmt::format("'{}' is already another disk", disk.path()));
      }
    }
    out.disks.push_back({.path = disk.path(),
                         .read_only = disk.read_only(),
                         .direct = disk.direct(),
                         .subchannels = static_cast<uint16_t>(disk.subchannels())});
  }
  out.heartbeat = config.ic().heartbeat();
  out.shutdown = config.ic().shutdown();
  out.timesync = config.ic().timesync();
  if (config.ic().heartbeat_interval_ms() != 0) {
    const uint32_t ms = config.ic().heartbeat_interval_ms();
    if (!out.heartbeat) return Bad("ic.heartbeat_interval_ms", "needs ic.heartbeat");
    if (ms < 100 || ms > 600000) {
      return Bad("ic.heartbeat_interval_ms", fmt::format("{} is outside 100..600000", ms));
    }
    out.heartbeat_interval = std::chrono::milliseconds(ms);
  }
  out.hvsocket_prefix = config.hvsocket().host_socket_prefix();
  if (!out.hvsocket_prefix.empty()) {
    // Room for the "_<port>" of the per-port sockets.
    if (absl::Status status = CheckSocketPath("hvsocket.host_socket_prefix", out.hvsocket_prefix,
                                              /*suffix=*/11);
        !status.ok()) {
      return status;
    }
  }
  if (absl::Status status = CheckSocketPath("control_socket", config.control_socket(), 0);
      !status.ok()) {
    return status;
  }
  out.control_socket = config.control_socket();
  if (config.loop().has_cpu()) {
    if (config.loop().cpu() > kMaxLoopCpu) {
      return Bad("loop.cpu", fmt::format("{} is more than {}", config.loop().cpu(), kMaxLoopCpu));
    }
    out.loop_cpu = static_cast<int>(config.loop().cpu());
  }
  if (config.loop().busy_poll_us() > kMaxBusyPollUs) {
    return Bad("loop.busy_poll_us",
               fmt::format("{} is more than {}", config.loop().busy_poll_us(), kMaxBusyPollUs));
  }
  out.loop_busy_poll = std::chrono::microseconds(config.loop().busy_poll_us());
  if (!config.log_level().empty()) {
    std::optional<log::Level> level = log::ParseLevel(config.log_level());
    if (!level.has_value()) {
      return Bad("log_level",
                 fmt::format("'{}' is not one of debug, info, warning, error", config.log_level()));
    }
    out.log_level = *level;
  }
  return out;
}

}  // namespace cvmbus::paravisor::daemon
