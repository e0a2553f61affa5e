#include "paravisor/devices/ic/ic_negotiation.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

namespace cvmbus::paravisor::ic {
namespace {

bool Offered(absl::Span<const IcVersion> list, IcVersion version) {
  return std::find(list.begin(), list.end(), version) != list.end();
}

std::string FormatVersion(IcVersion version) {
  const unsigned major = version.major;
  const unsigned minor = version.minor;
  return fmt::format("{}.{}", major, minor);
}

}  // namespace

std::vector<uint8_t> BuildNegotiateRequest(const NegotiateOffer& offer) {
  CVMBUS_IC_CHECK(!offer.framework_versions.empty() && !offer.message_versions.empty());
  CVMBUS_IC_CHECK(offer.framework_versions.size() <= kMaxNegotiateVersionCount);
  CVMBUS_IC_CHECK(offer.message_versions.size() <= kMaxNegotiateVersionCount);
  const NegotiateMessage negotiate{
      .framework_version_count = static_cast<uint16_t>(offer.framework_versions.size()),
      .message_version_count = static_cast<uint16_t>(offer.message_versions.size()),
      .reserved = 0};
  std::vector<uint8_t> body = WireBytes(negotiate);
  for (const absl::Span<const IcVersion> list :
       {offer.framework_versions, offer.message_versions}) {
    for (const IcVersion& version : list) {
      const std::vector<uint8_t> bytes = WireBytes(version);
      body.insert(body.end(), bytes.begin(), bytes.end());
    }
  }
  return EncodeIcRequest(kMessageTypeNegotiate, IcVersions{}, body);
}

absl::StatusOr<IcVersions> ParseNegotiateResponse(absl::Span<const uint8_t> untrusted_payload,
                                                  const NegotiateOffer& offer) {
  absl::StatusOr<IcResponse> response = ParseIcResponse(untrusted_payload, kMessageTypeNegotiate);
  if (!response.ok()) return response.status();
  const std::vector<uint8_t>& body = response->body;
  if (body.size() < sizeof(NegotiateMessage)) {
    return MakeIcError(IcError::kTooShort, fmt::format("negotiate body of {} bytes, less than {}",
                                                       body.size(), sizeof(NegotiateMessage)));
  }
  const NegotiateMessage negotiate = ReadWire<NegotiateMessage>(body);
  const uint32_t framework_count = negotiate.framework_version_count;
  const uint32_t message_count = negotiate.message_version_count;
  if (framework_count > kMaxNegotiateVersionCount || message_count > kMaxNegotiateVersionCount) {
    return MakeIcError(IcError::kBadVersionCount,
                       fmt::format("{} framework and {} message versions, over {}", framework_count,
                                   message_count, kMaxNegotiateVersionCount));
  }
  const size_t needed =
      sizeof(NegotiateMessage) + (framework_count + message_count) * sizeof(IcVersion);
  if (body.size() < needed) {
    return MakeIcError(IcError::kTooShort,
                       fmt::format("{} + {} versions need {} bytes, the body has {}",
                                   framework_count, message_count, needed, body.size()));
  }
  if (framework_count == 0 && message_count == 0) {
    return MakeIcError(IcError::kNoCommonVersion, "the guest answered with no versions");
  }
  if (framework_count != 1 || message_count != 1) {
    return MakeIcError(IcError::kBadVersionCount,
                       fmt::format("{} framework and {} message versions, not 1 and 1",
                                   framework_count, message_count));
  }
  if (const uint32_t status = response->header.status; status != kStatusOk) {
    return MakeIcError(IcError::kBadBody,
                       fmt::format("negotiate answered with status {:#x}", status));
  }
  const absl::Span<const uint8_t> versions =
      absl::MakeConstSpan(body).subspan(sizeof(NegotiateMessage));
  const IcVersions chosen{.framework = ReadWire<IcVersion>(versions),
                          .message = ReadWire<IcVersion>(versions.subspan(sizeof(IcVersion)))};
  if (!Offered(offer.framework_versions, chosen.framework) ||
      !Offered(offer.message_versions, chosen.message)) {
    return MakeIcError(IcError::kUnofferedVersion,
                       fmt::format("framework {} message {}", FormatVersion(chosen.framework),
                                   FormatVersion(chosen.message)));
  }
  return chosen;
}

}  // namespace cvmbus::paravisor::ic
