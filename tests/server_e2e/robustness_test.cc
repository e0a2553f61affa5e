// The server against a guest and devices that do what they should not: requests Linux waits
// on must be answered on every error path, guest-driven growth is bounded, an exception never
// escapes a task, and Restore refuses a saved state that does not hold together.
#include <gtest/gtest.h>

#include <set>
#include <stdexcept>

#include "paravisor/server/server.h"
#include "paravisor/server/testing/scripted_device.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using protocol::kStatusSuccess;
using protocol::MessageType;
using testing::Answer;
using testing::DeviceScript;
using testing::ScriptedDevice;
using vm::VirtualMachine;

constexpr uint32_t kPerChannel = ServerLimits{}.gpadls_per_channel;

OfferParams Params(uint32_t interface, uint32_t instance, uint16_t subchannel = 0) {
  OfferParams params;
  params.interface_name = "robustness";
  params.interface_id.data1 = interface;
  params.instance_id.data1 = instance;
  params.subchannel_index = subchannel;
  return params;
}

class RobustnessTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }
  void Start(vm::VmOptions options) {
    if (vm_ != nullptr) TearDown();
    vm_ = *VirtualMachine::Create(options);
  }
  void TearDown() override {
    if (vm_ == nullptr) return;
    vm_->OnServer([&] { devices_.clear(); });
    vm_.reset();
  }
  ScriptedDevice* Add(OfferParams params, DeviceScript script = {}) {
    ScriptedDevice* device = nullptr;
    vm_->OnServer([&] {
      devices_.push_back(std::make_unique<ScriptedDevice>(vm_->server_loop(), &vm_->bus(),
                                                          std::move(params), script));
      device = devices_.back().get();
      EXPECT_TRUE(device->Offer().ok());
    });
    return device;
  }
  ScriptedDevice* AddRestored(OfferParams params, bool open, DeviceScript script = {}) {
    ScriptedDevice* device = nullptr;
    vm_->OnServer([&] {
      devices_.push_back(std::make_unique<ScriptedDevice>(vm_->server_loop(), &vm_->bus(),
                                                          std::move(params), script));
      device = devices_.back().get();
      EXPECT_TRUE(device->OfferRestored(open).ok());
    });
    return device;
  }
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
  void Connect() { ASSERT_TRUE(vm_->guest().Connect(protocol::kVersionWin10V6_0, 0).ok()); }
  uint32_t FirstRelid() {
    auto offers = vm_->guest().RequestOffers();
    EXPECT_TRUE(offers.ok() && !offers->empty());
    return offers.ok() && !offers->empty() ? (*offers)[0].child_relid : 0;
  }
  void SendTeardown(uint32_t relid, uint32_t gpadl) {
    protocol::GpadlTeardown teardown{};
    teardown.child_relid = relid;
    teardown.gpadl = gpadl;
    ASSERT_TRUE(vm_->guest().SendRaw(protocol::Encode(teardown)).ok());
  }
  // The next GPADL_TORNDOWN's id, or 0 if none arrives.
  uint32_t Torndown(std::chrono::milliseconds timeout = 5s) {
    auto torndown = vm_->guest().WaitFor(MessageType::kGpadlTorndown, timeout);
    return torndown.ok() ? torndown->As<protocol::GpadlTorndown>()->gpadl : 0;
  }

  std::unique_ptr<VirtualMachine> vm_;
  std::vector<std::unique_ptr<ScriptedDevice>> devices_;
};

// Linux waits for GPADL_TORNDOWN with no timeout: every GPADL_TEARDOWN gets one.
TEST_F(RobustnessTest, EveryGpadlTeardownIsAnswered) {
  ScriptedDevice* device = Add(Params(1, 1));
  Connect();
  const uint32_t relid = FirstRelid();
  // Unknown channel, unknown GPADL: nothing to tear down, answered at once.
  SendTeardown(999, 3);
  EXPECT_EQ(Torndown(), 3u);
  SendTeardown(relid, 4);
  EXPECT_EQ(Torndown(), 4u);
  // A GPADL still being assembled: dropped and answered.
  std::vector<uint64_t> words = {uint64_t{40} * 4096};
  for (uint64_t i = 0; i < 40; ++i) words.push_back(0x800 + i);
  auto messages = protocol::EncodeGpadl(relid, 5, 1, words);
  ASSERT_TRUE(messages.ok());
  ASSERT_TRUE(vm_->guest().SendRaw((*messages)[0]).ok());
  SendTeardown(relid, 5);
  EXPECT_EQ(Torndown(), 5u);
  auto refused = vm_->guest().WaitFor(MessageType::kGpadlCreated, 5s);  // Its header's answer.
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->As<protocol::GpadlCreated>()->creation_status, kStatusSuccess);
  // The ring of an open channel: answered once the channel is closed and the device let go.
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 6, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 6, 2), kStatusSuccess);
  SendTeardown(relid, 6);
  EXPECT_EQ(Torndown(100ms), 0u);
  ASSERT_TRUE(vm_->guest().CloseChannel(relid).ok());
  EXPECT_EQ(Torndown(), 6u);
  // A teardown while the device still holds its answer to the GPADL.
  vm_->OnServer([&] { device->script().gpadl = Answer::kHold; });
  std::vector<uint64_t> small = {4096, 0x300};
  auto gpadl = protocol::EncodeGpadl(relid, 7, 1, small);
  ASSERT_TRUE(vm_->guest().SendRaw((*gpadl)[0]).ok());
  ASSERT_TRUE(WaitUntil([&] { return device->held_gpadls() == 1; }));
  SendTeardown(relid, 7);
  EXPECT_EQ(Torndown(100ms), 0u);
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseGpadl(true)); });
  auto created = vm_->guest().WaitFor(MessageType::kGpadlCreated, 5s);
  ASSERT_TRUE(created.ok());
  EXPECT_EQ(Torndown(), 7u);
  // Twice for one GPADL: each request gets its answer.
  vm_->OnServer([&] { device->script().gpadl = Answer::kNow; });
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 8, {0x400}), kStatusSuccess);
  vm_->OnServer([&] { device->script().teardown = Answer::kHold; });
  SendTeardown(relid, 8);
  SendTeardown(relid, 8);
  ASSERT_TRUE(WaitUntil([&] { return device->held_teardowns() == 1; }));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseTeardown()); });
  EXPECT_EQ(Torndown(), 8u);
  EXPECT_EQ(Torndown(), 8u);
  // A device that drops the request: the GPADL is gone for it, answered.
  vm_->OnServer([&] { device->script().teardown = Answer::kDrop; });
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 9, {0x500}), kStatusSuccess);
  SendTeardown(relid, 9);
  EXPECT_EQ(Torndown(), 9u);
  // A device that is gone altogether.
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 10, {0x600}), kStatusSuccess);
  vm_->OnServer([&] { device->DropOffer(); });
  ASSERT_TRUE(vm_->guest().WaitFor(MessageType::kRescindChannelOffer, 5s).ok());
  SendTeardown(relid, 10);
  EXPECT_EQ(Torndown(), 10u);
}

// OPENCHANNEL and GPADL_HEADER get an answer on every path too.
TEST_F(RobustnessTest, EveryOpenAndGpadlIsAnswered) {
  ScriptedDevice* device = Add(Params(1, 1), {.open = Answer::kDrop, .gpadl = Answer::kDrop});
  Connect();
  const uint32_t relid = FirstRelid();
  EXPECT_NE(*vm_->guest().CreateGpadl(relid, 1, {0x100}), kStatusSuccess);  // Dropped.
  vm_->OnServer([&] { device->script().gpadl = Answer::kNow; });
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 2, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 2, 2), kStatusSuccess);  // Dropped.
  vm_->OnServer([&] { device->script().open = Answer::kNow; });
  EXPECT_EQ(*vm_->guest().OpenChannel(relid, 2, 2), kStatusSuccess);
  EXPECT_NE(*vm_->guest().OpenChannel(relid, 2, 2), kStatusSuccess);  // Already open.
}

// A guest cannot make the server hold an unbounded number of GPADLs for one channel: past the
// limit, GPADL_HEADER is refused with a failure status (never silently).
TEST_F(RobustnessTest, GpadlsPerChannelAreBounded) {
  Add(Params(1, 1));
  Connect();
  const uint32_t relid = FirstRelid();
  uint32_t id = 1;
  for (; id <= kPerChannel; ++id) {
    ASSERT_EQ(*vm_->guest().CreateGpadl(relid, id, {0x100 + id}), kStatusSuccess) << id;
  }
  EXPECT_NE(*vm_->guest().CreateGpadl(relid, id, {0x100 + id}), kStatusSuccess);
  // Tearing one down makes room again.
  ASSERT_TRUE(vm_->guest().TeardownGpadl(relid, 1).ok());
  EXPECT_EQ(*vm_->guest().CreateGpadl(relid, id, {0x100 + id}), kStatusSuccess);
}

// An exception from a device's signal (or any callback) is caught: the server logs it and
// carries on, it does not end the process.
TEST_F(RobustnessTest, AThrowingDeviceSignalDoesNotEscapeRestore) {
  Add(Params(1, 1));
  Connect();
  const uint32_t relid = FirstRelid();
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
  ASSERT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
  auto state = vm_->SaveAndStopServer();
  ASSERT_TRUE(state.ok()) << state.status();
  vm_->OnServer([&] { devices_.clear(); });
  ASSERT_TRUE(vm_->StartRestoredServer(*state).ok());
  // Restore signals both directions once: this device's signal throws.
  ScriptedDevice* device = AddRestored(Params(1, 1), /*open=*/true, {.throwing_signal = true});
  ASSERT_TRUE(WaitUntil([&] { return device->restore_result().has_value(); }));
  vm_->OnServer([&] { EXPECT_TRUE(device->restore_result()->ok()); });
  // The server still serves the guest.
  auto modify = vm_->guest().ModifyChannel(relid, 0);
  ASSERT_TRUE(modify.ok()) << modify.status();
  EXPECT_EQ(*modify, kStatusSuccess);
}

TEST_F(RobustnessTest, AThrowingHvSocketListenerIsCaught) {
  Start({.on_hvsocket_connect = [](const HvSocketConnect&) -> bool {
    throw std::runtime_error("listener bug");
  }});
  Connect();
  protocol::TlConnectRequest request{};
  request.host_service_id.bytes[0] = 0x99;
  ASSERT_TRUE(vm_->guest().SendRaw(protocol::EncodeTlConnectRequest(request, false)).ok());
  // Refused, as with no listener.
  auto result = vm_->guest().WaitFor(MessageType::kTlConnectResult, 5s);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->As<protocol::TlConnectResult>()->status, protocol::kStatusConnectionRefused);
  ASSERT_TRUE(vm_->guest().Unload().ok());
}

// --- Restore: an inconsistent saved state is refused whole, with an error naming the problem.

class RestoreTest : public RobustnessTest {
 protected:
  // A saved state with two channels (one open on GPADL 1, with GPADL 2 as well), MNF on both.
  saved::Server SavedState() {
    OfferParams first = Params(1, 1);
    first.mnf_interrupt_latency = 100us;
    OfferParams second = Params(1, 2);
    second.mnf_interrupt_latency = 100us;
    Add(first);
    Add(second);
    Connect();
    auto offers = vm_->guest().RequestOffers();
    EXPECT_TRUE(offers.ok());
    const uint32_t relid = (*offers)[0].child_relid;
    EXPECT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}), kStatusSuccess);
    EXPECT_EQ(*vm_->guest().CreateGpadl(relid, 2, {0x200}), kStatusSuccess);
    EXPECT_EQ(*vm_->guest().OpenChannel(relid, 1, 2), kStatusSuccess);
    auto state = vm_->SaveAndStopServer();
    EXPECT_TRUE(state.ok()) << state.status();
    vm_->OnServer([&] { devices_.clear(); });
    return *state;
  }
  // Restores `state` and expects kDataLoss with `words` in the message.
  void ExpectRefused(const saved::Server& state, const std::string& words) {
    absl::Status status = vm_->StartRestoredServer(state);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_NE(status.message().find(words), std::string::npos) << status;
  }
  saved::Channel* Open(saved::Server& state) {
    for (auto& channel : *state.mutable_channels()) {
      if (channel.state() == 2) return &channel;
    }
    return nullptr;
  }
};

TEST_F(RestoreTest, RefusesARelidTwiceOrOutOfRange) {
  saved::Server state = SavedState();
  saved::Server twice = state;
  twice.mutable_channels(1)->set_relid(twice.channels(0).relid());
  ExpectRefused(twice, "relid");
  saved::Server high = state;
  high.mutable_channels(1)->set_relid(2048);
  ExpectRefused(high, "relid");
  saved::Server free_in_use = state;
  free_in_use.add_free_relids(state.channels(0).relid());
  ExpectRefused(free_in_use, "free");
  // The good state still restores after all those refusals: nothing was half-restored.
  EXPECT_TRUE(vm_->StartRestoredServer(state).ok());
}

TEST_F(RestoreTest, RefusesAGpadlIdUsedTwice) {
  saved::Server state = SavedState();
  saved::Channel* open = Open(state);
  ASSERT_NE(open, nullptr);
  saved::Channel* other = state.mutable_channels(&state.channels(0) == open ? 1 : 0);
  *other->add_gpadls() = open->gpadls(1);  // GPADL 2 on both channels.
  ExpectRefused(state, "GPADL 2");
}

TEST_F(RestoreTest, RefusesAnOpenChannelWithoutItsRingGpadl) {
  saved::Server state = SavedState();
  saved::Channel* open = Open(state);
  ASSERT_NE(open, nullptr);
  open->mutable_gpadls()->DeleteSubrange(0, 1);  // GPADL 1, the ring.
  ExpectRefused(state, "ring GPADL 1");
}

TEST_F(RestoreTest, RefusesAMonitorIdTwice) {
  saved::Server state = SavedState();
  ASSERT_TRUE(state.channels(0).has_monitor_id() && state.channels(1).has_monitor_id());
  state.mutable_channels(1)->set_monitor_id(state.channels(0).monitor_id());
  ExpectRefused(state, "monitor id");
}

// The monitor-id bitmap is rebuilt from the saved channels: a device offered after the restore
// (before the saved ones come back) gets an id no saved channel holds.
TEST_F(RestoreTest, RebuildsTheMonitorIdsSoANewOfferGetsAFreeOne) {
  saved::Server state = SavedState();
  ASSERT_TRUE(vm_->StartRestoredServer(state).ok());
  OfferParams fresh = Params(2, 9);
  fresh.mnf_interrupt_latency = 100us;
  Add(fresh);
  OfferParams first = Params(1, 1);
  first.mnf_interrupt_latency = 100us;
  OfferParams second = Params(1, 2);
  second.mnf_interrupt_latency = 100us;
  AddRestored(first, /*open=*/true);
  AddRestored(second, /*open=*/false);
  auto saved_again = vm_->SaveAndStopServer();
  ASSERT_TRUE(saved_again.ok());
  std::set<uint32_t> ids;
  for (const saved::Channel& channel : saved_again->channels()) {
    ASSERT_TRUE(channel.has_monitor_id());
    EXPECT_TRUE(ids.insert(channel.monitor_id()).second)
        << "monitor id " << channel.monitor_id() << " twice";
  }
  EXPECT_EQ(ids.size(), 3u);
  vm_->OnServer([&] { devices_.clear(); });
}

}  // namespace
}  // namespace cvmbus::paravisor
