// The VMBus server against the guest client, with echo devices, on an emulated SNP VM.
#include "paravisor/server/server.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <future>

#include "guestmem/errors.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using protocol::kStatusSuccess;
using protocol::MessageType;
using testing::GuestChannel;
using vm::VirtualMachine;

Guid GuidN(uint32_t n) {
  Guid guid;
  guid.data1 = n;
  return guid;
}

OfferParams Params(uint32_t interface, uint32_t instance, uint16_t subchannel = 0) {
  OfferParams params;
  params.interface_name = "echo";
  params.interface_id = GuidN(interface);
  params.instance_id = GuidN(instance);
  params.subchannel_index = subchannel;
  return params;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { vm_ = *VirtualMachine::Create(); }
  void TearDown() override {
    vm_->OnServer([&] { devices_.clear(); });
    vm_.reset();
  }
  EchoDevice* AddDevice(OfferParams params) {
    EchoDevice* device = nullptr;
    vm_->OnServer([&] {
      devices_.push_back(
          std::make_unique<EchoDevice>(vm_->server_loop(), &vm_->bus(), std::move(params)));
      EXPECT_TRUE(devices_.back()->Start().ok());
      device = devices_.back().get();
    });
    return device;
  }
  void Connect(uint32_t features = protocol::kFeatureConfidentialChannels) {
    auto response = vm_->guest().Connect(protocol::kVersionWin10V6_0, features);
    ASSERT_TRUE(response.ok()) << response.status();
  }
  uint64_t GuestErrors() {
    uint64_t errors = 0;
    vm_->OnServer([&] { errors = vm_->server().stats().guest_errors; });
    return errors;
  }
  std::unique_ptr<VirtualMachine> vm_;
  std::vector<std::unique_ptr<EchoDevice>> devices_;
};

TEST_F(ServerTest, NegotiatesEveryKnownVersionAndRefusesOthers) {
  auto bad = vm_->guest().Connect(0x00070000, 0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnavailable);
  for (uint32_t version : protocol::kKnownVersions) {
    auto response = vm_->guest().Connect(version, 0);
    ASSERT_TRUE(response.ok()) << std::hex << version << " " << response.status();
    EXPECT_EQ(response->connection_state, protocol::kConnectionSuccessful);
    ASSERT_TRUE(vm_->guest().Unload().ok());
  }
}

TEST_F(ServerTest, ConfidentialChannelsOnlyOnATrustedPort) {
  // Everything the server has is granted, but interrupt redirection (0x2), client ids (0x8,
  // not sent here) and server monitor pages (this server has none to give).
  constexpr uint32_t kGranted = protocol::kFeatureGuestSpecifiedSignalParameters |
                                protocol::kFeatureModifyConnection | protocol::kFeaturePauseResume;
  auto response = vm_->guest().Connect(protocol::kVersionWin10V6_0, 0x77);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->supported_features, kGranted | protocol::kFeatureConfidentialChannels);
  ASSERT_TRUE(vm_->guest().Unload().ok());
  vm_->guest();  // Keep the fixture's client.
  auto untrusted = *VirtualMachine::Create({.trusted_port = false});
  auto plain = untrusted->guest().Connect(protocol::kVersionWin10V6_0, 0x77);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->supported_features, kGranted);
}

TEST_F(ServerTest, MessagesBeforeContactAreRefusedAndLogged) {
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::RequestOffers{})).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kAllOffersDelivered, 100ms));
  EXPECT_EQ(GuestErrors(), 1u);
  // Garbage bytes: refused, logged, the server lives on.
  ASSERT_TRUE(vm_->guest().SendRaw({1, 2, 3}).ok());
  ASSERT_TRUE(vm_->guest().SendRaw(std::vector<uint8_t>(240, 0xff)).ok());
  Connect();
  EXPECT_EQ(GuestErrors(), 3u);
}

TEST_F(ServerTest, OffersComeInOfferOrderThenAllOffersDelivered) {
  OfferParams later = Params(1, 5);
  later.offer_order = 2;
  OfferParams first = Params(1, 9);
  first.offer_order = 1;
  AddDevice(later);
  AddDevice(Params(1, 3));  // No offer_order: after those that have one.
  AddDevice(first);
  AddDevice(Params(0, 7));  // A lower interface id first.
  Connect();
  auto offers = vm_->guest().RequestOffers();
  ASSERT_TRUE(offers.ok());
  ASSERT_EQ(offers->size(), 4u);
  std::vector<uint32_t> instances;
  for (const auto& offer : *offers) {
    instances.push_back(offer.interface_instance.bytes[0]);
    EXPECT_EQ(offer.connection_id, ChannelConnectionId(offer.child_relid));
    // Confidential ring is offered because the connection negotiated the feature.
    EXPECT_TRUE(offer.channel_flags & protocol::kOfferConfidentialRingBuffer);
  }
  EXPECT_EQ(instances, (std::vector<uint32_t>{7, 9, 5, 3}));
  // An offer made after REQUESTOFFERS goes out at once.
  AddDevice(Params(2, 1));
  auto late = vm_->guest().WaitFor(MessageType::kOfferChannel, 2s);
  ASSERT_TRUE(late.ok());
}

TEST_F(ServerTest, ConfidentialOfferFlagsAreClearedWithoutTheFeature) {
  OfferParams params = Params(1, 1);
  params.allow_confidential_external_memory = true;
  AddDevice(params);
  Connect(/*features=*/0);
  auto offers = vm_->guest().RequestOffers();
  ASSERT_TRUE(offers.ok());
  ASSERT_EQ(offers->size(), 1u);
  EXPECT_EQ((*offers)[0].channel_flags & (protocol::kOfferConfidentialRingBuffer |
                                          protocol::kOfferConfidentialExternalMemory),
            0);
}

TEST_F(ServerTest, OpenEchoCloseTeardownUnload) {
  EchoDevice* device = AddDevice(Params(1, 1));
  Connect();
  auto offers = *vm_->guest().RequestOffers();
  const uint32_t relid = offers[0].child_relid;
  auto channel = GuestChannel::Open(
      vm_.get(),
      {.relid = relid, .gpadl_id = 10, .first_gpn = 0x100, .ring_pages = 8, .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  ring::PacketBuffer buffer;
  for (uint64_t i = 1; i <= 2000; ++i) {
    std::vector<uint8_t> payload(i % 300, static_cast<uint8_t>(i));
    ASSERT_TRUE((*channel)->Send(payload, i).ok());
    ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok()) << i;
    ASSERT_EQ(buffer.packet().type, ring::PacketType::kCompletion);
    ASSERT_EQ(buffer.packet().transaction_id, i);
    ASSERT_TRUE(std::equal(payload.begin(), payload.end(), buffer.packet().payload.begin()));
  }
  ASSERT_TRUE((*channel)->Close().ok());
  ASSERT_TRUE(vm_->guest().TeardownGpadl(relid, 10).ok());
  ASSERT_TRUE(vm_->guest().Unload().ok());
  vm_->OnServer([&] {
    EXPECT_EQ(device->stats().packets_echoed, 2000u);
    EXPECT_EQ(device->stats().closes, 1u);
  });
  EXPECT_EQ(GuestErrors(), 0u);
}

// Packets without COMPLETION_REQUESTED get no answer: the echo channel is then one-way.
TEST_F(ServerTest, EchoAnswersOnlyPacketsThatRequestACompletion) {
  EchoDevice* device = AddDevice(Params(1, 1));
  Connect();
  auto offers = *vm_->guest().RequestOffers();
  auto channel = GuestChannel::Open(vm_.get(), {.relid = offers[0].child_relid,
                                                .gpadl_id = 10,
                                                .first_gpn = 0x100,
                                                .ring_pages = 8,
                                                .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  const std::vector<uint8_t> payload(40, 0x7e);
  for (uint64_t i = 1; i <= 100; ++i) {
    ASSERT_TRUE((*channel)->SendPacket({.transaction_id = i, .payload = payload}).ok());
  }
  ASSERT_TRUE((*channel)->Send(payload, 101).ok());
  ring::PacketBuffer buffer;
  ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok());
  EXPECT_EQ(buffer.packet().transaction_id, 101u);  // Not 1: the first 100 were not answered.
  vm_->OnServer([&] {
    EXPECT_EQ(device->stats().packets_consumed, 100u);
    EXPECT_EQ(device->stats().packets_echoed, 1u);
  });
  EXPECT_EQ(GuestErrors(), 0u);
}

TEST_F(ServerTest, LargeGpadlIsAssembledFromHeaderAndBodies) {
  AddDevice(Params(1, 1));
  Connect();
  const uint32_t relid = (*vm_->guest().RequestOffers())[0].child_relid;
  std::vector<uint64_t> gpns;
  for (uint64_t i = 0; i < 1000; ++i) gpns.push_back(0x1000 + i);  // 1 header + 36 bodies.
  auto status = vm_->guest().CreateGpadl(relid, 5, gpns);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(*status, kStatusSuccess);
}

TEST_F(ServerTest, GuestMistakesGetTheProtocolAnswerAndALogLine) {
  AddDevice(Params(1, 1));
  Connect();
  const uint32_t relid = (*vm_->guest().RequestOffers())[0].child_relid;
  // Duplicate GPADL id.
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x200, 0x201}), kStatusSuccess);
  EXPECT_NE(*vm_->guest().CreateGpadl(relid, 1, {0x300}), kStatusSuccess);
  // GPADL for an unknown channel.
  EXPECT_NE(*vm_->guest().CreateGpadl(999, 2, {0x300}), kStatusSuccess);
  // Open with a ring GPADL that does not exist; open an unknown channel.
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 77, 1), kStatusSuccess);
  EXPECT_NE(*vm_->guest().OpenChannel(555, 1, 1), kStatusSuccess);
  // Teardown of an unknown GPADL: a log line, and the GPADL_TORNDOWN Linux waits for.
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = 42;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(teardown)).ok());
  auto torndown = vm_->guest().WaitFor(MessageType::kGpadlTorndown, 5000ms);
  ASSERT_TRUE(torndown.ok());
  EXPECT_EQ(torndown->As<protocol::GpadlTorndown>()->gpadl, 42u);
  // A GPADL body for no GPADL (no answer is possible: a body names no channel).
  auto body = protocol::EncodeGpadlBody(protocol::GpadlBody{.gpadl = 1234}, {{1}});
  ASSERT_TRUE(vm_->guest().SendRaw(*body).ok());
  // Close of a channel that is not open.
  ASSERT_TRUE(vm_->guest().CloseChannel(relid).ok());
  EXPECT_EQ(GuestErrors(), 7u);
  // RELID_RELEASED for a channel never rescinded is not a mistake: the guest could not take
  // the offer, which is withdrawn until the next connection.
  ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 1, 1), kStatusSuccess);
  EXPECT_EQ(GuestErrors(), 8u);
  // INITIATE_CONTACT while connected is a new kernel (kexec): a reset, then a connection.
  auto again = vm_->guest().Connect(protocol::kVersionWin10V6_0, 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->connection_state, protocol::kConnectionSuccessful);
  auto offers = vm_->guest().RequestOffers();
  ASSERT_TRUE(offers.ok());
  EXPECT_EQ(offers->size(), 1u);  // Offered again on the new connection.
  EXPECT_GE(vm_->TakeLog().size(), 8u);
}

TEST_F(ServerTest, OpenTwiceIsRefusedAndTeardownOfAnOpenRingWaitsForTheClose) {
  AddDevice(Params(1, 1));
  Connect();
  const uint32_t relid = (*vm_->guest().RequestOffers())[0].child_relid;
  auto channel = GuestChannel::Open(
      vm_.get(),
      {.relid = relid, .gpadl_id = 3, .first_gpn = 0x400, .ring_pages = 2, .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 3, 2), kStatusSuccess);
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = 3;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(teardown)).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kGpadlTorndown, 100ms));
  EXPECT_EQ(GuestErrors(), 1u);
  // The ring is torn down, and the teardown answered, once the channel is closed.
  ASSERT_TRUE((*channel)->Close().ok());
  EXPECT_TRUE(vm_->guest().WaitFor(MessageType::kGpadlTorndown, 5000ms).ok());
}

TEST_F(ServerTest, RevokeRescindsSubchannelsFirstAndReusesTheRelid) {
  EchoDevice* primary = AddDevice(Params(1, 1, 0));
  AddDevice(Params(1, 1, 1));
  AddDevice(Params(1, 1, 2));
  Connect();
  auto offers = *vm_->guest().RequestOffers();
  ASSERT_EQ(offers.size(), 3u);
  uint32_t primary_relid = 0;
  for (const auto& offer : offers) {
    if (offer.sub_channel_index == 0) primary_relid = offer.child_relid;
  }
  vm_->OnServer([&] { ASSERT_TRUE(primary->Revoke().ok()); });
  std::vector<uint32_t> rescinded;
  for (int i = 0; i < 3; ++i) {
    auto rescind = vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 2s);
    ASSERT_TRUE(rescind.ok());
    rescinded.push_back(rescind->As<protocol::RescindChannelOffer>()->child_relid);
  }
  EXPECT_EQ(rescinded.back(), primary_relid);  // Subchannels before their primary.
  // A GPADL for a revoked channel succeeds at once.
  EXPECT_EQ(*vm_->guest().CreateGpadl(primary_relid, 9, {0x500}), kStatusSuccess);
  for (uint32_t relid : rescinded) ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
  AddDevice(Params(3, 3));
  auto offer = vm_->guest().WaitFor(MessageType::kOfferChannel, 2s);
  ASSERT_TRUE(offer.ok());
  EXPECT_EQ(offer->As<protocol::OfferChannel>()->child_relid,
            *std::min_element(rescinded.begin(), rescinded.end()));
}

// The four combinations of the connection feature and the offer's external-memory flag: the
// OpenRequest flags the device sees, and the views its ring and device data come from.
TEST_F(ServerTest, ConfidentialConnectionSelectsViews) {
  for (const bool feature : {false, true}) {
    for (const bool external : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "feature " << feature << " external " << external);
      auto vm = *VirtualMachine::Create();
      std::unique_ptr<EchoDevice> device;
      OfferParams params = Params(1, 1);
      params.allow_confidential_external_memory = external;
      vm->OnServer([&] {
        device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
        ASSERT_TRUE(device->Start().ok());
      });
      ASSERT_TRUE(vm->guest()
                      .Connect(protocol::kVersionWin10V6_0,
                               feature ? protocol::kFeatureConfidentialChannels : 0)
                      .ok());
      const uint32_t relid = (*vm->guest().RequestOffers())[0].child_relid;
      auto channel = GuestChannel::Open(vm.get(), {.relid = relid,
                                                   .gpadl_id = 1,
                                                   .first_gpn = 0x600,
                                                   .ring_pages = 2,
                                                   .confidential = feature});
      ASSERT_TRUE(channel.ok()) << channel.status();
      vm->OnServer([&] {
        const EchoStats& stats = device->stats();
        ASSERT_TRUE(stats.last_open.has_value());
        EXPECT_EQ(stats.last_open->use_confidential_ring, feature);
        EXPECT_EQ(stats.last_open->use_confidential_external_memory, feature && external);
        EXPECT_EQ(stats.ring_view, feature ? guestmem::View::kPrivate : guestmem::View::kUntrusted);
        EXPECT_EQ(stats.data_view,
                  feature && external ? guestmem::View::kPrivate : guestmem::View::kUntrusted);
      });
      ring::PacketBuffer buffer;
      const std::vector<uint8_t> payload = {1, 2, 3};
      ASSERT_TRUE((*channel)->Send(payload, 1).ok());
      ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok());
      vm->OnServer([&] { device.reset(); });
    }
  }
}

TEST_F(ServerTest, ConfidentialRingInSharedPagesFailsTheOpen) {
  EchoDevice* device = AddDevice(Params(1, 1));
  Connect();
  const uint32_t relid = (*vm_->guest().RequestOffers())[0].child_relid;
  // The guest negotiated confidential rings but hands shared (hypervisor-owned) pages.
  std::vector<uint64_t> gpns = {0x700, 0x701, 0x702, 0x703};
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 4, gpns), kStatusSuccess);
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 4, 2), kStatusSuccess);
  vm_->OnServer([&] {
    EXPECT_TRUE(guestmem::IsError(device->stats().last_error, guestmem::ErrorKind::kNotPrivate))
        << device->stats().last_error;
  });
}

}  // namespace
}  // namespace cvmbus::paravisor

namespace cvmbus::paravisor {
namespace {

// Servicing: save the server, replace it (and the device), restore, and the guest's open
// channel carries on: same relid, same rings, no new offer, no lost interrupt.
TEST(ServicingTest, OpenChannelSurvivesSaveAndRestore) {
  auto vm = *vm::VirtualMachine::Create();
  OfferParams params = Params(1, 1);
  std::unique_ptr<EchoDevice> device;
  vm->OnServer([&] {
    device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
    ASSERT_TRUE(device->Start().ok());
  });
  ASSERT_TRUE(vm->guest()
                  .Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels)
                  .ok());
  const uint32_t relid = (*vm->guest().RequestOffers())[0].child_relid;
  auto channel = testing::GuestChannel::Open(
      vm.get(),
      {.relid = relid, .gpadl_id = 1, .first_gpn = 0x800, .ring_pages = 4, .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  // A second GPADL, accepted before the save.
  ASSERT_EQ(*vm->guest().CreateGpadl(relid, 2, {0x900, 0x901}), protocol::kStatusSuccess);
  ring::PacketBuffer buffer;
  const std::vector<uint8_t> payload = {9, 8, 7};
  for (uint64_t i = 1; i <= 100; ++i) {
    ASSERT_TRUE((*channel)->Send(payload, i).ok());
    ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok());
  }

  auto state = vm->SaveAndStopServer();
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ(state->channels_size(), 1);
  EXPECT_EQ(state->channels(0).state(), 2u);  // Open.
  EXPECT_EQ(state->channels(0).gpadls_size(), 2);
  // The saved state survives serialization.
  saved::Server reloaded;
  ASSERT_TRUE(reloaded.ParseFromString(state->SerializeAsString()));
  vm->OnServer([&] { device.reset(); });
  ASSERT_TRUE(vm->StartRestoredServer(reloaded).ok());
  vm->OnServer([&] {
    device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
    ASSERT_TRUE(device->StartRestored(/*was_open=*/true).ok());
  });
  // No new offer: the guest never saw the paravisor change.
  EXPECT_TRUE(vm->guest().NothingArrives(MessageType::kOfferChannel, 100ms));
  for (uint64_t i = 101; i <= 200; ++i) {
    ASSERT_TRUE((*channel)->Send(payload, i).ok());
    ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok()) << i;
    ASSERT_EQ(buffer.packet().transaction_id, i);
  }
  vm->OnServer([&] {
    ASSERT_TRUE(device->stats().last_error.ok()) << device->stats().last_error;
    EXPECT_EQ(device->stats().packets_echoed, 100u);  // The restored device's share.
    ASSERT_TRUE(device->stats().last_open.has_value());
    EXPECT_TRUE(device->stats().last_open->use_confidential_ring);
  });
  // The restored server still knows the GPADLs: tear one down, close, unload.
  ASSERT_TRUE(vm->guest().TeardownGpadl(relid, 2).ok());
  ASSERT_TRUE((*channel)->Close().ok());
  ASSERT_TRUE(vm->guest().TeardownGpadl(relid, 1).ok());
  ASSERT_TRUE(vm->guest().Unload().ok());
  vm->OnServer([&] { device.reset(); });
}

TEST(ServicingTest, RestoreRefusesADeviceThatDisagreesAndMalformedState) {
  auto vm = *vm::VirtualMachine::Create();
  OfferParams params = Params(1, 1);
  std::unique_ptr<EchoDevice> device;
  vm->OnServer([&] {
    device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
    ASSERT_TRUE(device->Start().ok());
  });
  ASSERT_TRUE(vm->guest().Connect(protocol::kVersionWin10V6_0, 0).ok());
  ASSERT_TRUE(vm->guest().RequestOffers().ok());
  auto state = vm->SaveAndStopServer();
  ASSERT_TRUE(state.ok());
  vm->OnServer([&] { device.reset(); });
  saved::Server broken = *state;
  broken.mutable_channels(0)->set_interface_id("short");
  EXPECT_EQ(vm->StartRestoredServer(broken).code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(vm->SaveAndStopServer().ok());
  ASSERT_TRUE(vm->StartRestoredServer(*state).ok());
  vm->OnServer([&] {
    device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
    ASSERT_TRUE(device->StartRestored(/*was_open=*/true).ok());  // It was saved closed.
  });
  vm->OnServer([] {});
  vm->OnServer([&] {
    EXPECT_EQ(device->stats().last_error.code(), absl::StatusCode::kFailedPrecondition)
        << device->stats().last_error;
    device.reset();
  });
}

// An echo channel offered and seen by a connected guest, then a servicing that restores the
// server but not yet the device (the device is gone: `device` is null).
class RestoredWithoutDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vm = *vm::VirtualMachine::Create();
    vm->OnServer([&] {
      device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
      ASSERT_TRUE(device->Start().ok());
    });
    ASSERT_TRUE(vm->guest().Connect(protocol::kVersionWin10V6_0, 0).ok());
    relid = (*vm->guest().RequestOffers())[0].child_relid;
    auto state = vm->SaveAndStopServer();
    ASSERT_TRUE(state.ok()) << state.status();
    vm->OnServer([&] { device.reset(); });
    ASSERT_TRUE(vm->StartRestoredServer(*state).ok());
  }
  void TearDown() override {
    vm->OnServer([&] { device.reset(); });
  }

  std::unique_ptr<vm::VirtualMachine> vm;
  OfferParams params = Params(1, 1);
  std::unique_ptr<EchoDevice> device;
  uint32_t relid = 0;
};

// A guest request that arrives after the restore but before the channel's device is back is
// held, not failed: the device answers it once it has restored the channel.
TEST_F(RestoredWithoutDeviceTest, GuestMessagesWaitForTheRestoredDevices) {
  // The server is back, the device not yet: the GPADL waits.
  std::future<absl::StatusOr<uint32_t>> created = std::async(std::launch::async, [&] {
    return vm->guest().CreateGpadl(relid, 5, {0x300, 0x301});
  });
  EXPECT_EQ(created.wait_for(200ms), std::future_status::timeout);
  vm->OnServer([&] {
    device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params);
    ASSERT_TRUE(device->StartRestored(/*was_open=*/false).ok());
  });
  absl::StatusOr<uint32_t> status = created.get();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, protocol::kStatusSuccess);
}

// A device that never comes back holds the guest up for at most kMaxRestoreHold: then its
// requests are served as they can be (here: refused, the channel has no device).
TEST_F(RestoredWithoutDeviceTest, AMissingDeviceHoldsTheGuestForABoundedTime) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<uint32_t> status = vm->guest().CreateGpadl(relid, 5, {0x300, 0x301});
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_NE(*status, protocol::kStatusSuccess);
  EXPECT_GE(waited, VmbusServer::kMaxRestoreHold - 100ms);
  bool logged = false;
  for (const std::string& line : vm->TakeLog()) {
    logged = logged || line.find("still waiting for their devices") != std::string::npos;
  }
  EXPECT_TRUE(logged);
}

}  // namespace
}  // namespace cvmbus::paravisor
