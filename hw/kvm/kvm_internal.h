// Helpers shared by kvm_vm.cc and kvm_vcpu.cc; not part of the package's interface.
#ifndef CVMBUS_HW_KVM_KVM_INTERNAL_H_
#define CVMBUS_HW_KVM_KVM_INTERNAL_H_

#include <errno.h>
#include <fmt/format.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cvmbus::hw::kvm::internal {

inline std::string Errno(int error) { return std::strerror(error); }

inline absl::Status KvmError(absl::StatusCode code, std::string_view device, std::string_view what,
                             int error) {
  return absl::Status(code, fmt::format("kvm '{}': {}: {}", device, what, Errno(error)));
}

// The absl code for a failed KVM ioctl whose errno says the arguments were wrong.
inline absl::StatusCode CodeFor(int error) {
  switch (error) {
    case EINVAL:
    case EFAULT:
    case EBADF:
      return absl::StatusCode::kInvalidArgument;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case ENOENT:
      return absl::StatusCode::kNotFound;
    case ENOMEM:
    case ENOSPC:
    case E2BIG:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

// Checks one KVM capability on `fd` (the device or a VM); returns its value (> 0).
inline absl::StatusOr<int> RequireCapability(int fd, std::string_view device, long capability,
                                             std::string_view name) {
  const int value = ioctl(fd, KVM_CHECK_EXTENSION, capability);
  if (value <= 0) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': lacks capability {} ({})", device, name, capability));
  }
  return value;
}

}  // namespace cvmbus::hw::kvm::internal

#endif  // CVMBUS_HW_KVM_KVM_INTERNAL_H_
