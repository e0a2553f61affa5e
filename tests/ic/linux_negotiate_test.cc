// The guest-side model of vmbus_prep_negotiate_resp against the host's real request.
#include "paravisor/testing/linux_negotiate.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>

#include "paravisor/devices/ic/ic_negotiation.h"

namespace cvmbus::paravisor::ic::testing {
namespace {

std::vector<uint8_t> Request(absl::Span<const IcVersion> message_versions) {
  std::vector<uint8_t> payload = BuildNegotiateRequest(
      {.framework_versions = kHostFrameworkVersions, .message_versions = message_versions});
  payload.resize(16384, 0);
  return payload;
}

TEST(LinuxNegotiateTest, PicksItsNewestVersionTheHostOffers) {
  constexpr IcVersion kHost[] = {kShutdownVersion1, kShutdownVersion3};
  std::vector<uint8_t> buf = Request(kHost);
  const uint32_t recvlen = kIcBodyOffset + 8 + 4 * 4;
  const LinuxNegotiation result =
      PrepareNegotiateResponse(buf, recvlen, kLinuxFrameworkVersions, kLinuxShutdownVersions);
  EXPECT_TRUE(result.found);
  EXPECT_EQ(result.framework, kFrameworkVersion3);
  EXPECT_EQ(result.message, kShutdownVersion3);  // 3.2 and 3.1 were not offered.
  // hv_util's callback, not vmbus_prep_negotiate_resp, marks the buffer as a response.
  buf[kIcHeaderOffset + offsetof(IcMessageHeader, flags)] = kFlagTransaction | kFlagResponse;
  absl::StatusOr<IcVersions> parsed = ParseNegotiateResponse(
      absl::MakeConstSpan(buf.data(), recvlen),
      {.framework_versions = kHostFrameworkVersions, .message_versions = kHost});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->message, kShutdownVersion3);
}

TEST(LinuxNegotiateTest, NothingInCommonAnswersEmptyLists) {
  constexpr IcVersion kHost[] = {{5, 0}};
  std::vector<uint8_t> buf = Request(kHost);
  const uint32_t recvlen = kIcBodyOffset + 8 + 3 * 4;
  EXPECT_FALSE(
      PrepareNegotiateResponse(buf, recvlen, kLinuxFrameworkVersions, kLinuxHeartbeatVersions)
          .found);
  uint16_t counts[2];
  std::memcpy(counts, buf.data() + kIcBodyOffset, 4);
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[1], 0);
}

TEST(LinuxNegotiateTest, CountsPastTheReceivedBytesMatchNothing) {
  constexpr IcVersion kHost[] = {kHeartbeatVersion3};
  std::vector<uint8_t> buf = Request(kHost);
  EXPECT_FALSE(PrepareNegotiateResponse(buf, kIcBodyOffset + 8 + 4, kLinuxFrameworkVersions,
                                        kLinuxHeartbeatVersions)
                   .found);
}

}  // namespace
}  // namespace cvmbus::paravisor::ic::testing
