#include "hw/storage/file_backing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "base/format.h"

namespace cvmbus::hw {
namespace {

constexpr uint32_t kFileBlockBytes = 512;

absl::Status PathErrno(const std::string& path, const char* what, int error) {
  return absl::ErrnoToStatus(error, fmt::format("file backing '{}': {}", path, what));
}

}  // namespace

absl::StatusOr<std::unique_ptr<FileBacking>> FileBacking::Open(const std::string& path,
                                                               Options options) {
  const int flags = O_CLOEXEC | (options.read_only ? O_RDONLY : O_RDWR);
  int fd = -1;
  bool direct = false;
  if (options.direct) {
    fd = open(path.c_str(), flags | O_DIRECT);
    if (fd >= 0) {
      direct = true;
    } else if (errno != EINVAL) {  // EINVAL: this filesystem has no O_DIRECT; go buffered.
      return PathErrno(path, "open", errno);
    }
  }
  if (fd < 0) fd = open(path.c_str(), flags);
  if (fd < 0) return PathErrno(path, "open", errno);
  // Owns `fd` until the backing does.
  std::unique_ptr<int, void (*)(int*)> guard(&fd, [](int* owned) { close(*owned); });

  struct stat st {};
  if (fstat(fd, &st) != 0) return PathErrno(path, "fstat", errno);
  uint64_t size_bytes = 0;
  uint32_t block_bytes = kFileBlockBytes;
  if (S_ISREG(st.st_mode)) {
    size_bytes = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size_bytes) != 0) {
      return PathErrno(path, "ioctl(BLKGETSIZE64)", errno);
    }
    int sector_bytes = 0;
    if (ioctl(fd, BLKSSZGET, &sector_bytes) != 0) return PathErrno(path, "ioctl(BLKSSZGET)", errno);
    if (sector_bytes <= 0) {
      return absl::FailedPreconditionError(
          fmt::format("file backing '{}': logical block size {} bytes", path, sector_bytes));
    }
    block_bytes = static_cast<uint32_t>(sector_bytes);
  } else {
    return absl::FailedPreconditionError(fmt::format(
        "file backing '{}': not a regular file or block device (mode {:o})", path, st.st_mode));
  }
  if (size_bytes % block_bytes != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "file backing '{}': size {} bytes is not a multiple of {}", path, size_bytes, block_bytes));
  }
  guard.release();
  return std::unique_ptr<FileBacking>(
      new FileBacking(path, fd, options, direct, size_bytes, block_bytes, S_ISREG(st.st_mode)));
}

FileBacking::FileBacking(std::string path, int fd, const Options& options, bool direct,
                         uint64_t size_bytes, uint32_t logical_block_bytes, bool regular_file)
    : path_(std::move(path)),
      fd_(fd),
      read_only_(options.read_only),
      direct_(direct),
      size_bytes_(size_bytes),
      logical_block_bytes_(logical_block_bytes),
      regular_file_(regular_file) {}

FileBacking::~FileBacking() { close(fd_); }

absl::Status FileBacking::CheckAligned(const char* what, uint64_t offset_bytes,
                                       absl::Span<const iovec> iovecs) const {
  if (!direct_) return absl::OkStatus();
  const uint64_t block = logical_block_bytes_;
  if (offset_bytes % block != 0) {
    return absl::InvalidArgumentError(
        fmt::format("file backing '{}': O_DIRECT {} at offset {}: offset not a multiple of {}",
                    path_, what, offset_bytes, block));
  }
  for (size_t i = 0; i < iovecs.size(); ++i) {
    const auto address = reinterpret_cast<uintptr_t>(iovecs[i].iov_base);
    if (address % block != 0) {
      return absl::InvalidArgumentError(fmt::format(
          "file backing '{}': O_DIRECT {} at offset {}: iovec {} address {:#x} not {}-aligned",
          path_, what, offset_bytes, i, address, block));
    }
    if (iovecs[i].iov_len % block != 0) {
      return absl::InvalidArgumentError(fmt::format(
          "file backing '{}': O_DIRECT {} at offset {}: iovec {} length {} not a multiple of {}",
          path_, what, offset_bytes, i, iovecs[i].iov_len, block));
    }
  }
  return absl::OkStatus();
}

absl::Status FileBacking::Annotate(const absl::Status& status) const {
  if (status.ok()) return status;
  return absl::Status(status.code(), fmt::format("file backing '{}': {}", path_, status.message()));
}

FileBacking::IoAwaiter FileBacking::Read(EventLoop* loop, uint64_t offset_bytes,
                                         absl::Span<const iovec> iovecs) const {
  return IoAwaiter(this, CheckAligned("read", offset_bytes, iovecs),
                   loop->ReadV(fd_, offset_bytes, iovecs));
}

FileBacking::IoAwaiter FileBacking::Write(EventLoop* loop, uint64_t offset_bytes,
                                          absl::Span<const iovec> iovecs) {
  absl::Status refused =
      read_only_ ? absl::FailedPreconditionError(fmt::format(
                       "file backing '{}': write at offset {}: read-only", path_, offset_bytes))
                 : CheckAligned("write", offset_bytes, iovecs);
  return IoAwaiter(this, std::move(refused), loop->WriteV(fd_, offset_bytes, iovecs));
}

absl::StatusOr<size_t> FileBacking::IoAwaiter::await_resume() const {
  if (!refused_.ok()) return refused_;
  absl::StatusOr<size_t> bytes = io_.await_resume();
  if (!bytes.ok()) return backing_->Annotate(bytes.status());
  return bytes;
}

FileBacking::FlushAwaiter FileBacking::Flush(EventLoop* loop) const {
  return FlushAwaiter(this, loop->Sync(fd_, /*datasync=*/true));
}

FileBacking::DiscardAwaiter FileBacking::Discard(EventLoop* loop, uint64_t offset_bytes,
                                                 uint64_t len) {
  absl::Status refused = can_discard()
                             ? absl::OkStatus()
                             : absl::FailedPreconditionError(fmt::format(
                                   "file backing '{}': discard at offset {}: {}", path_,
                                   offset_bytes, read_only_ ? "read-only" : "not a regular file"));
  return DiscardAwaiter(
      this, std::move(refused),
      loop->Fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_bytes, len));
}

absl::Status FileBacking::DiscardAwaiter::await_resume() const {
  if (!refused_.ok()) return refused_;
  return backing_->Annotate(io_.await_resume());
}

absl::Status FileBacking::FlushAwaiter::await_resume() const {
  return backing_->Annotate(sync_.await_resume());
}

}  // namespace cvmbus::hw
