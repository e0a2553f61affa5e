#include "paravisor/devices/storvsp/vstor_negotiation.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace cvmbus::paravisor::storvsp {
namespace {

// A request as Linux builds it: a zeroed vstor_packet of `bytes` (64 from Linux 6.0, 48 during
// initialization before), the operation, REQUEST_COMPLETION_FLAG, and a u16 at the body's start.
std::vector<uint8_t> Packet(VstorOperation operation, uint16_t value = 0, size_t bytes = 64) {
  std::vector<uint8_t> packet(bytes, 0);
  const uint32_t op = static_cast<uint32_t>(operation);
  std::memcpy(packet.data(), &op, 4);
  std::memcpy(packet.data() + 4, &kRequestCompletionFlag, 4);
  if (bytes >= kHeaderBytes + 2) std::memcpy(packet.data() + kHeaderBytes, &value, 2);
  return packet;
}

VstorRequest Request(VstorOperation operation, uint16_t value = 0, size_t bytes = 64) {
  absl::StatusOr<VstorRequest> request = ParseVstorPacket(Packet(operation, value, bytes));
  EXPECT_TRUE(request.ok()) << request.status();
  return *request;
}

uint32_t U32At(const std::vector<uint8_t>& bytes, size_t offset) {
  uint32_t value = 0;
  if (offset + 4 <= bytes.size()) std::memcpy(&value, bytes.data() + offset, 4);
  return value;
}

uint32_t StatusOf(const VstorNegotiation::Answer& answer) { return U32At(answer.completion, 8); }

// Linux 6.x: BEGIN, QUERY_PROTOCOL_VERSION Win10 (refused), Win8.1 (accepted),
// QUERY_PROPERTIES, END, then CREATE_SUB_CHANNELS; every completion is COMPLETE_IO, 64 bytes.
TEST(VstorNegotiationTest, LinuxSixSequenceSettlesOnWin81AndGetsItsSubchannels) {
  VstorNegotiation negotiation({.max_subchannels = 3, .max_transfer_bytes = 0x40000});
  auto begin = negotiation.Handle(Request(VstorOperation::kBeginInitialization));
  EXPECT_EQ(begin.completion.size(), 64u);
  EXPECT_EQ(U32At(begin.completion, 0), static_cast<uint32_t>(VstorOperation::kCompleteIo));
  EXPECT_EQ(U32At(begin.completion, 4), 0u);  // flags
  EXPECT_EQ(StatusOf(begin), kNtSuccess);

  auto win10 = negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin10));
  EXPECT_EQ(StatusOf(win10), kNtRevisionMismatch);
  EXPECT_EQ(U32At(win10.completion, 0), static_cast<uint32_t>(VstorOperation::kCompleteIo));
  EXPECT_EQ(negotiation.version(), 0u);
  auto win81 = negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin8_1));
  EXPECT_EQ(StatusOf(win81), kNtSuccess);
  EXPECT_EQ(negotiation.version(), kVersionWin8_1);
  EXPECT_TRUE(negotiation.win8_srb());

  auto properties = negotiation.Handle(Request(VstorOperation::kQueryProperties));
  ASSERT_EQ(properties.completion.size(), 64u);
  EXPECT_EQ(StatusOf(properties), kNtSuccess);
  uint16_t max_channels;
  std::memcpy(&max_channels, properties.completion.data() + 0x10, 2);
  EXPECT_EQ(max_channels, 3u);
  EXPECT_EQ(U32At(properties.completion, 0x14), kSupportsMultiChannel);
  EXPECT_EQ(U32At(properties.completion, 0x18), 0x40000u);

  EXPECT_FALSE(negotiation.ready());
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kEndInitialization))), kNtSuccess);
  EXPECT_TRUE(negotiation.ready());

  auto create = negotiation.Handle(Request(VstorOperation::kCreateSubChannels, 1));
  EXPECT_EQ(StatusOf(create), kNtSuccess);
  ASSERT_TRUE(create.create_subchannels.has_value());
  EXPECT_EQ(*create.create_subchannels, 1u);
  // Once per initialization.
  auto again = negotiation.Handle(Request(VstorOperation::kCreateSubChannels, 1));
  EXPECT_EQ(StatusOf(again), kNtInvalidParameter);
  EXPECT_FALSE(again.create_subchannels.has_value());
}

// Linux before 6.0 sends 48-byte packets during initialization and offers Win7 and Win6 last;
// each completion is as long as its request.
TEST(VstorNegotiationTest, OlderLinuxGetsCompletionsAsLongAsItsRequests) {
  VstorNegotiation negotiation({});
  auto begin = negotiation.Handle(Request(VstorOperation::kBeginInitialization, 0, 48));
  EXPECT_EQ(begin.completion.size(), 48u);
  auto win7 = negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin7, 48));
  EXPECT_EQ(win7.completion.size(), 48u);
  EXPECT_EQ(StatusOf(win7), kNtSuccess);
  EXPECT_FALSE(negotiation.win8_srb());
  // Longer than 64 bytes: the body past 0x34 is ignored, the answer is 64 bytes.
  auto properties = negotiation.Handle(Request(VstorOperation::kQueryProperties, 0, 100));
  EXPECT_EQ(properties.completion.size(), 64u);
  // No subchannels configured: no multi-channel flag, and a request for them is refused.
  EXPECT_EQ(U32At(properties.completion, 0x14), 0u);
  auto create = negotiation.Handle(Request(VstorOperation::kCreateSubChannels, 1, 48));
  EXPECT_EQ(StatusOf(create), kNtInvalidParameter);
}

// Windows asks for subchannels before END_INITIALIZATION; a count above the maximum or 0 is
// refused with an answer.
TEST(VstorNegotiationTest, SubchannelsBeforeEndAndTheirBounds) {
  VstorNegotiation negotiation({.max_subchannels = 2});
  negotiation.Handle(Request(VstorOperation::kBeginInitialization));
  negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin8));
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kCreateSubChannels, 3))),
            kNtInvalidParameter);
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kCreateSubChannels, 0))),
            kNtInvalidParameter);
  auto two = negotiation.Handle(Request(VstorOperation::kCreateSubChannels, 2));
  EXPECT_EQ(StatusOf(two), kNtSuccess);
  EXPECT_EQ(two.create_subchannels.value_or(0), 2u);
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kEndInitialization))), kNtSuccess);
}

// Out of order, unknown or host-only operations are answered with an error, never ignored.
TEST(VstorNegotiationTest, RequestsOutOfOrderAreAnsweredWithErrors) {
  VstorNegotiation negotiation({});
  EXPECT_EQ(
      StatusOf(negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin8_1))),
      kNtInvalidDeviceState);  // Before BEGIN.
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kExecuteSrb))),
            kNtInvalidDeviceState);
  negotiation.Handle(Request(VstorOperation::kBeginInitialization));
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kQueryProperties))),
            kNtInvalidDeviceState);  // No version yet.
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kEndInitialization))),
            kNtInvalidDeviceState);
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kResetBus))),
            kNtInvalidDeviceState);
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kCompleteIo))),
            kNtInvalidDeviceRequest);
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kFcHbaData))),
            kNtInvalidDeviceRequest);
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(static_cast<VstorOperation>(99)))),
            kNtInvalidDeviceRequest);
  // A version request too short to hold a version.
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, 0, 13))),
            kNtInvalidParameter);
  // A version we do not speak, then one we do.
  EXPECT_EQ(StatusOf(negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, 0x0700))),
            kNtRevisionMismatch);
  EXPECT_EQ(
      StatusOf(negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin8_1))),
      kNtSuccess);
  // A second accepted version is out of order.
  EXPECT_EQ(
      StatusOf(negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin8))),
      kNtInvalidDeviceState);
  EXPECT_EQ(negotiation.version(), kVersionWin8_1);
}

// BEGIN_INITIALIZATION starts over from any state (a resumed guest), as does Reset.
TEST(VstorNegotiationTest, BeginStartsOver) {
  VstorNegotiation negotiation({.max_subchannels = 1});
  negotiation.Handle(Request(VstorOperation::kBeginInitialization));
  negotiation.Handle(Request(VstorOperation::kQueryProtocolVersion, kVersionWin8_1));
  negotiation.Handle(Request(VstorOperation::kEndInitialization));
  ASSERT_TRUE(negotiation.ready());
  negotiation.Handle(Request(VstorOperation::kBeginInitialization));
  EXPECT_FALSE(negotiation.ready());
  EXPECT_EQ(negotiation.version(), 0u);
  EXPECT_EQ(negotiation.state(), VstorNegotiation::State::kAwaitingVersion);
  negotiation.Reset();
  EXPECT_EQ(negotiation.state(), VstorNegotiation::State::kAwaitingBegin);
}

TEST(VstorProtocolTest, PacketsShorterThanTheHeaderAreRefused) {
  const std::vector<uint8_t> short_packet(11, 0);
  absl::StatusOr<VstorRequest> parsed = ParseVstorPacket(short_packet);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find("11-byte"), std::string::npos);
  absl::StatusOr<VstorRequest> header_only = ParseVstorPacket(std::vector<uint8_t>(12, 0));
  ASSERT_TRUE(header_only.ok());
  EXPECT_EQ(header_only->body_bytes, 0u);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
