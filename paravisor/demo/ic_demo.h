// The demo's integration components: heartbeat, shutdown and time sync devices on the
// paravisor's server, and the guest's hv_utils (IcGuest, answering as Linux's hv_util.c does)
// negotiating each, answering heartbeats, setting its clock from the SYNC, and accepting a
// reboot request.
#ifndef CVMBUS_PARAVISOR_DEMO_IC_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_IC_DEMO_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "paravisor/devices/ic/heartbeat_ic.h"
#include "paravisor/devices/ic/shutdown_ic.h"
#include "paravisor/devices/ic/timesync_ic.h"
#include "paravisor/protocol/messages.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {

class IcDemo {
 public:
  // Offers the three devices (before the guest connects, so their offers are among the first).
  static absl::StatusOr<std::unique_ptr<IcDemo>> Create(vm::VirtualMachine* vm);
  ~IcDemo();  // Removes the devices on the server's thread.

  // Attaches the guest to each IC among `offers` and runs the conversation, printing what it
  // shows; an error names the step that failed.
  absl::Status Run(const std::vector<protocol::OfferChannel>& offers);

 private:
  explicit IcDemo(vm::VirtualMachine* vm) : vm_(vm) {}

  vm::VirtualMachine* vm_;
  std::unique_ptr<ic::HeartbeatIc> heartbeat_;
  std::unique_ptr<ic::ShutdownIc> shutdown_;
  std::unique_ptr<ic::TimeSyncIc> timesync_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_IC_DEMO_H_
