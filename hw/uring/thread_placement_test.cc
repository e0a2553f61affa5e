#include "hw/uring/thread_placement.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <thread>

namespace cvmbus::hw {
namespace {

TEST(ThreadPlacementTest, AThreadPinnedToACpuRunsThere) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &allowed)) ++cpu;
  std::thread([cpu] {
    ASSERT_TRUE(PinCurrentThreadToCpu(cpu).ok());
    EXPECT_EQ(sched_getcpu(), cpu);
    cpu_set_t now;
    ASSERT_EQ(sched_getaffinity(0, sizeof(now), &now), 0);
    EXPECT_EQ(CPU_COUNT(&now), 1);
  }).join();
}

TEST(ThreadPlacementTest, ACpuOutOfRangeOrUnavailableIsNamed) {
  absl::Status negative = PinCurrentThreadToCpu(-1);
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(negative.message()),
            "pinning to CPU -1: outside 0.." + std::to_string(CPU_SETSIZE - 1));
  // CPU_SETSIZE - 1 exists on no machine this runs on.
  std::thread([] {
    absl::Status missing = PinCurrentThreadToCpu(CPU_SETSIZE - 1);
    EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(missing.message())
                  .find("pinning to CPU " + std::to_string(CPU_SETSIZE - 1) + ": "),
              std::string::npos)
        << missing;
  }).join();
}

}  // namespace
}  // namespace cvmbus::hw
