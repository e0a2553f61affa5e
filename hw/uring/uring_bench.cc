// Doorbells and sleeping rings through the io_uring EventLoop, against raw eventfds.
//
//   1. doorbell round trip, cpu0 <-> cpu1: raw eventfd write(2)/blocking read(2) on both sides,
//      against two EventLoops whose eventfd watches answer each other (goal: at most 1.1x
//      raw), and against MSG_RING between the loops;
//   2. signals per second from one thread, and wake-ups per second on a loop;
//   3. ring throughput with both sides sleeping on eventfds (RingReader/RingWriter tasks),
//      with and without a bounded spin, and signals per packet, interleaved with a minimal
//      eventfd ring and DPDK's ring functions (base/bench/report.h: ratios at one placement).
// Every cross-core figure is printed with the cache-line round trip measured before it.
//
//   bazel run -c opt //hw/uring:uring_bench -- [--millis=500] [--reps=3] [--json=FILE]
#include <fmt/format.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "base/bench/placement.h"
#include "base/bench/report.h"
#include "guestmem/guest_memory.h"
#include "guestmem/ring_memory.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/ring_endpoint.h"
#include "hw/uring/task.h"
#include "hw/uring/testing/sleeping_ring.h"
#include "ring/errors.h"
#include "ring/testing/dpdk_peer.h"

ABSL_FLAG(int64_t, millis, 500, "Milliseconds each measurement runs for (1 to 100000).");
ABSL_FLAG(int64_t, reps, 3, "Repetitions of every sleeping-ring row at every size (1 to 1000).");
ABSL_FLAG(std::string, json, "",
          "Also write the sleeping-ring samples and ratios to this JSON file.");

namespace cvmbus::hw {
namespace {

using Clock = std::chrono::steady_clock;
using bench::CacheLineRoundTripNs;
using bench::PinToCpu;
using bench::PlacementName;

struct EventFd {
  EventFd(int flags = EFD_CLOEXEC) : fd(eventfd(0, flags)) {}
  ~EventFd() { close(fd); }
  int fd;
};

void Ring(int fd) {
  const uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}
void Wait(int fd) {
  uint64_t count;
  (void)!read(fd, &count, sizeof(count));
}

// Raw: blocking read(2) and write(2) on two eventfds. Returns mean round trip in us.
double RawRoundTripUs(int rounds) {
  EventFd ping, pong;
  std::thread other([&] {
    PinToCpu(1);
    for (int i = 0; i < rounds; ++i) {
      Wait(ping.fd);
      Ring(pong.fd);
    }
  });
  PinToCpu(0);
  const auto start = Clock::now();
  for (int i = 0; i < rounds; ++i) {
    Ring(ping.fd);
    Wait(pong.fd);
  }
  const auto end = Clock::now();
  other.join();
  return std::chrono::duration<double, std::micro>(end - start).count() / rounds;
}

// Two loops; each one's eventfd watch rings the other. `use_msg_ring` answers with MSG_RING.
double LoopRoundTripUs(int rounds, bool use_msg_ring) {
  EventFd ping(EFD_NONBLOCK | EFD_CLOEXEC), pong(EFD_NONBLOCK | EFD_CLOEXEC);
  std::atomic<int> other_ring{-1};
  std::atomic<int> main_ring{-1};
  std::thread other([&] {
    PinToCpu(1);
    auto loop = *EventLoop::Create();
    int answered = 0;
    const auto answer = [&] {
      if (use_msg_ring) {
        (void)loop->SendMessage(main_ring.load(), 1);
      } else {
        Ring(pong.fd);
      }
      if (++answered == rounds) loop->Stop();
    };
    if (use_msg_ring) {
      loop->OnMessage([&](uint64_t) { answer(); });
    } else {
      (void)loop->WatchEventFd(ping.fd, [&](uint64_t) { answer(); });
    }
    other_ring = loop->ring_fd();
    (void)loop->Run();
  });
  PinToCpu(0);
  auto loop = *EventLoop::Create();
  main_ring = loop->ring_fd();
  while (other_ring.load() < 0) std::this_thread::yield();
  int done = 0;
  const auto next = [&] {
    if (++done == rounds) {
      loop->Stop();
    } else if (use_msg_ring) {
      (void)loop->SendMessage(other_ring.load(), 1);
    } else {
      Ring(ping.fd);
    }
  };
  if (use_msg_ring) {
    loop->OnMessage([&](uint64_t) { next(); });
  } else {
    (void)loop->WatchEventFd(pong.fd, [&](uint64_t) { next(); });
  }
  const auto start = Clock::now();
  if (use_msg_ring) {
    (void)loop->SendMessage(other_ring.load(), 1);
  } else {
    Ring(ping.fd);
  }
  (void)loop->Run();
  const auto end = Clock::now();
  other.join();
  return std::chrono::duration<double, std::micro>(end - start).count() / rounds;
}

// One thread rings an eventfd as fast as it can; a loop on the other vCPU counts wake-ups.
void SignalRates(int millis, double* signals_per_second, double* wakeups_per_second) {
  EventFd fd(EFD_NONBLOCK | EFD_CLOEXEC);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wakeups{0};
  std::thread waiter([&] {
    PinToCpu(1);
    auto loop = *EventLoop::Create();
    (void)loop->WatchEventFd(fd.fd, [&](uint64_t) { wakeups.fetch_add(1); });
    while (!stop.load()) (void)loop->RunOnce(std::chrono::milliseconds(10));
  });
  PinToCpu(0);
  uint64_t signals = 0;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::milliseconds(millis);
  while (Clock::now() < deadline) {
    for (int i = 0; i < 1000; ++i) Ring(fd.fd);
    signals += 1000;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stop = true;
  waiter.join();
  *signals_per_second = signals / seconds;
  *wakeups_per_second = wakeups.load() / seconds;
}

// --- Sleeping ring ---------------------------------------------------------------------------

constexpr uint32_t kRingDataBytes = testing::kSleepingRingDataBytes;
using RingResult = testing::SleepingRingResult;
using testing::SleepingRing;

// One side of a ring whose two threads sleep in blocking read(2) on eventfds. (Each side and
// the shared flags get cache lines of their own: one side's per-packet stores must not land
// on a line the other side reads.)
struct alignas(64) BlockingSide {
  int wait_fd;       // Where this side sleeps.
  int peer_fd;       // Where it wakes the other side.
  uint64_t signals;  // Signals it raised.
  void Signal() {
    Ring(peer_fd);
    ++signals;
  }
  void Sleep() const { Wait(wait_fd); }
};

// Runs `produce(side, stop)` (returns the packets sent) on cpu0 for `millis`, and
// `consume(side, target)` (returns once it has received `target`, published when the producer
// stops) on cpu1. Packets per second over the consumer's time; signals of both sides.
template <typename Produce, typename Consume>
RingResult RunBlockingPair(int millis, Produce produce, Consume consume) {
  EventFd to_consumer, to_producer;
  BlockingSide producer{to_producer.fd, to_consumer.fd, 0},
      consumer{to_consumer.fd, to_producer.fd, 0};
  alignas(64) std::atomic<bool> stop{false};
  alignas(64) std::atomic<uint64_t> target{~uint64_t{0}};
  alignas(64) Clock::time_point end;
  std::thread consumer_thread([&] {
    PinToCpu(1);
    consume(consumer, target);
    end = Clock::now();
  });
  PinToCpu(0);
  std::thread timer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(millis));
    stop = true;
    Ring(to_producer.fd);  // Wake a sleeping producer so it sees `stop`.
  });
  const auto start = Clock::now();
  const uint64_t sent = produce(producer, stop);
  target.store(sent, std::memory_order_release);
  Ring(to_consumer.fd);
  consumer_thread.join();
  timer.join();
  RingResult result;
  result.packets_per_second = sent / std::chrono::duration<double>(end - start).count();
  result.signals_per_packet =
      static_cast<double>(producer.signals + consumer.signals) / std::max<uint64_t>(sent, 1);
  return result;
}

// The VMBus control words of a ring at `control`, as the blocking rings below use them.
struct ControlWords {
  explicit ControlWords(uint32_t* control)
      : write_index(control[0]),
        read_index(control[1]),
        mask(control[2]),
        pending(control[3]),
        features(control[16]) {}
  // Bytes the writer at `write` may use, as of the reader's index loaded with `order`.
  uint32_t Free(uint32_t write, std::memory_order order) const {
    return kRingDataBytes - (write - read_index.load(order) + kRingDataBytes) % kRingDataBytes;
  }
  // A full writer: ask for `record` bytes, re-check, sleep until the reader signals.
  void WaitForSpace(uint32_t write, uint32_t record, const BlockingSide& side) const {
    pending.store(record, std::memory_order_seq_cst);
    if (Free(write, std::memory_order_seq_cst) <= record) side.Sleep();
    pending.store(0, std::memory_order_relaxed);
  }
  std::atomic_ref<uint32_t> write_index, read_index, mask, pending, features;
};

// The baseline of limits.md, measured in the same run: a minimal SPSC ring in the VMBus layout
// (16-byte header, 8-byte trailer, indices in one control line) whose two sides sleep in
// blocking read(2) on eventfds, with the VMBus signalling rules (mask while draining, unmask and
// re-check before sleeping; pending_send_sz for a full writer). No validation, no io_uring.
RingResult MinimalSleepingRing(size_t size, int millis) {
  std::vector<uint8_t> memory(4096 + kRingDataBytes + 64);
  auto* control = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(memory.data()) + 63) &
                                              ~uintptr_t{63});
  uint8_t* data = reinterpret_cast<uint8_t*>(control) + 4096;
  ControlWords words(control);
  const uint32_t record = 16 + ((static_cast<uint32_t>(size) + 7) & ~7u) + 8;
  const auto copy = [&](uint32_t at, const uint8_t* from, uint8_t* to_base, uint32_t len, bool in) {
    const uint32_t first = std::min(len, kRingDataBytes - at);
    if (in) {
      std::memcpy(data + at, from, first);
      std::memcpy(data, from + first, len - first);
    } else {
      std::memcpy(to_base, data + at, first);
      std::memcpy(to_base + first, data, len - first);
    }
  };
  const auto produce = [&](BlockingSide& side, const std::atomic<bool>& stop) {
    const std::vector<uint8_t> payload(size + 8, 0x5a);
    uint64_t sent = 0;
    uint32_t write = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      if (words.Free(write, std::memory_order_acquire) <= record) {
        words.WaitForSpace(write, record, side);
        continue;
      }
      const uint64_t header[2] = {record / 8, sent};
      copy(write, reinterpret_cast<const uint8_t*>(header), nullptr, 16, true);
      copy((write + 16) % kRingDataBytes, payload.data(), nullptr, static_cast<uint32_t>(size),
           true);
      const uint64_t trailer = uint64_t{write} << 32;
      copy((write + record - 8) % kRingDataBytes, reinterpret_cast<const uint8_t*>(&trailer),
           nullptr, 8, true);
      const uint32_t old = write;
      write = (write + record) % kRingDataBytes;
      words.write_index.store(write, std::memory_order_seq_cst);
      ++sent;
      if (words.mask.load(std::memory_order_seq_cst) == 0 &&
          words.read_index.load(std::memory_order_seq_cst) == old) {
        side.Signal();
      }
    }
    return sent;
  };
  const auto consume = [&](BlockingSide& side, const std::atomic<uint64_t>& target) {
    std::vector<uint8_t> sink(size + 16);
    uint64_t received = 0;
    uint32_t read = 0;
    while (received < target.load(std::memory_order_acquire)) {
      words.mask.store(1, std::memory_order_relaxed);
      uint32_t write = words.write_index.load(std::memory_order_acquire);
      while (read != write) {
        const uint32_t start = read;
        // The same release policy as the endpoints' consumer: at most 1/8 ring per batch.
        uint32_t batch = 0;
        while (read != write && batch < kRingDataBytes / 8) {
          uint64_t header[2];
          copy(read, nullptr, reinterpret_cast<uint8_t*>(header), 16, false);
          copy((read + 16) % kRingDataBytes, nullptr, sink.data(), static_cast<uint32_t>(size),
               false);
          read = (read + static_cast<uint32_t>(header[0] * 8)) % kRingDataBytes;
          batch += static_cast<uint32_t>(header[0] * 8);
          ++received;
        }
        words.read_index.store(read, std::memory_order_seq_cst);
        // The pending_send_sz rule: signal if the space the writer wants was crossed now.
        const uint32_t released = (read - start + kRingDataBytes) % kRingDataBytes;
        const uint32_t want = words.pending.load(std::memory_order_seq_cst) & ~7u;
        const uint32_t now_free =
            kRingDataBytes -
            (words.write_index.load(std::memory_order_seq_cst) - read + kRingDataBytes) %
                kRingDataBytes;
        if (want != 0 && now_free - released <= want && now_free > want) side.Signal();
        write = words.write_index.load(std::memory_order_acquire);
      }
      words.mask.store(0, std::memory_order_seq_cst);
      if (words.write_index.load(std::memory_order_seq_cst) != read) continue;  // Re-check.
      if (received >= target.load(std::memory_order_acquire)) break;
      side.Sleep();
    }
  };
  return RunBlockingPair(millis, produce, consume);
}

// DPDK 22.11's ring functions with both sides sleeping on eventfds: the same harness as the
// minimal ring, DPDK deciding every signal (rte_vmbus_chan_send's need_signal,
// rte_vmbus_chan_recv's pending_send_sz check, counted by DpdkPeer). DPDK 22.11 has no calls for
// the reader's interrupt_mask or the writer's pending_send_sz request, so the harness writes
// those control words itself, by the same rules as the other rings.
RingResult DpdkSleepingRing(size_t size, int millis) {
  const size_t total = 4096 + kRingDataBytes;
  std::vector<uint8_t*> pages;
  for (int i = 0; i < 3; ++i) {
    void* at = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (at == MAP_FAILED) break;
    pages.push_back(static_cast<uint8_t*>(at));
  }
  RingResult result;
  if (pages.size() == 3) {
    const ring::testing::RawRing ring{pages[0], total}, unused_a{pages[1], total},
        unused_b{pages[2], total};
    auto sender = ring::testing::DpdkPeer::Create(/*tx=*/ring, /*rx=*/unused_a, 1);
    auto receiver = ring::testing::DpdkPeer::Create(/*tx=*/unused_b, /*rx=*/ring, 2);
    if (sender.ok() && receiver.ok()) {
      ControlWords words(reinterpret_cast<uint32_t*>(pages[0]));
      words.features.fetch_or(1);  // The writer asks for space by pending_send_sz (we do).
      const uint32_t record = 16 + ((static_cast<uint32_t>(size) + 7) & ~7u) + 8;
      const auto produce = [&](BlockingSide& side, const std::atomic<bool>& stop) {
        const std::vector<uint8_t> payload(size + 8, 0x5a);
        uint64_t sent = 0;
        while (!stop.load(std::memory_order_relaxed)) {
          bool need_signal = false;
          const absl::Status status =
              (*sender)->Send(0x6, 0, absl::MakeSpan(payload.data(), size), sent, &need_signal);
          if (status.ok()) {
            ++sent;
            if (need_signal) side.Signal();
          } else if (status.code() == absl::StatusCode::kResourceExhausted) {
            words.WaitForSpace(words.write_index.load(), record, side);
          } else {
            break;
          }
        }
        return sent;
      };
      const auto consume = [&](BlockingSide& side, const std::atomic<uint64_t>& target) {
        std::vector<uint8_t> sink(size + 16);
        uint64_t received = 0, xid = 0;
        while (received < target.load(std::memory_order_acquire)) {
          words.mask.store(1, std::memory_order_relaxed);
          while ((*receiver)->Recv(absl::MakeSpan(sink), &xid).ok()) {
            ++received;
            if ((*receiver)->signals_to_host() != 0) {  // DPDK's pending_send_sz decision.
              (*receiver)->ResetSignals();
              side.Signal();
            }
          }
          words.mask.store(0, std::memory_order_seq_cst);
          if (!(*receiver)->RxEmpty()) continue;  // Re-check after unmasking.
          if (received >= target.load(std::memory_order_acquire)) break;
          side.Sleep();
        }
      };
      result = RunBlockingPair(millis, produce, consume);
    } else {
      fmt::print(stderr, "uring_bench: DPDK peer: {} {}\n", sender.status().ToString(),
                 receiver.status().ToString());
    }
  }
  for (uint8_t* page : pages) munmap(page, total);
  return result;
}

int Run(int millis, int reps, const std::string& json, const std::string& command) {
  fmt::print("io_uring event loop: doorbells and sleeping rings, cpu0 <-> cpu1\n\n");
  const double rtt = CacheLineRoundTripNs();
  const double raw = RawRoundTripUs(20000);
  const double loop = LoopRoundTripUs(20000, false);
  const double msg = LoopRoundTripUs(20000, true);
  fmt::print("doorbell round trip (cache-line rtt {:.0f} ns, {}):\n", rtt, PlacementName(rtt));
  fmt::print("  raw eventfd write/read    {:7.1f} us\n", raw);
  fmt::print("  EventLoop eventfd watch   {:7.1f} us   {:.2f}x raw\n", loop, loop / raw);
  fmt::print("  EventLoop MSG_RING        {:7.1f} us   {:.2f}x raw\n\n", msg, msg / raw);
  double signals = 0, wakeups = 0;
  SignalRates(millis, &signals, &wakeups);
  fmt::print("signals/s from one thread (eventfd write): {:.2e}; loop wake-ups/s: {:.2e}\n\n",
             signals, wakeups);
  bench::Harness harness(
      {.program = "uring_bench",
       .title = "ring, both sides sleeping on eventfds (producer cpu0, consumer cpu1), 256 KiB "
                "data, publish per packet, release every 1/8 ring",
       .params = {0, 64, 256, 1024, 4096, 16384},
       .reps = reps,
       .millis = millis});
  const auto measure = [](RingResult result) {
    return bench::Measurement{.packets_per_second = result.packets_per_second,
                              .signals_per_packet = result.signals_per_packet};
  };
  harness.AddRow({"sleep",
                  "RingReader/RingWriter on io_uring loops: sleep as soon as the ring is "
                  "empty/full, VMBus signalling rules",
                  [&](uint64_t size, int ms) { return measure(SleepingRing(size, ms, 0)); }});
  harness.AddRow({"spin2000", "the same, polling up to 2000 times before sleeping",
                  [&](uint64_t size, int ms) { return measure(SleepingRing(size, ms, 2000)); }});
  harness.AddRow({"minimal",
                  "the minimal eventfd ring of limits.md: blocking read(2), same signalling "
                  "rules and release policy, no validation",
                  [&](uint64_t size, int ms) { return measure(MinimalSleepingRing(size, ms)); }});
  harness.AddRow({"dpdk",
                  "DPDK 22.11's ring functions deciding every signal, in the minimal ring's "
                  "harness",
                  [&](uint64_t size, int ms) { return measure(DpdkSleepingRing(size, ms)); }});
  harness.AddComparison({"sleep / minimal", {"sleep"}, {"minimal"}, 0.9});
  harness.AddComparison({"spin2000 / minimal", {"spin2000"}, {"minimal"}});
  harness.AddComparison({"sleep / dpdk", {"sleep"}, {"dpdk"}});
  if (absl::Status status = harness.Run(); !status.ok()) {
    fmt::print(stderr, "uring_bench: {}\n", status.ToString());
    return 1;
  }
  harness.PrintTable();
  if (!json.empty()) {
    if (absl::Status status = harness.WriteJson(json, command); !status.ok()) {
      fmt::print(stderr, "uring_bench: --json: {}\n", status.ToString());
      return 1;
    }
    fmt::print("wrote {}\n", json);
  }
  return 0;
}

}  // namespace
}  // namespace cvmbus::hw

int main(int argc, char** argv) {
  const std::string command = cvmbus::bench::CommandLine(argc, argv);
  absl::SetProgramUsageMessage(
      "uring_bench [--millis=500] [--reps=3] [--json=FILE]: doorbells and sleeping rings through "
      "the io_uring EventLoop, "
      "against raw eventfds");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "uring_bench: unexpected argument '{}' (see --help)\n", rest[1]);
    return 2;
  }
  const int64_t millis = absl::GetFlag(FLAGS_millis);
  if (millis < 1 || millis > 100000) {
    fmt::print(stderr, "uring_bench: --millis={}: needs 1..100000\n", millis);
    return 2;
  }
  const int64_t reps = absl::GetFlag(FLAGS_reps);
  if (reps < 1 || reps > 1000) {
    fmt::print(stderr, "uring_bench: --reps={}: needs 1..1000\n", reps);
    return 2;
  }
  return cvmbus::hw::Run(static_cast<int>(millis), static_cast<int>(reps),
                         absl::GetFlag(FLAGS_json), command);
}
