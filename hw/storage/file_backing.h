// FileBacking: a regular file or block device that holds a virtual disk's bytes, read and
// written asynchronously through an io_uring EventLoop.
//
//   auto backing = FileBacking::Open("/var/disks/a.img", {.direct = true});
//   absl::StatusOr<size_t> n = co_await (*backing)->Read(loop, offset_bytes, iovecs);
//   absl::Status synced = co_await (*backing)->Flush(loop);
//
// Open() picks the mode once: O_RDONLY or O_RDWR, and O_DIRECT when asked for and the
// filesystem allows it (an open that fails with EINVAL falls back to buffered I/O, and direct()
// says which one the backing got). With O_DIRECT, every offset, buffer address and buffer length
// must be a multiple of logical_block_bytes(); requests that are not are refused with
// kInvalidArgument before they reach the kernel.
//
// Counts: a read or write may transfer less than asked (a read past the end of the file, a full
// filesystem); the awaitables return the count and leave retrying or failing to the caller.
// Offsets are not checked against size_bytes(): the disk model above owns its bounds.
//
// Errors name the path: "file backing '/x': open: No such file or directory",
// "file backing '/x': event loop: readv fd 7 at 4096: Input/output error".
//
// Threads: Open() and the accessors may be called anywhere; the awaitables belong to the loop's
// thread. The backing must outlive every operation started on it; the fd is closed by the
// destructor.
#ifndef CVMBUS_HW_STORAGE_FILE_BACKING_H_
#define CVMBUS_HW_STORAGE_FILE_BACKING_H_

#include <sys/uio.h>

#include <coroutine>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hw/uring/event_loop.h"

namespace cvmbus::hw {

class FileBacking {
 public:
  struct Options {
    bool read_only = false;
    bool direct = false;  // O_DIRECT where the filesystem allows it.
  };

  // Opens `path` (O_CLOEXEC). Fails if it is neither a regular file nor a block device, or if
  // its size is not a multiple of logical_block_bytes().
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<FileBacking>> Open(const std::string& path,
                                                                         Options options);
  ~FileBacking();
  FileBacking(const FileBacking&) = delete;
  FileBacking& operator=(const FileBacking&) = delete;

  const std::string& path() const { return path_; }
  // Size at open: fstat for a file, BLKGETSIZE64 for a block device.
  uint64_t size_bytes() const { return size_bytes_; }
  // 512 for a file; BLKSSZGET for a block device.
  uint32_t logical_block_bytes() const { return logical_block_bytes_; }
  bool read_only() const { return read_only_; }
  bool direct() const { return direct_; }
  int fd() const { return fd_; }  // Owned by the backing.

  // Resumes with the bytes transferred, or an error naming the path. `iovecs` and the memory
  // they describe must stay valid until the awaiting coroutine resumes (EventLoop::ReadV).
  class IoAwaiter {
   public:
    bool await_ready() noexcept { return !refused_.ok() || io_.await_ready(); }
    void await_suspend(std::coroutine_handle<> handle) { io_.await_suspend(handle); }
    absl::StatusOr<size_t> await_resume() const;

   private:
    friend class FileBacking;
    IoAwaiter(const FileBacking* backing, absl::Status refused, EventLoop::FileIoAwaiter io)
        : backing_(backing), refused_(std::move(refused)), io_(io) {}
    const FileBacking* backing_;
    absl::Status refused_;  // Set when the request is refused before submission.
    EventLoop::FileIoAwaiter io_;
  };
  [[nodiscard]] IoAwaiter Read(EventLoop* loop, uint64_t offset_bytes,
                               absl::Span<const iovec> iovecs) const;
  // kFailedPrecondition on a read-only backing.
  [[nodiscard]] IoAwaiter Write(EventLoop* loop, uint64_t offset_bytes,
                                absl::Span<const iovec> iovecs);

  // Makes completed writes durable (fdatasync: data and the metadata needed to read it back).
  class FlushAwaiter {
   public:
    bool await_ready() const noexcept { return sync_.await_ready(); }
    void await_suspend(std::coroutine_handle<> handle) { sync_.await_suspend(handle); }
    absl::Status await_resume() const;

   private:
    friend class FileBacking;
    FlushAwaiter(const FileBacking* backing, EventLoop::SyncAwaiter sync)
        : backing_(backing), sync_(sync) {}
    const FileBacking* backing_;
    EventLoop::SyncAwaiter sync_;
  };
  [[nodiscard]] FlushAwaiter Flush(EventLoop* loop) const;

  // Whether Discard works: a regular file opened read-write (its filesystem punches holes;
  // one that cannot fails the discard with kUnimplemented-like errno codes, named). Block
  // devices: not yet (fallocate there zeroes or discards depending on the device).
  bool can_discard() const { return regular_file_ && !read_only_; }
  // Deallocates [offset, offset + len) (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): it then
  // reads as zeros and holds no blocks. kFailedPrecondition unless can_discard().
  class DiscardAwaiter {
   public:
    bool await_ready() const noexcept { return !refused_.ok(); }
    void await_suspend(std::coroutine_handle<> handle) { io_.await_suspend(handle); }
    absl::Status await_resume() const;

   private:
    friend class FileBacking;
    DiscardAwaiter(const FileBacking* backing, absl::Status refused, EventLoop::FallocateAwaiter io)
        : backing_(backing), refused_(std::move(refused)), io_(io) {}
    const FileBacking* backing_;
    absl::Status refused_;
    EventLoop::FallocateAwaiter io_;
  };
  [[nodiscard]] DiscardAwaiter Discard(EventLoop* loop, uint64_t offset_bytes, uint64_t len);

 private:
  FileBacking(std::string path, int fd, const Options& options, bool direct, uint64_t size_bytes,
              uint32_t logical_block_bytes, bool regular_file);
  // OK, or why an O_DIRECT request is misaligned; `what` is "read" or "write".
  absl::Status CheckAligned(const char* what, uint64_t offset_bytes,
                            absl::Span<const iovec> iovecs) const;
  absl::Status Annotate(const absl::Status& status) const;

  const std::string path_;
  const int fd_;
  const bool read_only_;
  const bool direct_;
  const uint64_t size_bytes_;
  const uint32_t logical_block_bytes_;
  const bool regular_file_;
};

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_STORAGE_FILE_BACKING_H_
