// HeartbeatIc: the heartbeat integration component. Once negotiated, the host sends a
// heartbeat request every `interval` carrying a sequence number; Linux's
// heartbeat_onchannelcallback answers each with the number plus one. An answer that does not
// come within `response_timeout` is a missed beat; the daemon reads the guest's health from
// stats().
//
// Threads: as IcDevice (the loop's thread).
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_HEARTBEAT_IC_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_HEARTBEAT_IC_H_

#include <chrono>
#include <cstdint>
#include <string_view>

#include "paravisor/devices/ic/ic_device.h"

namespace cvmbus::paravisor::ic {

struct HeartbeatOptions {
  Guid instance_id = kHeartbeatInstanceId;
  std::chrono::nanoseconds interval = std::chrono::seconds(2);  // hv_util.c: "every two seconds"
  std::chrono::nanoseconds response_timeout = std::chrono::seconds(2);
};

enum class HeartbeatHealth {
  kNeverNegotiated,  // The current open has not negotiated (or there is no open).
  kHealthy,          // Negotiated, and the latest heartbeat was answered (or none is due yet).
  kMissed,           // The latest `consecutive_missed` heartbeats went unanswered.
};
std::string_view HeartbeatHealthName(HeartbeatHealth health);

struct HeartbeatStats {
  IcDeviceStats channel;
  HeartbeatHealth health = HeartbeatHealth::kNeverNegotiated;
  uint64_t sent = 0;
  uint64_t answered = 0;            // With the right sequence number.
  uint64_t missed = 0;              // Timed out, unsendable, or answered wrongly.
  uint64_t consecutive_missed = 0;  // N of "missed N".
  uint64_t last_sequence = 0;       // The sequence number of the last heartbeat sent.
};

class HeartbeatIc : public IcDevice {
 public:
  HeartbeatIc(hw::EventLoop* loop, ParentBus* bus, HeartbeatOptions options = {});
  ~HeartbeatIc() override;

  HeartbeatStats stats() const;

 private:
  void OnReady() override;
  void OnClosed() override;
  void Beat();
  void OnAnswer(uint64_t sequence, absl::StatusOr<IcResponse> answer);
  void Miss();

  const HeartbeatOptions options_;
  hw::EventLoop::Id tick_ = 0;  // The next Beat's timer; 0: none.
  uint64_t next_sequence_ = 1;
  HeartbeatStats stats_;
};

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_HEARTBEAT_IC_H_
