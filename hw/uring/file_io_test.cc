// EventLoop's file awaitables (ReadV, WriteV, Sync) against temp files under $TEST_TMPDIR, with
// pread/pwrite as the independent oracle.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "base/testing/status_testing.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"

namespace cvmbus::hw {
namespace {

using namespace std::chrono_literals;

// A temp file opened read-write, removed when the test ends.
struct TempFile {
  TempFile() {
    const char* dir = std::getenv("TEST_TMPDIR");
    path = std::string(dir != nullptr ? dir : "/tmp") + "/file_io_XXXXXX";
    fd = mkstemp(path.data());
  }
  ~TempFile() {
    if (fd >= 0) close(fd);
    unlink(path.c_str());
  }
  std::string path;
  int fd;
};

struct IoResult {
  bool done = false;
  absl::StatusOr<size_t> bytes = absl::UnknownError("not resumed");
};

// `iovecs` is a parameter, so it lives in the frame until the awaiter resumes.
Task ReadInto(EventLoop* loop, int fd, uint64_t offset, std::vector<iovec> iovecs, IoResult* out) {
  out->bytes = co_await loop->ReadV(fd, offset, iovecs);
  out->done = true;
}

Task WriteFrom(EventLoop* loop, int fd, uint64_t offset, std::vector<iovec> iovecs, IoResult* out) {
  out->bytes = co_await loop->WriteV(fd, offset, iovecs);
  out->done = true;
}

struct SyncResult {
  bool done = false;
  absl::Status status = absl::UnknownError("not resumed");
};

Task SyncFile(EventLoop* loop, int fd, bool datasync, SyncResult* out) {
  out->status = co_await loop->Sync(fd, datasync);
  out->done = true;
}

// Runs the loop until `done()` or about two seconds; returns whether `done()` held.
bool RunUntil(EventLoop* loop, const std::function<bool()>& done) {
  for (int i = 0; i < 200 && !done(); ++i) {
    if (!loop->RunOnce(10ms).ok()) return false;
  }
  return done();
}

iovec Vec(std::string& bytes) { return iovec{bytes.data(), bytes.size()}; }

TEST(FileIoTest, WritesAndReadsSeveralIovecsAtAnOffset) {
  auto loop = *EventLoop::Create();
  TempFile file;
  ASSERT_GE(file.fd, 0);
  std::string a = "first-", b(100, 'b'), c = "-last";
  IoResult write;
  WriteFrom(loop.get(), file.fd, 4096, {Vec(a), Vec(b), Vec(c)}, &write);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return write.done; }));
  ASSERT_TRUE(write.bytes.ok()) << write.bytes.status();
  EXPECT_EQ(*write.bytes, a.size() + b.size() + c.size());
  const std::string expected = a + b + c;
  std::string oracle(expected.size(), '\0');
  ASSERT_EQ(pread(file.fd, oracle.data(), oracle.size(), 4096), ssize_t(expected.size()));
  EXPECT_EQ(oracle, expected);

  // Read back from inside the written range, split at different points than it was written.
  std::string x(3, '\0'), y(50, '\0'), z(expected.size() - 10 - 53, '\0');
  IoResult read;
  ReadInto(loop.get(), file.fd, 4096 + 10, {Vec(x), Vec(y), Vec(z)}, &read);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return read.done; }));
  ASSERT_TRUE(read.bytes.ok()) << read.bytes.status();
  EXPECT_EQ(*read.bytes, expected.size() - 10);
  EXPECT_EQ(x + y + z, expected.substr(10));

  // The hole before offset 4096 reads as zeros.
  std::string hole(16, 'x');
  IoResult hole_read;
  ReadInto(loop.get(), file.fd, 0, {Vec(hole)}, &hole_read);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return hole_read.done; }));
  ASSERT_TRUE(hole_read.bytes.ok());
  EXPECT_EQ(*hole_read.bytes, 16u);
  EXPECT_EQ(hole, std::string(16, '\0'));
}

TEST(FileIoTest, ReadAtEndOfFileIsShortNotAnError) {
  auto loop = *EventLoop::Create();
  TempFile file;
  const std::string contents(1000, 'q');
  ASSERT_EQ(pwrite(file.fd, contents.data(), contents.size(), 0), 1000);
  std::string first(64, '\0'), second(448, '\0');
  IoResult tail, at_end, beyond;
  ReadInto(loop.get(), file.fd, 900, {Vec(first), Vec(second)}, &tail);
  std::string scratch(512, '\0');
  ReadInto(loop.get(), file.fd, 1000, {Vec(scratch)}, &at_end);
  ReadInto(loop.get(), file.fd, 1 << 20, {Vec(scratch)}, &beyond);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return tail.done && at_end.done && beyond.done; }));
  ASSERT_TRUE(tail.bytes.ok()) << tail.bytes.status();
  EXPECT_EQ(*tail.bytes, 100u);
  EXPECT_EQ(first, std::string(64, 'q'));
  EXPECT_EQ(second.substr(0, 36), std::string(36, 'q'));
  EXPECT_EQ(second.substr(36), std::string(448 - 36, '\0'));  // Untouched past the end.
  ASSERT_TRUE(at_end.bytes.ok());
  EXPECT_EQ(*at_end.bytes, 0u);
  ASSERT_TRUE(beyond.bytes.ok());
  EXPECT_EQ(*beyond.bytes, 0u);
}

TEST(FileIoTest, SyncAndDataSync) {
  auto loop = *EventLoop::Create();
  TempFile file;
  std::string data = "durable";
  IoResult write;
  WriteFrom(loop.get(), file.fd, 0, {Vec(data)}, &write);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return write.done; }));
  ASSERT_TRUE(write.bytes.ok());
  SyncResult full, data_only;
  SyncFile(loop.get(), file.fd, /*datasync=*/false, &full);
  SyncFile(loop.get(), file.fd, /*datasync=*/true, &data_only);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return full.done && data_only.done; }));
  EXPECT_OK(full.status);
  EXPECT_OK(data_only.status);
}

TEST(FileIoTest, ErrorsNameTheOperationFdAndOffset) {
  auto loop = *EventLoop::Create();
  TempFile file;
  const int closed_fd = dup(file.fd);
  ASSERT_GE(closed_fd, 0);
  ASSERT_EQ(close(closed_fd), 0);
  std::string buffer(16, '\0');
  IoResult read, write;
  SyncResult sync;
  ReadInto(loop.get(), closed_fd, 4096, {Vec(buffer)}, &read);
  WriteFrom(loop.get(), closed_fd, 512, {Vec(buffer)}, &write);
  SyncFile(loop.get(), closed_fd, /*datasync=*/true, &sync);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return read.done && write.done && sync.done; }));
  EXPECT_EQ(read.bytes.status().code(), absl::StatusCode::kFailedPrecondition);  // EBADF
  EXPECT_EQ(read.bytes.status().message(),
            "event loop: readv fd " + std::to_string(closed_fd) + " at 4096: Bad file descriptor");
  EXPECT_EQ(write.bytes.status().message(),
            "event loop: writev fd " + std::to_string(closed_fd) + " at 512: Bad file descriptor");
  EXPECT_EQ(sync.status.message(),
            "event loop: fdatasync fd " + std::to_string(closed_fd) + ": Bad file descriptor");

  // Writing through a read-only descriptor: the kernel's EBADF, reported the same way.
  const int read_only = open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(read_only, 0);
  IoResult refused;
  WriteFrom(loop.get(), read_only, 0, {Vec(buffer)}, &refused);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return refused.done; }));
  EXPECT_EQ(refused.bytes.status().message(),
            "event loop: writev fd " + std::to_string(read_only) + " at 0: Bad file descriptor");
  close(read_only);
}

TEST(FileIoTest, RefusesOffsetsThatMeanTheFilePositionAndTooManyIovecs) {
  auto loop = *EventLoop::Create();
  TempFile file;
  const size_t before = loop->operations_in_flight();
  std::string buffer(8, '\0');
  IoResult position, too_many;
  // (u64)-1 would make io_uring use and move the file position instead of an offset.
  ReadInto(loop.get(), file.fd, ~uint64_t{0}, {Vec(buffer)}, &position);
  std::vector<iovec> many(IOV_MAX + 1, Vec(buffer));
  ReadInto(loop.get(), file.fd, 0, many, &too_many);
  // Refused without suspending or submitting anything.
  EXPECT_TRUE(position.done);
  EXPECT_TRUE(too_many.done);
  EXPECT_EQ(loop->operations_in_flight(), before);
  EXPECT_EQ(position.bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(position.bytes.status().message(),
            "event loop: readv fd " + std::to_string(file.fd) +
                " at 18446744073709551615: offset beyond INT64_MAX");
  EXPECT_EQ(too_many.bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_many.bytes.status().message(),
            "event loop: readv fd " + std::to_string(file.fd) + " at 0: 1025 iovecs > 1024");
}

TEST(FileIoTest, SixtyFourOperationsInFlightCompleteWithTheirOwnData) {
  constexpr int kCount = 64;
  constexpr size_t kBlock = 4096;
  auto loop = *EventLoop::Create();
  TempFile file;
  std::vector<std::string> blocks(kCount);
  std::vector<IoResult> writes(kCount);
  const size_t before = loop->operations_in_flight();
  for (int i = 0; i < kCount; ++i) {
    blocks[i] = std::string(kBlock, static_cast<char>('A' + i % 26));
    blocks[i].replace(0, 4, std::to_string(1000 + i));  // Unique per block.
    // Two iovecs per block, so each write is itself vectored.
    WriteFrom(loop.get(), file.fd, i * kBlock,
              {iovec{blocks[i].data(), 100}, iovec{blocks[i].data() + 100, kBlock - 100}},
              &writes[i]);
  }
  EXPECT_EQ(loop->operations_in_flight(), before + kCount);  // All queued before any runs.
  ASSERT_TRUE(RunUntil(loop.get(), [&] {
    for (const IoResult& w : writes) {
      if (!w.done) return false;
    }
    return true;
  }));
  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(writes[i].bytes.ok()) << i << ": " << writes[i].bytes.status();
    EXPECT_EQ(*writes[i].bytes, kBlock);
  }

  // Read them back in reverse, all at once; completions may arrive in any order.
  std::vector<std::string> back(kCount, std::string(kBlock, '\0'));
  std::vector<IoResult> reads(kCount);
  std::vector<int> order;
  for (int i = kCount - 1; i >= 0; --i) {
    ReadInto(loop.get(), file.fd, i * kBlock, {iovec{back[i].data(), kBlock}}, &reads[i]);
  }
  EXPECT_EQ(loop->operations_in_flight(), before + kCount);
  ASSERT_TRUE(RunUntil(loop.get(), [&] {
    for (const IoResult& r : reads) {
      if (!r.done) return false;
    }
    return true;
  }));
  for (int i = 0; i < kCount; ++i) {
    ASSERT_TRUE(reads[i].bytes.ok()) << i << ": " << reads[i].bytes.status();
    EXPECT_EQ(*reads[i].bytes, kBlock);
    EXPECT_EQ(back[i], blocks[i]) << "block " << i;
  }
  EXPECT_EQ(loop->operations_in_flight(), before);
}

struct Tracker {
  explicit Tracker(std::atomic<int>* live) : live(live) { live->fetch_add(1); }
  ~Tracker() { live->fetch_sub(1); }
  std::atomic<int>* live;
};

// The buffer lives in the frame: destroying the frame while the kernel could still write into
// it would be a use-after-free that ASan reports.
Task ReadIntoFrame(EventLoop* loop, int fd, std::atomic<int>* live, bool* resumed) {
  Tracker tracker(live);
  char buffer[256];
  const iovec vec{buffer, sizeof(buffer)};
  (void)co_await loop->ReadV(fd, 0, absl::MakeConstSpan(&vec, 1));
  *resumed = true;
}

TEST(FileIoTest, TeardownCancelsReadsInFlightAndDestroysTheirTasks) {
  std::atomic<int> live{0};
  bool resumed = false;
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  TempFile file;
  {
    auto loop = *EventLoop::Create();
    // A pipe with no writer activity: the reads wait in the kernel until cancelled.
    for (int i = 0; i < 8; ++i) ReadIntoFrame(loop.get(), pipe_fds[0], &live, &resumed);
    ASSERT_TRUE(loop->RunOnce(1ms).ok());
    // A file read queued but never submitted: teardown submits, cancels or completes it.
    ReadIntoFrame(loop.get(), file.fd, &live, &resumed);
    EXPECT_EQ(live.load(), 9);
    EXPECT_GE(loop->operations_in_flight(), 9u);
  }
  EXPECT_EQ(live.load(), 0);  // Every frame destroyed (ASan: no leak)...
  EXPECT_FALSE(resumed);      // ...and none resumed into a destroyed loop.
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

// A single iovec inside registered memory goes as READ_FIXED / WRITE_FIXED, anything else as
// readv / writev; the bytes are the same either way.
TEST(FileIoTest, OneIovecInsideAFixedBufferGoesAsAFixedOp) {
  auto loop = *EventLoop::Create();
  TempFile file;
  ASSERT_GE(file.fd, 0);
  std::string registered(8192, '\0');
  ASSERT_OK(loop->RegisterFixedBuffer(registered.data(), registered.size()));
  for (size_t i = 0; i < 4096; ++i) registered[i] = static_cast<char>('a' + i % 26);
  IoResult write;
  WriteFrom(loop.get(), file.fd, 512, {iovec{registered.data(), 4096}}, &write);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return write.done; }));
  ASSERT_OK(write.bytes.status());
  EXPECT_EQ(loop->file_io_stats().fixed, 1u);
  std::string back(4096, '\0');
  ASSERT_EQ(pread(file.fd, back.data(), back.size(), 512), 4096);
  EXPECT_EQ(back, registered.substr(0, 4096));

  // Into the buffer's second half (fixed), then into memory outside it (vectored).
  IoResult fixed_read, vector_read;
  ReadInto(loop.get(), file.fd, 512, {iovec{registered.data() + 4096, 4096}}, &fixed_read);
  std::string outside(4096, '\0');
  ReadInto(loop.get(), file.fd, 512, {Vec(outside)}, &vector_read);
  ASSERT_TRUE(RunUntil(loop.get(), [&] { return fixed_read.done && vector_read.done; }));
  ASSERT_OK(fixed_read.bytes.status());
  ASSERT_OK(vector_read.bytes.status());
  EXPECT_EQ(registered.substr(4096), back);
  EXPECT_EQ(outside, back);
  EXPECT_EQ(loop->file_io_stats().fixed, 2u);
  EXPECT_EQ(loop->file_io_stats().vector, 1u);
  // Straddling the buffer's end: not inside it, so vectored.
  EXPECT_FALSE(loop->FixedBufferOf(registered.data() + 8000, 4096).has_value());
  EXPECT_TRUE(loop->FixedBufferOf(registered.data(), 8192).has_value());
}

TEST(FileIoTest, TheFixedBufferTableHasRoomForEightRanges) {
  auto loop = *EventLoop::Create();
  std::vector<std::string> buffers(EventLoop::kMaxFixedBuffers + 1, std::string(4096, 'x'));
  for (unsigned i = 0; i < EventLoop::kMaxFixedBuffers; ++i) {
    ASSERT_OK(loop->RegisterFixedBuffer(buffers[i].data(), buffers[i].size()));
  }
  const absl::Status full = loop->RegisterFixedBuffer(buffers.back().data(), 4096);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
}

}  // namespace
}  // namespace cvmbus::hw
