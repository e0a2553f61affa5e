// IcDevice: what the three integration components share. It offers one channel through
// ParentBus (a DeviceChannel in message-pipe mode, as Hyper-V offers ICs), keeps the GPADLs
// the server hands it, opens the rings on OPENCHANNEL, and then runs the IC conversation:
// the host's NEGOTIATE first, then the service's own requests (HeartbeatIc, ShutdownIc,
// TimeSyncIc derive from this class).
//
// Transactions. Every host request is one in-band packet whose ring transaction id is a fresh
// non-zero number; Linux's hv_util answers with an in-band packet that echoes that id. Each
// request waits for its answer for `response_timeout` on the loop's timer: an answer, a
// timeout (kDeadlineExceeded) or the channel's close (kCancelled) completes it, exactly once,
// so a guest that never answers shows up as a timeout, never as a hang. An answer that comes
// after its timeout is counted as late and dropped.
//
// Untrusted input. Guest packets are private copies (the ring reader's); a packet that is not
// in-band, names no outstanding transaction, or does not parse is counted in stats() with the
// reason in last_error, and the channel carries on. A corrupt ring stops the channel
// (kRingFailed) until the guest closes it.
//
// Threads: everything runs on `loop`'s thread; Start(), Revoke() and every derived class's
// methods must be called there. The loop and the bus must outlive the device.
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_IC_DEVICE_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_IC_DEVICE_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"
#include "paravisor/devices/device_channel.h"
#include "paravisor/devices/ic/ic_message.h"
#include "paravisor/devices/ic/ic_protocol.h"
#include "ring/packet.h"

namespace cvmbus::paravisor::ic {

enum class IcChannelState {
  kClosed,               // Not open (never, or the guest closed it).
  kNegotiating,          // NEGOTIATE sent; no answer yet.
  kReady,                // Versions agreed: the service runs.
  kNegotiationFailed,    // The guest shares no version with us, or answered garbage.
  kNegotiationTimedOut,  // The guest never answered NEGOTIATE.
  kRingFailed,           // The guest corrupted the ring; nothing moves until it closes.
};
std::string_view IcChannelStateName(IcChannelState state);

struct IcDeviceStats {
  IcChannelState state = IcChannelState::kClosed;
  std::optional<IcVersions> versions;  // Set while kReady.
  uint64_t opens = 0;
  uint64_t closes = 0;
  uint64_t gpadls = 0;
  uint64_t negotiations = 0;          // Successful ones.
  uint64_t requests_sent = 0;         // NEGOTIATE included.
  uint64_t responses = 0;             // Answers matched to an outstanding request.
  uint64_t timeouts = 0;              // Requests that got no answer in time.
  uint64_t late_responses = 0;        // Answers to requests that had already timed out.
  uint64_t send_failures = 0;         // Requests that could not be written (a full ring).
  uint64_t bad_packets = 0;           // Guest packets rejected, for any reason below.
  uint64_t unknown_transactions = 0;  // ... of which: no such outstanding request.
  absl::Status last_error;            // The last rejected packet's or failure's reason.
};

struct IcDeviceOptions {
  std::string name;  // For messages: "heartbeat ic".
  Guid interface_id;
  Guid instance_id;
  std::vector<IcVersion> message_versions;  // The service's versions, offered in NEGOTIATE.
  std::chrono::nanoseconds response_timeout = std::chrono::seconds(5);
};

class IcDevice {
 public:
  virtual ~IcDevice();
  IcDevice(const IcDevice&) = delete;
  IcDevice& operator=(const IcDevice&) = delete;

  // Offers the channel and starts serving the server's requests.
  absl::Status Start();
  // After servicing: offers the channel again and asks the server to restore it (with an
  // OpenResult if it was open). A restored open channel takes its rings back from the reply and
  // negotiates again (Linux's hv_utils answers a NEGOTIATE whenever one comes); what the old
  // device had outstanding is gone, and this device's transaction ids start at a random point
  // so that a late answer to one of them is not taken for one of ours.
  absl::Status StartRestored(bool was_open);
  const Guid& interface_id() const { return options_.interface_id; }
  const Guid& instance_id() const { return options_.instance_id; }
  // Revokes the channel; the server rescinds it from the guest.
  absl::Status Revoke();

  IcChannelState state() const { return ic_stats_.state; }
  const IcDeviceStats& ic_stats() const { return ic_stats_; }
  // The open channel's ring traffic; none while closed.
  std::optional<ChannelTraffic> traffic() const;

 protected:
  IcDevice(hw::EventLoop* loop, ParentBus* bus, IcDeviceOptions options);

  // Sends a service request of `message_type` with `body` under the negotiated versions.
  // OK: `done` will run exactly once, later, on the loop thread, with the parsed answer (its
  // type checked against the request's), an IcError (a malformed answer), kDeadlineExceeded or
  // kCancelled (the channel closed). An error: nothing was sent and `done` never runs
  // (kFailedPrecondition: not ready; kResourceExhausted: the ring is full).
  using ResponseHandler = std::function<void(absl::StatusOr<IcResponse>)>;
  absl::Status SendRequest(uint16_t message_type, absl::Span<const uint8_t> body,
                           ResponseHandler done);

  // Counts a guest answer the service rejected (a wrong body) in stats().
  void RejectResponse(absl::Status error);

  // A timer on the loop that never runs after the device is gone. CancelTimer(0) is a no-op.
  absl::StatusOr<hw::EventLoop::Id> StartTimer(std::chrono::nanoseconds delay,
                                               std::function<void()> fn);
  void CancelTimer(hw::EventLoop::Id id);

  // The negotiated versions. Precondition: state() == kReady.
  const IcVersions& versions() const { return *ic_stats_.versions; }
  const std::string& name() const { return options_.name; }

  // Service hooks, on the loop thread. OnReady: negotiation just succeeded. OnClosed: the
  // channel closed or failed; every outstanding request has been completed already.
  virtual void OnReady() = 0;
  virtual void OnClosed() {}

 private:
  struct OpenChannelState;
  // A raw answer: the packet's private payload, or why there is none.
  using RawHandler = std::function<void(absl::StatusOr<absl::Span<const uint8_t>>)>;
  struct Outstanding {
    uint16_t message_type = 0;
    RawHandler done;
    hw::EventLoop::Id timer = 0;
  };

  hw::Task ServeRequests();
  hw::Task Serve(std::shared_ptr<OpenChannelState> channel);
  std::optional<OpenResult> Open(const OpenRequest& request);
  absl::Status Offer();
  std::shared_ptr<OpenChannelState> NewChannelState();
  // Builds `channel`'s rings for `request`, makes it the open channel, starts serving it and
  // posts the NEGOTIATE.
  absl::Status AttachAndNegotiate(const OpenRequest& request,
                                  std::shared_ptr<OpenChannelState> channel);
  void Close(Rpc<Unit, Unit> rpc);
  void Negotiate();
  void OnNegotiateAnswer(absl::StatusOr<absl::Span<const uint8_t>> answer);
  absl::Status SendRaw(uint16_t message_type, const std::vector<uint8_t>& payload, RawHandler done);
  void HandlePacket(const ring::Packet& packet);
  void OnTimeout(uint64_t transaction_id);
  // Stops the current open: fails the outstanding requests with `why`, tells the service.
  void EndChannel(IcChannelState state, const absl::Status& why);
  void Reject(absl::Status error);

  hw::EventLoop* const loop_;
  ParentBus* const bus_;
  const IcDeviceOptions options_;
  std::optional<OfferResources> resources_;
  std::unique_ptr<Receiver<ChannelRequest>> requests_;
  std::optional<Sender<ChannelServerRequest>> to_server_;
  DeviceGpadls gpadls_;
  std::shared_ptr<OpenChannelState> open_;
  std::map<uint64_t, Outstanding> outstanding_;
  std::deque<uint64_t> timed_out_;  // The most recent timed-out ids, to recognise late answers.
  uint64_t next_transaction_id_ = 1;
  IcDeviceStats ic_stats_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_IC_DEVICE_H_
