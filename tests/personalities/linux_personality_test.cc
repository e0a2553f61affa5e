// What is particular to each personality: the version Linux 6.1 lands on against our server
// and against a capped one, and the monitor pages it brings; Linux 6.19 on a confidential VM
// negotiating confidential channels, refusing a server below 5.2, and keeping only the device
// classes allowed on an isolated VM.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "paravisor/client/guest_personality.h"
#include "paravisor/devices/demo_devices.h"
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

// --- Linux 6.1 ---

class Linux61Test : public KernelTest {
 protected:
  Linux61Test() : KernelTest(GuestPersonality::Linux61()) {}
};

// Against our server Linux 6.1 lands on its first choice, 5.3, at once; the server uses the
// guest's own child -> parent monitor page, and a monitored channel works through it.
TEST_F(Linux61Test, LandsOn53WithItsOwnMonitorPages) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  AddEcho(Params(kDemoInterfaceId, 1, /*mnf=*/true));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  EXPECT_EQ(kernel_->version(), protocol::kVersionWin10V5_3);
  EXPECT_EQ(kernel_->versions_tried(), std::vector<uint32_t>{protocol::kVersionWin10V5_3});
  EXPECT_EQ(kernel_->Received(MessageType::kVersionResponse), 1u);
  EXPECT_EQ(kernel_->features(), 0u);
  vm_->OnServer([&] {
    ASSERT_NE(vm_->server().monitor(), nullptr);
    EXPECT_EQ(vm_->server().monitor()->gpa(), testing::kMonitorPagesGpa + 4096);
  });
  const protocol::OfferChannel* offer = OfferOf(1);
  ASSERT_NE(offer, nullptr);
  EXPECT_TRUE(offer->monitor_allocated());
  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *offer, Pages(4));
  ASSERT_OK(ring);
  ASSERT_OK((*ring)->Echo(1, 5));
}

// A server capped lower: Linux walks its list down to the cap; every refusal and the
// acceptance are VERSION_RESPONSEs. At 2.4 it sends no UNLOAD on shutdown (the server stays
// connected); at 3.0 it does.
TEST_F(Linux61Test, FallsBackToTheServersCap) {
  struct Case {
    uint32_t cap;
    size_t tries;
  };
  for (const Case& c : {Case{protocol::kVersionWin10V5, 4}, Case{protocol::kVersionWin8_1, 7},
                        Case{protocol::kVersionWin8, 8}}) {
    SCOPED_TRACE(VersionText(c.cap));
    kernel_.reset();
    ASSERT_NO_FATAL_FAILURE(StartVm(c.cap));
    AddEcho(Params(kNetworkClassId, 1));
    ASSERT_NO_FATAL_FAILURE(BootKernel());
    EXPECT_EQ(kernel_->version(), c.cap);
    ASSERT_EQ(kernel_->versions_tried().size(), c.tries);
    EXPECT_EQ(kernel_->versions_tried().back(), c.cap);
    EXPECT_EQ(kernel_->Received(MessageType::kVersionResponse), c.tries);
    ASSERT_EQ(kernel_->offers().size(), 1u);
    auto ring = GuestRing::Open(vm_.get(), kernel_.get(), kernel_->offers()[0], Pages(4));
    ASSERT_OK(ring);
    ASSERT_OK((*ring)->Echo(1, 3));
    ring->reset();
    ASSERT_OK(kernel_->Shutdown());
    const bool unloads = c.cap >= protocol::kVersionWin8_1;
    EXPECT_EQ(kernel_->Received(MessageType::kUnloadResponse), unloads ? 1u : 0u);
    vm_->OnServer([&] { EXPECT_EQ(vm_->server().version(), unloads ? 0u : c.cap); });
    CheckAccount(*kernel_);
    kernel_.reset();
    vm_->OnServer([&] { echoes_.clear(); });
  }
}

// Below 2.4 Linux has nothing to offer: every version refused, named in the error.
TEST_F(Linux61Test, FindsNoVersionOnAServerBelow24) {
  ASSERT_NO_FATAL_FAILURE(StartVm(protocol::kVersionWin7));
  auto kernel = vm_->StartKernel(personality_);
  ASSERT_OK(kernel);
  kernel_ = *std::move(kernel);
  const absl::Status booted = kernel_->Boot();
  EXPECT_TRUE(absl::IsUnavailable(booted)) << booted;
  EXPECT_NE(booted.message().find("5.3, 5.2, 5.1, 5.0, 4.1, 4.0, 3.0, 2.4"), std::string::npos)
      << booted;
  EXPECT_EQ(kernel_->Received(MessageType::kVersionResponse), 8u);
  EXPECT_EQ(kernel_->Received(MessageType::kOfferChannel), 0u);
}

// Linux 6.1 (not isolated) keeps every offer: the classes a CVM guest drops included.
TEST_F(Linux61Test, KeepsEveryOffer) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  AddEcho(Params(kDemoInterfaceId, 1));
  AddEcho(Params(kScsiClassId, 2));
  AddScripted(Params(kKvpClassId, 3));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  EXPECT_EQ(kernel_->offers().size(), 3u);
  EXPECT_EQ(kernel_->dropped_offers(), 0u);
}

// --- Linux 6.19 on a confidential VM ---

class Linux619CvmTest : public KernelTest {
 protected:
  Linux619CvmTest() : KernelTest(GuestPersonality::Linux619Cvm()) {}
};

// 6.0 with confidential channels on the paravisor's SynIC: granted exactly 0x10 (it never asks
// for the server's monitor pages), offers carry the confidential ring flag, and a channel the
// device wanted monitored is offered without a monitor id (the guest's monitor pages are
// shared with the host): the guest signals it with HvSignalEvent, and traffic flows over a
// private ring.
TEST_F(Linux619CvmTest, Negotiates60WithConfidentialChannelsAndSignalsWithHvSignalEvent) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  EchoDevice* scsi = AddEcho(Params(kScsiClassId, 1, /*mnf=*/true));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  EXPECT_EQ(kernel_->version(), protocol::kVersionWin10V6_0);
  EXPECT_EQ(kernel_->features(), protocol::kFeatureConfidentialChannels);
  vm_->OnServer([&] {
    EXPECT_EQ(vm_->server().feature_flags(), protocol::kFeatureConfidentialChannels);
    EXPECT_EQ(vm_->server().monitor(), nullptr);
  });
  const protocol::OfferChannel* offer = OfferOf(1);
  ASSERT_NE(offer, nullptr);
  EXPECT_NE(offer->channel_flags & protocol::kOfferConfidentialRingBuffer, 0);
  EXPECT_FALSE(offer->monitor_allocated());
  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *offer, Pages(4));
  ASSERT_OK(ring);
  EXPECT_TRUE((*ring)->confidential());
  ASSERT_OK((*ring)->Echo(1, 5));
  vm_->OnServer([&] {
    ASSERT_TRUE(scsi->stats().ring_view.has_value());
    EXPECT_EQ(*scsi->stats().ring_view, guestmem::View::kPrivate);
  });
}

// A server that offers only versions below 5.2: Linux on an isolated VM walks its list,
// gets 5.1 and refuses it (naming it), and goes no further: no REQUESTOFFERS, no UNLOAD.
TEST_F(Linux619CvmTest, RefusesAServerBelow52) {
  ASSERT_NO_FATAL_FAILURE(StartVm(protocol::kVersionWin10V5_1));
  AddEcho(Params(kScsiClassId, 1));
  auto kernel = vm_->StartKernel(personality_);
  ASSERT_OK(kernel);
  kernel_ = *std::move(kernel);
  const absl::Status booted = kernel_->Boot();
  EXPECT_TRUE(absl::IsFailedPrecondition(booted)) << booted;
  EXPECT_NE(booted.message().find("5.1, below 5.2"), std::string::npos) << booted;
  EXPECT_EQ(kernel_->versions_tried(),
            (std::vector<uint32_t>{protocol::kVersionWin10V6_0, protocol::kVersionWin10V5_3,
                                   protocol::kVersionWin10V5_2, protocol::kVersionWin10V5_1}));
  EXPECT_EQ(kernel_->Received(MessageType::kOfferChannel), 0u);
  EXPECT_EQ(kernel_->Received(MessageType::kAllOffersDelivered), 0u);
  EXPECT_TRUE(kernel_->offers().empty());
  ASSERT_OK(kernel_->Shutdown());
  EXPECT_EQ(kernel_->Received(MessageType::kUnloadResponse), 0u);
  vm_->OnServer([&] { EXPECT_EQ(vm_->server().version(), protocol::kVersionWin10V5_1); });
}

// The boundary: a server capped at 5.2 is accepted, without confidential channels.
TEST_F(Linux619CvmTest, AcceptsAServerCappedAt52) {
  ASSERT_NO_FATAL_FAILURE(StartVm(protocol::kVersionWin10V5_2));
  AddEcho(Params(kScsiClassId, 1));
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  EXPECT_EQ(kernel_->version(), protocol::kVersionWin10V5_2);
  EXPECT_EQ(kernel_->features(), 0u);
  ASSERT_NE(OfferOf(1), nullptr);
  EXPECT_EQ(OfferOf(1)->channel_flags & protocol::kOfferConfidentialRingBuffer, 0);
  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(1), Pages(4));
  ASSERT_OK(ring);
  EXPECT_FALSE((*ring)->confidential());
  ASSERT_OK((*ring)->Echo(1, 3));
}

// On an isolated VM the guest keeps only the allowed classes and hvsocket offers. The echo
// class and KVP are dropped without a word: the guest posts nothing for them (no
// RELID_RELEASED), at boot or when one is offered later.
TEST_F(Linux619CvmTest, KeepsOnlyAllowedClassesAndDropsTheRestSilently) {
  ASSERT_NO_FATAL_FAILURE(StartVm());
  AddEcho(Params(kDemoInterfaceId, 1));  // The echo class.
  AddEcho(Params(kScsiClassId, 2));
  AddScripted(Params(kKvpClassId, 3));
  OfferParams socket = Params(Guid{0x5e5}, 4);
  socket.channel_type = HvSocketChannel{};
  AddScripted(socket);
  ASSERT_NO_FATAL_FAILURE(BootKernel());
  std::set<uint32_t> kept;
  for (const protocol::OfferChannel& offer : kernel_->offers()) {
    kept.insert(OfferInstance(offer).data1);
  }
  EXPECT_EQ(kept, (std::set<uint32_t>{2, 4}));
  EXPECT_EQ(kernel_->dropped_offers(), 2u);
  EXPECT_EQ(kernel_->Received(MessageType::kOfferChannel), 4u);
  // INITIATE_CONTACT and REQUESTOFFERS: nothing else was posted.
  EXPECT_EQ(vm_->synic().stats().messages_posted, 2u);

  AddEcho(Params(kDemoInterfaceId, 5));
  auto none = kernel_->NextOffer(200ms);
  EXPECT_TRUE(absl::IsDeadlineExceeded(none.status())) << none.status();
  EXPECT_EQ(kernel_->dropped_offers(), 3u);
  EXPECT_EQ(vm_->synic().stats().messages_posted, 2u);
  AddEcho(Params(kScsiClassId, 6));
  auto scsi = kernel_->NextOffer(5s);
  ASSERT_OK(scsi);
  EXPECT_EQ(OfferInstance(*scsi).data1, 6u);

  auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *OfferOf(2), Pages(4));
  ASSERT_OK(ring);
  ASSERT_OK((*ring)->Echo(1, 3));
}

}  // namespace
}  // namespace cvmbus::paravisor
