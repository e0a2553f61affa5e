// The IC frame: a known-answer request, and one test per way a response can be malformed.
#include "paravisor/devices/ic/ic_message.h"

#include <gtest/gtest.h>

#include <vector>

namespace cvmbus::paravisor::ic {
namespace {

constexpr IcVersions kVersions{.framework = kFrameworkVersion3, .message = kHeartbeatVersion3};

// A request turned into Linux's answer the way hv_util does it: flags rewritten in place.
std::vector<uint8_t> AsResponse(std::vector<uint8_t> payload, uint32_t status = kStatusOk) {
  payload[kIcHeaderOffset + 17] = kFlagTransaction | kFlagResponse;
  std::memcpy(payload.data() + kIcHeaderOffset + 12, &status, 4);
  return payload;
}

TEST(IcMessageTest, RequestKnownAnswer) {
  const std::vector<uint8_t> body = {0xaa, 0xbb, 0xcc};
  const std::vector<uint8_t> payload = EncodeIcRequest(kMessageTypeHeartbeat, kVersions, body);
  const std::vector<uint8_t> expected = {1,    0,    0,   0,
                                         23,   0,    0,   0,  // vmbuspipe_hdr: DATA, 20 + 3 bytes
                                         3,    0,    0,   0,  // icverframe 3.0
                                         1,    0,             // icmsgtype HEARTBEAT
                                         3,    0,    0,   0,  // icvermsg 3.0
                                         3,    0,             // icmsgsize
                                         0,    0,    0,   0,  // status
                                         0,                   // ictransaction_id
                                         3,                   // icflags TRANSACTION | REQUEST
                                         0,    0,             // reserved
                                         0xaa, 0xbb, 0xcc};
  EXPECT_EQ(payload, expected);
}

TEST(IcMessageTest, ParsesLinuxAnswer) {
  std::vector<uint8_t> payload =
      AsResponse(EncodeIcRequest(kMessageTypeShutdown, kVersions, {1, 2, 3, 4}), kStatusFail);
  payload.resize(40, 0);  // Linux sends back its padded receive length.
  absl::StatusOr<IcResponse> response = ParseIcResponse(payload, kMessageTypeShutdown);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->header.status, kStatusFail);
  EXPECT_EQ(response->body, (std::vector<uint8_t>{1, 2, 3, 4}));
}

TEST(IcMessageTest, ShorterThanTheHeader) {
  const std::vector<uint8_t> payload(27, 0);
  EXPECT_TRUE(IsIcError(ParseIcResponse(payload, 1).status(), IcError::kTooShort));
}

TEST(IcMessageTest, Oversized) {
  std::vector<uint8_t> payload = AsResponse(EncodeIcRequest(1, kVersions, {}));
  payload.resize(kMaxIcPayloadBytes + 8);
  EXPECT_TRUE(IsIcError(ParseIcResponse(payload, 1).status(), IcError::kOversized));
}

TEST(IcMessageTest, PipeTypeNotData) {
  std::vector<uint8_t> payload = AsResponse(EncodeIcRequest(1, kVersions, {}));
  payload[0] = 2;  // PIPE_PACKET_TYPE_PARTIAL
  EXPECT_TRUE(IsIcError(ParseIcResponse(payload, 1).status(), IcError::kBadPipeHeader));
}

TEST(IcMessageTest, PipeLengthPastThePayload) {
  std::vector<uint8_t> payload = AsResponse(EncodeIcRequest(1, kVersions, {}));
  payload[4] = 21;  // 20 bytes follow the pipe header.
  EXPECT_TRUE(IsIcError(ParseIcResponse(payload, 1).status(), IcError::kBadPipeHeader));
}

TEST(IcMessageTest, NotAResponse) {
  std::vector<uint8_t> payload = AsResponse(EncodeIcRequest(1, kVersions, {}));
  payload[kIcHeaderOffset + 17] = kFlagTransaction;
  const absl::Status status = ParseIcResponse(payload, 1).status();
  EXPECT_TRUE(IsIcError(status, IcError::kNotResponse)) << status;
}

TEST(IcMessageTest, ARequestFromTheGuest) {
  const std::vector<uint8_t> payload = EncodeIcRequest(1, kVersions, {});
  EXPECT_TRUE(IsIcError(ParseIcResponse(payload, 1).status(), IcError::kUnexpectedRequest));
}

TEST(IcMessageTest, WrongMessageType) {
  const std::vector<uint8_t> payload = AsResponse(EncodeIcRequest(4, kVersions, {}));
  const absl::Status status = ParseIcResponse(payload, 1).status();
  EXPECT_TRUE(IsIcError(status, IcError::kWrongMessageType)) << status;
  EXPECT_EQ(status.message(), "ic: wrong message type: type 4 answers a request of type 1");
}

TEST(IcMessageTest, BodyLengthPastThePayload) {
  std::vector<uint8_t> payload = AsResponse(EncodeIcRequest(1, kVersions, {1, 2, 3, 4}));
  payload[kIcHeaderOffset + 10] = 5;  // icmsgsize 5, 4 bytes present.
  EXPECT_TRUE(IsIcError(ParseIcResponse(payload, 1).status(), IcError::kTooShort));
}

}  // namespace
}  // namespace cvmbus::paravisor::ic
