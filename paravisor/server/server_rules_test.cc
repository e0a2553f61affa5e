// The server's rules where a test must see exactly what it posts and raises, or give it
// options of its own: the fake SynIC port (the test is the guest) and scripted devices.
#include <gtest/gtest.h>

#include "paravisor/server/server.h"
#include "paravisor/server/testing/server_harness.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using protocol::kStatusSuccess;
using protocol::MessageType;
using testing::Answer;
using testing::ScriptedDevice;
using testing::ServerHarness;
using testing::TestOffer;

std::unique_ptr<ServerHarness> Harness(ServerOptions options = {}) {
  auto harness = ServerHarness::Create(std::move(options));
  EXPECT_TRUE(harness.ok()) << harness.status();
  return *std::move(harness);
}

uint32_t OnlyRelid(ServerHarness& h) {
  auto offers = h.RequestOffers();
  EXPECT_TRUE(offers.ok() && offers->size() == 1);
  return offers.ok() && !offers->empty() ? (*offers)[0].child_relid : 0;
}

// Opens `relid` with a fresh 4-page ring GPADL `gpadl`; the OPENCHANNEL_RESULT status.
uint32_t OpenWithRing(ServerHarness& h, uint32_t relid, uint32_t gpadl, uint32_t vp = 0) {
  auto created = h.CreateGpadl(relid, gpadl, 4, 0x100 + 0x10 * gpadl);
  EXPECT_TRUE(created.ok() && *created == kStatusSuccess);
  auto opened = h.Open(relid, gpadl, vp);
  EXPECT_TRUE(opened.ok()) << opened.status();
  return opened.ok() ? *opened : 0xdead;
}

// Messages go to the VP and SINT the guest named in INITIATE_CONTACT, and a new contact (a
// kexec'd kernel on another CPU) moves them.
TEST(ServerRulesTest, MessagesGoWhereTheContactSaid) {
  auto h = Harness();
  h->AddDevice(TestOffer(1, 1));
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = protocol::kVersionWin10V6_0;
  contact.target_vcpu = 2;
  contact.interrupt_page_or_target.target.message_sint = 5;
  ASSERT_TRUE(h->Send(protocol::EncodeInitiateContact(contact)).ok());
  auto response = h->port().WaitFor(MessageType::kVersionResponse, 5s);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->vp, 2u);
  EXPECT_EQ(response->sint, 5);
  ASSERT_TRUE(h->Send(protocol::Encode(protocol::RequestOffers{})).ok());
  auto offer = h->port().WaitFor(MessageType::kOfferChannel, 5s);
  ASSERT_TRUE(offer.ok());
  EXPECT_EQ(offer->vp, 2u);
  EXPECT_EQ(offer->sint, 5);
  contact.target_vcpu = 3;
  contact.interrupt_page_or_target.target.message_sint = 2;
  ASSERT_TRUE(h->Send(protocol::EncodeInitiateContact(contact)).ok());
  response = h->port().WaitFor(MessageType::kVersionResponse, 5s);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->vp, 3u);
  EXPECT_EQ(response->sint, 2);
}

// CPU offline: MODIFYCHANNEL moves the channel's interrupt to the new VP before the answer,
// and a closed channel's interrupt reaches no VP at all (the device may still hold it).
TEST(ServerRulesTest, ModifyChannelRetargetsTheInterruptAndCloseCutsItOff) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  const uint16_t flag = static_cast<uint16_t>(relid);
  Interrupt to_guest;
  h->OnServer([&] { to_guest = device->last_open()->interrupt; });
  ASSERT_TRUE(to_guest.Deliver().ok());
  EXPECT_EQ(h->port().events(0, 2, flag), 1u);
  ASSERT_TRUE(h->SendModify(relid, 3).ok());
  auto response = h->port().WaitFor(MessageType::kModifyChannelResponse, 5s);
  ASSERT_TRUE(response.ok());
  EXPECT_EQ(response->message.As<protocol::ModifyChannelResponse>()->status, kStatusSuccess);
  ASSERT_TRUE(to_guest.Deliver().ok());
  EXPECT_EQ(h->port().events(3, 2, flag), 1u);
  EXPECT_EQ(h->port().events(0, 2, flag), 1u);
  ASSERT_TRUE(h->SendClose(relid).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->events().back() == "close"; }));
  ASSERT_TRUE(to_guest.Deliver().ok());
  EXPECT_EQ(h->port().events(3, 2, flag), 1u);
  EXPECT_FALSE(h->port().HasEventTarget(ChannelConnectionId(relid)));
}

// A channel may only target a VP the guest has (the port's four here): OPENCHANNEL and
// MODIFYCHANNEL naming another are answered with a failure, and nothing is opened or moved.
TEST(ServerRulesTest, TargetVpsOutsideTheGuestAreRefusedWithAnAnswer) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  EXPECT_NE(OpenWithRing(*h, relid, 1, /*vp=*/4), kStatusSuccess);
  h->OnServer([&] { EXPECT_FALSE(device->last_open().has_value()); });
  ASSERT_EQ(h->Open(relid, 1, 3).value_or(0xdead), kStatusSuccess);  // The last VP is fine.
  ASSERT_TRUE(h->SendModify(relid, 4).ok());
  auto refused = h->port().WaitFor(MessageType::kModifyChannelResponse, 5s);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->message.As<protocol::ModifyChannelResponse>()->status, kStatusSuccess);
  Interrupt to_guest;
  h->OnServer([&] { to_guest = device->last_open()->interrupt; });
  ASSERT_TRUE(to_guest.Deliver().ok());
  EXPECT_EQ(h->port().events(3, 2, static_cast<uint16_t>(relid)), 1u);  // Still on VP 3.
}

// Guest-driven growth is bounded, and each refusal is answered.
TEST(ServerRulesTest, GpadlLimitsRefuseWithAnAnswer) {
  ServerOptions options;
  options.limits.gpadls_per_channel = 2;
  options.limits.gpadls = 3;
  options.limits.pages_per_gpadl = 8;
  options.limits.gpadl_pages = 20;
  auto h = Harness(options);
  h->AddDevice(TestOffer(1, 1));
  h->AddDevice(TestOffer(1, 2));
  ASSERT_TRUE(h->Connect().ok());
  auto offers = h->RequestOffers();
  ASSERT_TRUE(offers.ok() && offers->size() == 2);
  const uint32_t a = (*offers)[0].child_relid;
  const uint32_t b = (*offers)[1].child_relid;
  EXPECT_NE(*h->CreateGpadl(a, 1, 9), kStatusSuccess);  // Pages per GPADL.
  EXPECT_EQ(*h->CreateGpadl(a, 1, 8), kStatusSuccess);
  EXPECT_EQ(*h->CreateGpadl(a, 2, 8), kStatusSuccess);
  EXPECT_NE(*h->CreateGpadl(a, 3, 1), kStatusSuccess);  // Per channel.
  EXPECT_NE(*h->CreateGpadl(b, 4, 5), kStatusSuccess);  // Pages per connection: 16 + 5 > 20.
  EXPECT_EQ(*h->CreateGpadl(b, 4, 4), kStatusSuccess);
  EXPECT_NE(*h->CreateGpadl(b, 5, 1), kStatusSuccess);  // Per connection.
  // A GPADL still being assembled counts too (its header reserved the pages).
  ASSERT_TRUE(h->SendTeardown(a, 2).ok());
  ASSERT_TRUE(h->port().WaitFor(MessageType::kGpadlTorndown, 5s).ok());
  std::vector<uint64_t> words = {uint64_t{40} * 4096};
  for (uint64_t i = 0; i < 40; ++i) words.push_back(0x800 + i);
  auto big = protocol::EncodeGpadl(b, 6, 1, words);
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE(h->Send((*big)[0]).ok());  // 40 pages: refused at the header.
  auto created = h->port().WaitFor(MessageType::kGpadlCreated, 5s);
  ASSERT_TRUE(created.ok());
  EXPECT_NE(created->message.As<protocol::GpadlCreated>()->creation_status, kStatusSuccess);
  h->OnServer([&] { EXPECT_EQ(h->server().gpadl_count(), 2u); });
}

TEST(ServerRulesTest, ModifiesInFlightAreBounded) {
  ServerOptions options;
  options.limits.modifies_in_flight = 2;
  auto h = Harness(options);
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  h->OnServer([&] { device->script().modify = Answer::kHold; });
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h->SendModify(relid, 1).ok());
  auto refused = h->port().WaitFor(MessageType::kModifyChannelResponse, 5s);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->message.As<protocol::ModifyChannelResponse>()->status, kStatusSuccess);
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_modifies() == 2; }));
  h->OnServer([&] {
    EXPECT_TRUE(device->ReleaseModify(0));
    EXPECT_TRUE(device->ReleaseModify(0));
  });
  for (int i = 0; i < 2; ++i) {
    auto answered = h->port().WaitFor(MessageType::kModifyChannelResponse, 5s);
    ASSERT_TRUE(answered.ok());
    EXPECT_EQ(answered->message.As<protocol::ModifyChannelResponse>()->status, kStatusSuccess);
  }
}

// A modify answer that comes back after a reset is not sent to the new connection.
TEST(ServerRulesTest, AStaleModifyReplyIsDropped) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1), {.modify = Answer::kHold});
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  ASSERT_TRUE(h->SendModify(relid, 1).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_modifies() == 1; }));
  ASSERT_TRUE(h->Connect().ok());  // kexec: a reset (close, teardown), then the answer.
  h->OnServer([&] { EXPECT_TRUE(device->ReleaseModify(0)); });
  EXPECT_TRUE(h->port().NothingArrives(MessageType::kModifyChannelResponse, 100ms));
  h->OnServer([&] { EXPECT_EQ(h->server().stats().stale_replies, 1u); });
}

// The optional re-signal: both ring directions are signalled a while after the open (OpenVMM
// #1829), and not at all if the channel closed before.
TEST(ServerRulesTest, BothDirectionsAreSignalledAgainAfterTheOpen) {
  ServerOptions options;
  options.resignal_after_open = 20ms;
  auto h = Harness(options);
  ScriptedDevice* first = h->AddDevice(TestOffer(1, 1));
  ScriptedDevice* second = h->AddDevice(TestOffer(1, 2));
  ASSERT_TRUE(h->Connect().ok());
  auto offers = h->RequestOffers();
  ASSERT_TRUE(offers.ok() && offers->size() == 2);
  const uint32_t a = (*offers)[0].child_relid;
  const uint32_t b = (*offers)[1].child_relid;
  ASSERT_EQ(OpenWithRing(*h, a, 1), kStatusSuccess);
  ASSERT_EQ(OpenWithRing(*h, b, 2), kStatusSuccess);
  ASSERT_TRUE(h->SendClose(b).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return first->last_signal()->raised() == 1; }));
  EXPECT_EQ(h->port().events(0, 2, static_cast<uint16_t>(a)), 1u);
  std::this_thread::sleep_for(50ms);
  h->OnServer([&] { EXPECT_EQ(second->last_signal()->raised(), 0u); });
  EXPECT_EQ(h->port().events(0, 2, static_cast<uint16_t>(b)), 0u);
}

TEST(ServerRulesTest, NoResignalByDefault) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect().ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  std::this_thread::sleep_for(50ms);
  h->OnServer([&] { EXPECT_EQ(device->last_signal()->raised(), 0u); });
  EXPECT_EQ(h->port().events(0, 2, static_cast<uint16_t>(relid)), 0u);
}

// Backpressure: while the SynIC refuses messages the server keeps them in order and takes no
// guest messages; none is lost.
TEST(ServerRulesTest, AFullSintStopsGuestMessagesAndLosesNothing) {
  auto h = Harness();
  for (uint32_t i = 1; i <= 10; ++i) h->AddDevice(TestOffer(1, i));
  ASSERT_TRUE(h->Connect().ok());
  h->port().SetQueueLimit(3);
  ASSERT_TRUE(h->Send(protocol::Encode(protocol::RequestOffers{})).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return !h->port().accepting(); }));
  h->port().SetQueueLimit(std::nullopt);
  auto delivered = h->port().WaitFor(MessageType::kAllOffersDelivered, 5s);
  ASSERT_TRUE(delivered.ok());
  ASSERT_TRUE(h->WaitUntil([&] { return h->port().accepting(); }));
  int offers = 0;
  for (const auto& posted : h->port().TakeAll()) {
    offers += posted.message.type == MessageType::kOfferChannel ? 1 : 0;
  }
  EXPECT_EQ(offers, 10);
}

// A paused connection holds its messages up to kMaxHeldWhilePaused, then takes no more guest
// requests: bounded, and nothing dropped.
TEST(ServerRulesTest, APausedConnectionHoldsABoundedNumberOfMessages) {
  auto h = Harness();
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V6_0, protocol::kFeaturePauseResume).ok());
  ASSERT_TRUE(h->Send(protocol::Encode(protocol::Pause{})).ok());
  ASSERT_TRUE(h->port().WaitFor(MessageType::kPauseResponse, 5s).ok());
  protocol::TlConnectRequest request{};
  const auto connect = protocol::EncodeTlConnectRequest(request, false);  // Each is refused.
  for (size_t i = 0; i < kMaxHeldWhilePaused + 10; ++i) ASSERT_TRUE(h->Send(connect).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return !h->port().accepting(); }));
  absl::StatusOr<saved::Server> state;
  h->OnServer([&] { state = h->server().Save(); });
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->held_messages_size(), static_cast<int>(kMaxHeldWhilePaused));
  EXPECT_TRUE(h->port().NothingArrives(MessageType::kTlConnectResult, 20ms));
}

// A reset (a kexec's INITIATE_CONTACT) while the device still closes a channel whose ring the
// guest asked to tear down right after its CLOSECHANNEL: the teardown reaches the device only
// once it has answered the close, as without the reset (it used to go at once, so the device
// lost the ring of a channel it had not finished closing); then the new contact is answered.
TEST(ServerRulesTest, AResetTearsAClosingChannelsRingDownOnlyAfterTheClose) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1), {.close = Answer::kHold});
  ASSERT_TRUE(h->Connect().ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  ASSERT_TRUE(h->SendClose(relid).ok());
  ASSERT_TRUE(h->SendTeardown(relid, 1).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_closes() == 1; }));
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = protocol::kVersionWin10V6_0;
  contact.interrupt_page_or_target.target.message_sint = protocol::kMessageSint;
  ASSERT_TRUE(h->Send(protocol::EncodeInitiateContact(contact)).ok());
  EXPECT_TRUE(h->port().NothingArrives(MessageType::kVersionResponse, 100ms));
  h->OnServer([&] {
    EXPECT_EQ(device->events(), (std::vector<std::string>{"gpadl 1", "open 1", "close"}));
    EXPECT_TRUE(device->ReleaseClose());
  });
  ASSERT_TRUE(h->port().WaitFor(MessageType::kVersionResponse, 5s).ok());
  h->OnServer([&] {
    EXPECT_EQ(device->events(),
              (std::vector<std::string>{"gpadl 1", "open 1", "close", "teardown 1"}));
  });
}

// TL_CONNECT_RESULT exists from 4.1 (messages.h; OpenVMM sends it from Win10Rs3_0): a 4.0
// guest's refused hvsocket connect gets no answer (it got one, a message its version lacks), a
// 4.1 guest's gets STATUS_CONNECTION_REFUSED.
TEST(ServerRulesTest, ARefusedHvSocketConnectIsAnsweredFromVersion4_1) {
  auto h = Harness();
  protocol::TlConnectRequest request{};
  request.host_service_id.bytes[0] = 0x5e;
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10).ok());
  ASSERT_TRUE(h->Send(protocol::EncodeTlConnectRequest(request, false)).ok());
  EXPECT_TRUE(h->port().NothingArrives(MessageType::kTlConnectResult, 100ms));
  ASSERT_TRUE(h->Send(protocol::Encode(protocol::Unload{})).ok());
  ASSERT_TRUE(h->port().WaitFor(MessageType::kUnloadResponse, 5s).ok());
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V4_1).ok());
  ASSERT_TRUE(h->Send(protocol::EncodeTlConnectRequest(request, false)).ok());
  auto result = h->port().WaitFor(MessageType::kTlConnectResult, 5s);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->message.As<protocol::TlConnectResult>()->status,
            protocol::kStatusConnectionRefused);
}

// --- Servicing with operations in flight: they go to the device again after the restore. ---

TEST(ServerRulesTest, ATeardownAndAModifyInFlightAtSaveAreFinishedAfterRestore) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  ASSERT_EQ(*h->CreateGpadl(relid, 2, 1, 0x900), kStatusSuccess);
  h->OnServer([&] {
    device->script().teardown = Answer::kHold;
    device->script().modify = Answer::kHold;
  });
  ASSERT_TRUE(h->SendTeardown(relid, 2).ok());
  ASSERT_TRUE(h->SendModify(relid, 1).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_modifies() == 1; }));
  absl::StatusOr<saved::Server> state = h->SaveAndStop();
  ASSERT_TRUE(state.ok()) << state.status();
  h->DropDevices();
  ASSERT_TRUE(h->Restart(*state).ok());
  ScriptedDevice* restored = h->AddRestoredDevice(TestOffer(1, 1), /*open=*/true);
  ASSERT_TRUE(h->WaitUntil([&] { return restored->restore_result().has_value(); }));
  auto torndown = h->port().WaitFor(MessageType::kGpadlTorndown, 5s);
  ASSERT_TRUE(torndown.ok());
  EXPECT_EQ(torndown->message.As<protocol::GpadlTorndown>()->gpadl, 2u);
  auto modified = h->port().WaitFor(MessageType::kModifyChannelResponse, 5s);
  ASSERT_TRUE(modified.ok());
  h->OnServer([&] {
    ASSERT_TRUE(restored->restore_result()->ok());
    EXPECT_EQ(restored->restore_result()->value().gpadls.size(), 2u);
    EXPECT_EQ(restored->events(), (std::vector<std::string>{"teardown 2", "modify 1"}));
  });
}

TEST(ServerRulesTest, AnOpenInFlightAtSaveIsSentAgainAndAnswered) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1), {.open = Answer::kHold});
  ASSERT_TRUE(h->Connect().ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(*h->CreateGpadl(relid, 1, 4), kStatusSuccess);
  ASSERT_TRUE(h->SendOpen(relid, 1, 0, /*open_id=*/42).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_opens() == 1; }));
  absl::StatusOr<saved::Server> state = h->SaveAndStop();
  ASSERT_TRUE(state.ok());
  h->DropDevices();
  ASSERT_TRUE(h->Restart(*state).ok());
  // A guest signal while the device is away is latched by the restored event port.
  EXPECT_TRUE(h->port().Signal(ChannelConnectionId(relid)).ok());
  ScriptedDevice* restored = h->AddRestoredDevice(TestOffer(1, 1), /*open=*/false);
  auto result = h->port().WaitFor(MessageType::kOpenChannelResult, 5s);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->message.As<protocol::OpenResult>()->open_id, 42u);
  EXPECT_EQ(result->message.As<protocol::OpenResult>()->status, kStatusSuccess) << [&] {
    std::string lines;
    for (const std::string& line : h->TakeLog()) lines += line + "\n";
    return lines;
  }();
  h->OnServer([&] { EXPECT_EQ(restored->events(), (std::vector<std::string>{"open 1"})); });
  ASSERT_TRUE(h->WaitUntil([&] { return restored->last_signal()->raised() == 1; }));
}

// OpenVMM #2879: after a restore, a channel no device takes back within the deadline is
// revoked (the guest is told, and closes, tears down and releases it), and the device, when
// it does come, is offered afresh.
TEST(ServerRulesTest, ARestoredChannelNoDeviceClaimsIsRevokedAndOfferedAfreshLater) {
  ServerOptions options;
  options.restore_claim_deadline = std::chrono::milliseconds(50);
  auto h = Harness(std::move(options));
  h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  absl::StatusOr<saved::Server> state = h->SaveAndStop();
  ASSERT_TRUE(state.ok()) << state.status();
  h->DropDevices();
  ASSERT_TRUE(h->Restart(*state).ok());
  auto rescind = h->port().WaitFor(MessageType::kRescindChannelOffer, 5s);
  ASSERT_TRUE(rescind.ok()) << "the unclaimed channel was not revoked";
  EXPECT_EQ(rescind->message.As<protocol::RescindChannelOffer>()->child_relid, relid);
  // Linux: close, tear the ring down, release the relid.
  ASSERT_TRUE(h->SendClose(relid).ok());
  ASSERT_TRUE(h->SendTeardown(relid, 1).ok());
  auto torndown = h->port().WaitFor(MessageType::kGpadlTorndown, 5s);
  ASSERT_TRUE(torndown.ok());
  ASSERT_TRUE(h->SendRelease(relid).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return h->server().channel_count() == 0; }));
  // The device comes back late: a new offer, not the revoked channel.
  h->AddDevice(TestOffer(1, 1));
  auto offer = h->port().WaitFor(MessageType::kOfferChannel, 5s);
  ASSERT_TRUE(offer.ok()) << "the late device was not offered";
  EXPECT_EQ(h->server().channel_count(), 1u);
}

// Without a deadline the restored channel waits for its device (and the guest sees nothing).
TEST(ServerRulesTest, WithoutADeadlineARestoredChannelWaitsForItsDevice) {
  auto h = Harness();
  h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  absl::StatusOr<saved::Server> state = h->SaveAndStop();
  ASSERT_TRUE(state.ok()) << state.status();
  h->DropDevices();
  ASSERT_TRUE(h->Restart(*state).ok());
  EXPECT_FALSE(h->port().WaitFor(MessageType::kRescindChannelOffer, 200ms).ok());
  ScriptedDevice* restored = h->AddRestoredDevice(TestOffer(1, 1), /*open=*/true);
  ASSERT_TRUE(h->WaitUntil([&] { return restored->restore_result().has_value(); }));
  h->OnServer([&] { EXPECT_TRUE(restored->restore_result()->ok()); });
}

// An open in flight at the save, after which the guest gave up on it and asked to tear its ring
// down: the restored server sends the open again, which fails (the ring is on its way out),
// and the teardown, deferred until the channel stopped, is answered. (It never was: the guest
// waited for GPADL_TORNDOWN for ever.)
TEST(ServerRulesTest, ARingTeardownDeferredByAnOpenInFlightAtSaveIsAnsweredAfterRestore) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1), {.open = Answer::kHold});
  ASSERT_TRUE(h->Connect().ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(*h->CreateGpadl(relid, 1, 4), kStatusSuccess);
  ASSERT_TRUE(h->SendOpen(relid, 1).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_opens() == 1; }));
  ASSERT_TRUE(h->SendTeardown(relid, 1).ok());
  absl::StatusOr<saved::Server> state = h->SaveAndStop();
  ASSERT_TRUE(state.ok()) << state.status();
  h->DropDevices();
  ASSERT_TRUE(h->Restart(*state).ok());
  h->AddRestoredDevice(TestOffer(1, 1), /*open=*/false);
  auto result = h->port().WaitFor(MessageType::kOpenChannelResult, 5s);
  ASSERT_TRUE(result.ok());
  EXPECT_NE(result->message.As<protocol::OpenResult>()->status, kStatusSuccess);
  auto torndown = h->port().WaitFor(MessageType::kGpadlTorndown, 5s);
  ASSERT_TRUE(torndown.ok()) << "the deferred teardown of the ring was never answered";
  EXPECT_EQ(torndown->message.As<protocol::GpadlTorndown>()->gpadl, 1u);
}

// A MODIFYCHANNEL the device had not answered when the guest closed the channel (and then let
// go of the closed offer) is still owed its answer (5.3+). A save at that moment restores (the
// server refused its own saved state: "MODIFYCHANNELs pending on a channel that is not open"),
// and the restored server answers it.
TEST(ServerRulesTest, AModifyPendingOnAClosedChannelAtSaveRestoresAndIsAnswered) {
  for (const bool released : {false, true}) {
    SCOPED_TRACE(released ? "closed, then released by the guest" : "closed");
    auto h = Harness();
    ScriptedDevice* device = h->AddDevice(TestOffer(1, 1), {.modify = Answer::kHold});
    ASSERT_TRUE(h->Connect(protocol::kVersionWin10V5_3).ok());
    const uint32_t relid = OnlyRelid(*h);
    ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
    ASSERT_TRUE(h->SendModify(relid, 1).ok());
    ASSERT_TRUE(h->WaitUntil([&] { return device->held_modifies() == 1; }));
    ASSERT_TRUE(h->SendClose(relid).ok());
    const auto state_is = [&](const char* state) {
      return h->WaitUntil([&] { return h->server().Snapshot().channels.at(0).state == state; });
    };
    ASSERT_TRUE(state_is("closed"));
    if (released) {
      ASSERT_TRUE(h->SendRelease(relid).ok());
      ASSERT_TRUE(state_is("released"));
    }
    absl::StatusOr<saved::Server> saved = h->SaveAndStop();
    ASSERT_TRUE(saved.ok()) << saved.status();
    h->DropDevices();
    absl::Status restored = h->Restart(*saved);
    ASSERT_TRUE(restored.ok()) << restored;
    h->AddRestoredDevice(TestOffer(1, 1), /*open=*/false);
    auto modified = h->port().WaitFor(MessageType::kModifyChannelResponse, 5s);
    ASSERT_TRUE(modified.ok()) << "the pending MODIFYCHANNEL was never answered";
    EXPECT_EQ(modified->message.As<protocol::ModifyChannelResponse>()->child_relid, relid);
  }
}

// The torture's sequence (servicing_torture_test with pauses): CLOSECHANNEL, then the ring's
// GPADL_TEARDOWN (deferred until the close is done), a save while the device still closes,
// perhaps paused; the restored device finishes the close and the guest gets GPADL_TORNDOWN.
TEST(ServerRulesTest, ARingTeardownDeferredByACloseInFlightAtSaveIsAnsweredAfterRestore) {
  for (const int variant : {0, 1, 2, 3}) {
    const bool paused = variant & 1, teardown_after_restart = variant & 2;
    SCOPED_TRACE(std::string(paused ? "paused" : "not paused") +
                 (teardown_after_restart ? ", teardown after the restart" : ""));
    auto h = Harness();
    h->AddDevice(TestOffer(1, 1), {.close = Answer::kHold});
    ASSERT_TRUE(h->Connect(protocol::kVersionWin10V6_0, protocol::kFeaturePauseResume).ok());
    const uint32_t relid = OnlyRelid(*h);
    ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
    ASSERT_TRUE(h->SendClose(relid).ok());
    if (!teardown_after_restart) {
      ASSERT_TRUE(h->SendTeardown(relid, 1).ok());
    }
    if (paused) {
      ASSERT_TRUE(h->Send(protocol::Encode(protocol::Pause{})).ok());
      ASSERT_TRUE(h->port().WaitFor(MessageType::kPauseResponse, 5s).ok());
    }
    absl::StatusOr<saved::Server> state = h->SaveAndStop();
    ASSERT_TRUE(state.ok()) << state.status();
    h->DropDevices();
    ASSERT_TRUE(h->Restart(*state).ok());
    if (teardown_after_restart) {  // While the restored channel waits for its device.
      ASSERT_TRUE(h->SendTeardown(relid, 1).ok());
      h->OnServer([] {});
    }
    h->AddRestoredDevice(TestOffer(1, 1), /*open=*/true);
    if (paused) {
      ASSERT_TRUE(h->Send(protocol::Encode(protocol::Resume{})).ok());
    }
    auto torndown = h->port().WaitFor(MessageType::kGpadlTorndown, 5s);
    ASSERT_TRUE(torndown.ok()) << "the deferred teardown of the ring was never answered";
  }
}

// The ring's teardown reached the device (deferred by the close, then sent once the close was
// done) and the device had not answered when the server was saved: the restored server asks
// the restored device again, and the guest gets its GPADL_TORNDOWN.
TEST(ServerRulesTest, ARingTeardownTheDeviceHadNotAnsweredAtSaveIsAnsweredAfterRestore) {
  for (const bool paused : {false, true}) {
    SCOPED_TRACE(paused ? "paused" : "not paused");
    auto h = Harness();
    h->AddDevice(TestOffer(1, 1), {.teardown = Answer::kHold});
    ASSERT_TRUE(h->Connect(protocol::kVersionWin10V6_0, protocol::kFeaturePauseResume).ok());
    const uint32_t relid = OnlyRelid(*h);
    ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
    ASSERT_TRUE(h->SendClose(relid).ok());
    ASSERT_TRUE(h->SendTeardown(relid, 1).ok());
    if (paused) {
      ASSERT_TRUE(h->Send(protocol::Encode(protocol::Pause{})).ok());
      ASSERT_TRUE(h->port().WaitFor(MessageType::kPauseResponse, 5s).ok());
    }
    for (int i = 0; i < 10; ++i) h->OnServer([] {});  // The close done, the teardown sent.
    absl::StatusOr<saved::Server> state = h->SaveAndStop();
    ASSERT_TRUE(state.ok()) << state.status();
    ASSERT_EQ(state->channels_size(), 1);
    EXPECT_EQ(state->channels(0).state(), 0u);  // Closed.
    ASSERT_EQ(state->channels(0).gpadls_size(), 1);
    EXPECT_EQ(state->channels(0).gpadls(0).state(),
              static_cast<uint32_t>(internal::GpadlState::kTearingDown));
    h->DropDevices();
    ASSERT_TRUE(h->Restart(*state).ok());
    h->AddRestoredDevice(TestOffer(1, 1), /*open=*/false);
    if (paused) {
      ASSERT_TRUE(h->Send(protocol::Encode(protocol::Resume{})).ok());
    }
    auto torndown = h->port().WaitFor(MessageType::kGpadlTorndown, 5s);
    ASSERT_TRUE(torndown.ok()) << "the ring's teardown held by the device was never answered";
  }
}

TEST(ServerRulesTest, SaveWaitsForAResetToFinish) {
  auto h = Harness();
  ScriptedDevice* device = h->AddDevice(TestOffer(1, 1));
  ASSERT_TRUE(h->Connect().ok());
  const uint32_t relid = OnlyRelid(*h);
  ASSERT_EQ(OpenWithRing(*h, relid, 1), kStatusSuccess);
  h->OnServer([&] { device->script().close = Answer::kHold; });
  ASSERT_TRUE(h->Send(protocol::Encode(protocol::Unload{})).ok());
  ASSERT_TRUE(h->WaitUntil([&] { return device->held_closes() == 1; }));
  h->OnServer([&] {
    EXPECT_EQ(h->server().Save().status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(device->ReleaseClose());
  });
  ASSERT_TRUE(h->port().WaitFor(MessageType::kUnloadResponse, 5s).ok());
  h->OnServer([&] { EXPECT_TRUE(h->server().Save().ok()); });
}

}  // namespace
}  // namespace cvmbus::paravisor
