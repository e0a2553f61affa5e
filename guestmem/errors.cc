#include "guestmem/errors.h"

#include "base/typed_error.h"

namespace cvmbus::guestmem {
namespace {

constexpr char kKindPayloadUrl[] = "cvmbus.dev/guestmem.ErrorKind";

absl::StatusCode CodeFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kOutOfRange:
    case ErrorKind::kOverflow:
      return absl::StatusCode::kOutOfRange;
    case ErrorKind::kNotPrivate:
    case ErrorKind::kNotShared:
    case ErrorKind::kReadOnly:
      return absl::StatusCode::kPermissionDenied;
    case ErrorKind::kPinned:
      return absl::StatusCode::kFailedPrecondition;
    case ErrorKind::kSystem:
      return absl::StatusCode::kInternal;
    case ErrorKind::kMisaligned:
    case ErrorKind::kInvalidRange:
    case ErrorKind::kInvalidArgument:
      return absl::StatusCode::kInvalidArgument;
  }
  return absl::StatusCode::kUnknown;
}

}  // namespace

std::string_view ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kOutOfRange:
      return "out of range";
    case ErrorKind::kOverflow:
      return "overflow";
    case ErrorKind::kNotPrivate:
      return "not private";
    case ErrorKind::kNotShared:
      return "not shared";
    case ErrorKind::kReadOnly:
      return "read-only";
    case ErrorKind::kMisaligned:
      return "misaligned";
    case ErrorKind::kInvalidRange:
      return "invalid range";
    case ErrorKind::kPinned:
      return "pinned";
    case ErrorKind::kInvalidArgument:
      return "invalid argument";
    case ErrorKind::kSystem:
      return "system error";
  }
  return "unknown";
}

absl::Status MakeError(ErrorKind kind, std::string_view message) {
  return MakeTypedError(kKindPayloadUrl, kind, CodeFor(kind), message);
}

std::optional<ErrorKind> GetErrorKind(const absl::Status& status) {
  return GetTypedError(kKindPayloadUrl, status, ErrorKind::kSystem);
}

}  // namespace cvmbus::guestmem
