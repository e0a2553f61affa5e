// Conversions racing accesses: no access may succeed through a view that lost the page.
#include "guestmem/access_gate.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "guestmem/errors.h"
#include "guestmem/guest_memory.h"

namespace cvmbus::guestmem {
namespace {

constexpr uint8_t kSecret = 0x5e;  // Written only through the private view.
constexpr uint64_t kPages = 8;

TEST(AccessGateTest, ConversionsNeverLeakPrivateBytesToTheUntrustedView) {
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

TEST(AccessGateTest, WaitReturnsWithNoAccessInFlight) {
  WaitForAccessesInFlight();  // Nothing registered or nothing inside: must not block.
  std::atomic<bool> inside{false}, release{false};
  std::thread holder([&] {
    AccessScope scope;
    inside = true;
    while (!release) std::this_thread::yield();
  });
  while (!inside) std::this_thread::yield();
  std::atomic<bool> waited{false};
  std::thread waiter([&] {
    WaitForAccessesInFlight();
    waited = true;
  });
  for (int i = 0; i < 1000; ++i) std::this_thread::yield();
  EXPECT_FALSE(waited.load());  // Still inside: the wait must not have returned.
  release = true;
  holder.join();
  waiter.join();
  EXPECT_TRUE(waited.load());
}

}  // namespace
}  // namespace cvmbus::guestmem
