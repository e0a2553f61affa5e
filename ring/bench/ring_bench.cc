// Ring throughput, producer on cpu0 and consumer on cpu1, busy polling, 256 KiB data area.
//
// Compares in one run, at the placement measured before each repetition:
//   cvmbus     OutgoingRing::Write (publish per packet, the signalling rule's full check per
//              packet) -> IncomingRing::Read, Commit per drain, over the untrusted view of a
//              memfd guest memory (double-mapped data area);
//   burst      the same, with both sides publishing through CommitInBurst: visible at once,
//              the signalling rules' full check once per burst (every kBurstCheckInterval
//              commits, and EndBurst when the writer finds the ring full or the reader finds
//              it empty);
//   cvmbus/16  the same writer appending 16 packets per Commit;
//   dpdk       DPDK 22.11 rte_vmbus_chan_send -> rte_vmbus_chan_recv (Debian's library),
//              called directly on channels DpdkPeer built;
//   minimal    a minimal SPSC ring in the VMBus layout (control page, 16-byte header, 8-byte
//              trailer, split copies), the "VMBus control page" row of limits.md.
// The consumer copies every payload out. Prints Mpkt/s and GB/s (payload bytes) per size.
//
//   bazel run -c opt //ring/bench:ring_bench -- [--reps=3] [--millis=300]
#include <fmt/format.h>
#include <immintrin.h>
#include <rte_bus_vmbus.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "guestmem/guest_memory.h"
#include "guestmem/ring_memory.h"
#include "ring/bench/placement.h"
#include "ring/errors.h"
#include "ring/ring.h"
#include "ring/testing/dpdk_peer.h"

ABSL_FLAG(int64_t, reps, 3, "Repetitions of every row, each at its own placement (1 to 100000).");
ABSL_FLAG(int64_t, millis, 300, "Milliseconds each ring runs per repetition (1 to 100000).");

namespace cvmbus::ring::bench {
namespace {

constexpr uint32_t kDataBytes = 256 << 10;

// Every consumer backs off the same way when it finds its ring empty: a few pause
// instructions before it looks at the producer's index again, so a caught-up consumer does not
// pull the index's cache line away from the producer on every poll.
inline void EmptyBackoff() {
  for (int i = 0; i < 16; ++i) _mm_pause();
}

struct Flags {
  int reps = 3;
  int millis = 300;
};

// The flags' values, each checked against its range: false after a one-line error naming it.
bool GetFlags(Flags* flags) {
  const auto get = [](std::string_view name, const absl::Flag<int64_t>& flag, int* out) {
    const int64_t value = absl::GetFlag(flag);
    if (value < 1 || value > 100000) {
      fmt::print(stderr, "ring_bench: '--{}={}' needs a whole number from 1 to 100000\n", name,
                 value);
      return false;
    }
    *out = static_cast<int>(value);
    return true;
  };
  return get("reps", FLAGS_reps, &flags->reps) && get("millis", FLAGS_millis, &flags->millis);
}

// A fresh ring in its own memfd guest memory: page 0 control, then the data area.
struct RingSpace {
  RingSpace() {
    guestmem::MemoryOptions options;
    options.name = "bench-ring";
    options.regions = {{0, 4096 + uint64_t{kDataBytes}}};
    backing = *guestmem::MemoryBacking::Create(options);
  }
  guestmem::RingMemory Memory() const {
    std::vector<uint64_t> gpns;
    for (uint64_t i = 0; i <= kDataBytes / 4096; ++i) gpns.push_back(i);
    return *guestmem::RingMemory::Create(guestmem::GuestMemory::Untrusted(backing), gpns);
  }
  uint8_t* host() const { return static_cast<uint8_t*>(backing->regions()[0].host_address); }
  std::shared_ptr<guestmem::MemoryBacking> backing;
};

// Runs `produce(stop)` on cpu0 and `consume()` on cpu1; `produce` returns how many packets it
// sent, `consume(target)` returns once it has received `target` (published when the producer
// stops). Returns packets per second over the consumer's time.
double RunPair(int millis, const std::function<uint64_t(const std::atomic<bool>&)>& produce,
               const std::function<void(const std::atomic<uint64_t>&)>& consume) {
  // Lines of their own: a side's per-packet stores (its spilled locals live just below this
  // frame) must not share a line with what the other side reads.
  alignas(64) std::atomic<bool> stop{false};
  alignas(64) std::atomic<uint64_t> target{~uint64_t{0}};
  alignas(64) std::atomic<int> ready{0};
  alignas(64) std::chrono::steady_clock::time_point start, end;
  std::thread consumer([&] {
    PinToCpu(1);
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    consume(target);
    end = std::chrono::steady_clock::now();
  });
  PinToCpu(0);
  ready.fetch_add(1);
  while (ready.load() < 2) {
  }
  start = std::chrono::steady_clock::now();
  std::thread timer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(millis));
    stop.store(true);
  });
  const uint64_t sent = produce(stop);
  target.store(sent);
  consumer.join();
  timer.join();
  return static_cast<double>(sent) / std::chrono::duration<double>(end - start).count();
}

enum class WriteMode { kWrite, kBurst, kBatch16 };

double RunCvmbus(size_t payload_bytes, int millis, WriteMode mode) {
  RingSpace space;
  auto writer = OutgoingRing::Create(space.Memory());
  auto reader = IncomingRing::Create(space.Memory());
  const std::vector<uint8_t> payload(payload_bytes, 0x5a);
  return RunPair(
      millis,
      [&](const std::atomic<bool>& stop) {
        uint64_t sent = 0;
        const OutgoingPacket packet{.payload = payload};
        const int batch = mode == WriteMode::kBatch16 ? 16 : 1;
        while (!stop.load(std::memory_order_relaxed)) {
          int appended = 0;
          while (appended < batch && writer->Append(packet).ok()) ++appended;
          if (mode == WriteMode::kBurst) {
            // A full ring ends the burst: the writer is about to wait.
            (void)(appended != 0 ? writer->CommitInBurst() : writer->EndBurst());
          } else {
            (void)writer->Commit();
          }
          sent += appended;
        }
        (void)writer->EndBurst();
        return sent;
      },
      [&](const std::atomic<uint64_t>& target) {
        // Read() already copies each packet out into the private PacketBuffer: that is the
        // consumer's copy, as the other rings' copy into `sink` is theirs.
        PacketBuffer buffer;
        uint64_t received = 0;
        const bool burst = mode == WriteMode::kBurst;
        const auto release = [&] { (void)(burst ? reader->CommitInBurst() : reader->Commit()); };
        while (received < target.load(std::memory_order_relaxed)) {
          bool any = false;
          uint32_t unreleased = 0;
          while (*reader->Read(&buffer)) {
            asm volatile("" ::"r"(buffer.packet().payload.data()) : "memory");
            ++received;
            any = true;
            // Release space in slices of 1/8 ring, so a writer of large packets is not kept
            // waiting for the whole drain.
            unreleased += static_cast<uint32_t>(payload_bytes) + 24;
            if (unreleased >= kDataBytes / 8) {
              release();
              unreleased = 0;
            }
          }
          if (any) {
            release();
          } else {
            if (burst) (void)reader->EndBurst();  // Caught up: a waiting reader ends its burst.
            EmptyBackoff();
          }
        }
      });
}

double RunDpdk(size_t payload_bytes, int millis) {
  RingSpace ring, unused_a, unused_b;
  const testing::RawRing raw{ring.host(), 4096 + size_t{kDataBytes}};
  const testing::RawRing raw_a{unused_a.host(), 4096 + size_t{kDataBytes}};
  const testing::RawRing raw_b{unused_b.host(), 4096 + size_t{kDataBytes}};
  auto sender = testing::DpdkPeer::Create(/*tx=*/raw, /*rx=*/raw_a, 1);
  auto receiver = testing::DpdkPeer::Create(/*tx=*/raw_b, /*rx=*/raw, 2);
  if (!sender.ok() || !receiver.ok()) {
    fmt::print(stderr, "ring_bench: DPDK peer: {} {}\n", sender.status().ToString(),
               receiver.status().ToString());
    std::exit(1);
  }
  auto* tx_channel = static_cast<vmbus_channel*>((*sender)->raw_channel());
  auto* rx_channel = static_cast<vmbus_channel*>((*receiver)->raw_channel());
  const std::vector<uint8_t> payload(payload_bytes + 1, 0x5a);  // +1: data() is never null.
  return RunPair(
      millis,
      [&](const std::atomic<bool>& stop) {
        uint64_t sent = 0;
        bool need_signal = false;  // Non-null: DPDK decides but does not signal.
        while (!stop.load(std::memory_order_relaxed)) {
          if (rte_vmbus_chan_send(tx_channel, 0x6, const_cast<uint8_t*>(payload.data()),
                                  static_cast<uint32_t>(payload_bytes), sent, 0,
                                  &need_signal) == 0) {
            ++sent;
          }
        }
        return sent;
      },
      [&](const std::atomic<uint64_t>& target) {
        std::vector<uint8_t> sink(payload_bytes + 16);
        uint64_t received = 0, xid = 0;
        while (received < target.load(std::memory_order_relaxed)) {
          uint32_t len = static_cast<uint32_t>(sink.size());
          // rte_vmbus_chan_recv also runs DPDK's read-side signalling check, as a real
          // consumer does; the monitor page it may signal through is DpdkPeer's.
          if (rte_vmbus_chan_recv(rx_channel, sink.data(), &len, &xid) == 0) {
            ++received;
          } else {
            EmptyBackoff();
          }
        }
      });
}

// The baseline: a minimal single-producer single-consumer ring in the VMBus layout, with no
// validation beyond what keeps it in bounds and no signalling.
double RunMinimal(size_t payload_bytes, int millis) {
  std::vector<uint8_t> memory(4096 + kDataBytes + 64);
  auto* control = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(memory.data()) + 63) &
                                              ~uintptr_t{63});
  uint8_t* data = reinterpret_cast<uint8_t*>(control) + 4096;
  std::atomic_ref<uint32_t> write_index(control[0]), read_index(control[1]);
  write_index.store(0);
  read_index.store(0);
  const uint32_t record = 16 + ((static_cast<uint32_t>(payload_bytes) + 7) & ~7u) + 8;
  const auto copy_in = [&](uint32_t at, const void* from, uint32_t len) {
    const uint32_t first = std::min(len, kDataBytes - at);
    std::memcpy(data + at, from, first);
    std::memcpy(data, static_cast<const uint8_t*>(from) + first, len - first);
  };
  const auto copy_out = [&](uint32_t at, void* to, uint32_t len) {
    const uint32_t first = std::min(len, kDataBytes - at);
    std::memcpy(to, data + at, first);
    std::memcpy(static_cast<uint8_t*>(to) + first, data, len - first);
  };
  const std::vector<uint8_t> payload(payload_bytes, 0x5a);
  return RunPair(
      millis,
      [&](const std::atomic<bool>& stop) {
        uint64_t sent = 0;
        uint32_t write = 0, read_cache = 0;
        while (!stop.load(std::memory_order_relaxed)) {
          uint32_t used = (write - read_cache + kDataBytes) % kDataBytes;
          if (kDataBytes - used <= record) {
            read_cache = read_index.load(std::memory_order_acquire);
            used = (write - read_cache + kDataBytes) % kDataBytes;
            if (kDataBytes - used <= record) continue;
          }
          const uint64_t header[2] = {record / 8, sent};
          copy_in(write, header, 16);
          copy_in((write + 16) % kDataBytes, payload.data(), static_cast<uint32_t>(payload_bytes));
          const uint64_t trailer = uint64_t{write} << 32;
          copy_in((write + record - 8) % kDataBytes, &trailer, 8);
          write = (write + record) % kDataBytes;
          write_index.store(write, std::memory_order_release);
          ++sent;
        }
        return sent;
      },
      [&](const std::atomic<uint64_t>& target) {
        std::vector<uint8_t> sink(payload_bytes + 8);
        uint64_t received = 0;
        uint32_t read = 0;
        while (received < target.load(std::memory_order_relaxed)) {
          const uint32_t write = write_index.load(std::memory_order_acquire);
          if (read == write) EmptyBackoff();
          while (read != write) {
            uint64_t header[2];
            copy_out(read, header, 16);
            const uint32_t length = static_cast<uint32_t>(header[0] * 8);
            if (length < 24 || length > kDataBytes) std::abort();  // Our own ring: cannot be.
            copy_out((read + 16) % kDataBytes, sink.data(), static_cast<uint32_t>(payload_bytes));
            read = (read + length) % kDataBytes;
            ++received;
          }
          read_index.store(read, std::memory_order_release);
        }
      });
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

int Run(const Flags& flags) {
  fmt::print("ring throughput, producer cpu0 -> consumer cpu1, busy polling, {} KiB data area\n",
             kDataBytes >> 10);
  fmt::print("median of {} x {} ms; rtt = cache-line round trip measured before each size\n",
             flags.reps, flags.millis);
  fmt::print("{:>6} {:>9} | {:>7} {:>7} {:>9} {:>7} {:>7} | {:>6} {:>6} {:>6} {:>6} | {:>6}\n",
             "size", "rtt ns", "cvmbus", "burst", "cvmbus/16", "dpdk", "minimal", "c/dpdk",
             "b/dpdk", "c/min", "b/min", "GB/s");
  fmt::print("{:>6} {:>9} | {:>7} {:>7} {:>9} {:>7} {:>7} | {:>6} {:>6} {:>6} {:>6} | {:>6}\n",
             "bytes", "(place)", "Mpkt/s", "Mpkt/s", "Mpkt/s", "Mpkt/s", "Mpkt/s", "", "", "", "",
             "burst");
  for (size_t size : {0, 64, 256, 1024, 4096, 16384}) {
    // Ratios are taken within each repetition (same placement), then their median.
    std::vector<double> ours, burst, ours16, dpdk, minimal, rtts;
    std::vector<double> ours_to_dpdk, burst_to_dpdk, ours_to_minimal, burst_to_minimal;
    for (int rep = 0; rep < flags.reps; ++rep) {
      rtts.push_back(CacheLineRoundTripNs());
      ours.push_back(RunCvmbus(size, flags.millis, WriteMode::kWrite));
      burst.push_back(RunCvmbus(size, flags.millis, WriteMode::kBurst));
      ours16.push_back(RunCvmbus(size, flags.millis, WriteMode::kBatch16));
      dpdk.push_back(RunDpdk(size, flags.millis));
      minimal.push_back(RunMinimal(size, flags.millis));
      ours_to_dpdk.push_back(ours.back() / dpdk.back());
      burst_to_dpdk.push_back(burst.back() / dpdk.back());
      ours_to_minimal.push_back(ours.back() / minimal.back());
      burst_to_minimal.push_back(burst.back() / minimal.back());
    }
    const double rtt = Median(rtts);
    fmt::print(
        "{:>6} {:>5.0f} {:<4}| {:>7.2f} {:>7.2f} {:>9.2f} {:>7.2f} {:>7.2f} | {:>6.2f} {:>6.2f} "
        "{:>6.2f} {:>6.2f} | {:>6.2f}\n",
        size, rtt, PlacementName(rtt), Median(ours) / 1e6, Median(burst) / 1e6,
        Median(ours16) / 1e6, Median(dpdk) / 1e6, Median(minimal) / 1e6, Median(ours_to_dpdk),
        Median(burst_to_dpdk), Median(ours_to_minimal), Median(burst_to_minimal),
        Median(burst) * size / 1e9);
  }
  fmt::print(
      "c = cvmbus, b = burst (both publish per packet); ratios are medians of same-run "
      "ratios\n");
  return 0;
}

}  // namespace
}  // namespace cvmbus::ring::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ring_bench [--reps=3] [--millis=300]: ring throughput cpu0 -> cpu1, cvmbus against DPDK "
      "and a minimal ring");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "ring_bench: unexpected argument '{}' (flags: --reps=N --millis=N)\n",
               rest[1]);
    return 2;
  }
  cvmbus::ring::bench::Flags flags;
  if (!cvmbus::ring::bench::GetFlags(&flags)) return 2;
  return cvmbus::ring::bench::Run(flags);
}
