#include "hw/isolation/errors.h"

#include <fmt/format.h>

#include <string>

#include "absl/strings/cord.h"

namespace cvmbus::hw::isolation {
namespace {

constexpr char kPayloadUrl[] = "cvmbus.dev/hw.isolation.IsolationError";
constexpr int kLastKind = static_cast<int>(IsolationErrorKind::kTdxPendingAccess);

}  // namespace

std::string_view IsolationErrorKindName(IsolationErrorKind kind) {
  switch (kind) {
    case IsolationErrorKind::kRmpPageFault:
      return "RMP #PF";
    case IsolationErrorKind::kVmmCommunication:
      return "#VC";
    case IsolationErrorKind::kNestedPageFault:
      return "#NPF";
    case IsolationErrorKind::kPvalidateNoUpdate:
      return "PVALIDATE no update";
    case IsolationErrorKind::kPageStateChange:
      return "page state change refused";
    case IsolationErrorKind::kTdxStatus:
      return "TDCALL error";
    case IsolationErrorKind::kTdxVmcall:
      return "TDG.VP.VMCALL error";
    case IsolationErrorKind::kTdxEptViolation:
      return "EPT violation";
    case IsolationErrorKind::kTdxPendingAccess:
      return "access to a pending page";
  }
  return "unknown";
}

absl::Status MakeIsolationError(absl::StatusCode code, IsolationError error,
                                std::string_view message) {
  absl::Status status(code, absl::string_view(message.data(), message.size()));
  // Payload text: "<kind>:<code in hex>", parsed strictly by GetIsolationError.
  status.SetPayload(kPayloadUrl,
                    absl::Cord(fmt::format("{}:{:x}", static_cast<int>(error.kind), error.code)));
  return status;
}

std::optional<IsolationError> GetIsolationError(const absl::Status& status) {
  if (status.ok()) return std::nullopt;
  const auto payload = status.GetPayload(kPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  const std::string text(*payload);
  const size_t colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 2 || text.size() - colon - 1 > 16 ||
      colon + 1 == text.size()) {
    return std::nullopt;
  }
  int kind = 0;
  for (size_t i = 0; i < colon; ++i) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
    kind = kind * 10 + (text[i] - '0');
  }
  if (kind > kLastKind) return std::nullopt;
  uint64_t code = 0;
  for (size_t i = colon + 1; i < text.size(); ++i) {
    const char c = text[i];
    uint64_t digit;
    if (c >= '0' && c <= '9') {
      digit = static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      digit = static_cast<uint64_t>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
    code = (code << 4) | digit;
  }
  return IsolationError{static_cast<IsolationErrorKind>(kind), code};
}

}  // namespace cvmbus::hw::isolation
