// VMBus server control-path benchmark (prints figures; not a test):
//   1. the time to offer 2047 channels: REQUESTOFFERS until ALLOFFERS_DELIVERED at the guest;
//   2. GPADL + open + close + teardown cycles per second on one channel, each step answered
//      by the server and the echo device (the device pins and maps the rings at each open).
// Server and devices share one io_uring loop thread; the guest client has its own.
//
//   bazel run -c opt //paravisor/server:server_bench -- [--cycles=N]
#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/vm/virtual_machine.h"

ABSL_FLAG(int64_t, cycles, 20000,
          "GPADL + open + close + teardown cycles on one channel (1 to 10000000); the pipelined "
          "run does as many in whole rounds of 256 channels (at least one).");

namespace cvmbus::paravisor {
namespace {

using Clock = std::chrono::steady_clock;

int Run(long cycles) {
  auto vm = *vm::VirtualMachine::Create({.memory_bytes = 64ull << 20, .isolated = false});
  std::vector<std::unique_ptr<EchoDevice>> devices;
  const auto add_start = Clock::now();
  vm->OnServer([&] {
    for (uint32_t i = 0; i < kMaxChannels; ++i) {
      OfferParams params;
      params.interface_id.data1 = 1;
      params.instance_id.data1 = i + 1;
      devices.push_back(std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params));
      (void)devices.back()->Start();
    }
  });
  vm->OnServer([] {});  // The registrations AddChild posted have run.
  const double add_ms = std::chrono::duration<double, std::milli>(Clock::now() - add_start).count();
  if (!vm->guest().Connect(protocol::kVersionWin10V6_0, 0).ok()) return 1;
  const auto offer_start = Clock::now();
  auto offers = vm->guest().RequestOffers();
  const double offer_ms =
      std::chrono::duration<double, std::milli>(Clock::now() - offer_start).count();
  if (!offers.ok() || offers->size() != kMaxChannels) {
    fmt::print(stderr, "server_bench: expected {} offers\n", kMaxChannels);
    return 1;
  }
  fmt::print(
      "offer {} channels: AddChild x{} {:.1f} ms; REQUESTOFFERS -> ALLOFFERS_DELIVERED "
      "at the guest {:.1f} ms\n",
      kMaxChannels, kMaxChannels, add_ms, offer_ms);

  const uint32_t relid = (*offers)[0].child_relid;
  const std::vector<uint64_t> gpns = {0x100, 0x101, 0x102, 0x103};  // Two 1-page rings.
  GuestClient& guest = vm->guest();
  const auto start = Clock::now();
  for (long i = 0; i < cycles; ++i) {
    const uint32_t gpadl = static_cast<uint32_t>(i + 1);
    if (guest.CreateGpadl(relid, gpadl, gpns).value_or(1) != 0 ||
        guest.OpenChannel(relid, gpadl, 2).value_or(1) != 0 || !guest.CloseChannel(relid).ok() ||
        !guest.TeardownGpadl(relid, gpadl).ok()) {
      fmt::print(stderr, "server_bench: cycle {} failed\n", i);
      return 1;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  fmt::print(
      "one channel, one step at a time: {:.0f} cycles/s ({:.1f} us per cycle, {} cycles; "
      "each step waits for its answer across three threads)\n",
      cycles / seconds, 1e6 * seconds / cycles, cycles);

  // Pipelined over 256 channels: each phase sends every request, then collects every answer,
  // as a guest bringing up many devices does. This measures the server, not thread wake-ups.
  constexpr size_t kWidth = 256;
  const long rounds = std::max(1L, cycles / static_cast<long>(kWidth));
  const auto wait_all = [&](protocol::MessageType type) {
    for (size_t i = 0; i < kWidth; ++i) {
      if (!guest.WaitFor(type, std::chrono::seconds(10)).ok()) {
        fmt::print(stderr, "server_bench: only {} of {} {} answers arrived\n", i, kWidth,
                   protocol::MessageTypeName(type));
        return false;
      }
    }
    return true;
  };
  const auto pipelined_start = Clock::now();
  for (long round = 0; round < rounds; ++round) {
    for (size_t c = 0; c < kWidth; ++c) {
      const uint32_t channel = (*offers)[c].child_relid;
      const uint32_t gpadl = static_cast<uint32_t>(1000000 + round * kWidth + c);
      std::vector<uint64_t> words = {4 * 4096};
      for (uint64_t p = 0; p < 4; ++p) words.push_back(0x1000 + c * 4 + p);
      const absl::StatusOr<std::vector<std::vector<uint8_t>>> messages =
          protocol::EncodeGpadl(channel, gpadl, 1, words);
      if (!messages.ok()) return 1;
      for (const auto& message : *messages) (void)guest.SendRaw(message);
    }
    if (!wait_all(protocol::MessageType::kGpadlCreated)) {
      for (const std::string& line : vm->TakeLog()) fmt::print(stderr, "  server: {}\n", line);
      return 1;
    }
    for (size_t c = 0; c < kWidth; ++c) {
      protocol::OpenChannel open{};
      open.child_relid = (*offers)[c].child_relid;
      open.ring_buffer_gpadl = static_cast<uint32_t>(1000000 + round * kWidth + c);
      open.downstream_page_offset = 2;
      (void)guest.SendRaw(protocol::EncodeOpenChannel(open, false));
    }
    if (!wait_all(protocol::MessageType::kOpenChannelResult)) return 1;
    for (size_t c = 0; c < kWidth; ++c) {
      protocol::CloseChannel close{};
      close.child_relid = (*offers)[c].child_relid;
      (void)guest.SendRaw(protocol::Encode(close));
      protocol::GpadlTeardown teardown{};
      teardown.child_relid = (*offers)[c].child_relid;
      teardown.gpadl = static_cast<uint32_t>(1000000 + round * kWidth + c);
      (void)guest.SendRaw(protocol::Encode(teardown));
    }
    if (!wait_all(protocol::MessageType::kGpadlTorndown)) return 1;
  }
  const double pipelined = std::chrono::duration<double>(Clock::now() - pipelined_start).count();
  const long total = rounds * static_cast<long>(kWidth);
  fmt::print("256 channels pipelined: {:.0f} cycles/s ({} cycles)\n", total / pipelined, total);
  vm->OnServer([&] { devices.clear(); });
  return 0;
}

}  // namespace
}  // namespace cvmbus::paravisor

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "server_bench [--cycles=N]: the VMBus server's control path (offers; GPADL and open "
      "cycles)");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    fmt::print(stderr, "server_bench: unexpected argument '{}' (flags: --cycles=N)\n", rest[1]);
    return 2;
  }
  const int64_t cycles = absl::GetFlag(FLAGS_cycles);
  if (cycles < 1 || cycles > 10000000) {
    fmt::print(stderr, "server_bench: --cycles={}: needs 1..10000000\n", cycles);
    return 2;
  }
  return cvmbus::paravisor::Run(static_cast<long>(cycles));
}
