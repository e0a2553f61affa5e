// Ring throughput, busy polling: producer on cpu0, consumer on cpu1, 256 KiB data area.
//
// Every row in one run, interleaved, with a placement probe before each run (base/bench/report.h);
// the rows and what each does are printed with the table and described in the JSON. The rings:
//   cvmbus       OutgoingRing::Write (publish per packet with the signalling rule's full check)
//                -> IncomingRing::Read, Commit (release with its check) every 1/8 ring and at the
//                end of each drain; untrusted view of a memfd guest memory, double-mapped data;
//   burst        the same with both sides publishing through CommitInBurst (the rule's check
//                once per burst);
//   batch16      the cvmbus writer appending 16 packets per Commit;
//   burst-snp    burst over the private view of memory under the SEV-SNP model (pages
//                converted private, every access through the view's checks);
//   dpdk         DPDK 22.11 rte_vmbus_chan_send -> rte_vmbus_chan_recv (release and signalling
//                check per packet), called directly on channels DpdkPeer built;
//   dpdk-best    rte_vmbus_chan_send -> rte_vmbus_chan_recv_raw per packet with one
//                rte_vmbus_chan_signal_read per drain, as DPDK's netvsc PMD consumes;
//   dpdk-sglist  rte_vmbus_chan_send_sglist (one 4 KiB GPA range + the payload in band, as
//                netvsc sends) -> the dpdk-best consumer;
//   limit        the physical-limit ring: the VMBus layout (control page, 16-byte header,
//                8-byte trailer) with no validation and no signalling, publishing per packet
//                with a plain release store and releasing every 1/8 ring and per drain;
//   limit16      the same publishing every 16 packets (and whenever it finds the ring full);
//   limit16-sig  limit16 paying the VMBus signalling rules' costs without their decisions: the
//                full barrier and the loads of the peer's control words after every publish
//                (interrupt mask, read index) and every release (feature bits, pending_send_sz,
//                write index), as batch16 does; what it adds to limit16 is what the rules cost.
// Every consumer copies every payload out; every side backs off the same way when it must
// wait (an empty ring for a consumer, a full one for a producer).
//
//   bazel run -c opt //tests/harness:ring_bench -- [--reps=5] [--millis=200] [--json=FILE]
#include <fmt/format.h>
#include <immintrin.h>
#include <rte_bus_vmbus.h>
#include <rte_vmbus_reg.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "base/bench/placement.h"
#include "base/bench/report.h"
#include "guestmem/guest_memory.h"
#include "guestmem/ring_memory.h"
#include "hw/isolation/snp_model.h"
#include "ring/errors.h"
#include "ring/ring.h"
#include "ring/testing/dpdk_peer.h"

ABSL_FLAG(int64_t, reps, 5, "Repetitions of every row at every size (1 to 1000).");
ABSL_FLAG(int64_t, millis, 200, "Milliseconds each row runs per repetition (1 to 100000).");
ABSL_FLAG(std::string, json, "", "Also write every sample and ratio to this JSON file.");
ABSL_FLAG(std::string, rows, "", "Only these rows, comma-separated (default: all).");
ABSL_FLAG(std::string, sizes, "0,64,256,1024,4096,16384",
          "Payload sizes in bytes, comma-separated.");

namespace cvmbus::bench {
namespace {

constexpr uint32_t kDataBytes = 256 << 10;
constexpr uint32_t kReleaseSlice = kDataBytes / 8;

// Every consumer backs off the same way when it finds its ring empty, and every producer when
// it finds it full: a few pause instructions before it looks at the other side's index again,
// so a side that waits does not pull the index's cache line away from the working side on
// every poll.
inline void Backoff() {
  for (int i = 0; i < 16; ++i) _mm_pause();
}

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  fmt::print(stderr, "ring_bench: {}: {}\n", what, status.ToString());
  std::exit(1);
}

// A fresh ring in its own memfd guest memory: page 0 control, then the data area. With `snp`,
// the memory is under the SEV-SNP model, converted private, and the rings use the private view.
struct RingSpace {
  explicit RingSpace(bool snp = false) {
    guestmem::MemoryOptions options;
    options.name = "bench-ring";
    options.regions = {{0, 4096 + uint64_t{kDataBytes}}};
    absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> created =
        guestmem::MemoryBacking::Create(options);
    if (!created.ok()) Die("guest memory", created.status());
    backing = *created;
    if (snp) {
      absl::StatusOr<std::unique_ptr<hw::isolation::SnpModel>> created_model =
          hw::isolation::SnpModel::Create(backing);
      if (!created_model.ok()) Die("SNP model", created_model.status());
      model = *std::move(created_model);
      if (absl::Status status = model->ConvertToPrivate(0, 4096 + uint64_t{kDataBytes});
          !status.ok()) {
        Die("converting the ring private", status);
      }
    }
  }
  guestmem::RingMemory Memory() const {
    std::vector<uint64_t> gpns;
    for (uint64_t i = 0; i <= kDataBytes / 4096; ++i) gpns.push_back(i);
    const guestmem::GuestMemory view =
        model ? guestmem::GuestMemory::Private(backing) : guestmem::GuestMemory::Untrusted(backing);
    absl::StatusOr<guestmem::RingMemory> memory = guestmem::RingMemory::Create(view, gpns);
    if (!memory.ok()) Die("ring memory", memory.status());
    return *std::move(memory);
  }
  uint8_t* host() const { return static_cast<uint8_t*>(backing->regions()[0].host_address); }
  std::shared_ptr<guestmem::MemoryBacking> backing;
  std::unique_ptr<hw::isolation::SnpModel> model;
};

// Runs `produce(stop)` on cpu0 and `consume(target)` on cpu1; `produce` returns how many packets
// it sent, `consume` returns once it has received `target` (published when the producer stops).
// Packets per second over the consumer's time.
Measurement RunPair(int millis, const std::function<uint64_t(const std::atomic<bool>&)>& produce,
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
  return {.packets_per_second =
              static_cast<double>(sent) / std::chrono::duration<double>(end - start).count()};
}

enum class WriteMode { kWrite, kBurst, kBatch16 };

Measurement RunCvmbus(size_t payload_bytes, int millis, WriteMode mode, bool snp) {
  RingSpace space(snp);
  // Each side's ring object on lines of its own (two: the adjacent-line prefetcher pulls
  // pairs): each writes its own counters and cursors per packet, and as neighbours on this
  // stack they shared a line (perf: the reader's update of its packet counters was its hottest
  // instruction, 15% of the run's samples).
  struct alignas(128) WriterSide {
    absl::StatusOr<ring::OutgoingRing> ring;
  };
  struct alignas(128) ReaderSide {
    absl::StatusOr<ring::IncomingRing> ring;
  };
  WriterSide writer_side{ring::OutgoingRing::Create(space.Memory())};
  ReaderSide reader_side{ring::IncomingRing::Create(space.Memory())};
  absl::StatusOr<ring::OutgoingRing>& writer = writer_side.ring;
  absl::StatusOr<ring::IncomingRing>& reader = reader_side.ring;
  if (!writer.ok()) Die("outgoing ring", writer.status());
  if (!reader.ok()) Die("incoming ring", reader.status());
  const std::vector<uint8_t> payload(payload_bytes, 0x5a);
  return RunPair(
      millis,
      [&](const std::atomic<bool>& stop) {
        uint64_t sent = 0;
        const ring::OutgoingPacket packet{.payload = payload};
        const int batch = mode == WriteMode::kBatch16 ? 16 : 1;
        while (!stop.load(std::memory_order_relaxed)) {
          int appended = 0;
          while (appended < batch && writer->Append(packet).ok()) ++appended;
          if (appended == 0) {
            // Full: a waiting writer ends its burst once (a burst's end is a locked store to
            // the control line the reader releases on), then backs off.
            if (writer->in_burst()) (void)writer->EndBurst();
            Backoff();
            continue;
          }
          (void)(mode == WriteMode::kBurst ? writer->CommitInBurst() : writer->Commit());
          sent += appended;
        }
        (void)writer->EndBurst();
        return sent;
      },
      [&](const std::atomic<uint64_t>& target) {
        // Read() copies each packet out into the private PacketBuffer: that is this
        // consumer's copy, as the other rings' copy into `sink` is theirs.
        ring::PacketBuffer buffer;
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
            if (unreleased >= kReleaseSlice) {
              release();
              unreleased = 0;
            }
          }
          if (any) {
            release();
          } else {
            if (burst) (void)reader->EndBurst();  // Caught up: a waiting reader ends its burst.
            Backoff();
          }
        }
      });
}

enum class DpdkMode { kPerPacket, kBestConsumer, kSgList };

Measurement RunDpdk(size_t payload_bytes, int millis, DpdkMode mode) {
  RingSpace ring, unused_a, unused_b;
  const ring::testing::RawRing raw{ring.host(), 4096 + size_t{kDataBytes}};
  const ring::testing::RawRing raw_a{unused_a.host(), 4096 + size_t{kDataBytes}};
  const ring::testing::RawRing raw_b{unused_b.host(), 4096 + size_t{kDataBytes}};
  auto sender = ring::testing::DpdkPeer::Create(/*tx=*/raw, /*rx=*/raw_a, 1);
  auto receiver = ring::testing::DpdkPeer::Create(/*tx=*/raw_b, /*rx=*/raw, 2);
  if (!sender.ok()) Die("DPDK sender", sender.status());
  if (!receiver.ok()) Die("DPDK receiver", receiver.status());
  auto* tx_channel = static_cast<vmbus_channel*>((*sender)->raw_channel());
  auto* rx_channel = static_cast<vmbus_channel*>((*receiver)->raw_channel());
  std::vector<uint8_t> payload(payload_bytes + 1, 0x5a);  // +1: data() is never null.
  // The sglist row's one range: a page the packet names (DPDK copies the descriptor only).
  vmbus_gpa range{.len = 4096, .ofs = 0, .page = 0x1234};
  return RunPair(
      millis,
      [&](const std::atomic<bool>& stop) {
        uint64_t sent = 0;
        bool need_signal = false;  // Non-null: DPDK decides but does not signal.
        while (!stop.load(std::memory_order_relaxed)) {
          const int rc = mode == DpdkMode::kSgList
                             ? rte_vmbus_chan_send_sglist(tx_channel, &range, 1, payload.data(),
                                                          static_cast<uint32_t>(payload_bytes),
                                                          sent, &need_signal)
                             : rte_vmbus_chan_send(tx_channel, 0x6, payload.data(),
                                                   static_cast<uint32_t>(payload_bytes), sent, 0,
                                                   &need_signal);
          if (rc == 0) {
            ++sent;
          } else {
            Backoff();  // -EAGAIN: full.
          }
        }
        return sent;
      },
      [&](const std::atomic<uint64_t>& target) {
        std::vector<uint8_t> sink(payload_bytes + 64);
        uint64_t received = 0, xid = 0;
        while (received < target.load(std::memory_order_relaxed)) {
          uint32_t len = static_cast<uint32_t>(sink.size());
          if (mode == DpdkMode::kPerPacket) {
            // rte_vmbus_chan_recv releases and runs DPDK's read-side signalling check per
            // packet; the monitor page it may signal through is DpdkPeer's.
            if (rte_vmbus_chan_recv(rx_channel, sink.data(), &len, &xid) == 0) {
              ++received;
            } else {
              Backoff();
            }
            continue;
          }
          // netvsc's hn_process_events: recv_raw until empty, then one signal_read with the
          // bytes consumed (recv_raw publishes the read index per packet itself).
          uint32_t bytes_read = 0;
          int rc;
          while ((rc = rte_vmbus_chan_recv_raw(rx_channel, sink.data(), &len)) > 0) {
            bytes_read += static_cast<uint32_t>(rc);
            ++received;
            len = static_cast<uint32_t>(sink.size());
          }
          if (bytes_read != 0) {
            rte_vmbus_chan_signal_read(rx_channel, bytes_read);
          } else {
            Backoff();
          }
        }
      });
}

// The physical-limit ring: the VMBus layout with no validation and no signalling, over the
// same double-mapped data area as ours (every record one contiguous range, header words stored
// from registers: see ring/record_writer.h for why that matters).
// `signalling`: after each publish and release, the full barrier (a seq_cst store) and the
// loads of the peer's words that the VMBus signalling rules make (their results unused).
Measurement RunLimit(size_t payload_bytes, int millis, int publish_every, bool signalling) {
  RingSpace space;
  const guestmem::RingMemory memory = space.Memory();
  auto* control = reinterpret_cast<uint32_t*>(space.host());
  uint8_t* const data = memory.ContiguousData(0, kDataBytes);  // Valid to 2 * kDataBytes.
  if (data == nullptr) Die("limit ring", absl::InternalError("data area not double-mapped"));
  std::atomic_ref<uint32_t> write_index(control[0]), read_index(control[1]);
  std::atomic_ref<uint32_t> interrupt_mask(control[ring::control::kInterruptMask / 4]);
  std::atomic_ref<uint32_t> pending_send_size(control[ring::control::kPendingSendSize / 4]);
  std::atomic_ref<uint32_t> feature_bits(control[ring::control::kFeatureBits / 4]);
  write_index.store(0);
  read_index.store(0);
  // A publish or release: a plain release store, or the rules' barrier and loads.
  const auto publish = [&](uint32_t write) {
    if (!signalling) return write_index.store(write, std::memory_order_release);
    write_index.store(write, std::memory_order_seq_cst);
    const uint32_t seen =
        interrupt_mask.load(std::memory_order_seq_cst) + read_index.load(std::memory_order_seq_cst);
    asm volatile("" ::"r"(seen));
  };
  const auto release = [&](uint32_t read) {
    if (!signalling) return read_index.store(read, std::memory_order_release);
    read_index.store(read, std::memory_order_seq_cst);
    const uint32_t seen = feature_bits.load(std::memory_order_seq_cst) +
                          pending_send_size.load(std::memory_order_seq_cst) +
                          write_index.load(std::memory_order_seq_cst);
    asm volatile("" ::"r"(seen));
  };
  const uint32_t padded = (static_cast<uint32_t>(payload_bytes) + 7) & ~7u;
  const uint32_t record = 16 + padded + 8;
  const std::vector<uint8_t> payload(payload_bytes, 0x5a);
  return RunPair(
      millis,
      [&](const std::atomic<bool>& stop) {
        uint64_t sent = 0;
        uint32_t write = 0, read_cache = 0;
        int unpublished = 0;
        while (!stop.load(std::memory_order_relaxed)) {
          uint32_t used = (write - read_cache + kDataBytes) % kDataBytes;
          if (kDataBytes - used <= record) {
            // Full as far as we know: publish what we hold (the reader may be waiting for
            // it), then look at the reader's index again.
            if (unpublished) publish(write);
            unpublished = 0;
            read_cache = read_index.load(std::memory_order_acquire);
            used = (write - read_cache + kDataBytes) % kDataBytes;
            if (kDataBytes - used <= record) {
              Backoff();
              continue;
            }
          }
          uint8_t* at = data + write;
          const uint64_t first_word = uint64_t{record / 8 - 1} << 32 | 2 << 16 | 6;
          const uint64_t trailer = uint64_t{write} << 32;
          std::memcpy(at, &first_word, 8);
          std::memcpy(at + 8, &sent, 8);
          std::memcpy(at + 16, payload.data(), payload_bytes);
          std::memcpy(at + 16 + padded, &trailer, 8);
          write = (write + record) % kDataBytes;
          ++sent;
          if (++unpublished >= publish_every) {
            publish(write);
            unpublished = 0;
          }
        }
        publish(write);
        return sent;
      },
      [&](const std::atomic<uint64_t>& target) {
        // Batching as the best reader's: it looks at the writer's index again whenever it
        // reaches the last one it saw, and releases every 1/8 ring and when it finds the ring
        // empty, never per drain of a snapshot (which would store to the index line the
        // writer publishes on several times per burst).
        std::vector<uint8_t> sink(payload_bytes + 8);
        uint64_t received = 0;
        uint32_t read = 0, write = 0, unreleased = 0;
        while (received < target.load(std::memory_order_relaxed)) {
          if (read == write) {
            write = write_index.load(std::memory_order_acquire);
            if (read == write) {
              if (unreleased != 0) release(read);
              unreleased = 0;
              Backoff();
            }
            continue;
          }
          uint64_t first_word;
          std::memcpy(&first_word, data + read, 8);
          // Our own ring: the length cannot be wrong; the modulo keeps it in bounds anyway.
          const uint32_t length = (static_cast<uint32_t>(first_word >> 32) * 8 + 8) % kDataBytes;
          std::memcpy(sink.data(), data + read + 16, payload_bytes);
          asm volatile("" ::"r"(sink.data()) : "memory");
          read = (read + length) % kDataBytes;
          ++received;
          unreleased += length;
          if (unreleased >= kReleaseSlice) {
            release(read);
            unreleased = 0;
          }
        }
        release(read);
      });
}

int Run(int reps, int millis, std::vector<uint64_t> sizes, const std::vector<std::string>& rows,
        const std::string& json, const std::string& command) {
  Harness harness({.program = "ring_bench",
                   .title = "ring throughput, busy polling, producer cpu0 -> consumer cpu1, "
                            "256 KiB data area",
                   .params = std::move(sizes),
                   .reps = reps,
                   .millis = millis});
  const auto cvmbus = [](WriteMode mode, bool snp) {
    return [mode, snp](uint64_t size, int ms) { return RunCvmbus(size, ms, mode, snp); };
  };
  const auto dpdk = [](DpdkMode mode) {
    return [mode](uint64_t size, int ms) { return RunDpdk(size, ms, mode); };
  };
  harness.AddRow({"cvmbus",
                  "Write: publish + signalling check per packet; reader commits every 1/8 ring "
                  "and per drain",
                  cvmbus(WriteMode::kWrite, false)});
  harness.AddRow({"burst",
                  "CommitInBurst both sides: publish per packet, signalling check per burst; "
                  "reader releases every 1/8 ring and per drain",
                  cvmbus(WriteMode::kBurst, false)});
  harness.AddRow({"batch16", "Append x16 then Commit (publish + check per 16); reader as cvmbus",
                  cvmbus(WriteMode::kBatch16, false)});
  harness.AddRow({"burst-snp",
                  "burst over the private view, memory under the SEV-SNP model (pages private)",
                  cvmbus(WriteMode::kBurst, true)});
  harness.AddRow({"dpdk",
                  "DPDK 22.11 chan_send (fence per packet) -> chan_recv (release + signal "
                  "check per packet)",
                  dpdk(DpdkMode::kPerPacket)});
  harness.AddRow({"dpdk-best",
                  "chan_send -> chan_recv_raw (index store per packet) + one chan_signal_read "
                  "per drain, as netvsc",
                  dpdk(DpdkMode::kBestConsumer)});
  harness.AddRow({"dpdk-sglist",
                  "chan_send_sglist (one GPA range + payload in band, as netvsc sends) -> the "
                  "dpdk-best consumer",
                  dpdk(DpdkMode::kSgList)});
  harness.AddRow({"limit",
                  "physical limit: VMBus layout, no validation, no signalling; publish per "
                  "packet, release every 1/8 ring and when empty",
                  [](uint64_t size, int ms) { return RunLimit(size, ms, 1, false); }});
  harness.AddRow({"limit16", "the physical limit publishing every 16 packets (and when full)",
                  [](uint64_t size, int ms) { return RunLimit(size, ms, 16, false); }});
  harness.AddRow({"limit16-sig",
                  "limit16 plus the signalling rules' barrier and loads of the peer's control "
                  "words per publish and per release, as batch16 (their results unused)",
                  [](uint64_t size, int ms) { return RunLimit(size, ms, 16, true); }});
  const std::vector<std::string> ours = {"cvmbus", "burst", "batch16"};
  const std::vector<std::string> theirs = {"dpdk", "dpdk-best", "dpdk-sglist"};
  const std::vector<std::string> limits = {"limit", "limit16"};
  harness.AddComparison({"best cvmbus / best dpdk", ours, theirs, 1.5, 0, 256});
  harness.AddComparison({"best cvmbus / best dpdk (large)", ours, theirs, 1.0, 1024, 16384});
  harness.AddComparison({"burst / dpdk-best", {"burst"}, {"dpdk-best"}});
  harness.AddComparison({"best cvmbus / best limit", ours, limits, 0.9});
  harness.AddComparison(
      {"best limit / best other row",
       limits,
       {"cvmbus", "burst", "batch16", "burst-snp", "dpdk", "dpdk-best", "dpdk-sglist"},
       1.0});
  harness.AddComparison({"burst-snp / burst", {"burst-snp"}, {"burst"}});
  // Where the gap to the limit goes: the rules' costs, then validation and the private copy.
  harness.AddComparison({"limit16-sig / limit16", {"limit16-sig"}, {"limit16"}});
  harness.AddComparison({"batch16 / limit16-sig", {"batch16"}, {"limit16-sig"}});
  if (absl::Status status = harness.KeepRows(rows); !status.ok()) Die("--rows", status);
  if (absl::Status status = harness.Run(); !status.ok()) Die("harness", status);
  harness.PrintTable();
  if (!json.empty()) {
    if (absl::Status status = harness.WriteJson(json, command); !status.ok()) {
      Die("--json", status);
    }
    fmt::print("wrote {}\n", json);
  }
  return 0;
}

}  // namespace
}  // namespace cvmbus::bench

int main(int argc, char** argv) {
  const std::string command = cvmbus::bench::CommandLine(argc, argv);
  absl::SetProgramUsageMessage(
      "ring_bench [--reps=5] [--millis=200] [--sizes=0,64,...] [--json=FILE]: busy-polling ring "
      "throughput cpu0 -> cpu1, cvmbus against DPDK 22.11 and a physical-limit ring");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "ring_bench: unexpected argument '{}' (see --help)\n", rest[1]);
    return 2;
  }
  const int64_t reps = absl::GetFlag(FLAGS_reps);
  const int64_t millis = absl::GetFlag(FLAGS_millis);
  if (reps < 1 || reps > 1000) {
    fmt::print(stderr, "ring_bench: '--reps={}' needs a whole number from 1 to 1000\n", reps);
    return 2;
  }
  if (millis < 1 || millis > 100000) {
    fmt::print(stderr, "ring_bench: '--millis={}' needs a whole number from 1 to 100000\n", millis);
    return 2;
  }
  absl::StatusOr<std::vector<uint64_t>> sizes =
      cvmbus::bench::ParseList("sizes", absl::GetFlag(FLAGS_sizes), 65536);
  if (!sizes.ok()) {
    fmt::print(stderr, "ring_bench: {}\n", std::string(sizes.status().message()));
    return 2;
  }
  const std::string rows = absl::GetFlag(FLAGS_rows);
  return cvmbus::bench::Run(static_cast<int>(reps), static_cast<int>(millis), *std::move(sizes),
                            rows.empty() ? std::vector<std::string>{} : absl::StrSplit(rows, ','),
                            absl::GetFlag(FLAGS_json), command);
}
