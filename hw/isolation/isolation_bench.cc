// Benchmark of the isolation models. Prints figures; it is not a test.
//   bazel run -c opt --jobs=2 //hw/isolation:isolation_bench
//
// 1. Conversions per second: private -> shared -> private round trips of one 4 KiB page, each
//    the full guest flow (SNP: PVALIDATE + GHCB page-state change each way; TDX: MapGPA, and
//    MapGPA + ACCEPT).
// 2. The access check: a 4 KiB GuestMemory::Read through the private view of a backing driven by
//    a model, against the same read on a backing with no isolation (goal: at most 10% extra).
//    Variants are interleaved round by round; the median round is reported. Also, for scale,
//    the model's own GuestRead (RMP check under the model's lock, then the same copy).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/isolation/snp_model.h"
#include "hw/isolation/tdx_model.h"

namespace cvmbus::hw::isolation {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPages = 64;  // 256 KiB: stays in L2, so the copy is not DRAM-bound.
constexpr int kRounds = 9;
constexpr uint64_t kReadsPerRound = 400000;

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    fmt::print(stderr, "{}: {}\n", what, status.ToString());
    std::exit(1);
  }
}

std::shared_ptr<guestmem::MemoryBacking> MakeBacking(const char* name) {
  guestmem::MemoryOptions options;
  options.name = name;
  options.regions = {{0, kPages * kPage}};
  auto backing = guestmem::MemoryBacking::Create(options);
  Check(backing.status(), "create backing");
  return *backing;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Round trips per second of `to_shared` then `to_private` over the pages, for about a second.
double RoundTripsPerSecond(const std::function<absl::Status(uint64_t)>& to_shared,
                           const std::function<absl::Status(uint64_t)>& to_private) {
  uint64_t trips = 0;
  const Clock::time_point start = Clock::now();
  Clock::time_point now = start;
  while (now - start < std::chrono::seconds(1)) {
    for (uint64_t page = 0; page < kPages; ++page) {
      Check(to_shared(page * kPage), "to shared");
      Check(to_private(page * kPage), "to private");
    }
    trips += kPages;
    now = Clock::now();
  }
  return static_cast<double>(trips) / Seconds(now - start);
}

struct Variant {
  std::string name;
  std::function<absl::Status(uint64_t gpa, absl::Span<uint8_t>)> read;
  std::vector<double> ns_per_read;
};

uint64_t g_sink = 0;  // Keeps the copies observable.

void RunRound(Variant& variant) {
  std::vector<uint8_t> buffer(kPage);
  uint64_t sink = 0;
  const Clock::time_point start = Clock::now();
  for (uint64_t i = 0; i < kReadsPerRound; ++i) {
    Check(variant.read((i % kPages) * kPage, absl::MakeSpan(buffer)), variant.name.c_str());
    sink += buffer[i % kPage];
  }
  const double seconds = Seconds(Clock::now() - start);
  g_sink += sink;
  variant.ns_per_read.push_back(seconds * 1e9 / kReadsPerRound);
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

int Main() {
  // --- Conversions -------------------------------------------------------------------------
  const auto snp_backing = MakeBacking("snp");
  auto snp = SnpModel::Create(snp_backing);
  Check(snp.status(), "snp model");
  SnpModel* snp_model = snp->get();
  Check(snp_model->ConvertToPrivate(0, kPages * kPage), "snp initial");
  const double snp_trips =
      RoundTripsPerSecond([&](uint64_t gpa) { return snp_model->ConvertToShared(gpa, kPage); },
                          [&](uint64_t gpa) { return snp_model->ConvertToPrivate(gpa, kPage); });

  const auto tdx_backing = MakeBacking("tdx");
  auto tdx = TdxModel::Create(tdx_backing);
  Check(tdx.status(), "tdx model");
  TdxModel* tdx_model = tdx->get();
  Check(tdx_model->ConvertToPrivate(0, kPages * kPage), "tdx initial");
  const double tdx_trips =
      RoundTripsPerSecond([&](uint64_t gpa) { return tdx_model->ConvertToShared(gpa, kPage); },
                          [&](uint64_t gpa) { return tdx_model->ConvertToPrivate(gpa, kPage); });

  fmt::print("conversions (4 KiB page, private -> shared -> private, single thread)\n");
  fmt::print("  SEV-SNP  {:>10.0f} round trips/s  ({:.2f} us per round trip)\n", snp_trips,
             1e6 / snp_trips);
  fmt::print("  TDX      {:>10.0f} round trips/s  ({:.2f} us per round trip)\n", tdx_trips,
             1e6 / tdx_trips);

  // --- Access check --------------------------------------------------------------------------
  const auto plain_backing = MakeBacking("plain");  // No model: both views read-write.
  const guestmem::GuestMemory plain = guestmem::GuestMemory::Private(plain_backing);
  const guestmem::GuestMemory snp_private = guestmem::GuestMemory::Private(snp_backing);
  const guestmem::GuestMemory tdx_private = guestmem::GuestMemory::Private(tdx_backing);
  std::vector<Variant> variants;
  variants.push_back({"no isolation, GuestMemory::Read",
                      [&](uint64_t gpa, absl::Span<uint8_t> out) { return plain.Read(gpa, out); },
                      {}});
  variants.push_back(
      {"SEV-SNP model, GuestMemory::Read",
       [&](uint64_t gpa, absl::Span<uint8_t> out) { return snp_private.Read(gpa, out); },
       {}});
  variants.push_back(
      {"TDX model, GuestMemory::Read",
       [&](uint64_t gpa, absl::Span<uint8_t> out) { return tdx_private.Read(gpa, out); },
       {}});
  variants.push_back({"SEV-SNP model, SnpModel::GuestRead",
                      [&](uint64_t gpa, absl::Span<uint8_t> out) {
                        return snp_model->GuestRead(snp_model->PrivateAddress(gpa), out);
                      },
                      {}});
  variants.push_back(
      {"TDX model, TdxModel::GuestRead",
       [&](uint64_t gpa, absl::Span<uint8_t> out) { return tdx_model->GuestRead(gpa, out); },
       {}});
  for (Variant& variant : variants) RunRound(variant);  // Warm-up, discarded.
  for (Variant& variant : variants) variant.ns_per_read.clear();
  for (int round = 0; round < kRounds; ++round) {
    for (Variant& variant : variants) RunRound(variant);
  }
  const double baseline = Median(variants[0].ns_per_read);
  fmt::print("\n4 KiB private-view read, {} pages cycled, median of {} rounds of {} reads\n",
             kPages, kRounds, kReadsPerRound);
  for (const Variant& variant : variants) {
    const double ns = Median(variant.ns_per_read);
    const auto [low, high] =
        std::minmax_element(variant.ns_per_read.begin(), variant.ns_per_read.end());
    fmt::print(
        "  {:<36} {:7.1f} ns/read  {:6.1f} GB/s  {:+6.1f}% vs no isolation  "
        "(rounds {:.1f}..{:.1f})\n",
        variant.name, ns, kPage / ns, (ns / baseline - 1) * 100, *low, *high);
  }
  fmt::print("(sink {})\n", g_sink & 1);
  return 0;
}

}  // namespace
}  // namespace cvmbus::hw::isolation

int main() { return cvmbus::hw::isolation::Main(); }
