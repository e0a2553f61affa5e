// Where a loop's thread runs: pinning the calling thread to one CPU, for a deployment that
// dedicates a CPU to the VMBus server's loop (or keeps it off the guest's).
#ifndef CVMBUS_HW_URING_THREAD_PLACEMENT_H_
#define CVMBUS_HW_URING_THREAD_PLACEMENT_H_

#include "absl/status/status.h"

namespace cvmbus::hw {

// Pins the calling thread to `cpu` (sched_setaffinity). kInvalidArgument names the CPU if it
// is out of range or not one this process may run on (offline, outside its cpuset).
[[nodiscard]] absl::Status PinCurrentThreadToCpu(int cpu);

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_URING_THREAD_PLACEMENT_H_
