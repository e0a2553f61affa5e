// A host program for tests (socat): found on PATH, spawned with an argument vector, killed and
// reaped when the test is done with it.
#ifndef CVMBUS_TESTS_HVSOCKET_HOST_PROGRAM_H_
#define CVMBUS_TESTS_HVSOCKET_HOST_PROGRAM_H_

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace cvmbus::paravisor::testing {

// The full path of `name` on $PATH, if it is there and executable.
std::optional<std::string> FindOnPath(const std::string& name);

// Waits until `path` exists (a socket a program is about to listen on).
bool WaitForPath(const std::string& path, std::chrono::milliseconds timeout);

// Waits until a Unix socket at `path` is listening (in /proc/net/unix with __SO_ACCEPTCON):
// socat creates the file at bind(2), before listen(2), and a connect between the two is
// refused.
bool WaitForListener(const std::string& path, std::chrono::milliseconds timeout);

// Reads a whole file (empty if it does not exist).
std::string ReadFile(const std::string& path);

class HostProgram {
 public:
  // Starts argv[0] (a full path) with `argv`; its output goes to the test's.
  static absl::StatusOr<HostProgram> Start(std::vector<std::string> argv);
  HostProgram(HostProgram&& other) noexcept : pid_(other.pid_) { other.pid_ = -1; }
  HostProgram& operator=(HostProgram&&) = delete;
  ~HostProgram();  // SIGKILL and reap, if it still runs.

  void Kill(int signal);
  // Waits for it to exit; its exit status, or kDeadlineExceeded.
  absl::StatusOr<int> Wait(std::chrono::milliseconds timeout);

 private:
  explicit HostProgram(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_TESTS_HVSOCKET_HOST_PROGRAM_H_
