#include "guestmem/errors.h"

#include <string>

#include "absl/strings/cord.h"

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
  absl::Status status(CodeFor(kind), absl::string_view(message.data(), message.size()));
  status.SetPayload(kKindPayloadUrl, absl::Cord(std::to_string(static_cast<int>(kind))));
  return status;
}

std::optional<ErrorKind> GetErrorKind(const absl::Status& status) {
  if (status.ok()) return std::nullopt;
  auto payload = status.GetPayload(kKindPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  const std::string text(*payload);
  if (text.empty() || text.size() > 2) return std::nullopt;
  int value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  if (value > static_cast<int>(ErrorKind::kSystem)) return std::nullopt;
  return static_cast<ErrorKind>(value);
}

}  // namespace cvmbus::guestmem
