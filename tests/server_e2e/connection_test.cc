// Connection-level features of the server: guest-specified signal parameters (0x1), modify
// connection (0x4), pause/resume (0x20), and hvsocket connect requests.
#include <gtest/gtest.h>

#include "paravisor/devices/echo_device.h"
#include "paravisor/server/server.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using protocol::MessageType;
using testing::GuestChannel;
using vm::VirtualMachine;

OfferParams EchoParams(uint32_t instance) {
  OfferParams params;
  params.interface_name = "echo";
  params.interface_id.data1 = 1;
  params.instance_id.data1 = instance;
  params.mnf_interrupt_latency = 100us;
  return params;
}

class ConnectionTest : public ::testing::Test {
 protected:
  void Start(vm::VmOptions options = {}) { vm_ = *VirtualMachine::Create(options); }
  void TearDown() override {
    vm_->OnServer([&] { devices_.clear(); });
    vm_.reset();
  }
  void AddDevice(OfferParams params) {
    vm_->OnServer([&] {
      devices_.push_back(
          std::make_unique<EchoDevice>(vm_->server_loop(), &vm_->bus(), std::move(params)));
      EXPECT_TRUE(devices_.back()->Start().ok());
    });
  }
  void Echo(GuestChannel& channel, int count) {
    ring::PacketBuffer buffer;
    const std::vector<uint8_t> payload = {4, 5, 6};
    for (int i = 1; i <= count; ++i) {
      ASSERT_TRUE(channel.Send(payload, i).ok());
      ASSERT_TRUE(channel.Receive(&buffer, 5s).ok()) << i;
    }
  }
  std::unique_ptr<VirtualMachine> vm_;
  std::vector<std::unique_ptr<EchoDevice>> devices_;
};

TEST_F(ConnectionTest, TheGuestChoosesTheConnectionItSignals) {
  Start();
  AddDevice(EchoParams(1));
  AddDevice(EchoParams(2));
  ASSERT_TRUE(vm_->guest()
                  .Connect(protocol::kVersionWin10V6_0,
                           protocol::kFeatureConfidentialChannels |
                               protocol::kFeatureGuestSpecifiedSignalParameters)
                  .ok());
  const auto offers = *vm_->guest().RequestOffers();
  ASSERT_EQ(offers.size(), 2u);
  auto first = GuestChannel::Open(vm_.get(), {.relid = offers[0].child_relid,
                                              .gpadl_id = 1,
                                              .first_gpn = 0x400,
                                              .ring_pages = 2,
                                              .confidential = true,
                                              .connection_id = 0x5000});
  ASSERT_TRUE(first.ok()) << first.status();
  Echo(**first, 20);  // Every send signals connection 0x5000.
  vm_->OnServer([&] {
    ASSERT_TRUE(devices_[0]->stats().last_open.has_value());
    EXPECT_EQ(devices_[0]->stats().last_open->open_data.connection_id, 0x5000u);
  });
  // A connection id already in use, and one with reserved bits set, fail the open.
  uint64_t first_gpn = 0x500;
  for (const uint32_t bad : {0x5000u, 0x1000000u}) {
    first_gpn += 0x10;  // Fresh pages: the ones before were made private already.
    auto second = GuestChannel::Open(vm_.get(), {.relid = offers[1].child_relid,
                                                 .gpadl_id = 2,
                                                 .first_gpn = first_gpn,
                                                 .ring_pages = 2,
                                                 .confidential = true,
                                                 .connection_id = bad});
    ASSERT_FALSE(second.ok()) << std::hex << bad;
    EXPECT_NE(second.status().message().find("OPENCHANNEL"), std::string::npos) << second.status();
    ASSERT_TRUE(vm_->guest().TeardownGpadl(offers[1].child_relid, 2).ok());
  }
  ASSERT_TRUE((*first)->Close().ok());
}

TEST_F(ConnectionTest, PauseHoldsMessagesToTheGuestUntilResume) {
  Start();
  ASSERT_TRUE(
      vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeaturePauseResume).ok());
  ASSERT_TRUE(vm_->guest().RequestOffers()->empty());
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::Pause{})).ok());
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kPauseResponse, 5000ms).ok());
  AddDevice(EchoParams(1));  // Offered at once, but held.
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kOfferChannel, 100ms));
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::Resume{})).ok());
  EXPECT_TRUE(vm_->guest().WaitFor(MessageType::kOfferChannel, 5000ms).ok());
  // RESUME without a pause is a guest mistake, answered by a log line.
  vm_->TakeLog();
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::Resume{})).ok());
  ASSERT_TRUE(vm_->guest().Unload().ok());
  bool logged = false;
  for (const std::string& line : vm_->TakeLog()) logged |= line.find("RESUME") != std::string::npos;
  EXPECT_TRUE(logged);
}

TEST_F(ConnectionTest, APauseAndItsHeldMessagesSurviveServicing) {
  Start();
  ASSERT_TRUE(
      vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeaturePauseResume).ok());
  ASSERT_TRUE(vm_->guest().RequestOffers()->empty());
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::Pause{})).ok());
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kPauseResponse, 5000ms).ok());
  AddDevice(EchoParams(1));  // Its offer is held.
  auto state = vm_->SaveAndStopServer();
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(state->paused());
  ASSERT_EQ(state->held_messages_size(), 1);
  vm_->OnServer([&] { devices_.clear(); });
  // A held message that could never be posted is refused, before anything is restored.
  saved::Server bad = *state;
  bad.add_held_messages(std::string(241, 'x'));
  EXPECT_EQ(vm_->StartRestoredServer(bad).code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(vm_->StartRestoredServer(*state).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kOfferChannel, 100ms));
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::Resume{})).ok());
  auto offer = vm_->guest().WaitFor(MessageType::kOfferChannel, 5000ms);
  ASSERT_TRUE(offer.ok());
  EXPECT_EQ(offer->As<protocol::OfferChannel>()->interface_instance.bytes[0], 1);
}

TEST_F(ConnectionTest, ModifyConnectionReplacesTheMonitorPage) {
  Start({.trusted_port = false, .isolated = false});
  AddDevice(EchoParams(1));
  ASSERT_TRUE(
      vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureModifyConnection).ok());
  const auto modify = [&](uint64_t to_child, uint64_t to_parent) {
    protocol::ModifyConnection message{};
    message.monitor_page1 = to_child;
    message.monitor_page2 = to_parent;
    EXPECT_TRUE(vm_->guest().SendRaw(protocol::Encode(message)).ok());
    auto response = vm_->guest().WaitFor(MessageType::kModifyConnectionResponse, 5000ms);
    EXPECT_TRUE(response.ok());
    return response.ok() ? response->As<protocol::ModifyConnectionResponse>()->connection_state
                         : uint8_t{0xff};
  };
  EXPECT_EQ(modify(0x3d000, 0x3e000), protocol::kConnectionSuccessful);
  vm_->OnServer([&] {
    ASSERT_NE(vm_->server().monitor(), nullptr);
    EXPECT_EQ(vm_->server().monitor()->gpa(), 0x3e000u);
  });
  EXPECT_EQ(modify(0, 0x3e000), protocol::kConnectionFailedUnknownFailure);
  // The channel is offered with a monitor id now; while it is open the page cannot change.
  const auto offers = *vm_->guest().RequestOffers();
  ASSERT_TRUE(offers[0].monitor_allocated());
  guestmem::GuestMemory shared = guestmem::GuestMemory::Untrusted(vm_->memory());
  auto channel = GuestChannel::Open(
      vm_.get(),
      {.relid = offers[0].child_relid, .gpadl_id = 1, .first_gpn = 0x400, .ring_pages = 2});
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_EQ(modify(0x3b000, 0x3c000), protocol::kConnectionFailedUnknownFailure);
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().monitor()->gpa(), 0x3e000u); });
  ASSERT_TRUE((*channel)->Close().ok());
}

TEST_F(ConnectionTest, HvSocketConnectIsRefusedWithoutAListenerAndOfferedWithOne) {
  Start({.on_hvsocket_connect = [this](const HvSocketConnect& connect) {
    if (connect.service_id.data1 != 0x5e5) return false;
    OfferParams params;
    params.interface_name = "hvsocket";
    params.interface_id = connect.service_id;
    params.instance_id = connect.endpoint_id;
    params.channel_type = HvSocketChannel{.is_connect = false};
    devices_.push_back(
        std::make_unique<EchoDevice>(vm_->server_loop(), &vm_->bus(), std::move(params)));
    return devices_.back()->Start().ok();
  }});
  ASSERT_TRUE(vm_->guest().Connect(protocol::kVersionWin10V6_0, 0).ok());
  ASSERT_TRUE(vm_->guest().RequestOffers()->empty());
  protocol::TlConnectRequest request{};
  request.guest_endpoint_id.bytes[0] = 0xe1;
  request.host_service_id.bytes[0] = 0x99;  // No listener.
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::EncodeTlConnectRequest(request, false)).ok());
  auto refused = vm_->guest().WaitFor(MessageType::kTlConnectResult, 5000ms);
  ASSERT_TRUE(refused.ok());
  const protocol::TlConnectResult& result = *refused->As<protocol::TlConnectResult>();
  EXPECT_EQ(result.status, protocol::kStatusConnectionRefused);
  EXPECT_EQ(result.endpoint_id.bytes[0], 0xe1);
  EXPECT_EQ(result.service_id.bytes[0], 0x99);

  request.host_service_id = {};
  request.host_service_id.bytes[0] = 0xe5;  // data1 0x5e5: the listener's service.
  request.host_service_id.bytes[1] = 0x05;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::EncodeTlConnectRequest(request, false)).ok());
  auto offer = vm_->guest().WaitFor(MessageType::kOfferChannel, 5000ms);
  ASSERT_TRUE(offer.ok());
  const protocol::OfferChannel& channel = *offer->As<protocol::OfferChannel>();
  EXPECT_NE(channel.channel_flags & protocol::kOfferTlnpiProvider, 0);
  EXPECT_EQ(channel.interface_instance.bytes[0], 0xe1);  // The guest's endpoint.
  EXPECT_EQ(channel.user_defined.hvsock.is_for_guest_accept, 0);
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kTlConnectResult, 100ms));
}

}  // namespace
}  // namespace cvmbus::paravisor
