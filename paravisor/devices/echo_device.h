// EchoDevice: a VMBus device that answers every packet that requests a completion with a
// completion carrying the same transaction id and payload, and consumes the others unanswered. The
// smallest real device: it offers a channel through ParentBus, accepts GPADLs, opens its rings from
// the view the open request names, and serves them with the async ring endpoints on its own
// EventLoop.
//
// Threads: everything runs on `loop`'s thread; Start() and Revoke() must be called there too.
#ifndef CVMBUS_PARAVISOR_DEVICES_ECHO_DEVICE_H_
#define CVMBUS_PARAVISOR_DEVICES_ECHO_DEVICE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/ring_endpoint.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"
#include "paravisor/devices/device_channel.h"

namespace cvmbus::paravisor {

struct EchoStats {
  uint64_t packets_echoed = 0;
  uint64_t packets_consumed = 0;  // Packets that asked for no completion.
  uint64_t opens = 0;
  uint64_t closes = 0;
  uint64_t gpadls = 0;
  std::optional<OpenRequest> last_open;     // The flags and data of the last open.
  std::optional<guestmem::View> ring_view;  // Where the last open's ring came from.
  std::optional<guestmem::View> data_view;  // Where device data would come from.
  absl::Status last_error;                  // Why the last open or ring failed, if it did.
};

class EchoDevice {
 public:
  EchoDevice(hw::EventLoop* loop, ParentBus* bus, OfferParams params)
      : loop_(loop), bus_(bus), params_(std::move(params)) {}
  ~EchoDevice();

  // Offers the channel and starts serving requests.
  absl::Status Start();
  // After servicing: offers the channel again and asks the server to restore it (with an
  // OpenResult if it was open). The reply's open request and GPADLs bring the rings back,
  // reading their indices from the ring control pages, so traffic resumes where it stopped.
  absl::Status StartRestored(bool was_open);
  // Revokes the channel; the server rescinds it from the guest.
  absl::Status Revoke();

  const EchoStats& stats() const { return stats_; }
  // The open channel's ring traffic; none while closed.
  std::optional<ChannelTraffic> traffic() const;

 private:
  struct OpenChannelState;
  hw::Task ServeRequests();
  hw::Task Echo(std::shared_ptr<OpenChannelState> channel);
  std::optional<OpenResult> Open(const OpenRequest& request);
  absl::Status Offer();
  std::shared_ptr<OpenChannelState> NewChannelState();
  absl::Status AttachRings(const OpenRequest& request, std::shared_ptr<OpenChannelState> channel);
  void Close(Rpc<Unit, Unit> rpc);

  hw::EventLoop* loop_;
  ParentBus* bus_;
  OfferParams params_;
  std::optional<OfferResources> resources_;
  std::unique_ptr<Receiver<ChannelRequest>> requests_;
  std::optional<Sender<ChannelServerRequest>> to_server_;
  DeviceGpadls gpadls_;
  std::shared_ptr<OpenChannelState> open_;
  EchoStats stats_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEVICES_ECHO_DEVICE_H_
