// Typed errors: an absl::Status that carries a package's error-kind enum as a payload, so
// callers test the kind instead of parsing messages.
//
//   enum class RingError { ... };
//   absl::Status s = MakeTypedError(kRingErrorUrl, RingError::kBadTrailer,
//                                   absl::StatusCode::kDataLoss, "...");
//   GetTypedError<RingError>(kRingErrorUrl, s) == RingError::kBadTrailer
#ifndef CVMBUS_BASE_TYPED_ERROR_H_
#define CVMBUS_BASE_TYPED_ERROR_H_

#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/cord.h"

namespace cvmbus {

template <typename Kind>
absl::Status MakeTypedError(std::string_view payload_url, Kind kind, absl::StatusCode code,
                            std::string_view message) {
  static_assert(std::is_enum_v<Kind>);
  absl::Status status(code, absl::string_view(message.data(), message.size()));
  status.SetPayload(absl::string_view(payload_url.data(), payload_url.size()),
                    absl::Cord(std::to_string(static_cast<int>(kind))));
  return status;
}

// The kind stored by MakeTypedError under `payload_url`, if any and if it is at most `last`.
template <typename Kind>
std::optional<Kind> GetTypedError(std::string_view payload_url, const absl::Status& status,
                                  Kind last) {
  if (status.ok()) return std::nullopt;
  auto payload = status.GetPayload(absl::string_view(payload_url.data(), payload_url.size()));
  if (!payload.has_value()) return std::nullopt;
  const std::string text(*payload);
  if (text.empty() || text.size() > 4) return std::nullopt;
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  if (value > static_cast<int>(last)) return std::nullopt;
  return static_cast<Kind>(value);
}

}  // namespace cvmbus

#endif  // CVMBUS_BASE_TYPED_ERROR_H_
