// BlockBackend: where a virtual disk's blocks live, as the storvsp device sees it. Operations
// start on the device's loop thread and finish with a callback on that thread; the iovecs
// point into pinned guest pages (or any memory the caller keeps alive until the callback).
//
// MemoryBackend is one in process memory, for tests and scratch disks. The file and
// block-device backing over io_uring implements the same interface.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_BLOCK_BACKEND_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_BLOCK_BACKEND_H_

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace cvmbus::paravisor::storvsp {

class BlockBackend {
 public:
  using IoDone = std::function<void(absl::StatusOr<size_t> bytes)>;
  using FlushDone = std::function<void(absl::Status)>;
  virtual ~BlockBackend() = default;

  virtual uint64_t size_bytes() const = 0;
  virtual bool read_only() const = 0;
  // Reads into / writes from `iovecs` at byte `offset` (a short count is not an error here:
  // the caller decides). `done` runs exactly once.
  virtual void Read(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) = 0;
  virtual void Write(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) = 0;
  // Makes every completed write durable.
  virtual void Flush(FlushDone done) = 0;
  // Whether Discard works (the disk then offers UNMAP).
  virtual bool can_discard() const { return false; }
  // Deallocates [offset, offset + bytes): it reads as zeros afterwards. `done` runs once.
  virtual void Discard(uint64_t offset, uint64_t bytes, FlushDone done) {
    (void)offset;
    (void)bytes;
    done(absl::UnimplementedError("this backend cannot discard"));
  }
};

// Blocks in a vector, completing at once (inline). `fail_next` makes the next operation fail
// with that status, for tests of error paths.
class MemoryBackend : public BlockBackend {
 public:
  explicit MemoryBackend(uint64_t size_bytes, bool read_only = false)
      : bytes_(size_bytes, 0), read_only_(read_only) {}

  uint64_t size_bytes() const override { return bytes_.size(); }
  bool read_only() const override { return read_only_; }
  void Read(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) override;
  void Write(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) override;
  void Flush(FlushDone done) override;
  bool can_discard() const override { return !read_only_; }
  void Discard(uint64_t offset, uint64_t bytes, FlushDone done) override;  // Zeroes them.

  std::vector<uint8_t>& bytes() { return bytes_; }
  void fail_next(absl::Status status) { fail_next_ = std::move(status); }
  uint64_t flushes() const { return flushes_; }

 private:
  absl::Status TakeFailure();

  std::vector<uint8_t> bytes_;
  const bool read_only_;
  absl::Status fail_next_;
  uint64_t flushes_ = 0;
};

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_BLOCK_BACKEND_H_
