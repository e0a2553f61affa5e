// Cross-core benchmark support: pinning threads and measuring where the two vCPUs sit.
//
// On this machine kind the host moves vCPUs; a cache-line round trip between cpu0 and cpu1
// ranges from ~30 ns (SMT siblings) to ~350 ns (different core complexes), which moves ring
// throughput by 2-5x (../shared/docs/limits.md). Every cross-core figure is printed beside the
// round trip measured just before it, and implementations are compared only within one run.
#ifndef CVMBUS_BASE_BENCH_PLACEMENT_H_
#define CVMBUS_BASE_BENCH_PLACEMENT_H_

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace cvmbus::bench {

// Pins the calling thread to `cpu`; returns false if the kernel refused.
inline bool PinToCpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

// Median-free simple probe: the mean round trip of `rounds` cache-line handoffs between a
// thread on cpu0 and one on cpu1, in nanoseconds.
inline double CacheLineRoundTripNs(int rounds = 20000) {
  alignas(64) std::atomic<int> ball{0};
  std::thread other([&] {
    PinToCpu(1);
    for (int i = 0; i < rounds; ++i) {
      while (ball.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      ball.store(2 * i + 2, std::memory_order_release);
    }
  });
  PinToCpu(0);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i) {
    ball.store(2 * i + 1, std::memory_order_release);
    while (ball.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const auto end = std::chrono::steady_clock::now();
  other.join();
  return std::chrono::duration<double, std::nano>(end - start).count() / rounds;
}

inline const char* PlacementName(double round_trip_ns) {
  return round_trip_ns < 45 ? "smt" : round_trip_ns < 150 ? "near" : "far";
}

}  // namespace cvmbus::bench

#endif  // CVMBUS_BASE_BENCH_PLACEMENT_H_
