// The demo's hvsocket relay: a host program stand-in listening on a Unix socket
// "<dir>/host_5000" (the hybrid-vsock convention: a guest's connect to vsock port 5000 lands
// there), the relay on the paravisor's server, and the guest's socket framing data as Linux's
// hyperv_transport.c does: it connects to port 5000, sends a line, half-closes, reads the
// host's answer up to the host's FIN, and closes as Linux does (waiting for the rescind).
#ifndef CVMBUS_PARAVISOR_DEMO_HVSOCKET_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_HVSOCKET_DEMO_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "paravisor/devices/hvsocket/hvsocket_relay.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {

class HvSocketDemo {
 public:
  static constexpr uint32_t kHostPort = 5000;

  // Makes a temporary directory, starts the host end and the relay.
  static absl::StatusOr<std::unique_ptr<HvSocketDemo>> Create(vm::VirtualMachine* vm);
  ~HvSocketDemo();  // Stops the relay and the host end; removes the directory.

  // VmOptions::on_hvsocket_connect for the demo's VM (the server's thread).
  bool OnGuestConnect(const HvSocketConnect& connect);

  // The guest's connection; prints what it shows. An error names the step that failed.
  absl::Status Run();

 private:
  explicit HvSocketDemo(vm::VirtualMachine* vm) : vm_(vm) {}
  // The host end: accepts one connection, reads to end of stream, answers the bytes upper-cased
  // with a prefix, and closes. Plain blocking sockets: it stands in for a host program.
  void ServeHost(int listener);

  vm::VirtualMachine* vm_;
  std::string dir_;
  int listener_ = -1;
  std::thread host_;
  std::unique_ptr<hvsocket::HvSocketRelay> relay_;  // Used on the server's thread only.
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_HVSOCKET_DEMO_H_
