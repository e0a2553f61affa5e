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
#include "paravisor/daemon/daemon.h"
#include "paravisor/protocol/messages.h"

namespace cvmbus::paravisor {

// The guest side of the daemon's three integration components.
class IcDemo {
 public:
  explicit IcDemo(daemon::Daemon* daemon) : daemon_(daemon) {}

  // Attaches the guest to each IC among `offers` and runs the conversation, printing what it
  // shows; an error names the step that failed.
  absl::Status Run(const std::vector<protocol::OfferChannel>& offers);

 private:
  daemon::Daemon* daemon_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_IC_DEMO_H_
