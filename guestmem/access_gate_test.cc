// Conversions racing accesses: no access may succeed through a view that lost the page.
#include "guestmem/access_gate.h"

#include <gtest/gtest.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

#include "guestmem/errors.h"
#include "guestmem/guest_memory.h"

namespace cvmbus::guestmem {
namespace {

constexpr uint8_t kSecret = 0x5e;  // Written only through the private view.
constexpr uint64_t kPages = 8;

void ExpectConversionsNeverLeak() {
  MemoryOptions options;
  options.regions = {{0, kPages * kPageSize}};
  auto created = MemoryBacking::Create(options);
  ASSERT_TRUE(created.ok());
  std::shared_ptr<MemoryBacking> backing = *created;
  GuestMemory private_view = GuestMemory::Private(backing);
  GuestMemory untrusted_view = GuestMemory::Untrusted(backing);
  ASSERT_TRUE(backing->SetAccess(0, kPages * kPageSize, Access::kReadWrite, Access::kNone).ok());

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> private_writes{0}, untrusted_reads{0}, leaks{0};
  // Writes the secret into whatever pages are private right now.
  std::thread writer([&] {
    std::vector<uint8_t> secret(kPageSize, kSecret);
    for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      if (private_view.Write((i % kPages) * kPageSize, secret).ok()) ++private_writes;
    }
  });
  // Reads whatever pages are shared right now; a shared page must never hold the secret.
  std::thread reader([&] {
    std::vector<uint8_t> page(kPageSize);
    for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      if (!untrusted_view.Read((i % kPages) * kPageSize, absl::MakeSpan(page)).ok()) continue;
      ++untrusted_reads;
      for (uint8_t byte : page) {
        if (byte == kSecret) {
          ++leaks;
          break;
        }
      }
    }
  });
  // Converts pages back and forth; going shared scrubs while no view can see the page, as an
  // isolation model does.
  const auto scrub = [](absl::Span<uint8_t> bytes) { std::fill(bytes.begin(), bytes.end(), 0); };
  // At least 500 rounds, and on until both sides have succeeded often (threads may start late
  // on a busy machine); bounded by time so a broken gate fails instead of hanging.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (int round = 0; round < 500 || ((private_writes.load() < 50 || untrusted_reads.load() < 50) &&
                                      std::chrono::steady_clock::now() < deadline);
       ++round) {
    const uint64_t gpa = (round % kPages) * kPageSize;
    ASSERT_TRUE(backing->SetAccess(gpa, kPageSize, Access::kNone, Access::kNone).ok());
    ASSERT_TRUE(backing->RewriteUnviewed(gpa, kPageSize, scrub).ok());
    ASSERT_TRUE(backing->SetAccess(gpa, kPageSize, Access::kNone, Access::kReadWrite).ok());
    std::this_thread::yield();
    ASSERT_TRUE(backing->SetAccess(gpa, kPageSize, Access::kNone, Access::kNone).ok());
    ASSERT_TRUE(backing->SetAccess(gpa, kPageSize, Access::kReadWrite, Access::kNone).ok());
  }
  stop = true;
  writer.join();
  reader.join();
  EXPECT_EQ(leaks.load(), 0u);
  // The race was exercised: both sides succeeded many times.
  EXPECT_GE(private_writes.load(), 50u);
  EXPECT_GE(untrusted_reads.load(), 50u);
}

TEST(AccessGateTest, ConversionsNeverLeakPrivateBytesToTheUntrustedView) {
  ExpectConversionsNeverLeak();
}

// The same race with every membarrier failing: the mprotect fallback must order it as well.
TEST(AccessGateTest, ConversionsNeverLeakWithTheFallbackBarrier) {
  if (!access_gate_stats().uses_membarrier) {
    GTEST_SKIP() << "the RMW scheme is in use here (no membarrier, or ThreadSanitizer)";
  }
  internal::SetExpeditedBarrierForTest([]() -> long {
    errno = ENOMEM;
    return -1;
  });
  const uint64_t fallbacks_before = access_gate_stats().fallback_barriers;
  ExpectConversionsNeverLeak();
  internal::SetExpeditedBarrierForTest(nullptr);
  EXPECT_GE(access_gate_stats().fallback_barriers - fallbacks_before, 2000u);
}

TEST(AccessGateTest, WaitReturnsWithNoAccessInFlight) {
  ASSERT_TRUE(
      WaitForAccessesInFlight().ok());  // Nothing registered or nothing inside: must not block.
  std::atomic<bool> inside{false}, release{false};
  std::thread holder([&] {
    AccessScope scope;
    inside = true;
    while (!release) std::this_thread::yield();
  });
  while (!inside) std::this_thread::yield();
  std::atomic<bool> waited{false};
  std::thread waiter([&] {
    EXPECT_TRUE(WaitForAccessesInFlight().ok());
    waited = true;
  });
  for (int i = 0; i < 1000; ++i) std::this_thread::yield();
  EXPECT_FALSE(waited.load());  // Still inside: the wait must not have returned.
  release = true;
  holder.join();
  waiter.join();
  EXPECT_TRUE(waited.load());
}

// membarrier failing after it was chosen: the converter still gets its process-wide barrier
// (the mprotect fallback) and still waits for the access in flight, and says so in the stats.
TEST(AccessGateTest, AFailingMembarrierFallsBackAndStillWaits) {
  if (!access_gate_stats().uses_membarrier) {
    GTEST_SKIP() << "the RMW scheme is in use here (no membarrier, or ThreadSanitizer)";
  }
  internal::SetExpeditedBarrierForTest([]() -> long {
    errno = ENOMEM;
    return -1;
  });
  const AccessGateStats before = access_gate_stats();
  std::atomic<bool> inside{false}, release{false};
  std::thread holder([&] {
    AccessScope scope;
    inside = true;
    while (!release) std::this_thread::yield();
  });
  while (!inside) std::this_thread::yield();
  std::atomic<bool> waited{false};
  absl::Status status;
  std::thread waiter([&] {
    status = WaitForAccessesInFlight();
    waited = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(waited.load());
  release = true;
  holder.join();
  waiter.join();
  internal::SetExpeditedBarrierForTest(nullptr);
  EXPECT_TRUE(status.ok()) << status;
  const AccessGateStats after = access_gate_stats();
  EXPECT_EQ(after.membarrier_failures - before.membarrier_failures, 1u);
  EXPECT_EQ(after.fallback_barriers - before.fallback_barriers, 1u);
}

// A failure the retry gets past needs no fallback.
TEST(AccessGateTest, AMembarrierThatFailsOnceIsRetried) {
  if (!access_gate_stats().uses_membarrier) {
    GTEST_SKIP() << "the RMW scheme is in use here (no membarrier, or ThreadSanitizer)";
  }
  static std::atomic<int> calls{0};
  calls = 0;
  internal::SetExpeditedBarrierForTest([]() -> long {
    if (calls.fetch_add(1) == 0) {
      errno = ENOMEM;
      return -1;
    }
    return syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  });
  const AccessGateStats before = access_gate_stats();
  const absl::Status status = WaitForAccessesInFlight();
  internal::SetExpeditedBarrierForTest(nullptr);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(access_gate_stats().membarrier_failures - before.membarrier_failures, 1u);
  EXPECT_EQ(access_gate_stats().fallback_barriers, before.fallback_barriers);
}

}  // namespace
}  // namespace cvmbus::guestmem
