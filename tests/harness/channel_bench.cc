// The channel path: echo through channels the VMBus server set up, against the raw ring in the
// same run.
//
// One emulated SEV-SNP VM (paravisor/vm: 128 MiB under the SNP model, the server and its echo
// devices on one io_uring loop pinned to cpu1), a guest (GuestClient) that negotiates VMBus 6.0
// with confidential channels and opens 256 echo channels whose rings are in private, validated
// memory (channel 0: 256 KiB of data each way, as the endpoints row; the others 60 KiB); the
// benchmark's guest thread is pinned to cpu0. The raw rows use two rings of the same size in the
// same private memory, the same guest ring code, and a device task doing what EchoDevice does on an
// io_uring loop of its own on cpu1, with plain eventfds for doorbells (tests/harness/guest_ends.h):
// the difference is what the channel machinery costs (the server's event routing, HvSignalEvent
// through the SynIC, the guest client's interrupt thread).
//
// Tables (rows interleaved, placement probed before each run, base/bench/report.h):
//   1. by payload size: request/answer (one packet in flight), pipelined echo (64 in flight;
//      packets echoed per second), one way (the device consumes packets that ask for no
//      completion; packets written per second, which runs ahead of the device by at most one
//      ring: under 0.1% of a run);
//   2. 64-byte pipelined echo over 1, 16 and 256 channels on the one server loop (16 in flight
//      on each channel), in aggregate.
//
//   bazel run -c opt //tests/harness:channel_bench -- [--reps=3] [--millis=300] [--json=FILE]
//   (--json=FILE writes FILE.size.json and FILE.channels.json)
#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "base/bench/placement.h"
#include "base/bench/report.h"
#include "hw/uring/testing/sleeping_ring.h"
#include "paravisor/devices/demo_devices.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"
#include "ring/ring.h"
#include "tests/harness/guest_ends.h"

ABSL_FLAG(int64_t, reps, 3, "Repetitions of every row (1 to 1000).");
ABSL_FLAG(int64_t, millis, 300, "Milliseconds each row runs per repetition (1 to 100000).");
ABSL_FLAG(std::string, rows, "",
          "Only these rows of the by-size table, comma-separated, and not the channel-count "
          "table (default: everything).");
ABSL_FLAG(std::string, json, "", "Write the samples to FILE.size.json and FILE.channels.json.");

namespace cvmbus::bench {
namespace {

using Clock = std::chrono::steady_clock;
using paravisor::testing::GuestChannel;

constexpr int kChannels = 256;
// Per direction, control page included: channel 0 (the by-size rows) and the raw ring have the
// sleeping endpoints' 256 KiB data area; the others 60 KiB.
constexpr uint32_t kBigRingPages = 65;
constexpr uint32_t kRingPages = 16;
constexpr uint64_t kFirstChannelGpn = 0x1000;
constexpr uint64_t kRawGpn = 0x5000;  // Above every channel's rings.
constexpr std::chrono::seconds kStuck(2);

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  fmt::print(stderr, "\nchannel_bench: {}: {}\n", what, status.ToString());
  std::exit(1);
}

template <typename T>
T Check(absl::StatusOr<T> value, const std::string& what) {
  if (!value.ok()) Die(what, value.status());
  return *std::move(value);
}

// Waits until one of `ends` is signalled (each ready eventfd is read to re-arm it).
void WaitForAny(const std::vector<GuestEnd*>& ends) {
  std::vector<pollfd> fds;
  fds.reserve(ends.size());
  for (GuestEnd* end : ends) fds.push_back({end->event_fd(), POLLIN, 0});
  const int ready = poll(fds.data(), fds.size(), static_cast<int>(kStuck.count() * 1000));
  if (ready <= 0) Die("waiting for the device", absl::DeadlineExceededError("no signal in 2 s"));
  for (const pollfd& fd : fds) {
    uint64_t count;
    if (fd.revents & POLLIN) (void)!read(fd.fd, &count, sizeof(count));
  }
}

// One packet in flight: round trips per second.
Measurement RequestAnswer(GuestEnd* end, uint64_t size, int millis) {
  const std::vector<uint8_t> payload(size, 0x42);
  ring::PacketBuffer buffer;
  uint64_t trips = 0;
  const Clock::time_point start = Clock::now();
  const Clock::time_point stop = start + std::chrono::milliseconds(millis);
  Clock::time_point now = start;
  while (now < stop) {
    const ring::OutgoingPacket request{
        .flags = ring::kFlagCompletionRequested, .transaction_id = trips, .payload = payload};
    if (!Check(end->TrySend(request), "send")) Die("send", absl::InternalError("ring full"));
    while (!Check(end->TryReceive(&buffer), "receive")) WaitForAny({end});
    if (buffer.packet().transaction_id != trips) {
      Die("receive", absl::DataLossError("an answer out of order"));
    }
    ++trips;
    now = Clock::now();
  }
  return {.packets_per_second = trips / std::chrono::duration<double>(now - start).count()};
}

// Up to `window` packets in flight on each of `ends`: answers per second, all channels.
Measurement Pipelined(const std::vector<GuestEnd*>& ends, uint64_t size, int window, int millis) {
  const std::vector<uint8_t> payload(size, 0x42);
  ring::PacketBuffer buffer;
  std::vector<int> in_flight(ends.size(), 0);
  uint64_t answered = 0;
  const Clock::time_point start = Clock::now();
  const Clock::time_point stop = start + std::chrono::milliseconds(millis);
  bool sending = true;
  int outstanding = 0;
  while (sending || outstanding > 0) {
    bool progress = false;
    for (size_t i = 0; i < ends.size(); ++i) {
      while (sending && in_flight[i] < window) {
        const ring::OutgoingPacket request{.flags = ring::kFlagCompletionRequested,
                                           .transaction_id = answered,
                                           .payload = payload};
        if (!Check(ends[i]->TrySend(request), "send")) break;
        ++in_flight[i];
        ++outstanding;
        progress = true;
      }
      while (in_flight[i] > 0 && Check(ends[i]->TryReceive(&buffer), "receive")) {
        --in_flight[i];
        --outstanding;
        ++answered;
        progress = true;
      }
    }
    if (sending) sending = Clock::now() < stop;
    if (!progress) WaitForAny(ends);
  }
  // Every answer over the whole time, the drain after the last request included.
  return {.packets_per_second =
              answered / std::chrono::duration<double>(Clock::now() - start).count()};
}

// How long a writer that found the ring full polls for space while the device drains it (as
// the endpoints' writer does, SpinPolicy's busy_reader_wait) before it sleeps on the doorbell.
constexpr auto kDrainingWait = std::chrono::microseconds(20);

// Packets that ask for no completion, as fast as the ring takes them. `burst`: through
// TrySendInBurst (the rule's barrier once per burst) instead of per packet, and on a full ring
// polling up to kDrainingWait for a draining device before sleeping; otherwise as Linux
// writes: per packet, and a full ring sleeps at once (hv_ringbuffer_write's -EAGAIN).
Measurement OneWay(GuestEnd* end, uint64_t size, int millis, bool burst) {
  const std::vector<uint8_t> payload(size, 0x42);
  uint64_t sent = 0;
  const Clock::time_point start = Clock::now();
  const Clock::time_point stop = start + std::chrono::milliseconds(millis);
  Clock::time_point now = start;
  const auto send = [&](const ring::OutgoingPacket& packet) {
    if (!burst) return Check(end->TrySend(packet), "send");
    if (Check(end->TrySendInBurst(packet), "send")) return true;
    const Clock::time_point give_up = Clock::now() + kDrainingWait;
    while (end->PeerDraining() && Clock::now() < give_up) {
      if (Check(end->TrySendInBurst(packet), "send")) return true;
    }
    return false;
  };
  while (now < stop) {
    for (int i = 0; i < 64; ++i) {
      const ring::OutgoingPacket packet{.transaction_id = sent, .payload = payload};
      if (!send(packet)) {
        WaitForAny({end});
        break;
      }
      ++sent;
    }
    now = Clock::now();
  }
  if (absl::Status status = end->EndBurst(); !status.ok()) Die("ending the burst", status);
  return {.packets_per_second = sent / std::chrono::duration<double>(now - start).count()};
}

struct Setup {
  std::unique_ptr<paravisor::vm::VirtualMachine> vm;
  std::vector<std::unique_ptr<paravisor::EchoDevice>> devices;
  std::vector<std::unique_ptr<GuestChannel>> channels;
  std::vector<std::unique_ptr<ChannelEnd>> channel_ends;
  std::unique_ptr<RawEnd> raw;
};

Setup Start() {
  Setup setup;
  setup.vm = Check(
      paravisor::vm::VirtualMachine::Create(
          {.memory_bytes = 128ull << 20, .isolated = true, .capture_log = false, .server_cpu = 1}),
      "the VM");
  paravisor::vm::VirtualMachine* vm = setup.vm.get();
  vm->OnServer([&] {
    for (int i = 0; i < kChannels; ++i) {
      paravisor::OfferParams params;
      params.interface_name = paravisor::kDemoInterfaceName;
      params.interface_id = paravisor::kDemoInterfaceId;
      params.instance_id = paravisor::DemoInstanceId(i);
      setup.devices.push_back(
          std::make_unique<paravisor::EchoDevice>(vm->server_loop(), &vm->bus(), params));
      if (absl::Status status = setup.devices.back()->Start(); !status.ok()) {
        Die("starting an echo device", status);
      }
    }
  });
  Check(vm->guest().Connect(paravisor::protocol::kVersionWin10V6_0,
                            paravisor::protocol::kFeatureConfidentialChannels),
        "INITIATE_CONTACT");
  const auto offers = Check(vm->guest().RequestOffers(), "REQUESTOFFERS");
  if (offers.size() != kChannels) Die("REQUESTOFFERS", absl::InternalError("wrong offer count"));
  for (int i = 0; i < kChannels; ++i) {
    setup.channels.push_back(Check(
        GuestChannel::Open(vm, {.relid = offers[i].child_relid,
                                .gpadl_id = static_cast<uint32_t>(100 + i),
                                .first_gpn = i == 0 ? kFirstChannelGpn
                                                    : kFirstChannelGpn + 2 * kBigRingPages +
                                                          static_cast<uint64_t>(i) * 2 * kRingPages,
                                .ring_pages = i == 0 ? kBigRingPages : kRingPages,
                                .confidential = true}),
        fmt::format("opening channel {}", i)));
    setup.channel_ends.push_back(std::make_unique<ChannelEnd>(setup.channels.back().get()));
  }
  if (absl::Status status = vm->MakePrivate(kRawGpn * 4096, 2 * kBigRingPages * 4096);
      !status.ok()) {
    Die("making the raw rings private", status);
  }
  std::vector<uint64_t> out_gpns, in_gpns;
  for (uint64_t i = 0; i < kBigRingPages; ++i) {
    out_gpns.push_back(kRawGpn + i);
    in_gpns.push_back(kRawGpn + kBigRingPages + i);
  }
  setup.raw = Check(RawEnd::Create(guestmem::GuestMemory::Private(vm->memory()), out_gpns, in_gpns,
                                   /*device_cpu=*/1),
                    "the raw ring");
  return setup;
}

int Run(int reps, int millis, const std::string& rows, const std::string& json,
        const std::string& command) {
  if (!PinToCpu(0)) Die("pinning the guest thread", absl::InternalError("refused"));
  Setup setup = Start();
  GuestEnd* channel = setup.channel_ends[0].get();
  GuestEnd* raw = setup.raw.get();

  Harness by_size({.program = "channel_bench",
                   .title = "echo through a confidential channel (SNP model, server loop cpu1, "
                            "guest cpu0) against the raw ring in the same private memory",
                   .params = {0, 64, 256, 1024, 4096},
                   .reps = reps,
                   .millis = millis});
  by_size.AddRow({"chan-rr", "channel: one request in flight, answer awaited on the interrupt",
                  [&](uint64_t size, int ms) { return RequestAnswer(channel, size, ms); }});
  by_size.AddRow({"ring-rr", "raw ring, same guest code, eventfd doorbells: one request in flight",
                  [&](uint64_t size, int ms) { return RequestAnswer(raw, size, ms); }});
  by_size.AddRow({"chan-pipe", "channel: 64 requests in flight, answers per second",
                  [&](uint64_t size, int ms) { return Pipelined({channel}, size, 64, ms); }});
  by_size.AddRow({"ring-pipe", "raw ring: 64 requests in flight, answers per second",
                  [&](uint64_t size, int ms) { return Pipelined({raw}, size, 64, ms); }});
  by_size.AddRow({"chan-oneway",
                  "channel: packets without COMPLETION_REQUESTED (the device consumes them), "
                  "written as Linux does (publish + barrier + signal check per packet)",
                  [&](uint64_t size, int ms) { return OneWay(channel, size, ms, false); }});
  by_size.AddRow({"ring-oneway", "raw ring: the same one-way traffic",
                  [&](uint64_t size, int ms) { return OneWay(raw, size, ms, false); }});
  by_size.AddRow({"chan-burst",
                  "channel: one way, the guest writing in bursts (barrier per burst), polling up "
                  "to 20 us for space while the device drains a full ring",
                  [&](uint64_t size, int ms) { return OneWay(channel, size, ms, true); }});
  by_size.AddRow({"ring-burst", "raw ring: one way, the guest writing as chan-burst",
                  [&](uint64_t size, int ms) { return OneWay(raw, size, ms, true); }});
  by_size.AddRow({"endpoints",
                  "the sleeping ring endpoints (RingWriter cpu0 -> RingReader cpu1 on io_uring "
                  "loops, untrusted memfd, 256 KiB): one way",
                  [](uint64_t size, int ms) {
                    const hw::testing::SleepingRingResult result =
                        hw::testing::SleepingRing(size, ms, 0);
                    PinToCpu(0);  // SleepingRing pins the calling thread itself.
                    return Measurement{.packets_per_second = result.packets_per_second,
                                       .signals_per_packet = result.signals_per_packet};
                  }});
  by_size.AddComparison({"chan-rr / ring-rr", {"chan-rr"}, {"ring-rr"}, 0.8});
  by_size.AddComparison({"chan-pipe / ring-pipe", {"chan-pipe"}, {"ring-pipe"}, 0.8});
  by_size.AddComparison({"chan-oneway / ring-oneway", {"chan-oneway"}, {"ring-oneway"}});
  by_size.AddComparison({"chan-burst / ring-burst", {"chan-burst"}, {"ring-burst"}});
  by_size.AddComparison(
      {"best chan one-way / endpoints", {"chan-oneway", "chan-burst"}, {"endpoints"}, 0.8});

  Harness by_channels({.program = "channel_bench",
                       .title = "64-byte pipelined echo, 16 in flight per channel, aggregate over "
                                "N channels on one server loop",
                       .param_name = "size",
                       .params = {64},
                       .reps = reps,
                       .millis = millis});
  for (int count : {1, 16, 256}) {
    by_channels.AddRow({fmt::format("{}ch", count),
                        fmt::format("{} channel(s), 16 requests in flight each", count),
                        [&setup, count](uint64_t size, int ms) {
                          std::vector<GuestEnd*> ends;
                          for (int i = 0; i < count; ++i)
                            ends.push_back(setup.channel_ends[i].get());
                          return Pipelined(ends, size, 16, ms);
                        }});
  }
  by_channels.AddComparison({"16ch / 1ch", {"16ch"}, {"1ch"}, 0.8});
  by_channels.AddComparison({"256ch / 1ch", {"256ch"}, {"1ch"}, 0.8});

  std::vector<Harness*> harnesses = {&by_size, &by_channels};
  if (!rows.empty()) {
    if (absl::Status status = by_size.KeepRows(absl::StrSplit(rows, ',')); !status.ok()) {
      Die("--rows", status);
    }
    harnesses = {&by_size};
  }
  for (Harness* harness : harnesses) {
    if (absl::Status status = harness->Run(); !status.ok()) Die("harness", status);
    harness->PrintTable();
    fmt::print("\n");
  }
  if (!json.empty()) {
    for (auto [harness, suffix] :
         {std::pair{&by_size, ".size.json"}, std::pair{&by_channels, ".channels.json"}}) {
      if (absl::Status status = harness->WriteJson(json + suffix, command); !status.ok()) {
        Die("--json", status);
      }
      fmt::print("wrote {}{}\n", json, suffix);
    }
  }
  // Devices belong to the server's loop: they go there, after the guest's ends.
  setup.raw.reset();
  setup.channel_ends.clear();
  setup.channels.clear();
  setup.vm->OnServer([&] { setup.devices.clear(); });
  return 0;
}

}  // namespace
}  // namespace cvmbus::bench

int main(int argc, char** argv) {
  const std::string command = cvmbus::bench::CommandLine(argc, argv);
  absl::SetProgramUsageMessage(
      "channel_bench [--reps=3] [--millis=300] [--json=FILE]: echo through server-made "
      "confidential channels against the raw ring, and 1/16/256 channels on one loop");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "channel_bench: unexpected argument '{}' (see --help)\n", rest[1]);
    return 2;
  }
  const int64_t reps = absl::GetFlag(FLAGS_reps);
  const int64_t millis = absl::GetFlag(FLAGS_millis);
  if (reps < 1 || reps > 1000 || millis < 1 || millis > 100000) {
    fmt::print(stderr, "channel_bench: --reps needs 1..1000 and --millis 1..100000\n");
    return 2;
  }
  return cvmbus::bench::Run(static_cast<int>(reps), static_cast<int>(millis),
                            absl::GetFlag(FLAGS_rows), absl::GetFlag(FLAGS_json), command);
}
