// The demo's hvsocket relay: a host program stand-in listening on a Unix socket
// "<dir>/host_5000" (the hybrid-vsock convention: a guest's connect to vsock port 5000 lands
// there), the daemon's relay, and the guest's socket framing data as Linux's
// hyperv_transport.c does: it connects to port 5000, sends a line, half-closes, reads the
// host's answer up to the host's FIN, and closes as Linux does (waiting for the rescind).
#ifndef CVMBUS_PARAVISOR_DEMO_HVSOCKET_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_HVSOCKET_DEMO_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "paravisor/daemon/daemon.h"

namespace cvmbus::paravisor {

class HvSocketDemo {
 public:
  static constexpr uint32_t kHostPort = 5000;

  // Starts the host end on "<dir>/host_5000": the daemon's relay must have the host socket
  // prefix "<dir>/host".
  static absl::StatusOr<std::unique_ptr<HvSocketDemo>> Create(daemon::Daemon* daemon,
                                                              const std::string& dir);
  ~HvSocketDemo();  // Stops the host end.

  // The guest's connection; prints what it shows. An error names the step that failed.
  absl::Status Run();

 private:
  HvSocketDemo(daemon::Daemon* daemon, std::string dir) : daemon_(daemon), dir_(std::move(dir)) {}
  // The host end: accepts one connection, reads to end of stream, answers the bytes upper-cased
  // with a prefix, and closes. Plain blocking sockets: it stands in for a host program.
  void ServeHost(int listener);

  daemon::Daemon* daemon_;
  std::string dir_;
  int listener_ = -1;
  std::thread host_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_HVSOCKET_DEMO_H_
