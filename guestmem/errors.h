// Typed errors for guest memory access.
//
// Every guestmem failure is an absl::Status whose message names the memory, the view, the
// operation and the GPA range, and which carries an ErrorKind that callers can test with
// GetErrorKind() instead of parsing the message.
#ifndef CVMBUS_GUESTMEM_ERRORS_H_
#define CVMBUS_GUESTMEM_ERRORS_H_

#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace cvmbus::guestmem {

enum class ErrorKind {
  kOutOfRange,       // A hole in the layout, or past the end of guest memory.
  kOverflow,         // An address or length computation wrapped around 2^64.
  kNotPrivate,       // The private view has no access to the page (it is shared or unvalidated).
  kNotShared,        // The untrusted view has no access to the page (it is private).
  kReadOnly,         // A write through a view that may only read the page.
  kMisaligned,       // An atomic or untorn access that is not naturally aligned.
  kInvalidRange,     // A malformed paged range (empty, offset >= 4096, too few pages, ...).
  kPinned,           // An access-state change on a page that a device has pinned.
  kInvalidArgument,  // A bad layout, option or size from the caller.
  kSystem,           // The kernel refused a mapping or file operation.
};

std::string_view ErrorKindName(ErrorKind kind);

// Builds a status of `kind` with `message`; the absl code follows the kind.
absl::Status MakeError(ErrorKind kind, std::string_view message);

// Returns the kind attached by MakeError, or nullopt for OK and foreign statuses.
std::optional<ErrorKind> GetErrorKind(const absl::Status& status);

// True if `status` carries exactly `kind`.
inline bool IsError(const absl::Status& status, ErrorKind kind) {
  return GetErrorKind(status) == kind;
}

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_ERRORS_H_
