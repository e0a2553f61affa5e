// HvSocketConnection: one hvsocket stream relayed between a VMBus channel and a host Unix
// socket. It is the device of its channel (it offers it, accepts its GPADLs, opens its rings)
// and runs two pumps once the guest has opened it:
//
//   guest -> host: ring packets (copied, then parsed: hvsocket_protocol.h) are written to the
//     socket; the next packet is read only once the socket took the last one, so a host that
//     stops reading stops the guest's writes through the full ring. The guest's FIN (an empty
//     payload) becomes shutdown(SHUT_WR).
//   host -> guest: the socket is read only when the ring has room for a whole packet, so a
//     guest that stops reading stops the host through the socket's buffers. End of stream on
//     the socket becomes the FIN packet.
//
// End of a connection (linux-guest.md: a Linux guest closing an hvsocket waits for the rescind):
//   - both FINs went through: the channel is revoked (rescinded);
//   - a socket error (the host program vanished), a guest that breaks the pipe protocol or
//     corrupts the ring, an open that does not come within `open_timeout`, a failed connect
//     to the host socket: the socket is aborted and the channel revoked;
//   - the guest closes the channel: the pumps stop, the socket is aborted, the close is
//     answered once nothing touches the rings any more, and the server rescinds;
//   - the server revokes the channel or goes away: the pumps stop and the socket is aborted.
// `on_finished` runs once, when the server has let go of the channel and both pumps stopped,
// with the connection's final counters.
//
// Trust: the guest's ring bytes and the host program's bytes are both untrusted; neither can
// make the relay crash or hold more than one packet's worth of private memory.
//
// Threads: everything runs on `loop`'s thread (the VMBus server's loop or another); Start and
// Abort must be called there.
#ifndef CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_CONNECTION_H_
#define CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_CONNECTION_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "hw/uring/unix_socket.h"
#include "paravisor/bus/bus.h"
#include "paravisor/devices/device_channel.h"

namespace cvmbus::paravisor::hvsocket {

// How a connection ended.
enum class ConnectionEnd {
  kRunning,
  kClosed,         // Both sides shut down their writes; the channel was revoked.
  kGuestClosed,    // The guest closed the channel (CLOSECHANNEL).
  kRevoked,        // The server revoked the channel or went away.
  kHostError,      // The host socket failed (the host program vanished mid-stream).
  kGuestError,     // The guest broke the pipe protocol or corrupted its ring.
  kOpenTimeout,    // The guest did not open the offered channel in time.
  kConnectFailed,  // Guest-initiated: the host socket refused the connection.
  kRelayStopped,   // The relay shut down.
};
const char* ConnectionEndName(ConnectionEnd end);

struct ConnectionStats {
  uint64_t id = 0;
  bool host_initiated = false;
  Guid service_id;   // The offer's interface id.
  Guid instance_id;  // The offer's instance id.
  std::string socket_path;
  bool opened = false;
  uint64_t bytes_to_host = 0;
  uint64_t bytes_to_guest = 0;
  uint64_t packets_from_guest = 0;  // The FIN included.
  uint64_t packets_to_guest = 0;    // The FIN included.
  bool guest_fin = false;           // The guest's FIN arrived (and the socket was shut down).
  bool host_fin = false;            // The socket's end of stream went to the guest as a FIN.
  ConnectionEnd end = ConnectionEnd::kRunning;
  absl::Status error;  // Why, for the ends that are failures.
};

class HvSocketConnection : public std::enable_shared_from_this<HvSocketConnection> {
 public:
  struct Params {
    uint64_t id = 0;
    OfferParams offer;  // An HvSocketChannel offer.
    std::string socket_path;
    // Host-initiated: the host program's socket (already connected), the line to write to it
    // once the guest opened the channel ("OK <port>\n"), and what the program sent after its
    // CONNECT line (it goes to the guest first). Guest-initiated: no socket; the relay
    // connects to `socket_path` when the guest opens the channel.
    std::optional<hw::UnixStream> socket;
    std::string open_reply;
    std::vector<uint8_t> early_bytes;
    std::chrono::nanoseconds open_timeout = std::chrono::seconds(5);
    std::function<void(const ConnectionStats&)> on_finished;
  };

  // Offers the channel and starts serving it. `bus` is used only here.
  static absl::StatusOr<std::shared_ptr<HvSocketConnection>> Start(hw::EventLoop* loop,
                                                                   ParentBus* bus, Params params);
  ~HvSocketConnection();

  // Tears the connection down (socket aborted, channel revoked) unless it has ended already.
  void Abort(ConnectionEnd end, absl::Status why);

  const ConnectionStats& stats() const { return stats_; }
  OfferKey key() const { return params_.offer.key(); }

 private:
  HvSocketConnection(hw::EventLoop* loop, Params params);
  hw::Task ServeRequests(std::shared_ptr<HvSocketConnection> self);
  std::optional<OpenResult> Open(const OpenRequest& request);
  void Close(Rpc<Unit, Unit> rpc);
  hw::Task PumpToHost(std::shared_ptr<HvSocketConnection> self);
  hw::Task PumpToGuest(std::shared_ptr<HvSocketConnection> self);
  // Wakes every wait of the pumps so they see `stopping_`.
  void WakePumps();
  // A pump stopped; when both have, answers a close or revokes as the end says.
  void PumpStopped();
  void Revoke();
  void MaybeFinish();
  bool ended() const { return stats_.end != ConnectionEnd::kRunning; }

  hw::EventLoop* const loop_;
  Params params_;
  ConnectionStats stats_;
  std::optional<OfferResources> resources_;
  std::unique_ptr<Receiver<ChannelRequest>> requests_;
  std::optional<Sender<ChannelServerRequest>> to_server_;
  DeviceGpadls gpadls_;
  std::optional<hw::UnixStream> socket_;
  // The guest's doorbell wakes both pumps, each through its own eventfd: two waiters on one
  // eventfd could each drain a wake-up meant for the other.
  std::shared_ptr<hw::OwnedEventFdSignal> to_host_wake_;   // The ring reader's wake fd.
  std::shared_ptr<hw::OwnedEventFdSignal> to_guest_wake_;  // The ring writer's wake fd.
  std::optional<ChannelRings> rings_;
  std::optional<hw::EventLoop::Id> open_timer_;
  int pumps_running_ = 0;
  bool stopping_ = false;  // Pumps must not touch the rings or the socket any more.
  bool revoke_sent_ = false;
  bool requests_ended_ = false;  // The server dropped the channel.
  bool finished_ = false;
  std::optional<Rpc<Unit, Unit>> close_rpc_;  // Answered once both pumps stopped.
};

}  // namespace cvmbus::paravisor::hvsocket

#endif  // CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_CONNECTION_H_
