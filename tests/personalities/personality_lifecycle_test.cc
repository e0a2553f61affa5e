// The lifecycles a server must survive (linux-guest.md, "Lifecycle a server must survive"),
// each run by real guest personalities against the real server through the SynIC: Linux 6.1,
// Linux 6.19 on a confidential VM, and the kexec'd kernel of each (which boots onto a
// connection its predecessor left up, with a channel open and traffic carried).
//
// The races use ScriptedDevice to hold a device's answer while the guest moves on, so every
// interleaving is deterministic. Besides what each test asserts, every kernel's account of
// the conversation is checked when it goes: no answer the connection did not ask for (a
// kexec'd kernel that gets its predecessor's answers sees "a channel that looks already
// open").
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cctype>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "paravisor/client/guest_personality.h"
#include "tests/personalities/kernel_test.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using protocol::kStatusSuccess;
using protocol::MessageType;
using testing::Answer;
using testing::Gpns;
using testing::GuestRing;
using testing::KernelTest;
using testing::kScriptedGpn;
using testing::Lines;
using testing::Params;
using testing::ScriptedDevice;

// --- The lifecycles, for every personality ---

class LifecycleTest : public KernelTest, public ::testing::WithParamInterface<GuestPersonality> {
 protected:
  LifecycleTest() : KernelTest(GetParam()) {}
};

// Hibernation (vmbus_bus_suspend/resume): drivers close their channels, UNLOAD; after resume
// INITIATE_CONTACT at the same version; the re-offers keep instance GUIDs (Linux matches
// primaries by them; Resume fails if one is missing) and relids, and the channels open and
// carry traffic again, a monitored one included.
TEST_P(LifecycleTest, HibernationReconnectsWithTheSameInstancesAndTheChannelsWorkAgain) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  EchoDevice* net = AddEcho(Params(kNetworkClassId, 1));
  EchoDevice* scsi = AddEcho(Params(kScsiClassId, 2, /*mnf=*/true));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  ASSERT_NE(OfferOf(1), nullptr);
  ASSERT_NE(OfferOf(2), nullptr);
  {
    auto a = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4));
    ASSERT_OK(a);
    auto b = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(2), Pages(4));
    ASSERT_OK(b);
    ASSERT_OK((*a)->Echo(1, 5));
    ASSERT_OK((*b)->Echo(1, 5));
  }
  const std::vector<protocol::OfferChannel> before = kernel_->offers();
  const uint32_t version = kernel_->version();

  ASSERT_OK(kernel_->Hibernate());
  EXPECT_EQ(kernel_->Received(MessageType::kUnloadResponse), 1u);
  vm_->OnServer([&] {
    EXPECT_EQ(net->stats().closes, 1u);
    EXPECT_EQ(scsi->stats().closes, 1u);
    EXPECT_EQ(vm_->server().gpadl_count(), 0u);
    EXPECT_EQ(vm_->server().version(), 0u) << "still connected after UNLOAD_RESPONSE";
  });

  ASSERT_OK(kernel_->Resume());
  EXPECT_EQ(kernel_->versions_tried().back(), version);
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().version(), version); });
  ASSERT_EQ(kernel_->offers().size(), before.size());
  for (const protocol::OfferChannel& old : before) {
    const protocol::OfferChannel* again = OfferOf(OfferInstance(old).data1);
    ASSERT_NE(again, nullptr) << OfferInstance(old).ToString();
    EXPECT_EQ(again->child_relid, old.child_relid);
    EXPECT_EQ(OfferInterface(*again), OfferInterface(old));
  }
  auto a = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4));
  ASSERT_OK(a);
  auto b = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(2), Pages(4));
  ASSERT_OK(b);
  ASSERT_OK((*a)->Echo(100, 5));
  ASSERT_OK((*b)->Echo(100, 5));
  vm_->OnServer([&] {
    EXPECT_EQ(net->stats().opens, 2u);
    EXPECT_EQ(scsi->stats().opens, 2u);
  });
}

// kexec (and a crash kernel): INITIATE_CONTACT with no UNLOAD while the old kernel's channels
// are open, a device is slow to close and a GPADL is still with its device. The answer waits
// until every channel is closed and every GPADL torn down; then the new kernel gets the same
// offers and reuses its predecessor's GPADL ids and ring pages, and nothing of the old
// connection ever reaches it.
TEST_P(LifecycleTest, KexecWithoutUnloadResetsEveryChannelThenConnects) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  EchoDevice* echo = AddEcho(Params(kNetworkClassId, 1));
  ScriptedDevice* slow = AddScripted(Params(kScsiClassId, 2));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  const uint32_t echo_relid = RelidOf(1);
  const uint32_t slow_relid = RelidOf(2);
  ASSERT_NE(echo_relid, 0u);
  ASSERT_NE(slow_relid, 0u);
  uint32_t old_ring = 0;
  {
    auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4));
    ASSERT_OK(ring);
    ASSERT_OK((*ring)->Echo(1, 3));
    old_ring = (*ring)->gpadl_id();
  }  // The kernel's mapping goes with it; the host still has the channel open.
  auto slow_ring = kernel_->CreateGpadl(slow_relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(slow_ring);
  ASSERT_OK(kernel_->Open(slow_relid, *slow_ring, 2));
  vm_->OnServer([&] {
    slow->script().close = Answer::kHold;
    slow->script().gpadl = Answer::kHold;
    slow->script().modify = Answer::kHold;
  });
  auto in_flight = kernel_->SendGpadl(slow_relid, Gpns(kScriptedGpn + 8, 1));
  ASSERT_OK(in_flight);
  ASSERT_OK(kernel_->SendModify(slow_relid, 0));  // Answered only once the device is.
  ASSERT_TRUE(
      vm_->WaitUntil([&] { return slow->held_gpadls() == 1 && slow->held_modifies() == 1; }));

  ASSERT_NO_FATAL_FAILURE(ReplaceKernel(GuestPersonality::Kexec(personality_.Base())));
  auto boot = std::async(std::launch::async, [&] { return kernel_->Boot(); });
  ASSERT_TRUE(vm_->WaitUntil([&] { return slow->held_closes() == 1; }));
  EXPECT_EQ(boot.wait_for(100ms), std::future_status::timeout)
      << "VERSION_RESPONSE before the device closed the old channel";
  vm_->OnServer([&] { EXPECT_TRUE(slow->ReleaseClose()); });
  EXPECT_EQ(boot.wait_for(100ms), std::future_status::timeout)
      << "VERSION_RESPONSE before the old connection's GPADL in flight was finished";
  vm_->OnServer([&] {
    slow->script() = {};
    EXPECT_TRUE(slow->ReleaseGpadl(true));
  });
  ASSERT_OK(boot.get());
  vm_->OnServer([&] {
    EXPECT_EQ(echo->stats().closes, 1u);
    EXPECT_EQ(slow->events(), (std::vector<std::string>{
                                  fmt::format("gpadl {}", *slow_ring),
                                  fmt::format("open {}", *slow_ring),
                                  fmt::format("gpadl {}", *in_flight),
                                  "modify 0",
                                  "close",
                                  fmt::format("teardown {}", *slow_ring),
                                  fmt::format("teardown {}", *in_flight),
                              }))
        << slow->EventsText();
    EXPECT_EQ(vm_->server().gpadl_count(), 0u);
  });

  EXPECT_EQ(RelidOf(1), echo_relid);
  EXPECT_EQ(RelidOf(2), slow_relid);
  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4));
  ASSERT_OK(ring);
  EXPECT_EQ((*ring)->gpadl_id(), old_ring) << "a new kernel starts its GPADL ids over";
  ASSERT_OK((*ring)->Echo(50, 3));
  auto again = kernel_->CreateGpadl(slow_relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(again);
  EXPECT_EQ(*again, *slow_ring);
  ASSERT_OK(kernel_->Open(slow_relid, *again, 2));
  // The old kernel's MODIFYCHANNEL, answered by the device only now, is nobody's business.
  vm_->OnServer([&] { EXPECT_TRUE(slow->ReleaseModify(0)); });
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(kernel_->Received(MessageType::kModifyChannelResponse), 0u);
  EXPECT_EQ(kernel_->Received(MessageType::kOpenChannelResult), 2u);
  EXPECT_EQ(kernel_->Received(MessageType::kGpadlCreated), 2u);
  EXPECT_TRUE(kernel_->Outstanding().empty()) << Lines(kernel_->Outstanding());
}

// A crash: the kernel is gone without a word; the crash kernel is the same kernel capped at
// a lower version (max_version; 4.1 uses connection id 1 and no SINT field, 5.2 has no
// confidential channels). It finds the old channel reset, the same offer, and a working
// channel on the same pages (shared now, where they were private before).
TEST_P(LifecycleTest, CrashWithoutUnloadThenReconnectAtAnotherVersion) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  EchoDevice* echo = AddEcho(Params(kNetworkClassId, 1));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  const uint32_t relid = RelidOf(1);
  ASSERT_NE(relid, 0u);
  const uint32_t first_version = kernel_->version();
  {
    auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4));
    ASSERT_OK(ring);
    EXPECT_EQ((*ring)->confidential(), personality_.isolated);
    ASSERT_OK((*ring)->Echo(1, 3));
  }
  const uint32_t lower =
      personality_.isolated ? protocol::kVersionWin10V5_2 : protocol::kVersionWin10V4_1;
  ASSERT_LT(lower, first_version);
  ASSERT_NO_FATAL_FAILURE(
      ReplaceKernel(GuestPersonality::Kexec(personality_.Base().WithMaxVersion(lower))));
  ASSERT_OK(kernel_->Boot());
  EXPECT_EQ(kernel_->version(), lower);
  vm_->OnServer([&] {
    EXPECT_EQ(vm_->server().version(), lower);
    EXPECT_EQ(echo->stats().closes, 1u);
  });
  const protocol::OfferChannel* offer = OfferOf(1);
  ASSERT_NE(offer, nullptr);
  EXPECT_EQ(offer->child_relid, relid);
  EXPECT_EQ(offer->channel_flags & (protocol::kOfferConfidentialRingBuffer |
                                    protocol::kOfferConfidentialExternalMemory),
            0)
      << "confidential channels exist only from 6.0";
  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *offer, Pages(4));
  ASSERT_OK(ring);
  EXPECT_FALSE((*ring)->confidential());
  ASSERT_OK((*ring)->Echo(10, 3));
}

// A CPU going offline: Linux moves every channel bound to it (MODIFYCHANNEL) and from 5.3
// waits for each answer. The channel's interrupts follow it; an answer that waits for a slow
// device comes once the device answers, with its status; a channel that cannot be modified
// still gets an answer.
TEST_P(LifecycleTest, CpuOfflineModifyChannelIsAnsweredFrom53) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  AddEcho(Params(kNetworkClassId, 1));
  ScriptedDevice* slow = AddScripted(Params(kScsiClassId, 2));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  ASSERT_GE(kernel_->version(), protocol::kVersionWin10V5_3);
  // VP 1 has no SynIC set up (the CPU going away): interrupts sent there reach nobody.
  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4), 2,
                              /*target_vp=*/1);
  ASSERT_OK(ring);
  auto moved = kernel_->ModifyChannel(RelidOf(1), 0);
  ASSERT_OK(moved);
  ASSERT_TRUE(moved->has_value());
  EXPECT_EQ(**moved, kStatusSuccess);
  // The device signals every echo (the guest never masks): each one must reach VP 0 now.
  const synic::SynicStats before = vm_->synic().stats();
  ASSERT_OK((*ring)->Echo(1, 3));
  const synic::SynicStats after = vm_->synic().stats();
  EXPECT_EQ(after.events_lost, before.events_lost) << "interrupts still go to VP 1";
  EXPECT_GT(after.events_set, before.events_set);

  const uint32_t relid = RelidOf(2);
  auto gpadl = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(gpadl);
  ASSERT_OK(kernel_->Open(relid, *gpadl, 2, /*target_vp=*/1));
  vm_->OnServer([&] { slow->script().modify = Answer::kHold; });
  ASSERT_OK(kernel_->SendModify(relid, 0));
  ASSERT_TRUE(vm_->WaitUntil([&] { return slow->held_modifies() == 1; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(kernel_->Received(MessageType::kModifyChannelResponse), 1u)
      << "answered before the device";
  vm_->OnServer([&] { EXPECT_TRUE(slow->ReleaseModify(0)); });
  auto answered = kernel_->AwaitModify(relid);
  ASSERT_OK(answered);
  EXPECT_EQ(*answered, kStatusSuccess);
  constexpr uint32_t kDeviceFailure = 0xc0000001;  // STATUS_UNSUCCESSFUL.
  ASSERT_OK(kernel_->SendModify(relid, 1));
  ASSERT_TRUE(vm_->WaitUntil([&] { return slow->held_modifies() == 1; }));
  vm_->OnServer([&] { EXPECT_TRUE(slow->ReleaseModify(static_cast<int32_t>(kDeviceFailure))); });
  auto failed = kernel_->AwaitModify(relid);
  ASSERT_OK(failed);
  EXPECT_EQ(*failed, kDeviceFailure);
  // A channel that is no longer open cannot move, but the guest still gets its answer.
  ASSERT_OK(kernel_->Close(relid));
  auto refused = kernel_->ModifyChannel(relid, 0);
  ASSERT_OK(refused);
  ASSERT_TRUE(refused->has_value());
  EXPECT_NE(**refused, kStatusSuccess);
  ASSERT_TRUE(vm_->WaitUntil([&] { return slow->events().size() == 5; })) << Lines(Events(slow));
  EXPECT_EQ(Events(slow), (std::vector<std::string>{fmt::format("gpadl {}", *gpadl),
                                                    fmt::format("open {}", *gpadl), "modify 0",
                                                    "modify 1", "close"}));
}

// Before 5.3 there is no MODIFYCHANNEL_RESPONSE: the guest does not wait for one and the
// server sends none, but the device still moves the channel.
TEST_P(LifecycleTest, CpuOfflineBefore53GetsNoResponse) {
  ASSERT_NO_FATAL_FAILURE(StartVm(protocol::kVersionWin10V5_2));
  ScriptedDevice* device = AddScripted(Params(kScsiClassId, 1));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  ASSERT_EQ(kernel_->version(), protocol::kVersionWin10V5_2);
  const uint32_t relid = RelidOf(1);
  auto gpadl = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(gpadl);
  ASSERT_OK(kernel_->Open(relid, *gpadl, 2, /*target_vp=*/1));
  auto moved = kernel_->ModifyChannel(relid, 0);
  ASSERT_OK(moved);
  EXPECT_FALSE(moved->has_value());
  ASSERT_TRUE(vm_->WaitUntil([&] { return device->events().back() == "modify 0"; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(kernel_->Received(MessageType::kModifyChannelResponse), 0u);
}

// An open raced by a revoke: the device revokes while its open answer is outstanding. The
// guest's open ends (a failure, or the rescind wakes it), the driver's removal tears the
// GPADL down and releases the relid; the device's late success opens nothing.
TEST_P(LifecycleTest, OpenRacedByRevokeNeverOpens) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  ScriptedDevice* device = AddScripted(Params(kScsiClassId, 1), {.open = Answer::kHold});
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  const uint32_t relid = RelidOf(1);
  ASSERT_NE(relid, 0u);
  const size_t channels = ChannelCount();
  auto gpadl = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(gpadl);
  ASSERT_OK(kernel_->SendOpen(relid, *gpadl, 2));
  ASSERT_TRUE(vm_->WaitUntil([&] { return device->held_opens() == 1; }));
  vm_->OnServer([&] { ASSERT_OK(device->Revoke()); });
  auto opened = kernel_->AwaitOpen(relid);
  EXPECT_TRUE(opened.ok() ? *opened != kStatusSuccess : absl::IsAborted(opened.status()))
      << (opened.ok() ? fmt::format("status {:#x}", *opened) : opened.status().ToString());
  auto rescinded = kernel_->AwaitRescind(5s);
  ASSERT_OK(rescinded);
  EXPECT_EQ(*rescinded, relid);
  ASSERT_OK(kernel_->RemoveRescinded(relid));
  ASSERT_TRUE(vm_->WaitUntil([&] { return vm_->server().channel_count() == channels - 1; }));
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseOpen(true)); });
  ASSERT_TRUE(vm_->WaitUntil([&] { return device->last_signal().use_count() == 1; }))
      << "the server kept the late open's signal";
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(kernel_->Received(MessageType::kOpenChannelResult), 1u)
      << "one answer (a failure) for the open, none for the device's late reply";
  EXPECT_TRUE(kernel_->Outstanding().empty()) << Lines(kernel_->Outstanding());
}

// UNLOAD raced by an open: the device answers the open after UNLOAD. UNLOAD_RESPONSE comes
// only after the server closed what the device opened and tore the ring down; the open is
// never answered; the next kernel opens the channel with the same GPADL id.
TEST_P(LifecycleTest, UnloadRacedByOpenAnswersOnlyAfterTheCloseAndTeardown) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  ScriptedDevice* device = AddScripted(Params(kScsiClassId, 1), {.open = Answer::kHold});
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  ASSERT_TRUE(personality_.SendsUnloadAt(kernel_->version()));
  const uint32_t relid = RelidOf(1);
  auto gpadl = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(gpadl);
  ASSERT_OK(kernel_->SendOpen(relid, *gpadl, 2));
  ASSERT_TRUE(vm_->WaitUntil([&] { return device->held_opens() == 1; }));

  auto down = std::async(std::launch::async, [&] { return kernel_->Shutdown(); });
  ASSERT_TRUE(vm_->WaitUntil([&] { return vm_->server().version() == 0; }));  // UNLOAD taken.
  EXPECT_EQ(down.wait_for(100ms), std::future_status::timeout)
      << "UNLOAD_RESPONSE before the device answered the open";
  vm_->OnServer([&] {
    device->script().open = Answer::kNow;
    EXPECT_TRUE(device->ReleaseOpen(true));
  });
  ASSERT_OK(down.get());
  vm_->OnServer([&] {
    EXPECT_EQ(device->events(), (std::vector<std::string>{fmt::format("gpadl {}", *gpadl),
                                                          fmt::format("open {}", *gpadl), "close",
                                                          fmt::format("teardown {}", *gpadl)}))
        << device->EventsText();
    EXPECT_EQ(device->last_signal().use_count(), 1);
    EXPECT_EQ(vm_->server().gpadl_count(), 0u);
  });
  EXPECT_EQ(kernel_->Received(MessageType::kOpenChannelResult), 0u)
      << "the open's late reply reached the guest";

  ASSERT_NO_FATAL_FAILURE(BootNextKernel(personality_.Base()));
  auto again = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(again);
  EXPECT_EQ(*again, *gpadl);
  ASSERT_OK(kernel_->Open(relid, *again, 2));
}

// UNLOAD raced by GPADL creation: the device takes the GPADL after UNLOAD. UNLOAD_RESPONSE
// comes only after the server tore it down; no GPADL_CREATED reaches anyone; the id is free
// for the next kernel.
TEST_P(LifecycleTest, UnloadRacedByGpadlCreationAnswersOnlyAfterTheTeardown) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  ScriptedDevice* device = AddScripted(Params(kScsiClassId, 1), {.gpadl = Answer::kHold});
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  const uint32_t relid = RelidOf(1);
  auto gpadl = kernel_->SendGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(gpadl);
  ASSERT_TRUE(vm_->WaitUntil([&] { return device->held_gpadls() == 1; }));

  auto down = std::async(std::launch::async, [&] { return kernel_->Shutdown(); });
  ASSERT_TRUE(vm_->WaitUntil([&] { return vm_->server().version() == 0; }));
  EXPECT_EQ(down.wait_for(100ms), std::future_status::timeout)
      << "UNLOAD_RESPONSE while the device still had the GPADL";
  vm_->OnServer([&] { EXPECT_TRUE(device->ReleaseGpadl(true)); });
  ASSERT_OK(down.get());
  vm_->OnServer([&] {
    EXPECT_EQ(device->events(), (std::vector<std::string>{fmt::format("gpadl {}", *gpadl),
                                                          fmt::format("teardown {}", *gpadl)}))
        << device->EventsText();
    EXPECT_EQ(vm_->server().gpadl_count(), 0u);
  });
  EXPECT_EQ(kernel_->Received(MessageType::kGpadlCreated), 0u);

  vm_->OnServer([&] { device->script().gpadl = Answer::kNow; });
  ASSERT_NO_FATAL_FAILURE(BootNextKernel(personality_.Base()));
  auto again = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(again);
  EXPECT_EQ(*again, *gpadl);
}

// Relid reuse with a reply in flight: channel A is revoked while its open answer is held,
// the guest removes it (RELID_RELEASED) and channel B gets the relid. A's late answer must
// land nowhere: B's open gets B's answer, and the guest's signal reaches B's device.
TEST_P(LifecycleTest, RelidReuseWithAReplyInFlightLeavesTheNewChannelAlone) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  ScriptedDevice* first = AddScripted(Params(kScsiClassId, 1), {.open = Answer::kHold});
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  const uint32_t relid = RelidOf(1);
  ASSERT_NE(relid, 0u);
  auto gpadl = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn, 4));
  ASSERT_OK(gpadl);
  ASSERT_OK(kernel_->SendOpen(relid, *gpadl, 2));
  ASSERT_TRUE(vm_->WaitUntil([&] { return first->held_opens() == 1; }));
  vm_->OnServer([&] { ASSERT_OK(first->Revoke()); });
  auto opened = kernel_->AwaitOpen(relid);
  EXPECT_FALSE(opened.ok() && *opened == kStatusSuccess);
  auto rescinded = kernel_->AwaitRescind(5s);
  ASSERT_OK(rescinded);
  ASSERT_EQ(*rescinded, relid);
  ASSERT_OK(kernel_->RemoveRescinded(relid));

  ScriptedDevice* second = AddScripted(Params(kNetworkClassId, 2), {.open = Answer::kHold});
  auto offer = kernel_->NextOffer(5s);
  ASSERT_OK(offer);
  ASSERT_EQ(offer->child_relid, relid) << "the released relid is reused";
  auto second_gpadl = kernel_->CreateGpadl(relid, Gpns(kScriptedGpn + 4, 4));
  ASSERT_OK(second_gpadl);
  ASSERT_OK(kernel_->SendOpen(relid, *second_gpadl, 2));
  ASSERT_TRUE(vm_->WaitUntil([&] { return second->held_opens() == 1; }));
  const size_t results = kernel_->Received(MessageType::kOpenChannelResult);
  vm_->OnServer([&] { EXPECT_TRUE(first->ReleaseOpen(true)); });
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(kernel_->Received(MessageType::kOpenChannelResult), results)
      << "A's late answer reached the guest as B's";
  vm_->OnServer([&] {
    EXPECT_EQ(first->last_signal().use_count(), 1);
    EXPECT_TRUE(second->ReleaseOpen(true));
  });
  auto result = kernel_->AwaitOpen(relid);
  ASSERT_OK(result);
  EXPECT_EQ(*result, kStatusSuccess);
  ASSERT_OK(kernel_->client()->SignalHost(relid));
  ASSERT_TRUE(vm_->WaitUntil([&] { return second->last_signal()->raised() == 1; }));
  vm_->OnServer([&] { EXPECT_EQ(first->last_signal()->raised(), 0u); });
}

// Rapid offer and rescind (OpenVMM #4081): devices come and go while the guest runs. Every
// rescind names a channel just offered, a relid comes back only after RELID_RELEASED, and
// nothing is left. On an isolated VM some of the devices are of a class the guest drops: it
// never answers their offers nor their rescinds, and the server must cope with that too.
TEST_P(LifecycleTest, RapidOfferAndRescindReusesRelidsOnlyAfterRelease) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  const size_t channels = ChannelCount();
  std::set<uint32_t> live;  // Offered and not released by the guest yet.
  size_t ignored = 0;       // Offers the guest dropped.
  for (uint32_t round = 0; round < 24; ++round) {
    const bool dropped = personality_.isolated && round % 6 == 2;  // Never the last round.
    ScriptedDevice* device = AddScripted(
        Params(dropped ? kKvpClassId : (round % 2 ? kScsiClassId : kNetworkClassId), 100 + round));
    if (dropped) {
      const size_t rescinds = kernel_->Received(MessageType::kRescindChannelOffer);
      vm_->OnServer([&] { ASSERT_OK(device->Revoke()); });
      const auto deadline = std::chrono::steady_clock::now() + 5s;
      while (kernel_->Received(MessageType::kRescindChannelOffer) == rescinds) {
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no rescind for round " << round;
        std::this_thread::sleep_for(1ms);
      }
      ++ignored;
      continue;
    }
    auto offer = kernel_->NextOffer(5s);
    ASSERT_OK(offer);
    const uint32_t relid = offer->child_relid;
    EXPECT_TRUE(live.insert(relid).second) << "relid " << relid << " reused before its release";
    vm_->OnServer([&] { ASSERT_OK(device->Revoke()); });
    auto rescinded = kernel_->AwaitRescind(5s);
    ASSERT_OK(rescinded);
    EXPECT_EQ(*rescinded, relid);
    if (round % 3 != 0) {  // Some at once, the others at the end.
      ASSERT_OK(kernel_->RemoveRescinded(relid));
      live.erase(relid);
    }
  }
  for (const uint32_t relid : live) ASSERT_OK(kernel_->RemoveRescinded(relid));
  // The offers the guest dropped stay with the server (nobody releases them) until the
  // connection ends.
  ASSERT_TRUE(vm_->WaitUntil([&] { return vm_->server().channel_count() == channels + ignored; }))
      << ChannelCount() << " channels";
  EXPECT_EQ(kernel_->dropped_offers(), ignored);
  ASSERT_OK(kernel_->Shutdown());
  ASSERT_TRUE(vm_->WaitUntil([&] { return vm_->server().channel_count() == channels; }));
}

std::string PersonalityName(const ::testing::TestParamInfo<GuestPersonality>& info) {
  std::string name;
  for (const char c : info.param.name) {
    if (std::isalnum(static_cast<unsigned char>(c))) name += c;
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Personalities, LifecycleTest,
    ::testing::Values(GuestPersonality::Linux61(), GuestPersonality::Linux619Cvm(),
                      GuestPersonality::Kexec(GuestPersonality::Linux61()),
                      GuestPersonality::Kexec(GuestPersonality::Linux619Cvm())),
    PersonalityName);

}  // namespace
}  // namespace cvmbus::paravisor
