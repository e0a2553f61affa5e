// The demo's storage: the daemon's storvsp SCSI controller (the one Linux's storvsc binds to)
// over a temporary file, driven by the storvsc guest exactly as Linux initializes it, with one
// subchannel. Shows data written through one channel coming back through the other and lying
// in the file byte for byte, and a bad request answered with sense data.
#ifndef CVMBUS_PARAVISOR_DEMO_STORAGE_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_STORAGE_DEMO_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "paravisor/daemon/daemon.h"

namespace cvmbus::paravisor {

class StorageDemo {
 public:
  // Creates the disk's file, kDiskBytes of zeros, in `dir` (the daemon then offers it as
  // disk 0); the directory's owner removes it.
  static absl::StatusOr<std::string> MakeDiskFile(const std::string& dir);
  StorageDemo(daemon::Daemon* daemon, std::string path) : daemon_(daemon), path_(std::move(path)) {}

  // Attaches the guest to the controller offered at `relid` and runs the traffic, printing
  // what it shows; an error names the step that failed.
  absl::Status Run(uint32_t relid);

  static constexpr uint64_t kDiskBytes = 16ull << 20;

 private:
  daemon::Daemon* daemon_;
  std::string path_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_STORAGE_DEMO_H_
