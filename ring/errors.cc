#include "ring/errors.h"

#include "base/typed_error.h"

namespace cvmbus::ring {
namespace {
constexpr char kRingErrorUrl[] = "cvmbus.dev/ring.RingError";
}  // namespace

std::string_view RingErrorName(RingError error) {
  switch (error) {
    case RingError::kIndexOutOfRange:
      return "index out of range";
    case RingError::kIndexUnaligned:
      return "index unaligned";
    case RingError::kTruncated:
      return "truncated";
    case RingError::kBadDataOffset:
      return "bad data offset";
    case RingError::kBadLength:
      return "bad length";
    case RingError::kBadTrailer:
      return "bad trailer";
    case RingError::kUnknownType:
      return "unknown type";
    case RingError::kUnknownFlags:
      return "unknown flags";
    case RingError::kBadRanges:
      return "bad ranges";
    case RingError::kTooLarge:
      return "too large";
    case RingError::kFull:
      return "full";
  }
  return "unknown";
}

absl::Status MakeRingError(RingError error, std::string_view message) {
  const absl::StatusCode code = error == RingError::kFull       ? absl::StatusCode::kUnavailable
                                : error == RingError::kTooLarge ? absl::StatusCode::kOutOfRange
                                                                : absl::StatusCode::kDataLoss;
  return MakeTypedError(kRingErrorUrl, error, code, message);
}

std::optional<RingError> GetRingError(const absl::Status& status) {
  return GetTypedError(kRingErrorUrl, status, RingError::kFull);
}

}  // namespace cvmbus::ring
