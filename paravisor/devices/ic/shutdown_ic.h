// ShutdownIc: the shutdown integration component. RequestShutdown asks the guest to power
// off, reboot or hibernate; the guest's answer carries its status: Linux's
// shutdown_onchannelcallback answers HV_S_OK and starts the operation, or HV_E_FAIL (an
// unknown request, or hibernation it cannot do). One request at a time, as OpenVMM.
//
// Threads: as IcDevice (the loop's thread).
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_SHUTDOWN_IC_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_SHUTDOWN_IC_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "paravisor/devices/ic/ic_device.h"

namespace cvmbus::paravisor::ic {

enum class ShutdownKind { kPowerOff, kReboot, kHibernate };

struct ShutdownRequest {
  ShutdownKind kind = ShutdownKind::kPowerOff;
  bool force = false;  // Linux always forces; Windows honours the difference.
  uint32_t reason_code = kShutdownReasonPlanned;
  uint32_t timeout_seconds = 0;
  std::string message;  // Shown by Windows guests; at most 2047 bytes are sent.
};

// shutdown_msg_data.flags for `request`: 0 / 2 / 4, | 1 when forced.
uint32_t ShutdownFlags(const ShutdownRequest& request);

struct ShutdownOptions {
  Guid instance_id = kShutdownInstanceId;
  std::chrono::nanoseconds response_timeout = std::chrono::seconds(5);
};

struct ShutdownStats {
  IcDeviceStats channel;
  uint64_t requested = 0;  // Requests sent to the guest.
  uint64_t accepted = 0;   // Answered HV_S_OK.
  uint64_t refused = 0;    // Answered with another status.
  uint64_t failed = 0;     // No usable answer: timeout, close, malformed answer.
  std::optional<uint32_t> last_guest_status;
};

class ShutdownIc : public IcDevice {
 public:
  // The guest's status (kStatusOk, kStatusFail, ...), or why there is none:
  // kFailedPrecondition (not negotiated yet), kAlreadyExists (a request is in flight),
  // kResourceExhausted (the ring is full), kDeadlineExceeded (no answer in time), kCancelled
  // (the channel closed, or the device was destroyed), an IcError (a malformed answer).
  using Done = std::function<void(absl::StatusOr<uint32_t> guest_status)>;

  ShutdownIc(hw::EventLoop* loop, ParentBus* bus, ShutdownOptions options = {});
  ~ShutdownIc() override;

  // Sends `request`. `done` runs exactly once on the loop thread: before this returns if the
  // request cannot be sent, else when it completes.
  void RequestShutdown(const ShutdownRequest& request, Done done);

  ShutdownStats stats() const;

 private:
  void OnReady() override {}
  void OnAnswer(absl::StatusOr<IcResponse> answer);

  std::optional<Done> pending_;
  ShutdownStats stats_;
};

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_SHUTDOWN_IC_H_
