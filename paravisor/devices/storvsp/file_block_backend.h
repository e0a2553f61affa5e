// FileBlockBackend: a disk's blocks in a file or block device (hw::FileBacking), read and
// written with io_uring on the device's loop, straight between the file and the iovecs (the
// guest's pinned pages). With O_DIRECT the guest's buffers must be 512-byte aligned in offset,
// address and length; a request that is not fails (a medium error to the guest) rather than
// being bounced through a copy.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_FILE_BLOCK_BACKEND_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_FILE_BLOCK_BACKEND_H_

#include <memory>

#include "hw/storage/file_backing.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "paravisor/devices/storvsp/block_backend.h"

namespace cvmbus::paravisor::storvsp {

class FileBlockBackend : public BlockBackend {
 public:
  // Operations run on `loop` (the device's); the backend must outlive them.
  FileBlockBackend(hw::EventLoop* loop, std::unique_ptr<hw::FileBacking> file)
      : loop_(loop), file_(std::move(file)) {}

  uint64_t size_bytes() const override { return file_->size_bytes(); }
  bool read_only() const override { return file_->read_only(); }
  void Read(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) override;
  void Write(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) override;
  void Flush(FlushDone done) override;
  bool can_discard() const override { return file_->can_discard(); }
  void Discard(uint64_t offset, uint64_t bytes, FlushDone done) override;

  const hw::FileBacking& file() const { return *file_; }

 private:
  hw::Task RunIo(bool write, uint64_t offset, absl::Span<const iovec> iovecs, IoDone done);
  hw::Task RunFlush(FlushDone done);
  hw::Task RunDiscard(uint64_t offset, uint64_t bytes, FlushDone done);

  hw::EventLoop* const loop_;
  std::unique_ptr<hw::FileBacking> file_;
};

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_FILE_BLOCK_BACKEND_H_
