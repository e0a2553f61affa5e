// Known answers for the hvsocket framing and addresses (hyperv_transport.c), and one test per
// way a guest's packet can be malformed.
#include "paravisor/devices/hvsocket/hvsocket_protocol.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace cvmbus::paravisor::hvsocket {
namespace {

TEST(HvSocketAddressTest, PortsMapToTheVsockTemplate) {
  EXPECT_EQ(kVsockTemplate.ToString(), "00000000-facb-11e6-bd58-64006a7986d3");
  const Guid id = ServiceIdForPort(5000);
  EXPECT_EQ(id.ToString(), "00001388-facb-11e6-bd58-64006a7986d3");
  // Linux reads the port as the GUID's first four bytes (get_port_by_srv_id).
  uint8_t wire[16];
  std::memcpy(wire, &id, sizeof(wire));
  EXPECT_EQ(wire[0], 0x88);
  EXPECT_EQ(wire[1], 0x13);
  EXPECT_EQ(wire[4], 0xcb);  // data2 0xfacb, little-endian.
  EXPECT_EQ(wire[5], 0xfa);
  EXPECT_EQ(PortOfServiceId(id), 5000u);
  EXPECT_EQ(PortOfServiceId(ServiceIdForPort(0xffffffff)), 0xffffffffu);
}

TEST(HvSocketAddressTest, OtherGuidsHaveNoPort) {
  Guid other = ServiceIdForPort(7);
  other.data4[7] ^= 1;
  EXPECT_EQ(PortOfServiceId(other), std::nullopt);
  EXPECT_EQ(PortOfServiceId(Guid{}), std::nullopt);
}

TEST(HvSocketFramingTest, PacketLengthsAreLinuxs) {
  EXPECT_EQ(PacketBytes(0), 32u);             // HVS_PKT_LEN(0): the FIN.
  EXPECT_EQ(PacketBytes(1), 40u);             // Data padded to 8.
  EXPECT_EQ(PacketBytes(4088), 4120u);        // HVS_PKT_LEN(HVS_SEND_BUF_SIZE).
  EXPECT_EQ(PacketBytes(kMtuBytes), 16416u);  // HVS_MAX_PKT_SIZE.
  EXPECT_EQ(kLinuxSendChunkBytes, 4088u);
}

class ParseTest : public ::testing::Test {
 protected:
  ring::Packet Make(uint32_t type, uint32_t data_size, size_t payload_bytes) {
    bytes_.assign(payload_bytes, 0xab);
    const PipeHeader header{type, data_size};
    std::memcpy(bytes_.data(), &header, std::min(payload_bytes, sizeof(header)));
    ring::Packet packet;
    packet.payload = bytes_;
    return packet;
  }
  std::vector<uint8_t> bytes_;
};

TEST_F(ParseTest, DataWithPaddingKeepsOnlyDataSize) {
  const ring::Packet packet = Make(kPipePacketData, 5, 16);
  absl::StatusOr<PipeData> data = ParsePipePacket(packet);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->data.size(), 5u);
  EXPECT_EQ(data->data.data(), bytes_.data() + 8);
  EXPECT_FALSE(data->fin());
}

TEST_F(ParseTest, AnEmptyPayloadIsTheFin) {
  absl::StatusOr<PipeData> data = ParsePipePacket(Make(kPipePacketData, 0, 8));
  ASSERT_TRUE(data.ok());
  EXPECT_TRUE(data->fin());
}

TEST_F(ParseTest, APacketOfTheMtuIsAccepted) {
  EXPECT_TRUE(ParsePipePacket(Make(kPipePacketData, kMtuBytes, 8 + kMtuBytes)).ok());
}

TEST_F(ParseTest, NotInBandIsRefused) {
  ring::Packet packet = Make(kPipePacketData, 0, 8);
  packet.type = ring::PacketType::kDataUsingGpaDirect;
  EXPECT_EQ(ParsePipePacket(packet).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ParseTest, APayloadShorterThanTheHeaderIsRefused) {
  EXPECT_EQ(ParsePipePacket(Make(kPipePacketData, 0, 4)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ParseTest, AnotherPipeTypeIsRefused) {
  absl::StatusOr<PipeData> data = ParsePipePacket(Make(2, 0, 8));
  ASSERT_FALSE(data.ok());
  EXPECT_NE(std::string(data.status().message()).find("pipe type 0x2"), std::string::npos);
}

TEST_F(ParseTest, DataSizeBeyondThePayloadIsRefused) {
  absl::StatusOr<PipeData> data = ParsePipePacket(Make(kPipePacketData, 9, 16));
  ASSERT_FALSE(data.ok());
  EXPECT_NE(std::string(data.status().message()).find("data_size 9"), std::string::npos);
}

TEST_F(ParseTest, DataSizeAboveTheMtuIsRefused) {
  EXPECT_FALSE(ParsePipePacket(Make(kPipePacketData, kMtuBytes + 8, 16 + kMtuBytes + 8)).ok());
}

}  // namespace
}  // namespace cvmbus::paravisor::hvsocket
