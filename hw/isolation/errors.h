// Typed errors of the isolation models: the architectural event (fault, failed instruction,
// refused request) and its architectural code, attached to an absl::Status.
//
// A test asserts the exact event with GetIsolationError(status) instead of parsing the message.
// Errors that come from guestmem (kPinned, kOutOfRange, ...) keep their guestmem::ErrorKind and
// gain the model's context in the message; they carry no IsolationError.
#ifndef CVMBUS_HW_ISOLATION_ERRORS_H_
#define CVMBUS_HW_ISOLATION_ERRORS_H_

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace cvmbus::hw::isolation {

enum class IsolationErrorKind {
  // SEV-SNP (AMD APM vol. 2, section 15.36).
  kRmpPageFault,       // Host access faulted on the RMP: #PF, code = page-fault error code.
  kVmmCommunication,   // Guest #VC, code = the #VC error code (0x404 PAGE_NOT_VALIDATED).
  kNestedPageFault,    // Guest #NPF, code = EXITINFO1 (bits 31 RMP, 34 ENC, 35 SIZEM, ...).
  kPvalidateNoUpdate,  // PVALIDATE left the validated bit as it was (rFLAGS.CF = 1), code 0.
  kPageStateChange,    // The host refused or failed a page-state change, code = GHCB error.
  // TDX (Intel TDX module spec, GHCI).
  kTdxStatus,         // A TDCALL failed, code = the completion status returned in RAX.
  kTdxVmcall,         // A TDG.VP.VMCALL failed, code = the status returned in R10.
  kTdxEptViolation,   // No mapping for the access (shared page, hole): code = exit reason 48.
  kTdxPendingAccess,  // Private access to a page not yet accepted: code = exit reason 48.
};

std::string_view IsolationErrorKindName(IsolationErrorKind kind);

struct IsolationError {
  IsolationErrorKind kind;
  uint64_t code = 0;

  bool operator==(const IsolationError& other) const {
    return kind == other.kind && code == other.code;
  }
};

// Builds a status with `code` (the absl code) and `message`, carrying `error`.
absl::Status MakeIsolationError(absl::StatusCode code, IsolationError error,
                                std::string_view message);

// The IsolationError attached by MakeIsolationError, or nullopt for OK and other statuses.
std::optional<IsolationError> GetIsolationError(const absl::Status& status);

}  // namespace cvmbus::hw::isolation

#endif  // CVMBUS_HW_ISOLATION_ERRORS_H_
