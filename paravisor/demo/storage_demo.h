// The demo's storage: a storvsp SCSI controller (the one Linux's storvsc binds to) over a
// temporary file, driven by the storvsc guest exactly as Linux initializes it, with one
// subchannel. Shows data written through one channel coming back through the other and lying
// in the file byte for byte, and a bad request answered with sense data.
#ifndef CVMBUS_PARAVISOR_DEMO_STORAGE_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_STORAGE_DEMO_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {

// The disk, made before the guest connects (so its offer is among the first ones).
class StorageDemo {
 public:
  // Creates the file (removed again by the destructor) and offers the controller.
  static absl::StatusOr<std::unique_ptr<StorageDemo>> Create(vm::VirtualMachine* vm);
  ~StorageDemo();

  // Attaches the guest to the controller offered at `relid` and runs the traffic, printing
  // what it shows; an error names the step that failed.
  absl::Status Run(uint32_t relid);

  static constexpr uint64_t kDiskBytes = 16ull << 20;

 private:
  explicit StorageDemo(vm::VirtualMachine* vm) : vm_(vm) {}

  vm::VirtualMachine* vm_;
  std::string path_;
  std::unique_ptr<storvsp::FileBlockBackend> backend_;
  std::unique_ptr<storvsp::StorvspDevice> device_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_STORAGE_DEMO_H_
