// Concurrent stress of the isolation models: converter threads move pages between private and
// shared while readers access them through both guestmem views (and the models' own guest and
// host accessors) and a hostile host scribbles over shared memory. The rule under test is the
// one every section of APM vol. 2 15.36 and the TDX module spec exists for: no access ever
// succeeds through the wrong view. Private pages hold a marker; the untrusted side must never
// read it, and the private side must never read anything but the marker or the zeros of a page
// just made private (never host bytes). Runs under --config=tsan too.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "base/mutex.h"
#include "guestmem/errors.h"
#include "hw/isolation/hostile_host.h"
#include "hw/isolation/snp_model.h"
#include "hw/isolation/tdx_model.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::ErrorKind;
using guestmem::GuestMemory;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPages = 64;
constexpr uint64_t kConverters = 2;
constexpr uint64_t kMarker = 0x5ec7e7da7a5ec7e7;
constexpr absl::Duration kRunTime = absl::Milliseconds(1500);

struct Hooks {
  std::function<absl::Status(uint64_t gpa)> to_shared;
  std::function<absl::Status(uint64_t gpa)> to_private;
  // The model's own accessors: a guest private read and a host read (may be unset).
  std::function<absl::Status(uint64_t gpa, absl::Span<uint8_t>)> model_private_read;
  std::function<absl::Status(uint64_t gpa, absl::Span<uint8_t>)> model_host_read;
};

class Violations {
 public:
  void Add(const std::string& what) {
    MutexLock lock(&mu_);
    if (count_++ == 0) first_ = what;
  }
  uint64_t count() const {
    MutexLock lock(&mu_);
    return count_;
  }
  std::string first() const {
    MutexLock lock(&mu_);
    return first_;
  }

 private:
  mutable Mutex mu_;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  std::string first_ ABSL_GUARDED_BY(mu_);
};

bool HasMarker(const std::vector<uint8_t>& bytes) {
  for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, &bytes[i], 8);
    if (word == kMarker) return true;
  }
  return false;
}

// Every byte is the marker's byte at its position, or zero (a page being filled).
bool OnlyMarkerOrZero(const std::vector<uint8_t>& bytes) {
  uint8_t marker[8];
  std::memcpy(marker, &kMarker, 8);
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != 0 && bytes[i] != marker[i % 8]) return false;
  }
  return true;
}

void RunStress(const std::shared_ptr<guestmem::MemoryBacking>& backing, const Hooks& hooks) {
  const GuestMemory private_view = GuestMemory::Private(backing);
  const GuestMemory untrusted_view = GuestMemory::Untrusted(backing);
  std::vector<uint8_t> marked(kPage);
  for (uint64_t i = 0; i < kPage; i += 8) std::memcpy(&marked[i], &kMarker, 8);
  for (uint64_t page = 0; page < kPages; ++page) {
    ASSERT_TRUE(hooks.to_private(page * kPage).ok());
    ASSERT_TRUE(private_view.Write(page * kPage, absl::MakeConstSpan(marked)).ok());
  }

  Violations violations;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> conversions{0}, private_reads{0}, untrusted_reads{0}, model_reads{0};

  std::vector<std::thread> threads;
  for (uint64_t c = 0; c < kConverters; ++c) {
    threads.emplace_back([&, c] {
      std::vector<bool> is_private(kPages, true);
      while (!stop.load(std::memory_order_relaxed)) {
        for (uint64_t page = c; page < kPages && !stop.load(); page += kConverters) {
          const uint64_t gpa = page * kPage;
          absl::Status status = is_private[page] ? hooks.to_shared(gpa) : hooks.to_private(gpa);
          if (status.ok() && !is_private[page]) {
            status = private_view.Write(gpa, absl::MakeConstSpan(marked));
          }
          if (!status.ok()) violations.Add("conversion failed: " + status.ToString());
          is_private[page] = !is_private[page];
          conversions.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  const auto reader = [&](bool untrusted, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> bytes(kPage);
    for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      const uint64_t gpa = (rng() % kPages) * kPage;
      const bool via_model = (i % 4) == 3;
      absl::Status status;
      if (via_model) {
        const auto& read = untrusted ? hooks.model_host_read : hooks.model_private_read;
        if (!read) continue;
        status = read(gpa, absl::MakeSpan(bytes));
      } else {
        status = (untrusted ? untrusted_view : private_view).Read(gpa, absl::MakeSpan(bytes));
      }
      if (!status.ok()) {
        // Through guestmem the only failure is the wrong view; the models fault instead.
        const ErrorKind expected = untrusted ? ErrorKind::kNotShared : ErrorKind::kNotPrivate;
        if (!via_model && !guestmem::IsError(status, expected)) {
          violations.Add("unexpected error: " + status.ToString());
        }
        continue;
      }
      if (untrusted && HasMarker(bytes)) violations.Add("the host read private data");
      if (!untrusted && !OnlyMarkerOrZero(bytes)) violations.Add("the guest read host bytes");
      (via_model   ? model_reads
       : untrusted ? untrusted_reads
                   : private_reads)
          .fetch_add(1, std::memory_order_relaxed);
    }
  };
  threads.emplace_back(reader, true, 1);
  threads.emplace_back(reader, false, 2);

  HostileHostOptions hostile;
  hostile.random_ranges = {{0, kPages * kPage}};
  hostile.max_random_bytes = 256;
  hostile.max_duration = kRunTime;
  hostile.seed = 42;
  HostileHost host(untrusted_view, hostile);
  ASSERT_TRUE(host.Start().ok());

  absl::SleepFor(kRunTime);
  stop.store(true);
  for (std::thread& thread : threads) thread.join();
  const HostileHostReport report = host.Stop();

  EXPECT_EQ(violations.count(), 0u) << violations.first();
  // The run must have exercised every path, or it proves nothing.
  EXPECT_GT(conversions.load(), 2 * kPages);
  EXPECT_GT(private_reads.load(), 0u);
  EXPECT_GT(untrusted_reads.load(), 0u);
  EXPECT_GT(model_reads.load(), 0u);
  EXPECT_GT(report.writes, 0u);
  EXPECT_GT(report.refused, 0u);
  std::printf(
      "conversions %lu, private reads %lu, untrusted reads %lu, model reads %lu, host "
      "writes %lu (refused %lu)\n",
      static_cast<unsigned long>(conversions.load()),
      static_cast<unsigned long>(private_reads.load()),
      static_cast<unsigned long>(untrusted_reads.load()),
      static_cast<unsigned long>(model_reads.load()), static_cast<unsigned long>(report.writes),
      static_cast<unsigned long>(report.refused));
}

std::shared_ptr<guestmem::MemoryBacking> MakeBacking() {
  guestmem::MemoryOptions options;
  options.name = "stress";
  options.regions = {{0, kPages * kPage}};
  auto backing = guestmem::MemoryBacking::Create(options);
  EXPECT_TRUE(backing.ok()) << backing.status();
  return *backing;
}

// APM vol. 2 15.36 with GHCB 2.3.1 conversions (PVALIDATE + page-state change).
TEST(IsolationStressTest, SnpNoAccessSucceedsThroughTheWrongView) {
  const auto backing = MakeBacking();
  auto model = SnpModel::Create(backing);
  ASSERT_TRUE(model.ok()) << model.status();
  SnpModel* snp = model->get();
  Hooks hooks;
  hooks.to_shared = [snp](uint64_t gpa) { return snp->ConvertToShared(gpa, kPage); };
  hooks.to_private = [snp](uint64_t gpa) { return snp->ConvertToPrivate(gpa, kPage); };
  hooks.model_private_read = [snp](uint64_t gpa, absl::Span<uint8_t> out) {
    return snp->GuestRead(snp->PrivateAddress(gpa), out);
  };
  hooks.model_host_read = [snp](uint64_t gpa, absl::Span<uint8_t> out) {
    return snp->HostRead(gpa, out);
  };
  RunStress(backing, hooks);
}

// TDX module spec and GHCI: MapGPA + TDG.MEM.PAGE.ACCEPT conversions.
TEST(IsolationStressTest, TdxNoAccessSucceedsThroughTheWrongView) {
  const auto backing = MakeBacking();
  auto model = TdxModel::Create(backing);
  ASSERT_TRUE(model.ok()) << model.status();
  TdxModel* tdx = model->get();
  Hooks hooks;
  hooks.to_shared = [tdx](uint64_t gpa) { return tdx->ConvertToShared(gpa, kPage); };
  hooks.to_private = [tdx](uint64_t gpa) { return tdx->ConvertToPrivate(gpa, kPage); };
  hooks.model_private_read = [tdx](uint64_t gpa, absl::Span<uint8_t> out) {
    return tdx->GuestRead(tdx->PrivateAddress(gpa), out);
  };
  hooks.model_host_read = [tdx](uint64_t gpa, absl::Span<uint8_t> out) {
    return tdx->GuestRead(tdx->SharedAddress(gpa), out);
  };
  RunStress(backing, hooks);
}

}  // namespace
}  // namespace cvmbus::hw::isolation
