#include "hw/storage/file_backing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "base/testing/status_testing.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"

namespace cvmbus::hw {
namespace {

using namespace std::chrono_literals;

std::string TempDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

// A temp file of `size_bytes` zero bytes, removed when the test ends.
struct TempFile {
  explicit TempFile(off_t size_bytes) : path(TempDir() + "/backing_XXXXXX") {
    const int fd = mkstemp(path.data());
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(ftruncate(fd, size_bytes), 0);
    close(fd);
  }
  ~TempFile() { unlink(path.c_str()); }
  std::string path;
};

struct IoResult {
  bool done = false;
  absl::StatusOr<size_t> bytes = absl::UnknownError("not resumed");
};

Task ReadInto(EventLoop* loop, const FileBacking* backing, uint64_t offset,
              std::vector<iovec> iovecs, IoResult* out) {
  out->bytes = co_await backing->Read(loop, offset, iovecs);
  out->done = true;
}

Task WriteFrom(EventLoop* loop, FileBacking* backing, uint64_t offset, std::vector<iovec> iovecs,
               IoResult* out) {
  out->bytes = co_await backing->Write(loop, offset, iovecs);
  out->done = true;
}

struct FlushResult {
  bool done = false;
  absl::Status status = absl::UnknownError("not resumed");
};

Task FlushBacking(EventLoop* loop, const FileBacking* backing, FlushResult* out) {
  out->status = co_await backing->Flush(loop);
  out->done = true;
}

bool RunUntil(EventLoop* loop, const std::function<bool()>& done) {
  for (int i = 0; i < 200 && !done(); ++i) {
    if (!loop->RunOnce(10ms).ok()) return false;
  }
  return done();
}

// A 512-aligned buffer, as O_DIRECT wants.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t size_bytes) : size(size_bytes) {
    void* memory = nullptr;
    EXPECT_EQ(posix_memalign(&memory, 4096, size_bytes), 0);
    data = static_cast<char*>(memory);
    std::memset(data, 0, size_bytes);
  }
  ~AlignedBuffer() { free(data); }
  iovec Vec(size_t offset, size_t len) const { return iovec{data + offset, len}; }
  char* data;
  size_t size;
};

TEST(FileBackingTest, OpenOfAMissingPathNamesPathAndErrno) {
  const std::string path = TempDir() + "/does-not-exist";
  auto backing = FileBacking::Open(path, {});
  EXPECT_EQ(backing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(backing.status().message(),
            "file backing '" + path + "': open: No such file or directory");
}

TEST(FileBackingTest, OpenRefusesASizeThatIsNotAMultipleOf512) {
  TempFile file(1000);
  auto backing = FileBacking::Open(file.path, {});
  EXPECT_EQ(backing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backing.status().message(),
            "file backing '" + file.path + "': size 1000 bytes is not a multiple of 512");
}

TEST(FileBackingTest, OpenRefusesADirectory) {
  const std::string dir = TempDir();
  // Read-write: the kernel refuses the open itself.
  auto writable = FileBacking::Open(dir, {});
  EXPECT_EQ(writable.status().message(), "file backing '" + dir + "': open: Is a directory");
  // Read-only: the open succeeds and fstat tells.
  auto read_only = FileBacking::Open(dir, {.read_only = true});
  EXPECT_EQ(read_only.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(
      absl::StartsWith(read_only.status().message(),
                       "file backing '" + dir + "': not a regular file or block device (mode 40"))
      << read_only.status();
}

TEST(FileBackingTest, ReportsTheGeometryOfAFile) {
  TempFile file(8192);
  auto backing = FileBacking::Open(file.path, {});
  ASSERT_TRUE(backing.ok()) << backing.status();
  EXPECT_EQ((*backing)->path(), file.path);
  EXPECT_EQ((*backing)->size_bytes(), 8192u);
  EXPECT_EQ((*backing)->logical_block_bytes(), 512u);
  EXPECT_FALSE((*backing)->read_only());
  EXPECT_FALSE((*backing)->direct());
  EXPECT_GE((*backing)->fd(), 0);
  EXPECT_TRUE(fcntl((*backing)->fd(), F_GETFD) & FD_CLOEXEC);
  EXPECT_EQ(fcntl((*backing)->fd(), F_GETFL) & O_ACCMODE, O_RDWR);
}

TEST(FileBackingTest, ReadOnlyRefusesWritesWithoutSubmitting) {
  TempFile file(4096);
  auto backing = *FileBacking::Open(file.path, {.read_only = true});
  EXPECT_TRUE(backing->read_only());
  EXPECT_EQ(fcntl(backing->fd(), F_GETFL) & O_ACCMODE, O_RDONLY);
  auto loop = *EventLoop::Create();
  const size_t before = loop->operations_in_flight();
  std::string data(512, 'w');
  IoResult write;
  WriteFrom(loop.get(), backing.get(), 512, {iovec{data.data(), data.size()}}, &write);
  EXPECT_TRUE(write.done);  // Refused without suspending.
  EXPECT_EQ(loop->operations_in_flight(), before);
  EXPECT_EQ(write.bytes.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(write.bytes.status().message(),
            "file backing '" + file.path + "': write at offset 512: read-only");
  // Reads still work.
  IoResult read;
  ReadInto(loop.get(), backing.get(), 0, {iovec{data.data(), data.size()}}, &read);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return read.done; }));
  ASSERT_TRUE(read.bytes.ok()) << read.bytes.status();
  EXPECT_EQ(data, std::string(512, '\0'));
}

// Writes known bytes, flushes, reads them back through the loop, and checks them with pread.
void RoundTrip(FileBacking::Options options) {
  TempFile file(16384);
  auto backing = *FileBacking::Open(file.path, options);
  auto loop = *EventLoop::Create();
  AlignedBuffer out(8192), in(8192);
  for (size_t i = 0; i < out.size; ++i) out.data[i] = static_cast<char>(i * 7 + 3);
  IoResult write;
  WriteFrom(loop.get(), backing.get(), 4096, {out.Vec(0, 512), out.Vec(512, 7680)}, &write);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return write.done; }));
  ASSERT_TRUE(write.bytes.ok()) << write.bytes.status();
  EXPECT_EQ(*write.bytes, 8192u);
  FlushResult flush;
  FlushBacking(loop.get(), backing.get(), &flush);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return flush.done; }));
  EXPECT_OK(flush.status);
  IoResult read;
  ReadInto(loop.get(), backing.get(), 4096, {in.Vec(0, 4096), in.Vec(4096, 4096)}, &read);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return read.done; }));
  ASSERT_TRUE(read.bytes.ok()) << read.bytes.status();
  EXPECT_EQ(*read.bytes, 8192u);
  EXPECT_EQ(std::memcmp(in.data, out.data, 8192), 0);
  std::string oracle(8192, '\0');
  const int fd = open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_EQ(pread(fd, oracle.data(), oracle.size(), 4096), 8192);
  close(fd);
  EXPECT_EQ(std::memcmp(oracle.data(), out.data, 8192), 0);
}

TEST(FileBackingTest, BufferedRoundTripWriteFlushRead) { RoundTrip({}); }

TEST(FileBackingTest, DirectRoundTripWriteFlushRead) {
  TempFile probe(512);
  if (!(*FileBacking::Open(probe.path, {.direct = true}))->direct()) {
    GTEST_SKIP() << "the filesystem of " << TempDir() << " refuses O_DIRECT";
  }
  RoundTrip({.direct = true});
}

TEST(FileBackingTest, DirectRefusesMisalignedRequests) {
  TempFile file(8192);
  auto backing = *FileBacking::Open(file.path, {.direct = true});
  if (!backing->direct()) {
    GTEST_SKIP() << "the filesystem of " << TempDir()
                 << " refuses O_DIRECT (fell back to buffered)";
  }
  EXPECT_EQ(fcntl(backing->fd(), F_GETFL) & O_DIRECT, O_DIRECT);
  auto loop = *EventLoop::Create();
  const size_t before = loop->operations_in_flight();
  AlignedBuffer buffer(4096);
  IoResult offset, address, length;
  ReadInto(loop.get(), backing.get(), 100, {buffer.Vec(0, 512)}, &offset);
  WriteFrom(loop.get(), backing.get(), 512, {buffer.Vec(0, 512), buffer.Vec(1000, 512)}, &address);
  ReadInto(loop.get(), backing.get(), 1024, {buffer.Vec(0, 100)}, &length);
  // All refused before submission: no EINVAL from the kernel.
  EXPECT_TRUE(offset.done && address.done && length.done);
  EXPECT_EQ(loop->operations_in_flight(), before);
  const std::string prefix = "file backing '" + file.path + "': O_DIRECT ";
  EXPECT_EQ(offset.bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(offset.bytes.status().message(),
            prefix + "read at offset 100: offset not a multiple of 512");
  EXPECT_EQ(address.bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(address.bytes.status().message(),
            prefix + fmt::format("write at offset 512: iovec 1 address {:#x} not 512-aligned",
                                 reinterpret_cast<uintptr_t>(buffer.data + 1000)));
  EXPECT_EQ(length.bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(length.bytes.status().message(),
            prefix + "read at offset 1024: iovec 0 length 100 not a multiple of 512");
}

TEST(FileBackingTest, ReadPastTheEndIsShort) {
  TempFile file(1024);
  auto backing = *FileBacking::Open(file.path, {});
  auto loop = *EventLoop::Create();
  AlignedBuffer buffer(2048);
  IoResult straddling, beyond;
  ReadInto(loop.get(), backing.get(), 512, {buffer.Vec(0, 1024), buffer.Vec(1024, 1024)},
           &straddling);
  ReadInto(loop.get(), backing.get(), 4096, {buffer.Vec(0, 512)}, &beyond);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return straddling.done && beyond.done; }));
  ASSERT_TRUE(straddling.bytes.ok()) << straddling.bytes.status();
  EXPECT_EQ(*straddling.bytes, 512u);
  ASSERT_TRUE(beyond.bytes.ok()) << beyond.bytes.status();
  EXPECT_EQ(*beyond.bytes, 0u);
}

TEST(FileBackingTest, LoopErrorsNameThePath) {
  TempFile file(4096);
  auto backing = *FileBacking::Open(file.path, {});
  auto loop = *EventLoop::Create();
  std::string data(16, 'x');
  IoResult read;
  // (u64)-1 is refused by the loop; the backing adds its path.
  ReadInto(loop.get(), backing.get(), ~uint64_t{0}, {iovec{data.data(), data.size()}}, &read);
  ASSERT_TRUE(read.done);
  EXPECT_EQ(read.bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read.bytes.status().message(),
            fmt::format("file backing '{}': event loop: readv fd {} at 18446744073709551615: "
                        "offset beyond INT64_MAX",
                        file.path, backing->fd()));
}

}  // namespace
}  // namespace cvmbus::hw
