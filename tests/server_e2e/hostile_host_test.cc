// A live hostile host: while three channels carry numbered echoes, the host (a thread of its
// own, writing only through the untrusted view, as a host can) rewrites random bytes of one
// channel's rings (data, descriptors and ring control words) for a bounded time, and tries to
// write the guest's private pages (its SynIC pages). The paravisor must not crash; whatever the
// victim's device notices is a typed ring error on that channel only, which then closes and
// tears down cleanly; the other channels never see a wrong byte and keep serving; every host
// write to private memory is refused. (The connection has no confidential channels, so that
// rings are in shared pages the host can reach; under confidential channels they are private
// and the host's writes to them are refused like those to the SynIC pages.)
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/errors.h"
#include "guestmem/guest_memory.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"
#include "ring/errors.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kRingPages = 4;                       // Per ring, control page included.
constexpr uint64_t kFirstGpn[] = {0xa00, 0xb00, 0xc00};  // The victim, then two bystanders.
constexpr auto kAttack = 1500ms;

OfferParams EchoParams(uint32_t instance) {
  OfferParams params;
  params.interface_name = "echo";
  params.interface_id = Guid{0xec1, 0, 0, {}};
  params.instance_id = Guid{instance, 0, 0, {}};
  return params;
}

// Numbered echoes until `stop` or the first failure, which it returns (OK if none).
absl::Status EchoUntil(testing::GuestChannel& channel, const std::atomic<bool>& stop,
                       std::atomic<uint64_t>* echoed) {
  ring::PacketBuffer buffer;
  const std::vector<uint8_t> payload(48, 0x5a);
  for (uint64_t i = 1; !stop.load(); ++i) {
    if (absl::Status sent = channel.Send(payload, i); !sent.ok()) return sent;
    if (absl::Status got = channel.Receive(&buffer, 2s); !got.ok()) return got;
    if (buffer.packet().transaction_id != i ||
        std::vector<uint8_t>(buffer.packet().payload.begin(), buffer.packet().payload.end()) !=
            payload) {
      return absl::DataLossError(fmt::format("echo {} came back altered", i));
    }
    echoed->fetch_add(1);
  }
  return absl::OkStatus();
}

TEST(HostileHostTest, CorruptingASharedRingStopsOnlyThatChannel) {
  auto vm = *vm::VirtualMachine::Create();
  std::vector<std::unique_ptr<EchoDevice>> devices;
  vm->OnServer([&] {
    for (uint32_t i = 0; i < 3; ++i) {
      devices.push_back(
          std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), EchoParams(i + 1)));
      ASSERT_TRUE(devices.back()->Start().ok());
    }
  });
  ASSERT_TRUE(vm->guest().Connect(protocol::kVersionWin10V6_0, 0).ok());
  auto offers = vm->guest().RequestOffers();
  ASSERT_TRUE(offers.ok()) << offers.status();
  ASSERT_EQ(offers->size(), 3u);
  std::vector<std::unique_ptr<testing::GuestChannel>> channels;
  for (uint32_t i = 0; i < 3; ++i) {
    auto channel = testing::GuestChannel::Open(vm.get(), {.relid = (*offers)[i].child_relid,
                                                          .gpadl_id = 10 + i,
                                                          .first_gpn = kFirstGpn[i],
                                                          .ring_pages = kRingPages,
                                                          .confidential = false,
                                                          .discard_signal_status = true});
    ASSERT_TRUE(channel.ok()) << "channel " << i << ": " << channel.status();
    channels.push_back(*std::move(channel));
  }

  std::atomic<bool> stop{false};
  std::vector<std::atomic<uint64_t>> echoed(3);
  std::vector<absl::Status> results(3);
  std::vector<std::thread> guests;
  // The victim's guest only sends (its own reading would stop at the first corruption of the
  // host -> guest ring): the device keeps reading what the host corrupts.
  guests.emplace_back([&] {
    const std::vector<uint8_t> payload(48, 0x5a);
    for (uint64_t i = 1; !stop.load(); ++i) {
      if (absl::Status sent = channels[0]->Send(payload, i); !sent.ok()) {
        if (ring::IsRingError(sent, ring::RingError::kFull)) {  // The device stopped reading.
          std::this_thread::sleep_for(100us);
          continue;
        }
        results[0] = sent;
        return;
      }
      echoed[0].fetch_add(1);
      std::this_thread::sleep_for(20us);
    }
  });
  for (size_t i = 1; i < 3; ++i) {
    guests.emplace_back([&, i] { results[i] = EchoUntil(*channels[i], stop, &echoed[i]); });
  }

  // The host: random bytes at random places of the victim's two rings (control pages
  // included), and now and then at the guest's private SynIC pages.
  const GuestSynicPages& synic_pages = vm->synic_pages();
  const uint64_t private_gpas[] = {synic_pages.simp, synic_pages.siefp, synic_pages.input};
  const guestmem::GuestMemory host_view = guestmem::GuestMemory::Untrusted(vm->memory());
  uint64_t corruptions = 0, refused = 0, private_attempts = 0;
  std::mt19937_64 random(4);
  const auto attack_end = std::chrono::steady_clock::now() + kAttack;
  while (std::chrono::steady_clock::now() < attack_end) {
    const bool at_private = random() % 4 == 0;
    const uint64_t page =
        at_private ? private_gpas[random() % 3] / 4096 : kFirstGpn[0] + random() % (2 * kRingPages);
    // Control pages: the index and mask words (the first 64 bytes) most of the time.
    const bool control = !at_private && (page - kFirstGpn[0]) % kRingPages == 0;
    uint64_t offset = control && random() % 4 != 0 ? random() % 64 : random() % 4096;
    // Mostly spare the words the device writes in the ring the guest writes (read index and
    // interrupt mask, bytes 4..11 of its control page): with those corrupted the guest stops
    // sending (or signalling), and what is tested is the device reading corrupt packets.
    if (page == kFirstGpn[0] && offset >= 4 && offset < 12 && random() % 16 != 0) {
      offset = random() % 2 == 0 ? 0 : 12 + random() % 52;
    }
    const uint64_t value = random();
    const size_t len = std::min<uint64_t>(1 + random() % 8, 4096 - offset);
    const absl::Status wrote = host_view.Write(
        page * 4096 + offset, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&value), len));
    if (!at_private) {
      ASSERT_TRUE(wrote.ok()) << wrote;
      ++corruptions;
    } else {
      ++private_attempts;
      EXPECT_TRUE(guestmem::IsError(wrote, guestmem::ErrorKind::kNotShared)) << wrote;
      refused += wrote.ok() ? 0 : 1;
    }
    if (corruptions % 16 == 0) std::this_thread::sleep_for(50us);
  }
  stop = true;
  for (std::thread& guest : guests) guest.join();
  // Last, one corruption the device cannot miss: a write index outside the data area, and the
  // doorbell that makes it look.
  const uint32_t bad_write_index = 0xfffffff8;
  ASSERT_TRUE(host_view.WritePlain<uint32_t>(kFirstGpn[0] * 4096, bad_write_index).ok());
  ++corruptions;
  ASSERT_TRUE(vm->guest().SignalHost((*offers)[0].child_relid).ok());

  // The bystanders never saw a wrong byte and served throughout.
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_TRUE(results[i].ok()) << "channel " << i << ": " << results[i];
    EXPECT_GT(echoed[i].load(), 100u) << "channel " << i;
  }
  EXPECT_EQ(refused, private_attempts);
  // The victim: whatever its device noticed is a typed ring error, on its channel alone.
  absl::Status victim_device;
  for (int i = 0; i < 200 && victim_device.ok(); ++i) {  // The doorbell's read, on the loop.
    vm->OnServer([&] { victim_device = devices[0]->stats().last_error; });
    if (victim_device.ok()) std::this_thread::sleep_for(5ms);
  }
  vm->OnServer([&] {
    for (size_t i = 1; i < 3; ++i) {
      EXPECT_TRUE(devices[i]->stats().last_error.ok()) << devices[i]->stats().last_error;
    }
  });
  EXPECT_TRUE(ring::GetRingError(victim_device).has_value()) << victim_device;

  // Torn down cleanly: the victim closes and its GPADL is answered; the others go on.
  ASSERT_TRUE(channels[0]->Close().ok());
  ASSERT_TRUE(vm->guest().TeardownGpadl((*offers)[0].child_relid, 10).ok());
  for (size_t i = 1; i < 3; ++i) {
    std::atomic<bool> once{false};
    std::atomic<uint64_t> more{0};
    std::thread stopper([&] {
      std::this_thread::sleep_for(50ms);
      once = true;
    });
    EXPECT_TRUE(EchoUntil(*channels[i], once, &more).ok());
    stopper.join();
    EXPECT_GT(more.load(), 0u);
  }
  std::printf(
      "hostile host: %llu corruptions of one channel's rings in %lld ms, %llu writes to "
      "private pages all refused; victim: %llu packets sent, guest side '%s', device '%s'; the "
      "other two channels: %llu and %llu echoes, no error\n",
      static_cast<unsigned long long>(corruptions),
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(kAttack).count()),
      static_cast<unsigned long long>(private_attempts),
      static_cast<unsigned long long>(echoed[0].load()), results[0].ToString().c_str(),
      victim_device.ToString().c_str(), static_cast<unsigned long long>(echoed[1].load()),
      static_cast<unsigned long long>(echoed[2].load()));
  vm->OnServer([&] { devices.clear(); });
}

}  // namespace
}  // namespace cvmbus::paravisor
