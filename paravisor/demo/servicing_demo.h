// The demo's servicing: the paravisor saves its state and restores itself in place while the
// guest keeps going. A pipelined echo burst runs across it (every answer must carry the next
// transaction id: a packet lost or repeated would show), disk writes sent on both storvsp
// channels just before it are each answered once and land in the file, and the guest sees no
// new offer afterwards.
#ifndef CVMBUS_PARAVISOR_DEMO_SERVICING_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_SERVICING_DEMO_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "paravisor/daemon/daemon.h"
#include "paravisor/testing/guest_channel.h"

namespace cvmbus::paravisor {

// `echo`: an open echo channel with nothing in flight; `disk_relid`: the storvsp primary
// (detached); `disk_path`: its file. Prints what it shows; an error names the step.
absl::Status RunServicingDemo(daemon::Daemon* daemon, testing::GuestChannel& echo,
                              uint32_t disk_relid, const std::string& disk_path);

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_SERVICING_DEMO_H_
