// Typed ring errors. A peer that corrupts a ring gets one of these, never a crash; the kinds
// name exactly what was wrong so tests (and ringtool) can assert them.
#ifndef CVMBUS_RING_ERRORS_H_
#define CVMBUS_RING_ERRORS_H_

#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace cvmbus::ring {

enum class RingError {
  kIndexOutOfRange,  // A peer index at or past the data size.
  kIndexUnaligned,   // A peer index that is not a multiple of 8.
  kTruncated,        // Fewer bytes available than a descriptor + trailer, or than length8
                     // says (trailer included).
  kBadDataOffset,    // data_offset8 < 2 (shorter than the descriptor).
  kBadLength,        // length8 < data_offset8.
  kBadTrailer,       // The trailer is not (start index) << 32.
  kUnknownType,      // A packet type this ring does not speak.
  kUnknownFlags,     // Flag bits other than completion-requested.
  kBadRanges,        // GPA-direct or transfer-page ranges: zero, truncated, past the header.
  kTooLarge,         // A packet larger than the ring (or the caller's limit) can ever hold.
  kFull,             // Not corruption: no room now. Retry after the peer signals.
};

std::string_view RingErrorName(RingError error);
absl::Status MakeRingError(RingError error, std::string_view message);
std::optional<RingError> GetRingError(const absl::Status& status);
inline bool IsRingError(const absl::Status& status, RingError error) {
  return GetRingError(status) == error;
}

}  // namespace cvmbus::ring

#endif  // CVMBUS_RING_ERRORS_H_
