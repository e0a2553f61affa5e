// Helpers shared by the KVM tests: the /dev/kvm skip check, ASSERT_OK, and a bounded wait on
// an eventfd.
#ifndef CVMBUS_HW_KVM_TESTING_TEST_SUPPORT_H_
#define CVMBUS_HW_KVM_TESTING_TEST_SUPPORT_H_

#include <errno.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/testing/status_testing.h"

namespace cvmbus::hw::kvm::testing {

// True if this process may open /dev/kvm read-write.
inline bool KvmAvailable() { return access("/dev/kvm", R_OK | W_OK) == 0; }

// Skips the current test, saying why, where there is no usable /dev/kvm.
#define CVMBUS_SKIP_WITHOUT_KVM()                                                            \
  do {                                                                                       \
    if (!::cvmbus::hw::kvm::testing::KvmAvailable()) {                                       \
      GTEST_SKIP() << "/dev/kvm is absent or not read-write for this user: this test needs " \
                      "a real KVM";                                                          \
    }                                                                                        \
  } while (0)

// Waits up to `timeout` for `fd` (an eventfd) to become readable, then reads its 8-byte count.
// kDeadlineExceeded if it did not; never blocks longer than `timeout`.
inline absl::StatusOr<uint64_t> ReadEventFd(int fd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms < 0) break;
    pollfd waiting{.fd = fd, .events = POLLIN, .revents = 0};
    const int ready = poll(&waiting, 1, static_cast<int>(left_ms) + 1);
    if (ready < 0 && errno != EINTR) {
      return absl::InternalError(std::string("poll: ") + std::strerror(errno));
    }
    if (ready > 0) {
      uint64_t count = 0;
      if (read(fd, &count, sizeof(count)) == sizeof(count)) return count;
      if (errno != EAGAIN && errno != EINTR) {
        return absl::InternalError(std::string("read: ") + std::strerror(errno));
      }
    }
  }
  return absl::DeadlineExceededError("the eventfd was not signalled in time");
}

// The count a non-blocking eventfd holds now (0 if none), without waiting.
inline uint64_t DrainEventFd(int fd) {
  uint64_t count = 0;
  return read(fd, &count, sizeof(count)) == sizeof(count) ? count : 0;
}

}  // namespace cvmbus::hw::kvm::testing

#endif  // CVMBUS_HW_KVM_TESTING_TEST_SUPPORT_H_
