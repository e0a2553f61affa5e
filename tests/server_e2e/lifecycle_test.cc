// The lifecycles a real guest puts the server through, driven by the guest client on the VM
// fixture: hibernation (UNLOAD, reconnect), kexec and crash kernels (INITIATE_CONTACT with no
// UNLOAD), CPU offline (MODIFYCHANNEL), and the races of a slow device (ScriptedDevice holds
// its replies until the test releases them, so every interleaving here is deterministic).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "paravisor/devices/echo_device.h"
#include "paravisor/server/server.h"
#include "paravisor/server/testing/scripted_device.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using protocol::kStatusSuccess;
using protocol::MessageType;
using testing::Answer;
using testing::DeviceScript;
using testing::GuestChannel;
using testing::ScriptedDevice;
using vm::VirtualMachine;

OfferParams Params(uint32_t interface, uint32_t instance, uint16_t subchannel = 0) {
  OfferParams params;
  params.interface_name = "lifecycle";
  params.interface_id.data1 = interface;
  params.instance_id.data1 = instance;
  params.subchannel_index = subchannel;
  return params;
}

class LifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override { vm_ = *VirtualMachine::Create(); }
  void TearDown() override {
    vm_->OnServer([&] {
      scripted_.clear();
      echoes_.clear();
    });
    vm_.reset();
  }
  ScriptedDevice* AddScripted(OfferParams params, DeviceScript script = {}) {
    ScriptedDevice* device = nullptr;
    vm_->OnServer([&] {
      scripted_.push_back(std::make_unique<ScriptedDevice>(vm_->server_loop(), &vm_->bus(),
                                                           std::move(params), script));
      device = scripted_.back().get();
      EXPECT_TRUE(device->Offer().ok());
    });
    return device;
  }
  EchoDevice* AddEcho(OfferParams params) {
    EchoDevice* device = nullptr;
    vm_->OnServer([&] {
      echoes_.push_back(
          std::make_unique<EchoDevice>(vm_->server_loop(), &vm_->bus(), std::move(params)));
      device = echoes_.back().get();
      EXPECT_TRUE(device->Start().ok());
    });
    return device;
  }
  void Connect(uint32_t version = protocol::kVersionWin10V6_0,
               uint32_t features = protocol::kFeatureConfidentialChannels) {
    auto response = vm_->guest().Connect(version, features);
    ASSERT_TRUE(response.ok()) << response.status();
    ASSERT_EQ(response->connection_state, protocol::kConnectionSuccessful);
  }
  std::vector<protocol::OfferChannel> Offers() {
    auto offers = vm_->guest().RequestOffers();
    EXPECT_TRUE(offers.ok()) << offers.status();
    return offers.ok() ? *offers : std::vector<protocol::OfferChannel>{};
  }
  // Polls `condition` on the server's loop.
  bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      bool met = false;
      vm_->OnServer([&] { met = condition(); });
      if (met) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
  }
  void Echo(GuestChannel& channel, uint64_t first, int count) {
    ring::PacketBuffer buffer;
    const std::vector<uint8_t> payload = {1, 2, 3, 4};
    for (uint64_t i = first; i < first + count; ++i) {
      ASSERT_TRUE(channel.Send(payload, i).ok());
      ASSERT_TRUE(channel.Receive(&buffer, 5s).ok()) << i;
      ASSERT_EQ(buffer.packet().transaction_id, i);
    }
  }
  void SendOpen(uint32_t relid, uint32_t gpadl, uint32_t open_id = 0) {
    protocol::OpenChannel open{};
    open.child_relid = relid;
    open.open_id = open_id == 0 ? relid : open_id;
    open.ring_buffer_gpadl = gpadl;
    open.downstream_page_offset = 2;
    ASSERT_TRUE(vm_->guest().SendRaw(protocol::EncodeOpenChannel(open, false)).ok());
  }
  void SendGpadl(uint32_t relid, uint32_t gpadl, uint64_t first_gpn, uint32_t pages = 4) {
    std::vector<uint64_t> words = {uint64_t{pages} * 4096};
    for (uint64_t i = 0; i < pages; ++i) words.push_back(first_gpn + i);
    auto messages = protocol::EncodeGpadl(relid, gpadl, 1, words);
    ASSERT_TRUE(messages.ok());
    for (const auto& message : *messages) ASSERT_TRUE(vm_->guest().SendRaw(message).ok());
  }
  void SendUnload() {
    ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(protocol::Unload{})).ok());
  }
  uint32_t OpenStatus(std::chrono::milliseconds timeout = 5s) {
    auto result = vm_->guest().WaitFor(MessageType::kOpenChannelResult, timeout);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->As<protocol::OpenResult>()->status : 0xdead;
  }

  std::unique_ptr<VirtualMachine> vm_;
  std::vector<std::unique_ptr<ScriptedDevice>> scripted_;
  std::vector<std::unique_ptr<EchoDevice>> echoes_;
};

// Hibernation, as Linux does it: every driver closes its channel and tears its GPADLs down,
// then UNLOAD; after resume INITIATE_CONTACT again, and the re-offers carry the same instance
// GUIDs (Linux matches primaries by them) and the channels work again.
TEST_F(LifecycleTest, HibernationUnloadThenReconnectKeepsInstancesAndChannelsWork) {
  AddEcho(Params(1, 0x11));
  AddEcho(Params(1, 0x22));
  Connect();
  auto before = Offers();
  ASSERT_EQ(before.size(), 2u);
  auto channel = GuestChannel::Open(vm_.get(), {.relid = before[0].child_relid,
                                                .gpadl_id = 1,
                                                .first_gpn = 0x100,
                                                .ring_pages = 2,
                                                .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  Echo(**channel, 1, 10);
  ASSERT_TRUE((*channel)->Close().ok());
  ASSERT_TRUE(vm_->guest().TeardownGpadl(before[0].child_relid, 1).ok());
  ASSERT_TRUE(vm_->guest().Unload().ok());
  channel->reset();

  Connect();
  auto after = Offers();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(
        std::memcmp(after[i].interface_instance.bytes, before[i].interface_instance.bytes, 16), 0);
    EXPECT_EQ(after[i].child_relid, before[i].child_relid);
  }
  // The same GPADL id again: nothing of the old connection is left in the way. (Fresh pages:
  // the old ones are private already.)
  auto again = GuestChannel::Open(vm_.get(), {.relid = after[0].child_relid,
                                              .gpadl_id = 1,
                                              .first_gpn = 0x200,
                                              .ring_pages = 2,
                                              .confidential = true});
  ASSERT_TRUE(again.ok()) << again.status();
  Echo(**again, 100, 10);
  ASSERT_TRUE((*again)->Close().ok());
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().stats().guest_errors, 0u); });
}

// UNLOAD while channels are open and GPADLs exist (module unload, a guest that skipped its
// drivers' cleanup): UNLOAD_RESPONSE comes only after the device closed and every GPADL was
// torn down, because the guest frees those pages as soon as it sees the response.
TEST_F(LifecycleTest, UnloadResponseWaitsForEveryCloseAndTeardown) {
  ScriptedDevice* device = AddScripted(Params(1, 1));
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 2, {0x200}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  vm_->OnServer([&] {
    device->script().close = Answer::kHold;
    device->script().teardown = Answer::kHold;
  });
  SendUnload();
  ASSERT_TRUE(WaitUntil([&] { return device->held_closes() == 1; }));
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kUnloadResponse, 100ms));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseClose()); });
  ASSERT_TRUE(WaitUntil([&] { return device->held_teardowns() == 2; })) << [&] {
    std::string events;
    vm_->OnServer([&] { events = device->EventsText(); });
    return events;
  }();
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kUnloadResponse, 50ms));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseTeardown()); });
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kUnloadResponse, 50ms));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseTeardown()); });
  EXPECT_TRUE(vm_->guest().WaitFor(MessageType::kUnloadResponse, 5s).ok());
  vm_->OnServer([&] {
    // Close before the teardowns: the device stops using the ring before it loses its GPADL.
    const std::vector<std::string> expected = {"gpadl 1", "gpadl 2",    "open 1",
                                               "close",   "teardown 1", "teardown 2"};
    std::vector<std::string> sorted = device->events();
    std::sort(sorted.begin() + 4, sorted.end());
    EXPECT_EQ(sorted, expected) << device->EventsText();
    // The device's guest -> host signal is no longer held by anyone but the device.
    EXPECT_EQ(device->last_signal().use_count(), 1);
  });
  // No GPADL_TORNDOWN for teardowns the guest never asked for.
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kGpadlTorndown, 50ms));
}

// kexec (and a crash kernel): the new kernel sends INITIATE_CONTACT with no UNLOAD while the
// old kernel's channels are open and its GPADLs exist. The server resets every channel (the
// device sees the close and the teardowns), then answers the new contact; the new kernel gets
// the same offers and can reuse GPADL ids and pages.
TEST_F(LifecycleTest, KexecInitiateContactWithoutUnloadResetsEveryChannelThenConnects) {
  EchoDevice* echo = AddEcho(Params(1, 1));
  ScriptedDevice* scripted = AddScripted(Params(2, 2));
  Connect(protocol::kVersionWin10V5_3, 0);  // The old kernel: Linux 6.1's first choice.
  auto offers = Offers();
  ASSERT_EQ(offers.size(), 2u);
  const uint32_t echo_relid = offers[0].child_relid;
  const uint32_t scripted_relid = offers[1].child_relid;
  auto channel = GuestChannel::Open(
      vm_.get(), {.relid = echo_relid, .gpadl_id = 1, .first_gpn = 0x100, .ring_pages = 2});
  ASSERT_TRUE(channel.ok()) << channel.status();
  Echo(**channel, 1, 5);
  ASSERT_EQ(*vm_->guest().CreateGpadl(echo_relid, 2, {0x300, 0x301}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().CreateGpadl(scripted_relid, 3, {0x400, 0x401, 0x402, 0x403}),
            kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(scripted_relid, 3, 2), kStatusSuccess);
  vm_->OnServer([&] { scripted->script().close = Answer::kHold; });

  // The kexec'd kernel: a new contact, no UNLOAD. It is answered only after the reset.
  vm_->guest().DiscardInbox();
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = protocol::kVersionWin10V6_0;
  contact.interrupt_page_or_target.target.message_sint = protocol::kMessageSint;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::EncodeInitiateContact(contact)).ok());
  ASSERT_TRUE(WaitUntil([&] { return scripted->held_closes() == 1; }));
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kVersionResponse, 100ms));
  vm_->OnServer([&] { EXPECT_TRUE(scripted->ReleaseClose()); });
  auto response = vm_->guest().WaitFor(MessageType::kVersionResponse, 5s);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(response->As<protocol::VersionResponse>()->version_supported);
  EXPECT_EQ(response->As<protocol::VersionResponse>()->connection_state,
            protocol::kConnectionSuccessful);
  vm_->OnServer([&] {
    EXPECT_EQ(echo->stats().closes, 1u);
    EXPECT_EQ(scripted->events(),
              (std::vector<std::string>{"gpadl 3", "open 3", "close", "teardown 3"}));
  });
  channel->reset();

  // The new kernel: the client's Connect bookkeeping, then the same offers and ids.
  Connect();
  auto again = Offers();
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].child_relid, echo_relid);
  auto reopened = GuestChannel::Open(vm_.get(), {.relid = echo_relid,
                                                 .gpadl_id = 1,
                                                 .first_gpn = 0x500,
                                                 .ring_pages = 2,
                                                 .confidential = true});
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  Echo(**reopened, 50, 5);
  ASSERT_EQ(*vm_->guest().CreateGpadl(echo_relid, 2, {0x300, 0x301}), kStatusSuccess);
  EXPECT_NE(*vm_->guest().OpenChannel(scripted_relid, 3, 2), kStatusSuccess)
      << "GPADL 3 was torn down in the reset: the open must fail";
}

// A crashed kernel never sends UNLOAD either; a crash kernel that connects at an older
// version (Linux 6.1 on a host that answers 5.2) finds the old channels reset.
TEST_F(LifecycleTest, CrashWithoutUnloadThenReconnectAtAnotherVersion) {
  EchoDevice* echo = AddEcho(Params(1, 1));
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  auto channel = GuestChannel::Open(
      vm_.get(),
      {.relid = relid, .gpadl_id = 7, .first_gpn = 0x100, .ring_pages = 2, .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  Echo(**channel, 1, 3);
  channel->reset();  // The crash: the kernel is gone without a word.
  vm_->guest().DiscardInbox();
  Connect(protocol::kVersionWin10V5_2, 0);
  vm_->OnServer([&] {
    EXPECT_EQ(vm_->server().version(), protocol::kVersionWin10V5_2);
    EXPECT_EQ(echo->stats().closes, 1u);
  });
  const auto offers = Offers();
  ASSERT_EQ(offers.size(), 1u);
  auto again = GuestChannel::Open(
      vm_.get(), {.relid = relid, .gpadl_id = 7, .first_gpn = 0x200, .ring_pages = 2});
  ASSERT_TRUE(again.ok()) << again.status();
  Echo(**again, 10, 3);
}

// CPU offline: Linux moves each channel's interrupts off the CPU with MODIFYCHANNEL and (from
// 5.3) waits for MODIFYCHANNEL_RESPONSE with no timeout: every request gets one, errors
// included (unknown channel, channel not open, interrupts disabled, device gone).
TEST_F(LifecycleTest, ModifyChannelOnCpuOfflineIsAlwaysAnswered) {
  ScriptedDevice* device = AddScripted(Params(1, 1));
  AddScripted(Params(1, 2));
  Connect(protocol::kVersionWin10V5_3, 0);
  const auto offers = Offers();
  const uint32_t relid = offers[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  auto moved = vm_->guest().ModifyChannel(relid, 0);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, kStatusSuccess);
  vm_->OnServer([&] { device->script().modify_status = 5; });
  EXPECT_EQ(*vm_->guest().ModifyChannel(relid, 0), 5u);  // The device's status, passed on.
  // The error paths, each answered with a failure.
  auto unknown = vm_->guest().ModifyChannel(999, 0);
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_NE(*unknown, kStatusSuccess);
  auto closed = vm_->guest().ModifyChannel(offers[1].child_relid, 0);
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_NE(*closed, kStatusSuccess);
  auto disabled = vm_->guest().ModifyChannel(relid, protocol::kTargetVpDisableInterrupt);
  ASSERT_TRUE(disabled.ok()) << disabled.status();
  EXPECT_NE(*disabled, kStatusSuccess);
  vm_->OnServer([&] { device->script().modify = Answer::kDrop; });
  auto dropped = vm_->guest().ModifyChannel(relid, 0);
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_NE(*dropped, kStatusSuccess);
}

// Before 5.3 there is no MODIFYCHANNEL_RESPONSE at all.
TEST_F(LifecycleTest, ModifyChannelBefore53GetsNoResponse) {
  AddScripted(Params(1, 1));
  Connect(protocol::kVersionWin10V5_2, 0);
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  protocol::ModifyChannel modify{};
  modify.child_relid = relid;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(modify)).ok());
  modify.child_relid = 999;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(modify)).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kModifyChannelResponse, 100ms));
}

// An open raced by a revoke: the device revokes while its open reply is outstanding. The
// guest gets an answer and the rescind; the late reply (a success) must not open anything,
// and the server must not keep the device's signal.
TEST_F(LifecycleTest, OpenRacedByRevokeNeverOpensAndDropsTheLateReply) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.open = Answer::kHold});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  SendOpen(relid, 1);
  ASSERT_TRUE(WaitUntil([&] { return device->held_opens() == 1; }));
  vm_->OnServer([&] { ASSERT_TRUE(device->Revoke().ok()); });
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 5s).ok());
  EXPECT_NE(OpenStatus(), kStatusSuccess);
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseOpen(true)); });
  ASSERT_TRUE(WaitUntil([&] { return device->last_signal().use_count() == 1; }));
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kOpenChannelResult, 100ms));
  // GPADLs of a revoked channel still tear down (answered at once), then the relid goes.
  EXPECT_TRUE(vm_->guest().TeardownGpadl(relid, 1).ok());
  ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().channel_count(), 0u); });
}

// The other order: a device that revokes the moment it sees the open, then accepts it.
TEST_F(LifecycleTest, DeviceThatRevokesInsideItsOpenIsNotLeftOpen) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.revoke_on_open = true});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  SendOpen(relid, 1);
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 5s).ok());
  // Whatever the result says, the server holds nothing of the device afterwards.
  (void)vm_->guest().WaitFor(MessageType::kOpenChannelResult, 1s);
  ASSERT_TRUE(WaitUntil([&] { return device->revokes_completed() == 1; }));
  vm_->OnServer([&] { EXPECT_EQ(device->last_signal().use_count(), 1); });
}

// UNLOAD raced by an open: the open's reply arrives after the UNLOAD. The server waits for it,
// closes the channel it opened, and only then answers UNLOAD; the late reply goes nowhere, so
// after reconnecting the channel opens normally.
TEST_F(LifecycleTest, UnloadRacedByOpenWaitsForTheReplyAndClosesWhatItOpened) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.open = Answer::kHold});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  SendOpen(relid, 1);
  ASSERT_TRUE(WaitUntil([&] { return device->held_opens() == 1; }));
  SendUnload();
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kUnloadResponse, 100ms));
  vm_->OnServer([&] {
    device->script().open = Answer::kNow;
    EXPECT_TRUE(device->ReleaseOpen(true));
  });
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kUnloadResponse, 5s).ok());
  vm_->OnServer([&] {
    EXPECT_EQ(device->events(),
              (std::vector<std::string>{"gpadl 1", "open 1", "close", "teardown 1"}));
    EXPECT_EQ(device->last_signal().use_count(), 1);
  });
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kOpenChannelResult, 50ms));
  Connect();
  ASSERT_EQ(Offers().size(), 1u);
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  EXPECT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
}

// UNLOAD raced by GPADL creation: the device's answer to a GPADL arrives after UNLOAD. The
// server waits, tears the GPADL down if the device took it, answers UNLOAD, and sends no
// GPADL_CREATED to anyone; the id is free on the next connection.
TEST_F(LifecycleTest, UnloadRacedByGpadlCreationTearsTheLateGpadlDown) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.gpadl = Answer::kHold});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  SendGpadl(relid, 5, 0x100);
  ASSERT_TRUE(WaitUntil([&] { return device->held_gpadls() == 1; }));
  // And a GPADL still being assembled (header only; its body never comes).
  std::vector<uint64_t> words = {uint64_t{40} * 4096};
  for (uint64_t i = 0; i < 40; ++i) words.push_back(0x800 + i);
  auto messages = protocol::EncodeGpadl(relid, 6, 1, words);
  ASSERT_TRUE(messages.ok());
  ASSERT_TRUE(vm_->guest().SendRaw((*messages)[0]).ok());
  SendUnload();
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kUnloadResponse, 100ms));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseGpadl(true)); });
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kUnloadResponse, 5s).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kGpadlCreated, 50ms));
  vm_->OnServer([&] {
    EXPECT_EQ(device->events(), (std::vector<std::string>{"gpadl 5", "teardown 5"}));
  });
  // The unfinished GPADL's body after the unload is refused (logged), not resurrected.
  ASSERT_TRUE(vm_->guest().SendRaw((*messages)[1]).ok());
  Connect();
  ASSERT_EQ(Offers().size(), 1u);
  vm_->OnServer([&] { device->script().gpadl = Answer::kNow; });
  EXPECT_EQ(*vm_->guest().CreateGpadl(relid, 5, {0x100}), kStatusSuccess);
  EXPECT_EQ(*vm_->guest().CreateGpadl(relid, 6, {0x200}), kStatusSuccess);
}

// Stale replies after a reconnect: a GPADL answer that comes back after the connection it
// belonged to is gone must not create a GPADL on the new connection, and a teardown answer
// must not erase a new GPADL that reused the id.
TEST_F(LifecycleTest, StaleGpadlAndTeardownRepliesNeverTouchTheNewConnection) {
  ScriptedDevice* device = AddScripted(Params(1, 1));
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 9, {0x100}), kStatusSuccess);
  vm_->OnServer([&] { device->script().teardown = Answer::kHold; });
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = 9;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(teardown)).ok());
  ASSERT_TRUE(WaitUntil([&] { return device->held_teardowns() == 1; }));
  // A kexec right now: the reset waits for the teardown, so the id cannot be reused early.
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = protocol::kVersionWin10V6_0;
  contact.interrupt_page_or_target.target.message_sint = protocol::kMessageSint;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::EncodeInitiateContact(contact)).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kVersionResponse, 100ms));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseTeardown()); });
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kVersionResponse, 5s).ok());
  vm_->guest().DiscardInbox();
  Connect();
  ASSERT_EQ(Offers().size(), 1u);
  vm_->OnServer([&] { device->script().teardown = Answer::kNow; });
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 9, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kGpadlTorndown, 50ms));
  EXPECT_EQ(*vm_->guest().OpenChannel(relid, 9, 2), kStatusSuccess);
}

// Relid reuse with replies in flight: channel A is revoked while its open reply is held, the
// guest releases the relid, and channel B gets it. A's late reply must land nowhere.
TEST_F(LifecycleTest, RelidReuseWithAReplyInFlightLeavesTheNewChannelAlone) {
  ScriptedDevice* first = AddScripted(Params(1, 1), {.open = Answer::kHold});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  SendOpen(relid, 1);
  ASSERT_TRUE(WaitUntil([&] { return first->held_opens() == 1; }));
  vm_->OnServer([&] { ASSERT_TRUE(first->Revoke().ok()); });
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 5s).ok());
  (void)vm_->guest().WaitFor(MessageType::kOpenChannelResult, 1s);
  ASSERT_TRUE(vm_->guest().TeardownGpadl(relid, 1).ok());
  ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return vm_->server().channel_count() == 0; }));
  ScriptedDevice* second = AddScripted(Params(2, 2), {.open = Answer::kHold});
  auto offer = vm_->guest().WaitFor(MessageType::kOfferChannel, 5s);
  ASSERT_TRUE(offer.ok());
  ASSERT_EQ(offer->As<protocol::OfferChannel>()->child_relid, relid);  // Reused.
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 2, {0x200, 0x201, 0x202, 0x203}), kStatusSuccess);
  SendOpen(relid, 2, /*open_id=*/77);
  ASSERT_TRUE(WaitUntil([&] { return second->held_opens() == 1; }));
  // A's reply (a success) arrives now: nothing may happen.
  vm_->OnServer([&] { EXPECT_TRUE(first->ReleaseOpen(true)); });
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kOpenChannelResult, 100ms));
  vm_->OnServer([&] { EXPECT_EQ(first->last_signal().use_count(), 1); });
  vm_->OnServer([&] { EXPECT_TRUE(second->ReleaseOpen(true)); });
  auto result = vm_->guest().WaitFor(MessageType::kOpenChannelResult, 5s);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->As<protocol::OpenResult>()->open_id, 77u);
  EXPECT_EQ(result->As<protocol::OpenResult>()->status, kStatusSuccess);
  // B is really open: a guest signal reaches B's device, not A's.
  ASSERT_TRUE(vm_->guest().SignalHost(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return second->last_signal()->raised() == 1; }));
  vm_->OnServer([&] { EXPECT_EQ(first->last_signal()->raised(), 0u); });
}

// Rapid offer/rescind (OpenVMM #4081): devices come and go while the guest is connected. Every
// rescind names a channel that was offered, a relid is reused only after RELID_RELEASED, and
// nothing is left over.
TEST_F(LifecycleTest, RapidOfferAndRescindReusesRelidsOnlyAfterRelease) {
  Connect();
  ASSERT_TRUE(Offers().empty());
  std::set<uint32_t> live;  // Offered and not yet released by the guest.
  for (uint32_t round = 0; round < 40; ++round) {
    ScriptedDevice* device = AddScripted(Params(7, 100 + round));
    auto offer = vm_->guest().WaitFor(MessageType::kOfferChannel, 5s);
    ASSERT_TRUE(offer.ok()) << round;
    const uint32_t relid = offer->As<protocol::OfferChannel>()->child_relid;
    EXPECT_TRUE(live.insert(relid).second) << "relid " << relid << " reused before release";
    vm_->OnServer([&] { ASSERT_TRUE(device->Revoke().ok()); });
    auto rescind = vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 5s);
    ASSERT_TRUE(rescind.ok()) << round;
    EXPECT_EQ(rescind->As<protocol::RescindChannelOffer>()->child_relid, relid);
    if (round % 3 != 0) {  // Some are released at once, the others at the end.
      ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
      live.erase(relid);
    }
  }
  for (uint32_t relid : live) ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return vm_->server().channel_count() == 0; }));
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().stats().guest_errors, 0u); });
}

// Offers and rescinds before REQUESTOFFERS never reach the guest: a revoked channel the guest
// never saw is released at once. This also revokes a primary whose subchannels were never
// offered, which once erased map nodes in the middle of iterating the map.
TEST_F(LifecycleTest, RevokingAPrimaryWithUnofferedSubchannels) {
  ScriptedDevice* primary = AddScripted(Params(1, 1, 0));
  for (uint16_t index = 1; index <= 6; ++index) AddScripted(Params(1, 1, index));
  ScriptedDevice* other = AddScripted(Params(2, 2, 0));
  vm_->OnServer([&] { ASSERT_TRUE(primary->Revoke().ok()); });
  ASSERT_TRUE(WaitUntil([&] { return primary->revokes_completed() == 1; }));
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().channel_count(), 1u); });
  Connect();
  const auto offers = Offers();
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_EQ(offers[0].interface_type.bytes[0], 2);
  (void)other;
}

// RELID_RELEASED for an offer that was never rescinded: Linux sends it when it could not
// register the offer. The offer is withdrawn (no rescind, not offered again, its relid kept
// for it) until the next connection, which is offered it again.
TEST_F(LifecycleTest, RelidReleasedForAnOfferTheGuestCouldNotTake) {
  AddScripted(Params(1, 1));
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_TRUE(vm_->guest().ReleaseRelid(relid).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kRescindChannelOffer, 50ms));
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  AddScripted(Params(2, 2));  // A new offer does not get the withdrawn relid.
  auto fresh = vm_->guest().WaitFor(MessageType::kOfferChannel, 5s);
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->As<protocol::OfferChannel>()->child_relid, relid);
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().stats().guest_errors, 1u); });  // The open.
  ASSERT_TRUE(vm_->guest().Unload().ok());
  Connect();
  const auto again = Offers();
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].child_relid, relid);
}

// hvsocket: when the guest closes the socket's channel it waits for the host to rescind it.
TEST_F(LifecycleTest, HvSocketChannelIsRescindedWhenTheGuestClosesIt) {
  OfferParams params = Params(0x5e5, 0xe1);
  params.channel_type = HvSocketChannel{.is_connect = false};
  ScriptedDevice* device = AddScripted(params);
  AddScripted(Params(1, 1));  // An ordinary channel, which stays.
  Connect();
  const auto offers = Offers();
  ASSERT_EQ(offers.size(), 2u);
  const auto& socket = offers[0].interface_type.bytes[0] == 0xe5 ? offers[0] : offers[1];
  const auto& plain = offers[0].interface_type.bytes[0] == 0xe5 ? offers[1] : offers[0];
  ASSERT_NE(socket.channel_flags & protocol::kOfferTlnpiProvider, 0);
  ASSERT_EQ(*vm_->guest().CreateGpadl(socket.child_relid, 1, {0x100, 0x101, 0x102, 0x103}),
            kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(socket.child_relid, 1, 2), kStatusSuccess);
  ASSERT_TRUE(vm_->guest().CloseChannel(socket.child_relid).ok());
  auto rescind = vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 5s);
  ASSERT_TRUE(rescind.ok());
  EXPECT_EQ(rescind->As<protocol::RescindChannelOffer>()->child_relid, socket.child_relid);
  ASSERT_TRUE(vm_->guest().TeardownGpadl(socket.child_relid, 1).ok());
  ASSERT_TRUE(vm_->guest().ReleaseRelid(socket.child_relid).ok());
  // The device learns its channel is gone: the server dropped its request sender.
  ASSERT_TRUE(WaitUntil([&] { return device->requests_closed(); }));
  // The ordinary channel closes without a rescind.
  ASSERT_EQ(*vm_->guest().CreateGpadl(plain.child_relid, 2, {0x200, 0x201, 0x202, 0x203}),
            kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(plain.child_relid, 2, 2), kStatusSuccess);
  ASSERT_TRUE(vm_->guest().CloseChannel(plain.child_relid).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kRescindChannelOffer, 100ms));
}

// A guest signal between OPENCHANNEL and the device's answer is latched and delivered once the
// device's target is known (OpenVMM #1850).
TEST_F(LifecycleTest, AGuestSignalBeforeTheDeviceAnswersIsNotLost) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.open = Answer::kHold});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  SendOpen(relid, 1);
  ASSERT_TRUE(WaitUntil([&] { return device->held_opens() == 1; }));
  EXPECT_TRUE(vm_->guest().SignalHost(relid).ok());  // The event port exists already.
  EXPECT_TRUE(vm_->guest().SignalHost(relid).ok());
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseOpen(true)); });
  EXPECT_EQ(OpenStatus(), kStatusSuccess);
  ASSERT_TRUE(WaitUntil([&] { return device->last_signal()->raised() >= 1; }));
  // Latched signals coalesce into one; later ones go straight to the device.
  vm_->OnServer([&] { EXPECT_EQ(device->last_signal()->raised(), 1u); });
  EXPECT_TRUE(vm_->guest().SignalHost(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return device->last_signal()->raised() == 2; }));
  // After close the server holds nothing of the device's signal and the port is gone.
  ASSERT_TRUE(vm_->guest().CloseChannel(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return device->last_signal().use_count() == 1; }));
  EXPECT_FALSE(vm_->guest().SignalHost(relid).ok());
}

// Signals own their descriptors: a device that hands out an owned eventfd signal and drops its
// own reference after the close finds the fd closed, because the server (and through it the
// SynIC's event port) held nothing of it any more. The guest's doorbells go nowhere.
TEST_F(LifecycleTest, AfterCloseNothingButTheDeviceHoldsItsEventFd) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.eventfd_signal = true});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  ASSERT_TRUE(vm_->guest().SignalHost(relid).ok());
  int fd = -1;
  vm_->OnServer([&] { fd = device->last_eventfd_signal()->fd(); });
  uint64_t count = 0;
  ASSERT_EQ(read(fd, &count, sizeof(count)), static_cast<ssize_t>(sizeof(count)));
  EXPECT_EQ(count, 1u);
  ASSERT_TRUE(vm_->guest().CloseChannel(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return device->events().back() == "close"; }));
  std::weak_ptr<hw::OwnedEventFdSignal> weak;
  vm_->OnServer([&] {
    weak = device->last_eventfd_signal();
    device->last_eventfd_signal().reset();
  });
  EXPECT_TRUE(weak.expired());
  EXPECT_FALSE(vm_->guest().SignalHost(relid).ok());
}

// A device whose open is refused gets no event port left behind, and the guest its failure.
TEST_F(LifecycleTest, ARefusedOpenLeavesNoEventPort) {
  ScriptedDevice* device = AddScripted(Params(1, 1), {.accept_open = false});
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  EXPECT_FALSE(vm_->guest().SignalHost(relid).ok());
  vm_->OnServer([&] { device->script().accept_open = true; });
  EXPECT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
}

// Linux closes and tears the ring down at once, before the device has finished closing; a
// guest may open again with another ring meanwhile. The ring's teardown waits for the close
// (the device may still be using the ring; a saved closing channel needs its ring), and so
// does the reopen; then both go to the device, in order.
TEST_F(LifecycleTest, ReopenWhileTheDeviceIsStillClosing) {
  ScriptedDevice* device = AddScripted(Params(1, 1));
  Connect();
  const uint32_t relid = Offers()[0].child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  vm_->OnServer([&] { device->script().close = Answer::kHold; });
  ASSERT_TRUE(vm_->guest().CloseChannel(relid).ok());
  ASSERT_TRUE(WaitUntil([&] { return device->held_closes() == 1; }));
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = 1;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(teardown)).ok());
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kGpadlTorndown, 100ms));
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 2, {0x200, 0x201, 0x202, 0x203}), kStatusSuccess);
  SendOpen(relid, 2);
  EXPECT_TRUE(vm_->guest().NothingArrives(MessageType::kOpenChannelResult, 100ms));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseClose()); });
  EXPECT_TRUE(vm_->guest().WaitFor(MessageType::kGpadlTorndown, 5s).ok());
  EXPECT_EQ(OpenStatus(), kStatusSuccess);
  vm_->OnServer([&] {
    EXPECT_EQ(device->events(), (std::vector<std::string>{"gpadl 1", "open 1", "close", "gpadl 2",
                                                          "teardown 1", "open 2"}));
  });
}

}  // namespace
}  // namespace cvmbus::paravisor
