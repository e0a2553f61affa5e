// HvSocketRelay: relays guest hvsockets (Linux AF_VSOCK over hyperv_transport.c) to host Unix
// sockets, in both directions, with the hybrid vsock convention (hybrid_vsock.h).
//
// Guest-initiated: install OnGuestConnect as ServerOptions::on_hvsocket_connect. A
// TL_CONNECT_REQUEST for a service id in the vsock template (port P) is accepted if the socket
// file "<host_socket_base>_<P>" exists; the relay then offers the channel the server's
// contract names (HvSocketChannel, is_connect false, instance = the guest's endpoint id,
// interface = the service id) and, when the guest opens it, connects to that socket. Anything
// else (another GUID, no socket file, the limit of connections, a second request for a
// connection that runs) is refused: the server answers TL_CONNECT_RESULT refused. A socket file
// nobody listens on fails the open, and the channel is rescinded.
//
// Host-initiated: with `listener_path`, the relay listens there. A host program connects,
// writes "CONNECT <P>\n" (within `request_timeout`), and the relay offers the guest a channel
// to its port P (HvSocketChannel, is_connect true: Linux's "connection from host", which a
// listening guest socket accepts; interface = P's service id, instance = a fresh GUID whose
// first four bytes are the host end's port). When the guest opens it the program reads
// "OK <port>\n" and the stream begins. A bad request, or a guest that does not open within
// `open_timeout`, closes the program's socket without an answer.
//
// Each connection is an HvSocketConnection (its counters, its end); finished connections are
// kept, the newest `finished_history`, for inspection.
//
// Threads: the relay and all its connections run on `loop`'s thread; create, destroy and call
// it there. Destroying it aborts every connection (their channels are revoked) and removes the
// listener's socket file.
#ifndef CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_RELAY_H_
#define CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_RELAY_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/log.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "hw/uring/unix_socket.h"
#include "paravisor/bus/bus.h"
#include "paravisor/devices/hvsocket/hvsocket_connection.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor::hvsocket {

struct HvSocketRelayOptions {
  std::string host_socket_base;  // Guest connects to port P go to "<base>_<P>". Empty: none.
  std::string listener_path;     // Where host programs connect. Empty: no listener.
  // How long the guest has to open an offered channel (OpenVMM: 5 s for a guest's connect,
  // 2 s for a host's).
  std::chrono::nanoseconds open_timeout = std::chrono::seconds(5);
  // How long a host program has to send its CONNECT line.
  std::chrono::nanoseconds request_timeout = std::chrono::seconds(5);
  size_t max_connections = 256;
  size_t finished_history = 64;
  // Default: the logging facility (base/log.h), rate-limited (a guest or host end can trigger
  // these lines).
  std::function<void(const std::string&)> log;
};

struct RelayStats {
  uint64_t guest_connects = 0;  // Accepted TL_CONNECT_REQUESTs.
  uint64_t guest_refused = 0;
  uint64_t host_connects = 0;  // CONNECT lines that led to an offer.
  uint64_t host_refused = 0;   // Bad or late CONNECT lines, failed offers.
  uint64_t finished = 0;       // Connections that ended.
};

class HvSocketRelay {
 public:
  // Binds the listener (if any) and starts accepting. `bus` must outlive the relay.
  static absl::StatusOr<std::unique_ptr<HvSocketRelay>> Create(hw::EventLoop* loop, ParentBus* bus,
                                                               HvSocketRelayOptions options);
  ~HvSocketRelay();
  HvSocketRelay(const HvSocketRelay&) = delete;
  HvSocketRelay& operator=(const HvSocketRelay&) = delete;

  // ServerOptions::on_hvsocket_connect: true if the relay offers the channel.
  bool OnGuestConnect(const HvSocketConnect& connect);

  // The counters of the connections that run, and of those that ended (oldest first).
  std::vector<ConnectionStats> Connections() const;
  const std::deque<ConnectionStats>& finished() const { return finished_; }
  const RelayStats& stats() const { return stats_; }

 private:
  HvSocketRelay(hw::EventLoop* loop, ParentBus* bus, HvSocketRelayOptions options);
  hw::Task AcceptHostConnections();
  hw::Task HandleHostConnection(hw::UnixStream socket);
  // Starts a connection; false (logged) if it could not be offered.
  bool StartConnection(HvSocketConnection::Params params);
  void Finished(const ConnectionStats& stats);
  Guid NewInstanceId(uint32_t host_port);
  void Log(const std::string& line);

  hw::EventLoop* const loop_;
  ParentBus* const bus_;
  HvSocketRelayOptions options_;
  std::optional<hw::UnixListener> listener_;
  std::map<uint64_t, std::shared_ptr<HvSocketConnection>> connections_;
  std::deque<ConnectionStats> finished_;
  RelayStats stats_;
  log::RateLimit log_limit_{20, absl::Milliseconds(200)};
  log::Logger logger_{"hvsocket relay", &log_limit_};
  uint64_t next_id_ = 1;
  // Host ends' ports as guests see them (Firecracker's local ports start at 2^30 too).
  uint32_t next_host_port_ = 1u << 30;
  std::mt19937_64 random_{std::random_device{}()};
  // Shared with tasks and callbacks that may outlive the relay: they check it first.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cvmbus::paravisor::hvsocket

#endif  // CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_RELAY_H_
