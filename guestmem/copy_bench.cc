// Copy throughput through guestmem's views, with access checks on, against plain memcpy.
//
// For each size (64 B .. 64 KiB) and each of: memcpy, private-view Read/Write, untrusted-view
// Read/Write, and a pinned-pages Read, copies the same hot buffer over and over for a fixed
// time and prints GB/s and the ratio to memcpy. Median of --reps repetitions. One thread: no
// cross-core placement is involved, but run it with nothing else busy.
//
//   bazel run -c opt //guestmem:copy_bench -- [--reps=5] [--millis=200]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "guestmem/guest_memory.h"

ABSL_FLAG(int64_t, reps, 5,
          "Repetitions of every measurement; the median is printed (1 to 100000).");
ABSL_FLAG(int64_t, millis, 200, "Milliseconds each measurement copies for (1 to 100000).");

namespace cvmbus::guestmem {
namespace {

struct Flags {
  int reps = 5;
  int millis = 200;
};

// The flags' values, each checked against its range: false after a one-line error naming it.
bool GetFlags(Flags* flags) {
  const auto get = [](std::string_view name, const absl::Flag<int64_t>& flag, int* out) {
    const int64_t value = absl::GetFlag(flag);
    if (value < 1 || value > 100000) {
      fmt::print(stderr, "copy_bench: '--{}={}' needs a whole number from 1 to 100000\n", name,
                 value);
      return false;
    }
    *out = static_cast<int>(value);
    return true;
  };
  return get("reps", FLAGS_reps, &flags->reps) && get("millis", FLAGS_millis, &flags->millis);
}

// Runs `copy` repeatedly for `millis` and returns bytes per second.
double Measure(size_t size, int millis, const std::function<bool()>& copy) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(millis);
  uint64_t copies = 0;
  const auto start = Clock::now();
  auto now = start;
  do {
    for (int i = 0; i < 256; ++i) {
      if (!copy()) {
        fmt::print(stderr, "copy_bench: a copy failed\n");
        std::exit(1);
      }
    }
    copies += 256;
    now = Clock::now();
  } while (now < deadline);
  return static_cast<double>(copies * size) / std::chrono::duration<double>(now - start).count();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

int Run(const Flags& flags) {
  constexpr uint64_t kBytes = 1 << 20;
  MemoryOptions options;
  options.name = "bench";
  options.regions = {{0, kBytes}};
  auto backing = MemoryBacking::Create(options);
  if (!backing.ok()) {
    fmt::print(stderr, "copy_bench: {}\n", backing.status().ToString());
    return 1;
  }
  const GuestMemory private_view = GuestMemory::Private(*backing);
  const GuestMemory untrusted_view = GuestMemory::Untrusted(*backing);
  std::vector<uint64_t> gpns(kBytes / kPageSize);
  for (size_t i = 0; i < gpns.size(); ++i) gpns[i] = i;
  auto pinned = private_view.Pin(gpns, Access::kReadWrite);
  if (!pinned.ok()) return 1;
  auto guest_span = pinned->PrivateSpan();
  if (!guest_span.ok()) return 1;
  uint8_t* guest = guest_span->data();

  // The private buffer sits 2 KiB off page alignment so that source and destination never share
  // their low 12 address bits (4K aliasing would slow both memcpy and the views alike).
  std::vector<uint8_t> local_storage((64 << 10) + 8192, 0x5a);
  uint8_t* const local_bytes = reinterpret_cast<uint8_t*>(
      ((reinterpret_cast<uintptr_t>(local_storage.data()) + 4095) & ~uintptr_t{4095}) + 2048);
  // Two placements of the guest bytes: "hot" copies the same page-aligned GPA every time (the
  // copy is L1-resident, so fixed per-access costs show most); "sweep" walks the GPA through
  // the whole 1 MiB (L2-resident), as a ring's data area or packet buffers do.
  fmt::print("guestmem copy throughput, GB/s (median of {}, {} ms each), one thread\n", flags.reps,
             flags.millis);
  fmt::print("ratio = view / memcpy in the same direction; the worse of read and write\n");
  fmt::print("{:>5} {:>7} | {:>7} {:>7} | {:>7} {:>7} {:>5} | {:>7} {:>7} {:>5} | {:>7} {:>5}\n",
             "place", "size", "mcpy rd", "mcpy wr", "priv rd", "priv wr", "ratio", "untr rd",
             "untr wr", "ratio", "pin rd", "ratio");
  for (const bool sweep : {false, true}) {
    for (size_t size : {64, 256, 1024, 4096, 16384, 65536}) {
      const auto span = absl::MakeSpan(local_bytes, size);
      uint64_t next_gpa = 0;
      // The GPA of the next copy: fixed, or advancing by `size` through the region.
      const auto gpa = [&]() -> uint64_t {
        if (!sweep) return 0x10000;
        const uint64_t at = next_gpa;
        next_gpa = (next_gpa + size) % kBytes;
        return at;
      };
      std::vector<double> rates[7];
      for (int rep = 0; rep < flags.reps; ++rep) {
        rates[0].push_back(Measure(size, flags.millis, [&] {
          std::memcpy(local_bytes, guest + gpa(), size);
          asm volatile("" ::"r"(local_bytes) : "memory");
          return true;
        }));
        rates[1].push_back(Measure(size, flags.millis, [&] {
          std::memcpy(guest + gpa(), local_bytes, size);
          asm volatile("" ::"r"(guest) : "memory");
          return true;
        }));
        rates[2].push_back(
            Measure(size, flags.millis, [&] { return private_view.Read(gpa(), span).ok(); }));
        rates[3].push_back(
            Measure(size, flags.millis, [&] { return private_view.Write(gpa(), span).ok(); }));
        rates[4].push_back(
            Measure(size, flags.millis, [&] { return untrusted_view.Read(gpa(), span).ok(); }));
        rates[5].push_back(
            Measure(size, flags.millis, [&] { return untrusted_view.Write(gpa(), span).ok(); }));
        rates[6].push_back(
            Measure(size, flags.millis, [&] { return pinned->Read(gpa(), span).ok(); }));
      }
      double gbps[7];
      for (int i = 0; i < 7; ++i) gbps[i] = Median(rates[i]) / 1e9;
      fmt::print(
          "{:>5} {:>7} | {:>7.1f} {:>7.1f} | {:>7.1f} {:>7.1f} {:>5.2f} | {:>7.1f} {:>7.1f} "
          "{:>5.2f} | {:>7.1f} {:>5.2f}\n",
          sweep ? "sweep" : "hot", size, gbps[0], gbps[1], gbps[2], gbps[3],
          std::min(gbps[2] / gbps[0], gbps[3] / gbps[1]), gbps[4], gbps[5],
          std::min(gbps[4] / gbps[0], gbps[5] / gbps[1]), gbps[6], gbps[6] / gbps[0]);
    }
  }
  return 0;
}

}  // namespace
}  // namespace cvmbus::guestmem

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "copy_bench [--reps=5] [--millis=200]: copy throughput through guestmem's views, against "
      "memcpy");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "copy_bench: unexpected argument '{}' (flags: --reps=N --millis=N)\n",
               rest[1]);
    return 2;
  }
  cvmbus::guestmem::Flags flags;
  if (!cvmbus::guestmem::GetFlags(&flags)) return 2;
  return cvmbus::guestmem::Run(flags);
}
