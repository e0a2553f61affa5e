#include "hw/isolation/hostile_host.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <thread>
#include <vector>

#include "guestmem/errors.h"
#include "hw/isolation/snp_model.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::GuestMemory;

constexpr uint64_t kPage = 4096;

std::shared_ptr<guestmem::MemoryBacking> MakeBacking(uint64_t bytes = 16 * kPage) {
  guestmem::MemoryOptions options;
  options.name = "hostile";
  options.regions = {{0, bytes}};
  auto backing = guestmem::MemoryBacking::Create(options);
  EXPECT_TRUE(backing.ok()) << backing.status();
  return *backing;
}

TEST(HostileHostTest, RejectsBadOptions) {
  const auto backing = MakeBacking();
  const auto start = [&](GuestMemory memory, HostileHostOptions options) {
    HostileHost host(std::move(memory), std::move(options));
    return host.Start();
  };
  HostileHostOptions one_range;
  one_range.random_ranges = {{0, kPage}};
  EXPECT_FALSE(start(GuestMemory::Private(backing), one_range).ok());               // Wrong view.
  EXPECT_FALSE(start(GuestMemory::Untrusted(backing), HostileHostOptions{}).ok());  // No target.
  HostileHostOptions bad;
  bad.word_attacks = {{.gpa = 2}};
  EXPECT_FALSE(start(GuestMemory::Untrusted(backing), bad).ok());
  bad.word_attacks = {{.gpa = 4, .kind = WordAttack::Kind::kUnaligned, .alignment = 6}};
  EXPECT_FALSE(start(GuestMemory::Untrusted(backing), bad).ok());
  bad.word_attacks = {{.gpa = 4, .kind = WordAttack::Kind::kOutOfRange, .bound = 0}};
  EXPECT_FALSE(start(GuestMemory::Untrusted(backing), bad).ok());
  HostileHost twice(GuestMemory::Untrusted(backing), one_range);
  ASSERT_TRUE(twice.Start().ok());
  EXPECT_FALSE(twice.Start().ok());
}

TEST(HostileHostTest, StopsAfterMaxWrites) {
  const auto backing = MakeBacking();
  HostileHostOptions options;
  options.random_ranges = {{0, 2 * kPage}};
  options.flips = {{.gpa = 3 * kPage, .first = 1, .second = 2}};
  options.max_writes = 5000;
  HostileHost host(GuestMemory::Untrusted(backing), options);
  ASSERT_TRUE(host.Start().ok());
  while (!host.finished()) std::this_thread::yield();
  const HostileHostReport report = host.Stop();
  EXPECT_EQ(report.writes, 5000u);
  EXPECT_EQ(report.refused, 0u);
}

TEST(HostileHostTest, StopsAfterMaxDuration) {
  const auto backing = MakeBacking();
  HostileHostOptions options;
  options.random_ranges = {{0, kPage}};
  options.max_duration = absl::Milliseconds(50);
  HostileHost host(GuestMemory::Untrusted(backing), options);
  const absl::Time start = absl::Now();
  ASSERT_TRUE(host.Start().ok());
  while (!host.finished()) std::this_thread::yield();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  EXPECT_GT(host.Stop().writes, 0u);
}

TEST(HostileHostTest, SameSeedMakesSameWrites) {
  std::vector<std::vector<uint8_t>> results;
  for (int run = 0; run < 2; ++run) {
    const auto backing = MakeBacking();
    HostileHostOptions options;
    options.random_ranges = {{0, 2 * kPage}};
    options.word_attacks = {{.gpa = 2 * kPage, .kind = WordAttack::Kind::kOutOfRange, .bound = 9}};
    options.seed = 0x1234;
    options.max_writes = 2000;
    HostileHost host(GuestMemory::Untrusted(backing), options);
    ASSERT_TRUE(host.Start().ok());
    while (!host.finished()) std::this_thread::yield();  // The count bound ends the run.
    EXPECT_EQ(host.Stop().seed, 0x1234u);
    std::vector<uint8_t> bytes(3 * kPage);
    ASSERT_TRUE(GuestMemory::Untrusted(backing).Read(0, absl::MakeSpan(bytes)).ok());
    results.push_back(std::move(bytes));
  }
  EXPECT_EQ(results[0], results[1]);
}

// A reader running beside the host sees only the attack's values.
TEST(HostileHostTest, WordAttacksStayOutOfRangeAndUnaligned) {
  const auto backing = MakeBacking();
  const GuestMemory memory = GuestMemory::Untrusted(backing);
  ASSERT_TRUE(memory.WritePlain<uint32_t>(0, 1000).ok());
  ASSERT_TRUE(memory.WritePlain<uint32_t>(4, 9).ok());
  HostileHostOptions options;
  options.word_attacks = {{.gpa = 0, .kind = WordAttack::Kind::kOutOfRange, .bound = 1000},
                          {.gpa = 4, .kind = WordAttack::Kind::kUnaligned, .alignment = 8}};
  options.max_writes = 20000;
  HostileHost host(memory, options);
  ASSERT_TRUE(host.Start().ok());
  uint64_t reads = 0;
  while (!host.finished() || reads < 100) {
    EXPECT_GE(*memory.ReadPlain<uint32_t>(0), 1000u);
    EXPECT_NE(*memory.ReadPlain<uint32_t>(4) % 8, 0u);
    ++reads;
  }
  EXPECT_EQ(host.Stop().writes, 20000u);
}

// The flip target holds one of its two values at every read, yet a reader that reads it twice
// sees both: the double fetch this helper exists to expose.
TEST(HostileHostTest, FlipExposesADoubleRead) {
  const auto backing = MakeBacking();
  const GuestMemory memory = GuestMemory::Untrusted(backing);
  ASSERT_TRUE(memory.WritePlain<uint32_t>(64, 16).ok());
  HostileHostOptions options;
  options.flips = {{.gpa = 64, .first = 16, .second = 4096}};
  options.max_duration = absl::Seconds(20);
  HostileHost host(memory, options);
  ASSERT_TRUE(host.Start().ok());
  bool caught = false;
  while (!caught && !host.finished()) {
    const uint32_t first = *memory.ReadPlain<uint32_t>(64);
    sched_yield();  // Lets the host run even if both threads share a CPU.
    const uint32_t second = *memory.ReadPlain<uint32_t>(64);
    EXPECT_TRUE(first == 16 || first == 4096) << first;
    caught = first != second;
  }
  host.Stop();
  EXPECT_TRUE(caught);
}

// A page the guest has made private is out of the host's reach: every write is refused and the
// guest's bytes survive.
TEST(HostileHostTest, WritesToPrivatePagesAreRefused) {
  const auto backing = MakeBacking();
  auto model = SnpModel::Create(backing);
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE((*model)->ConvertToPrivate(0, kPage).ok());
  const std::vector<uint8_t> secret(kPage, 0x77);
  ASSERT_TRUE(GuestMemory::Private(backing).Write(0, absl::MakeConstSpan(secret)).ok());
  HostileHostOptions options;
  options.random_ranges = {{0, kPage}};
  options.max_writes = 1000;
  HostileHost host(GuestMemory::Untrusted(backing), options);
  ASSERT_TRUE(host.Start().ok());
  while (!host.finished()) std::this_thread::yield();
  const HostileHostReport report = host.Stop();
  EXPECT_EQ(report.writes, 0u);
  EXPECT_EQ(report.refused, 1000u);
  std::vector<uint8_t> seen(kPage);
  ASSERT_TRUE(GuestMemory::Private(backing).Read(0, absl::MakeSpan(seen)).ok());
  EXPECT_EQ(seen, secret);
}

}  // namespace
}  // namespace cvmbus::hw::isolation
