// cvmbusd: the paravisor daemon. Reads its configuration (--config, protobuf text format, see
// config.proto), lets flags override single fields, starts the VM, the server, the devices and
// the guest side, serves the control socket, services itself on SIGUSR1 (or "cvmbusctl
// service"), and on SIGTERM or SIGINT (or "cvmbusctl shutdown") stops in order and exits 0. Exit 2:
// a bad flag value or configuration (one line naming the field; Abseil's own flag errors exit 1
// with its message); 1: a part failed to start.
//
//   cvmbusd --config=/etc/cvmbusd.conf
//   cvmbusd --control_socket=/run/cvmbusd.sock --echo_channels=4 --guest=client
#include <fmt/format.h>
#include <signal.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "base/format.h"
#include "base/log.h"
#include "paravisor/daemon/config.h"
#include "paravisor/daemon/daemon.h"

ABSL_FLAG(std::string, config, "", "Configuration file (protobuf text format, config.proto).");
ABSL_FLAG(std::string, control_socket, "", "Overrides control_socket.");
ABSL_FLAG(std::string, hvsocket_prefix, "", "Overrides hvsocket.host_socket_prefix.");
ABSL_FLAG(std::optional<uint32_t>, echo_channels, std::nullopt, "Overrides echo.channels.");
ABSL_FLAG(std::string, guest, "", "Overrides guest.side: none, client or kvm.");
ABSL_FLAG(std::optional<uint32_t>, echo_packets_per_second, std::nullopt,
          "Overrides guest.echo_packets_per_second.");
ABSL_FLAG(std::string, isolation, "", "Overrides isolation: none, snp or tdx.");
ABSL_FLAG(std::string, log_level, "", "Overrides log_level: debug, info, warning, error.");

namespace cvmbus::paravisor::daemon {
namespace {

absl::Status ApplyFlags(Config* config) {
  if (!absl::GetFlag(FLAGS_control_socket).empty()) {
    config->set_control_socket(absl::GetFlag(FLAGS_control_socket));
  }
  if (!absl::GetFlag(FLAGS_hvsocket_prefix).empty()) {
    config->mutable_hvsocket()->set_host_socket_prefix(absl::GetFlag(FLAGS_hvsocket_prefix));
  }
  if (std::optional<uint32_t> n = absl::GetFlag(FLAGS_echo_channels)) {
    config->mutable_echo()->set_channels(*n);
  }
  if (std::optional<uint32_t> n = absl::GetFlag(FLAGS_echo_packets_per_second)) {
    config->mutable_guest()->set_echo_packets_per_second(*n);
  }
  if (const std::string guest = absl::GetFlag(FLAGS_guest); !guest.empty()) {
    if (guest == "none") {
      config->mutable_guest()->set_side(GUEST_NONE);
    } else if (guest == "client") {
      config->mutable_guest()->set_side(GUEST_CLIENT);
    } else if (guest == "kvm") {
      config->mutable_guest()->set_side(GUEST_KVM);
    } else {
      return absl::InvalidArgumentError(
          fmt::format("--guest: '{}' is not one of none, client, kvm", guest));
    }
  }
  if (const std::string isolation = absl::GetFlag(FLAGS_isolation); !isolation.empty()) {
    if (isolation == "none") {
      config->set_isolation(ISOLATION_NONE);
    } else if (isolation == "snp") {
      config->set_isolation(ISOLATION_SNP);
    } else if (isolation == "tdx") {
      config->set_isolation(ISOLATION_TDX);
    } else {
      return absl::InvalidArgumentError(
          fmt::format("--isolation: '{}' is not one of none, snp, tdx", isolation));
    }
  }
  if (!absl::GetFlag(FLAGS_log_level).empty()) {
    config->set_log_level(absl::GetFlag(FLAGS_log_level));
  }
  return absl::OkStatus();
}

int Main() {
  Config config;
  if (const std::string path = absl::GetFlag(FLAGS_config); !path.empty()) {
    absl::StatusOr<Config> loaded = LoadConfigFile(path);
    if (!loaded.ok()) {
      fmt::print(stderr, "cvmbusd: {}\n", std::string(loaded.status().message()));
      return 2;
    }
    config = *std::move(loaded);
  }
  if (absl::Status status = ApplyFlags(&config); !status.ok()) {
    fmt::print(stderr, "cvmbusd: {}\n", std::string(status.message()));
    return 2;
  }
  absl::StatusOr<Settings> settings = Resolve(config);
  if (!settings.ok()) {
    fmt::print(stderr, "cvmbusd: {}\n", std::string(settings.status().message()));
    return 2;
  }
  log::SetMinLevel(settings->log_level);
  const log::Logger logger("cvmbusd");

  // SIGTERM and SIGINT are taken by sigwait on this thread only: blocked here before any
  // thread starts, so every thread inherits the mask. "shutdown" sends SIGTERM to the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGUSR1);  // "service": servicing runs on this thread.
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<Daemon>> daemon =
      Daemon::Start(*settings, {.on_shutdown = [] { kill(getpid(), SIGTERM); },
                                .on_service = [] { kill(getpid(), SIGUSR1); }});
  if (!daemon.ok()) {
    fmt::print(stderr, "cvmbusd: {}\n", std::string(daemon.status().message()));
    return 1;
  }
  logger.Info(fmt::format("running: control socket {}, {} echo channel(s), {} disk(s), guest {}",
                          settings->control_socket, settings->echo_channels, settings->disks.size(),
                          settings->guest == GUEST_CLIENT ? "client" : "none"));
  int signal = 0;
  while (sigwait(&stop_signals, &signal) == 0 && signal == SIGUSR1) {
    if (absl::Status serviced = (*daemon)->Service(); serviced.ok()) {
      logger.Info("serviced: the server and its devices restored from their saved state");
    } else {
      logger.Error(std::string(serviced.message()));
    }
  }
  logger.Info(fmt::format("{}: stopping", signal == SIGINT ? "SIGINT" : "SIGTERM"));
  (*daemon)->Stop();
  daemon->reset();
  logger.Info("stopped");
  return 0;
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("cvmbusd --config=FILE [overrides]: the cvmbus paravisor daemon");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "cvmbusd: unexpected argument '{}'\n", rest[1]);
    return 2;
  }
  return cvmbus::paravisor::daemon::Main();
}
