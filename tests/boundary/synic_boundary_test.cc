// The guest boundary end to end: the in-process guest client reaches the server only through
// the paravisor's SynIC (its SIMP, SIEFP and input pages in guest memory), and on a
// confidential VM nothing of that conversation crosses the host's SynIC or the host's view.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "paravisor/client/guest_synic.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/synic/hv_abi.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::tests {
namespace {

using namespace std::chrono_literals;
using paravisor::testing::GuestChannel;
using paravisor::vm::VirtualMachine;

constexpr uint32_t kConfidentialChannels = 0x10;

struct Echo {
  std::unique_ptr<VirtualMachine> vm;
  std::unique_ptr<paravisor::EchoDevice> device;
};

Echo StartEcho(bool isolated) {
  Echo echo;
  echo.vm = *VirtualMachine::Create({.isolated = isolated});
  echo.vm->OnServer([&] {
    paravisor::OfferParams params;
    params.interface_id.data1 = 7;
    params.instance_id.data1 = 1;
    params.allow_confidential_external_memory = true;
    echo.device =
        std::make_unique<paravisor::EchoDevice>(echo.vm->server_loop(), &echo.vm->bus(), params);
    ASSERT_TRUE(echo.device->Start().ok());
  });
  return echo;
}

void StopEcho(Echo& echo) {
  echo.vm->OnServer([&] { echo.device.reset(); });
}

TEST(SynicBoundaryTest, ConfidentialTrafficNeverTouchesTheHostSynicOrTheHostView) {
  Echo echo = StartEcho(/*isolated=*/true);
  VirtualMachine& vm = *echo.vm;
  ASSERT_NE(vm.host_synic(), nullptr);
  auto version = vm.guest().Connect(paravisor::protocol::kVersionWin10V6_0, kConfidentialChannels);
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(version->supported_features & kConfidentialChannels, kConfidentialChannels);
  auto offers = *vm.guest().RequestOffers();
  ASSERT_EQ(offers.size(), 1u);
  auto channel = GuestChannel::Open(&vm, {.relid = offers[0].child_relid,
                                          .gpadl_id = 1,
                                          .first_gpn = 0x100,
                                          .ring_pages = 4,
                                          .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  ring::PacketBuffer buffer;
  for (uint64_t i = 1; i <= 100; ++i) {
    const std::vector<uint8_t> payload(48, static_cast<uint8_t>(i));
    ASSERT_TRUE((*channel)->Send(payload, i).ok());
    ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok());
  }
  // The paravisor's SynIC carried it all...
  const paravisor::synic::SynicStats paravisor_stats = vm.synic().stats();
  EXPECT_EQ(paravisor_stats.messages_posted, 4u);     // CONTACT, REQUESTOFFERS, GPADL, OPEN.
  EXPECT_GE(paravisor_stats.messages_delivered, 5u);  // VERSION, OFFER, ALLOFFERS, CREATED, RESULT.
  EXPECT_GT(paravisor_stats.events_set + paravisor_stats.events_coalesced, 0u);
  // ...the host's SynIC saw nothing...
  const paravisor::synic::SynicStats host_stats = vm.host_synic()->stats();
  EXPECT_EQ(host_stats.messages_posted, 0u);
  EXPECT_EQ(host_stats.messages_delivered, 0u);
  EXPECT_EQ(host_stats.events_set + host_stats.events_coalesced + host_stats.interrupts, 0u);
  // ...and the guest's SynIC pages are private: the host's view cannot read the message slot.
  const guestmem::GuestMemory host_view = guestmem::GuestMemory::Untrusted(vm.memory());
  EXPECT_FALSE(host_view.ReadPlain<uint32_t>(vm.synic_pages().simp).ok());
  EXPECT_FALSE(host_view.ReadPlain<uint32_t>(vm.synic_pages().input).ok());
  ASSERT_TRUE((*channel)->Close().ok());
  StopEcho(echo);
}

TEST(SynicBoundaryTest, TheHostSynicRefusesPostsNoServerListensTo) {
  Echo echo = StartEcho(/*isolated=*/true);
  VirtualMachine& vm = *echo.vm;
  // A guest that posted INITIATE_CONTACT to the host's SynIC instead: no server is attached.
  auto host = vm.host_synic();
  ASSERT_TRUE(host->WriteMsr(0, paravisor::synic::kMsrGuestOsId, 1).ok());
  ASSERT_TRUE(host->WriteMsr(0, paravisor::synic::kMsrHypercall, 0x10000 | 1).ok());
  const guestmem::GuestMemory shared = guestmem::GuestMemory::Untrusted(vm.memory());
  paravisor::synic::PostMessageInput input{};
  input.connection_id = 4;
  input.message_type = paravisor::synic::kMessageTypeVmbus;
  input.payload_size = 8;
  ASSERT_TRUE(shared
                  .Write(0x20000, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&input),
                                                      sizeof(input)))
                  .ok());
  EXPECT_EQ(host->Hypercall(0, paravisor::synic::kCallPostMessage, 0x20000, 0),
            paravisor::synic::kStatusInvalidConnectionId);
  StopEcho(echo);
}

TEST(SynicBoundaryTest, APlainVmHasOneSynicAndSharedPages) {
  Echo echo = StartEcho(/*isolated=*/false);
  VirtualMachine& vm = *echo.vm;
  EXPECT_EQ(vm.host_synic(), nullptr);
  ASSERT_TRUE(vm.guest().Connect(paravisor::protocol::kVersionWin10V5_3, 0).ok());
  EXPECT_EQ(vm.guest().RequestOffers()->size(), 1u);
  EXPECT_GE(vm.synic().stats().messages_delivered, 3u);  // VERSION_RESPONSE, offer, ALLOFFERS.
  StopEcho(echo);
}

}  // namespace
}  // namespace cvmbus::tests
