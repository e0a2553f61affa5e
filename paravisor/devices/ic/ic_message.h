// One IC message on the wire: the host's requests encoded, the guest's responses parsed.
//
// A response is parsed from the private copy the ring reader made of the packet (the guest
// cannot change it under us); every field is read once into a local copy, validated, and the
// body returned is our own copy. A malformed response is an IcError (a typed absl::Status)
// naming what was wrong, never a crash.
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_IC_MESSAGE_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_IC_MESSAGE_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/devices/ic/ic_protocol.h"

namespace cvmbus::paravisor::ic {

enum class IcError {
  kTooShort,            // Shorter than ICMSG_HDR, or than a length field or the service needs.
  kOversized,           // Longer than Linux's 4 KiB receive buffer (kMaxIcPayloadBytes).
  kBadPipeHeader,       // Not PIPE_PACKET_TYPE_DATA, or a length past the payload.
  kNotResponse,         // icflags without TRANSACTION | RESPONSE.
  kWrongMessageType,    // A response whose icmsgtype is not the request's.
  kBadVersionCount,     // Negotiate counts over 100, past the bytes, or other than 1 and 1.
  kNoCommonVersion,     // The guest answered 0 and 0: it shares no version with our offer.
  kUnofferedVersion,    // The guest chose a version we never offered.
  kBadBody,             // A service body that breaks the service's rule (a wrong sequence).
  kUnknownTransaction,  // A packet whose transaction id matches no request we sent.
  kNotInBand,           // A ring packet that is not in-band data.
  kUnexpectedRequest,   // The guest sent a request; these ICs only answer.
};
inline constexpr IcError kLastIcError = IcError::kUnexpectedRequest;

std::string_view IcErrorName(IcError error);
absl::Status MakeIcError(IcError error, std::string_view message);
std::optional<IcError> GetIcError(const absl::Status& status);
inline bool IsIcError(const absl::Status& status, IcError error) {
  return GetIcError(status) == error;
}

// Our own invariants only (never guest input): reports and aborts.
#define CVMBUS_IC_CHECK(condition)                                                       \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

// The versions one channel negotiated.
struct IcVersions {
  IcVersion framework;
  IcVersion message;
  friend bool operator==(const IcVersions&, const IcVersions&) = default;
};

// A request's payload: pipe header, icmsg_hdr (flags TRANSACTION | REQUEST, status 0,
// ictransaction_id 0 as Hyper-V sends) and `body`. Precondition: the body fits
// kMaxIcPayloadBytes (our own constant sizes; CHECKed).
std::vector<uint8_t> EncodeIcRequest(uint16_t message_type, const IcVersions& versions,
                                     absl::Span<const uint8_t> body);

// A parsed response: the header as received and a private copy of its body (icmsgsize bytes).
struct IcResponse {
  IcMessageHeader header{};
  std::vector<uint8_t> body;
};

// Parses the payload of a guest packet that answers a request of `expected_type`. Errors:
// kOversized, kTooShort, kBadPipeHeader, kNotResponse, kWrongMessageType.
absl::StatusOr<IcResponse> ParseIcResponse(absl::Span<const uint8_t> untrusted_payload,
                                           uint16_t expected_type);

// The bytes of a wire struct, and a struct read from the front of a body (the bytes it lacks
// read as zero; callers check the length they need first).
template <typename T>
std::vector<uint8_t> WireBytes(const T& value) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::vector<uint8_t> bytes(sizeof(T));
  std::memcpy(bytes.data(), &value, sizeof(T));
  return bytes;
}
template <typename T>
T ReadWire(absl::Span<const uint8_t> bytes) {
  static_assert(std::is_trivially_copyable_v<T>);
  T value{};
  std::memcpy(&value, bytes.data(), std::min(bytes.size(), sizeof(T)));
  return value;
}

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_IC_MESSAGE_H_
