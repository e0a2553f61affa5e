// HostileHost: a test helper that plays a malicious host. On its own thread it rewrites shared
// guest memory, through an untrusted-view GuestMemory, while the code under test runs:
//   - random bytes over random sub-ranges of given GPA ranges;
//   - 32-bit words at given GPAs pushed out of range (>= a bound) or to unaligned values;
//   - 32-bit words flipped between two valid alternatives, to catch code that reads a field
//     twice and acts on two different values.
// Each step picks one target at random. The run ends at Stop(), after max_writes attempts, or
// after max_duration, whichever comes first. A write that guestmem refuses (the page is not
// shared at that moment) counts as refused, not as an error: pages may be converted under it.
//
// Determinism: with a fixed seed the sequence of targets and values is the same on every run
// (the interleaving with the code under test is not). seed() reports the seed used, so a
// failing run can be repeated.
//
// Thread ownership: Start, Stop and the destructor belong to the thread that owns the object;
// writes(), refused() and finished() may be called from any thread.
#ifndef CVMBUS_HW_ISOLATION_HOSTILE_HOST_H_
#define CVMBUS_HW_ISOLATION_HOSTILE_HOST_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "guestmem/guest_memory.h"

namespace cvmbus::hw::isolation {

struct GpaRange {
  uint64_t gpa = 0;
  uint64_t len = 0;
};

// A 32-bit word set to values the code under test must reject.
struct WordAttack {
  enum class Kind { kOutOfRange, kUnaligned };
  uint64_t gpa = 0;  // 4-byte aligned.
  Kind kind = Kind::kOutOfRange;
  uint32_t bound = 1;      // kOutOfRange: every value written is >= bound (bound > 0).
  uint32_t alignment = 8;  // kUnaligned: no value written is a multiple (a power of 2, >= 2).
};

// A 32-bit word written alternately with `first` and `second`.
struct FlipTarget {
  uint64_t gpa = 0;  // 4-byte aligned.
  uint32_t first = 0;
  uint32_t second = 0;
};

struct HostileHostOptions {
  std::vector<GpaRange> random_ranges;
  std::vector<WordAttack> word_attacks;
  std::vector<FlipTarget> flips;
  uint64_t max_writes = 0;                                 // Attempts; 0 = no count bound.
  absl::Duration max_duration = absl::InfiniteDuration();  // Wall time from Start().
  uint64_t seed = 0;                                       // 0 = pick one at random.
  uint32_t max_random_bytes = 64;                          // Longest random write.
};

struct HostileHostReport {
  uint64_t writes = 0;   // Writes guestmem performed.
  uint64_t refused = 0;  // Writes guestmem refused (the page was not shared).
  uint64_t seed = 0;
};

class HostileHost {
 public:
  // `untrusted` must be an untrusted-view handle (checked by Start).
  HostileHost(guestmem::GuestMemory untrusted, HostileHostOptions options);
  ~HostileHost();  // Stops the thread.
  HostileHost(const HostileHost&) = delete;
  HostileHost& operator=(const HostileHost&) = delete;

  // Validates the options and starts the thread (kInvalidArgument, kFailedPrecondition if
  // already started).
  [[nodiscard]] absl::Status Start();
  // Stops the thread if it runs, waits for it and reports. May be called more than once.
  HostileHostReport Stop();

  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }
  uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  uint64_t seed() const { return seed_; }

 private:
  absl::Status Validate() const;
  void Run();

  const guestmem::GuestMemory untrusted_;
  const HostileHostOptions options_;
  const uint64_t seed_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> refused_{0};
};

}  // namespace cvmbus::hw::isolation

#endif  // CVMBUS_HW_ISOLATION_HOSTILE_HOST_H_
