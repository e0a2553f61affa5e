#include "paravisor/devices/ic/ic_message.h"

#include <fmt/format.h>

#include <algorithm>

#include "base/typed_error.h"

namespace cvmbus::paravisor::ic {
namespace {

constexpr std::string_view kIcErrorUrl = "cvmbus.paravisor.ic.IcError";

absl::StatusCode CodeOf(IcError error) {
  switch (error) {
    case IcError::kNoCommonVersion:
      return absl::StatusCode::kFailedPrecondition;
    case IcError::kUnknownTransaction:
      return absl::StatusCode::kNotFound;
    default:
      return absl::StatusCode::kInvalidArgument;
  }
}

}  // namespace

std::string_view IcErrorName(IcError error) {
  switch (error) {
    case IcError::kTooShort:
      return "too short";
    case IcError::kOversized:
      return "oversized";
    case IcError::kBadPipeHeader:
      return "bad pipe header";
    case IcError::kNotResponse:
      return "not a response";
    case IcError::kWrongMessageType:
      return "wrong message type";
    case IcError::kBadVersionCount:
      return "bad version count";
    case IcError::kNoCommonVersion:
      return "no common version";
    case IcError::kUnofferedVersion:
      return "unoffered version";
    case IcError::kBadBody:
      return "bad body";
    case IcError::kUnknownTransaction:
      return "unknown transaction";
    case IcError::kNotInBand:
      return "not in-band";
    case IcError::kUnexpectedRequest:
      return "unexpected request";
  }
  return "unknown";
}

absl::Status MakeIcError(IcError error, std::string_view message) {
  return MakeTypedError(kIcErrorUrl, error, CodeOf(error),
                        fmt::format("ic: {}: {}", IcErrorName(error), message));
}

std::optional<IcError> GetIcError(const absl::Status& status) {
  return GetTypedError(kIcErrorUrl, status, kLastIcError);
}

std::vector<uint8_t> EncodeIcRequest(uint16_t message_type, const IcVersions& versions,
                                     absl::Span<const uint8_t> body) {
  CVMBUS_IC_CHECK(kIcBodyOffset + body.size() <= kMaxIcPayloadBytes);
  const PipeHeader pipe{
      .packet_type = kPipePacketTypeData,
      .message_bytes = static_cast<uint32_t>(sizeof(IcMessageHeader) + body.size())};
  const IcMessageHeader header{.framework_version = versions.framework,
                               .message_type = message_type,
                               .message_version = versions.message,
                               .message_bytes = static_cast<uint16_t>(body.size()),
                               .status = kStatusOk,
                               .transaction_id = 0,
                               .flags = kFlagTransaction | kFlagRequest,
                               .reserved = {}};
  std::vector<uint8_t> payload(kIcBodyOffset + body.size());
  std::memcpy(payload.data(), &pipe, sizeof(pipe));
  std::memcpy(payload.data() + kIcHeaderOffset, &header, sizeof(header));
  if (!body.empty()) std::memcpy(payload.data() + kIcBodyOffset, body.data(), body.size());
  return payload;
}

absl::StatusOr<IcResponse> ParseIcResponse(absl::Span<const uint8_t> untrusted_payload,
                                           uint16_t expected_type) {
  const size_t size = untrusted_payload.size();
  if (size > kMaxIcPayloadBytes) {
    return MakeIcError(IcError::kOversized,
                       fmt::format("{} bytes, more than {}", size, kMaxIcPayloadBytes));
  }
  if (size < kIcBodyOffset) {
    return MakeIcError(IcError::kTooShort,
                       fmt::format("{} bytes, less than the {}-byte header", size, kIcBodyOffset));
  }
  // Fields are copied out of the packed structs once: fmt cannot bind packed members.
  const PipeHeader pipe = ReadWire<PipeHeader>(untrusted_payload);
  const uint32_t pipe_type = pipe.packet_type;
  const uint32_t pipe_bytes = pipe.message_bytes;
  if (pipe_type != kPipePacketTypeData || pipe_bytes > size - kPipeHeaderBytes) {
    return MakeIcError(
        IcError::kBadPipeHeader,
        fmt::format("type {} length {} in a {}-byte payload", pipe_type, pipe_bytes, size));
  }
  IcResponse response;
  response.header = ReadWire<IcMessageHeader>(untrusted_payload.subspan(kIcHeaderOffset));
  const unsigned flags = response.header.flags;
  const uint16_t message_type = response.header.message_type;
  const size_t body_bytes = response.header.message_bytes;
  constexpr uint8_t kResponseFlags = kFlagTransaction | kFlagResponse;
  if ((flags & kResponseFlags) != kResponseFlags) {
    if ((flags & kFlagRequest) != 0) {
      return MakeIcError(IcError::kUnexpectedRequest,
                         fmt::format("flags {:#x} on message type {}", flags, message_type));
    }
    return MakeIcError(IcError::kNotResponse, fmt::format("flags {:#x}", flags));
  }
  if (message_type != expected_type) {
    return MakeIcError(
        IcError::kWrongMessageType,
        fmt::format("type {} answers a request of type {}", message_type, expected_type));
  }
  if (body_bytes > size - kIcBodyOffset) {
    return MakeIcError(IcError::kTooShort, fmt::format("icmsgsize {} past the {} body bytes",
                                                       body_bytes, size - kIcBodyOffset));
  }
  const absl::Span<const uint8_t> body = untrusted_payload.subspan(kIcBodyOffset, body_bytes);
  response.body.assign(body.begin(), body.end());
  return response;
}

}  // namespace cvmbus::paravisor::ic
