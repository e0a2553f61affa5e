// Known answers for the personalities themselves (linux-guest.md): version lists, features,
// UNLOAD, which offers are kept, the class GUIDs, and the kexec composition. The lifecycles
// against the server are in tests/personalities.
#include "paravisor/client/guest_personality.h"

#include <gtest/gtest.h>

#include <cstring>

namespace cvmbus::paravisor {
namespace {

using protocol::kVersionWin10V6_0;

protocol::OfferChannel OfferOf(const Guid& interface, uint16_t flags = 0) {
  protocol::OfferChannel offer{};
  std::memcpy(offer.interface_type.bytes, &interface, sizeof(interface));
  offer.channel_flags = flags;
  return offer;
}

std::vector<std::string> Texts(const std::vector<uint32_t>& versions) {
  std::vector<std::string> out;
  for (const uint32_t version : versions) out.push_back(VersionText(version));
  return out;
}

TEST(GuestPersonalityTest, ClassGuidsAreLinuxs) {
  EXPECT_EQ(kNetworkClassId.ToString(), "f8615163-df3e-46c5-913f-f2d2f965ed0e");
  EXPECT_EQ(kScsiClassId.ToString(), "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
  EXPECT_EQ(kShutdownClassId.ToString(), "0e0b6031-5213-4934-818b-38d90ced39db");
  EXPECT_EQ(kTimeSyncClassId.ToString(), "9527e630-d0ae-497b-adce-e80ab0175caf");
  EXPECT_EQ(kHeartbeatClassId.ToString(), "57164f39-9115-4e78-ab55-382f3bd5422d");
  EXPECT_EQ(kKvpClassId.ToString(), "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6");
  EXPECT_EQ(kPcieClassId.ToString(), "44c4f61d-4444-4400-9d52-802e27ede19f");
  // The wire layout: data1 little-endian first (Linux's guid_t as the host sends it).
  const protocol::OfferChannel offer = OfferOf(kScsiClassId);
  EXPECT_EQ(offer.interface_type.bytes[0], 0xd9);
  EXPECT_EQ(offer.interface_type.bytes[3], 0xba);
  EXPECT_EQ(OfferInterface(offer), kScsiClassId);
}

TEST(GuestPersonalityTest, Linux61) {
  const GuestPersonality linux61 = GuestPersonality::Linux61();
  EXPECT_EQ(Texts(linux61.versions),
            (std::vector<std::string>{"5.3", "5.2", "5.1", "5.0", "4.1", "4.0", "3.0", "2.4"}));
  EXPECT_EQ(linux61.min_version, 0u);
  EXPECT_EQ(linux61.FeaturesFor(kVersionWin10V6_0), 0u);
  EXPECT_TRUE(linux61.own_monitor_pages);
  EXPECT_TRUE(linux61.SendsUnloadAt(protocol::kVersionWin10V5_3));
  EXPECT_TRUE(linux61.SendsUnloadAt(protocol::kVersionWin8_1));
  EXPECT_FALSE(linux61.SendsUnloadAt(protocol::kVersionWin8));
  for (const Guid& interface : {kScsiClassId, kKvpClassId, Guid{0x1234}}) {
    EXPECT_TRUE(linux61.Keeps(OfferOf(interface))) << interface.ToString();
  }
  EXPECT_FALSE(linux61.kexec);
}

TEST(GuestPersonalityTest, Linux619OnAConfidentialVm) {
  const GuestPersonality cvm = GuestPersonality::Linux619Cvm();
  EXPECT_EQ(Texts(cvm.versions), (std::vector<std::string>{"6.0", "5.3", "5.2", "5.1", "5.0", "4.1",
                                                           "4.0", "3.0", "2.4"}));
  EXPECT_EQ(cvm.min_version, protocol::kVersionWin10V5_2);
  EXPECT_EQ(cvm.FeaturesFor(kVersionWin10V6_0), protocol::kFeatureConfidentialChannels);
  EXPECT_EQ(cvm.FeaturesFor(protocol::kVersionWin10V5_3), 0u) << "feature flags exist from 6.0";
  EXPECT_EQ(cvm.features & protocol::kFeatureServerSpecifiedMonitorPages, 0u);
  for (const Guid& interface : {kScsiClassId, kNetworkClassId, kPcieClassId, kTimeSyncClassId,
                                kHeartbeatClassId, kShutdownClassId}) {
    EXPECT_TRUE(cvm.Keeps(OfferOf(interface))) << interface.ToString();
  }
  for (const Guid& interface : {kKvpClassId, Guid{0x1234}}) {
    EXPECT_FALSE(cvm.Keeps(OfferOf(interface))) << interface.ToString();
    EXPECT_TRUE(cvm.Keeps(OfferOf(interface, protocol::kOfferTlnpiProvider)))
        << "hvsocket offers are kept whatever their class";
  }
}

TEST(GuestPersonalityTest, KexecComposes) {
  const GuestPersonality cvm = GuestPersonality::Linux619Cvm();
  const GuestPersonality kexec = GuestPersonality::Kexec(cvm);
  EXPECT_TRUE(kexec.kexec);
  EXPECT_EQ(kexec.name, "kexec'd Linux 6.19 CVM");
  EXPECT_EQ(kexec.versions, cvm.versions);
  EXPECT_EQ(kexec.features, cvm.features);
  EXPECT_EQ(kexec.isolated, cvm.isolated);
  EXPECT_EQ(GuestPersonality::Kexec(kexec).name, kexec.name) << "kexec'd once";
  EXPECT_FALSE(kexec.Base().kexec);
  EXPECT_EQ(kexec.Base().name, cvm.name);
  const GuestPersonality capped = kexec.Base().WithMaxVersion(protocol::kVersionWin10V5_2);
  EXPECT_EQ(capped.max_version, protocol::kVersionWin10V5_2);
  EXPECT_EQ(capped.name, "Linux 6.19 CVM (max_version 5.2)");
}

}  // namespace
}  // namespace cvmbus::paravisor
