#include "hw/uring/thread_placement.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>

#include <cstring>

namespace cvmbus::hw {

absl::Status PinCurrentThreadToCpu(int cpu) {
  if (cpu < 0 || cpu >= CPU_SETSIZE) {
    return absl::InvalidArgumentError(
        fmt::format("pinning to CPU {}: outside 0..{}", cpu, CPU_SETSIZE - 1));
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (const int error = pthread_setaffinity_np(pthread_self(), sizeof(set), &set); error != 0) {
    return absl::InvalidArgumentError(
        fmt::format("pinning to CPU {}: {} (errno {}): not a CPU this process may run on", cpu,
                    std::strerror(error), error));
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::hw
