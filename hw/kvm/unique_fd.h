// UniqueFd: sole owner of one file descriptor, closed when the owner goes away.
#ifndef CVMBUS_HW_KVM_UNIQUE_FD_H_
#define CVMBUS_HW_KVM_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace cvmbus::hw::kvm {

class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of `fd` (-1: owns nothing).
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  // Closes the descriptor owned now and takes ownership of `fd`.
  void Reset(int fd = -1) {
    // close(2) releases the descriptor even when it reports EINTR: never retry it.
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_UNIQUE_FD_H_
