// Host-side negotiation: the request Hyper-V sends (known answer), the answers Linux gives, and
// one test per corruption of the answer.
#include "paravisor/devices/ic/ic_negotiation.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace cvmbus::paravisor::ic {
namespace {

constexpr IcVersion kMessageVersions[] = {kHeartbeatVersion1, kHeartbeatVersion3};
constexpr NegotiateOffer kOffer{.framework_versions = kHostFrameworkVersions,
                                .message_versions = kMessageVersions};

void Put16(std::vector<uint8_t>& bytes, size_t at, uint16_t value) {
  std::memcpy(bytes.data() + at, &value, 2);
}

// Linux's answer to our request, built as vmbus_prep_negotiate_resp does: icmsgsize 0x10, the
// counts set to `framework_count` and `message_count`, the chosen pair in slots 0 and 1, the
// buffer otherwise as received.
std::vector<uint8_t> Answer(IcVersion framework, IcVersion message, uint16_t framework_count = 1,
                            uint16_t message_count = 1) {
  std::vector<uint8_t> payload = BuildNegotiateRequest(kOffer);
  payload[kIcHeaderOffset + 17] = kFlagTransaction | kFlagResponse;
  Put16(payload, kIcHeaderOffset + 10, 0x10);
  Put16(payload, kIcBodyOffset, framework_count);
  Put16(payload, kIcBodyOffset + 2, message_count);
  std::memcpy(payload.data() + kIcBodyOffset + 8, &framework, 4);
  std::memcpy(payload.data() + kIcBodyOffset + 12, &message, 4);
  return payload;
}

TEST(IcNegotiationTest, RequestKnownAnswer) {
  const std::vector<uint8_t> payload = BuildNegotiateRequest(kOffer);
  const std::vector<uint8_t> expected = {
      1, 0, 0,  0, 44, 0, 0, 0,  // pipe: DATA, 20 + 24 bytes
      0, 0, 0,  0, 0,  0, 0, 0,  // icverframe 0.0, icmsgtype NEGOTIATE, icvermsg 0.0 (low half)
      0, 0, 24, 0,               // icvermsg (high half), icmsgsize 24
      0, 0, 0,  0, 0,  3, 0, 0,  // status, transaction 0, flags TRANSACTION | REQUEST
      2, 0, 2,  0, 0,  0, 0, 0,  // 2 framework versions, 2 message versions
      1, 0, 0,  0, 3,  0, 0, 0,  // framework 1.0, 3.0
      1, 0, 0,  0, 3,  0, 0, 0,  // heartbeat 1.0, 3.0
  };
  EXPECT_EQ(payload, expected);
}

TEST(IcNegotiationTest, AcceptsTheChosenPair) {
  absl::StatusOr<IcVersions> versions =
      ParseNegotiateResponse(Answer(kFrameworkVersion3, kHeartbeatVersion3), kOffer);
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_EQ(versions->framework, kFrameworkVersion3);
  EXPECT_EQ(versions->message, kHeartbeatVersion3);
}

TEST(IcNegotiationTest, NoCommonVersion) {
  const absl::Status status = ParseNegotiateResponse(Answer({2, 0}, {0, 0}, 0, 0), kOffer).status();
  EXPECT_TRUE(IsIcError(status, IcError::kNoCommonVersion)) << status;
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(IcNegotiationTest, CountsOverTheLimit) {
  const absl::Status status =
      ParseNegotiateResponse(Answer(kFrameworkVersion3, kHeartbeatVersion3, 101, 1), kOffer)
          .status();
  EXPECT_TRUE(IsIcError(status, IcError::kBadVersionCount)) << status;
}

TEST(IcNegotiationTest, CountsPastTheBytes) {
  // 1 + 5 versions need 32 bytes; the 24-byte body (and icmsgsize) has fewer.
  const absl::Status status =
      ParseNegotiateResponse(Answer(kFrameworkVersion3, kHeartbeatVersion3, 1, 5), kOffer).status();
  EXPECT_TRUE(IsIcError(status, IcError::kTooShort)) << status;
}

TEST(IcNegotiationTest, CountsOtherThanOneAndOne) {
  // A framework version but no message version (fits the 16-byte body Linux declares).
  const absl::Status status =
      ParseNegotiateResponse(Answer(kFrameworkVersion3, kHeartbeatVersion3, 1, 0), kOffer).status();
  EXPECT_TRUE(IsIcError(status, IcError::kBadVersionCount)) << status;
}

TEST(IcNegotiationTest, UnofferedFrameworkVersion) {
  const absl::Status status =
      ParseNegotiateResponse(Answer({2, 0}, kHeartbeatVersion3), kOffer).status();
  EXPECT_TRUE(IsIcError(status, IcError::kUnofferedVersion)) << status;
  EXPECT_EQ(status.message(), "ic: unoffered version: framework 2.0 message 3.0");
}

TEST(IcNegotiationTest, UnofferedMessageVersion) {
  const absl::Status status =
      ParseNegotiateResponse(Answer(kFrameworkVersion3, {3, 1}), kOffer).status();
  EXPECT_TRUE(IsIcError(status, IcError::kUnofferedVersion)) << status;
}

TEST(IcNegotiationTest, NoNegotiateBody) {
  std::vector<uint8_t> payload = Answer(kFrameworkVersion3, kHeartbeatVersion3);
  Put16(payload, kIcHeaderOffset + 10, 4);  // icmsgsize: half an icmsg_negotiate.
  EXPECT_TRUE(IsIcError(ParseNegotiateResponse(payload, kOffer).status(), IcError::kTooShort));
}

TEST(IcNegotiationTest, FailureStatus) {
  std::vector<uint8_t> payload = Answer(kFrameworkVersion3, kHeartbeatVersion3);
  const uint32_t fail = kStatusFail;
  std::memcpy(payload.data() + kIcHeaderOffset + 12, &fail, 4);
  EXPECT_TRUE(IsIcError(ParseNegotiateResponse(payload, kOffer).status(), IcError::kBadBody));
}

TEST(IcNegotiationTest, AnswerOfAnotherType) {
  std::vector<uint8_t> payload = Answer(kFrameworkVersion3, kHeartbeatVersion3);
  Put16(payload, kIcHeaderOffset + 4, kMessageTypeHeartbeat);
  EXPECT_TRUE(
      IsIcError(ParseNegotiateResponse(payload, kOffer).status(), IcError::kWrongMessageType));
}

}  // namespace
}  // namespace cvmbus::paravisor::ic
