// A live hostile host on the monitor pages: a VM that is not confidential uses the guest's own
// (shared) monitor pages, and while two monitored echo channels carry numbered traffic the
// host (a thread of its own, writing only through the untrusted view) rewrites random bytes of
// both pages: pending words, trigger state and group enables, latencies and parameters. What
// the host can do through them is signal a channel (a spurious event, which costs a ring look)
// or clear a bit the guest set (a lost doorbell, which the guest's retry covers, as a host can
// always refuse service). What it must not do: crash the server, make its scan loop spin, stop
// a channel, or corrupt any channel's traffic.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "guestmem/guest_memory.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/protocol/monitor_page.h"
#include "paravisor/server/monitor_scanner.h"
#include "paravisor/server/server.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using testing::GuestChannel;
using vm::VirtualMachine;

constexpr uint64_t kGuestPageToChild = 0x3d000;
constexpr uint64_t kGuestPageToParent = 0x3e000;
constexpr uint64_t kFirstRingGpn[] = {0x200, 0x300};
constexpr auto kAttack = 1500ms;
// An answer not seen in this long is taken as a lost doorbell: the guest signals again.
constexpr auto kRetry = 20ms;

OfferParams MonitoredEcho(uint32_t instance) {
  OfferParams params;
  params.interface_name = "echo";
  params.interface_id.data1 = 1;
  params.instance_id.data1 = instance;
  params.mnf_interrupt_latency = 100us;
  return params;
}

struct Traffic {
  std::atomic<uint64_t> echoes{0};
  std::atomic<uint64_t> resignals{0};
  absl::Status result;
};

// Numbered echoes until `stop`; an answer that does not come within kRetry is asked for again
// with a fresh signal (the host may have cleared the pending bit), up to 2 s in all.
void EchoUntil(VirtualMachine* vm, uint32_t relid, GuestChannel& channel,
               const std::atomic<bool>& stop, Traffic* traffic) {
  ring::PacketBuffer buffer;
  for (uint64_t i = 1; !stop.load(); ++i) {
    // Whole 8-byte words: the ring pads a payload to them, and the echo returns the padding.
    const std::vector<uint8_t> payload(8 * (1 + i % 8), static_cast<uint8_t>(i));
    if (absl::Status sent = channel.Send(payload, i); !sent.ok()) {
      traffic->result = sent;
      return;
    }
    absl::Status got = channel.Receive(&buffer, kRetry);
    for (int tries = 0; absl::IsDeadlineExceeded(got) && tries < 100; ++tries) {
      traffic->resignals.fetch_add(1);
      (void)vm->guest().SignalHost(relid);  // Through the monitor page again.
      got = channel.Receive(&buffer, kRetry);
    }
    if (!got.ok()) {
      traffic->result = got;
      return;
    }
    if (buffer.packet().transaction_id != i ||
        !std::equal(payload.begin(), payload.end(), buffer.packet().payload.begin(),
                    buffer.packet().payload.end())) {
      traffic->result = absl::DataLossError(fmt::format("echo {} came back altered", i));
      return;
    }
    traffic->echoes.fetch_add(1);
  }
}

TEST(HostileMonitorTest, RewritingSharedMonitorPagesNeverCorruptsOrStopsTheChannels) {
  auto vm = *vm::VirtualMachine::Create({.trusted_port = false, .isolated = false});
  std::vector<std::unique_ptr<EchoDevice>> devices;
  vm->OnServer([&] {
    for (uint32_t i = 0; i < 2; ++i) {
      devices.push_back(
          std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), MonitoredEcho(i + 1)));
      ASSERT_TRUE(devices.back()->Start().ok());
    }
  });
  const guestmem::GuestMemory shared = guestmem::GuestMemory::Untrusted(vm->memory());
  auto response = vm->guest().Connect(protocol::kVersionWin10V5_3, 0,
                                      {.parent_to_child = kGuestPageToChild,
                                       .child_to_parent = kGuestPageToParent,
                                       .own_pages = shared});
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->connection_state, protocol::kConnectionSuccessful);
  auto offers = vm->guest().RequestOffers();
  ASSERT_TRUE(offers.ok()) << offers.status();
  ASSERT_EQ(offers->size(), 2u);
  std::vector<std::unique_ptr<GuestChannel>> channels;
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE((*offers)[i].monitor_allocated());
    auto channel = GuestChannel::Open(vm.get(), {.relid = (*offers)[i].child_relid,
                                                 .gpadl_id = static_cast<uint32_t>(10 + i),
                                                 .first_gpn = kFirstRingGpn[i],
                                                 .ring_pages = 2,
                                                 .discard_signal_status = true});
    ASSERT_TRUE(channel.ok()) << channel.status();
    channels.push_back(*std::move(channel));
  }

  std::atomic<bool> stop{false};
  std::vector<Traffic> traffic(2);
  std::vector<std::thread> guests;
  for (size_t i = 0; i < 2; ++i) {
    guests.emplace_back(
        [&, i] { EchoUntil(vm.get(), (*offers)[i].child_relid, *channels[i], stop, &traffic[i]); });
  }
  // The host: bytes of either page, mostly the child -> parent page the server scans (its
  // trigger state and pending words, the first 256 bytes, half the time).
  std::mt19937_64 random(15);
  uint64_t corruptions = 0;
  const auto attack_end = std::chrono::steady_clock::now() + kAttack;
  while (std::chrono::steady_clock::now() < attack_end) {
    const uint64_t page = random() % 4 == 0 ? kGuestPageToChild : kGuestPageToParent;
    const uint64_t offset = random() % 2 == 0 ? random() % 256 : random() % 4096;
    const uint64_t value = random();
    const size_t len = std::min<uint64_t>(1 + random() % 8, 4096 - offset);
    ASSERT_TRUE(shared
                    .Write(page + offset,
                           absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&value), len))
                    .ok());
    ++corruptions;
    if (corruptions % 8 == 0) std::this_thread::sleep_for(20us);
  }
  stop = true;
  for (std::thread& guest : guests) guest.join();

  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(traffic[i].result.ok()) << "channel " << i << ": " << traffic[i].result;
    EXPECT_GT(traffic[i].echoes.load(), 100u) << "channel " << i;
  }
  MonitorScanner::Stats stats;
  vm->OnServer([&] {
    ASSERT_NE(vm->server().monitor(), nullptr);
    stats = vm->server().monitor()->stats();
    for (const auto& device : devices) {
      EXPECT_TRUE(device->stats().last_error.ok()) << device->stats().last_error;
    }
  });
  // The host's bits for ids with no channel were seen and dropped; the scan kept its pace (at
  // most one scan per kMinInterval over the attack, whatever the page held).
  EXPECT_GT(stats.unknown_bits, 0u);
  EXPECT_LE(stats.scans, static_cast<uint64_t>(kAttack / MonitorScanner::kMinInterval) * 2);

  // Afterwards both channels still serve, and close cleanly.
  for (size_t i = 0; i < 2; ++i) {
    std::atomic<bool> once{false};
    Traffic more;
    std::thread stopper([&] {
      std::this_thread::sleep_for(50ms);
      once = true;
    });
    EchoUntil(vm.get(), (*offers)[i].child_relid, *channels[i], once, &more);
    stopper.join();
    EXPECT_TRUE(more.result.ok()) << more.result;
    EXPECT_GT(more.echoes.load(), 0u);
    EXPECT_TRUE(channels[i]->Close().ok());
  }
  std::printf(
      "hostile monitor pages: %llu rewrites in %lld ms; echoes %llu and %llu (%llu and %llu "
      "re-signals after a lost doorbell); scanner: %llu scans, %llu events, %llu bits of no "
      "channel dropped\n",
      static_cast<unsigned long long>(corruptions),
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(kAttack).count()),
      static_cast<unsigned long long>(traffic[0].echoes.load()),
      static_cast<unsigned long long>(traffic[1].echoes.load()),
      static_cast<unsigned long long>(traffic[0].resignals.load()),
      static_cast<unsigned long long>(traffic[1].resignals.load()),
      static_cast<unsigned long long>(stats.scans), static_cast<unsigned long long>(stats.signals),
      static_cast<unsigned long long>(stats.unknown_bits));
  vm->OnServer([&] { devices.clear(); });
}

}  // namespace
}  // namespace cvmbus::paravisor
