// SrbExecutor: runs one SCSI request against a disk (ScsiDisk) and its blocks (BlockBackend),
// moving data straight between the backing and the guest's buffer pages, and reports the
// SRB result. The pages are pinned in the view the channel's open request allows (on a
// confidential channel with confidential external memory, the private view) for as long as
// the I/O runs, so they cannot change state under it.
//
// Errors become SRB results, never silence: a buffer the view cannot reach is
// INVALID_REQUEST (Linux: DID_ERROR); a backing that fails is CHECK CONDITION with MEDIUM
// ERROR sense (3/11/00 unrecovered read error, 3/0C/00 write error); a short transfer from the
// backing is the same medium error (capacity is the backing's size, so a short count means
// the backing changed under us).
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_EXECUTOR_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_EXECUTOR_H_

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "guestmem/guest_memory.h"
#include "paravisor/devices/storvsp/block_backend.h"
#include "paravisor/devices/storvsp/scsi_disk.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/srb_buffer.h"

namespace cvmbus::paravisor::storvsp {

class SrbExecutor {
 public:
  using Done = std::function<void(SrbResult)>;

  // `disk` and `backend` must outlive the executor and every operation it started.
  SrbExecutor(const ScsiDisk* disk, BlockBackend* backend) : disk_(disk), backend_(backend) {}

  // Runs `request` (its buffer as SrbBufferOf found it) through `memory`; `done` runs once,
  // inline or when the backing finishes.
  void Execute(const ScsiRequest& request, const std::optional<SrbBuffer>& buffer,
               const guestmem::GuestMemory& memory, Done done);

 private:
  void Transfer(const ScsiDisk::Transfer& transfer, const SrbBuffer& buffer,
                const guestmem::GuestMemory& memory, Done done);
  // UNMAP: the parameter list copied from the guest, parsed, each range discarded in turn.
  void Unmap(const ScsiDisk::Unmap& unmap, const SrbBuffer& buffer,
             const guestmem::GuestMemory& memory, Done done);
  void DiscardNext(std::shared_ptr<std::vector<ScsiDisk::ByteRange>> ranges, size_t next,
                   Done done);

  const ScsiDisk* const disk_;
  BlockBackend* const backend_;
};

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_EXECUTOR_H_
