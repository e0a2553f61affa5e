// UnixStream and UnixListener on a real EventLoop: connect errors, accept, reads and writes
// through io_uring, end of stream, Abort waking a read in flight, and a write to a vanished peer
// that must be an error (EPIPE), not a SIGPIPE that ends the test.
#include "hw/uring/unix_socket.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/testing/status_testing.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"

namespace cvmbus::hw {
namespace {

using namespace std::chrono_literals;

class UnixSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A short directory: sockaddr_un holds 107 bytes, and Bazel's TEST_TMPDIR is longer.
    char dir[] = "/tmp/cvmbus-us-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
  }
  void TearDown() override {
    loop_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Runs the loop until `done` holds (or 5 s pass).
  bool RunUntil(const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      EXPECT_OK(loop_->RunOnce(10ms));
    }
    return true;
  }

  UnixStream Accept(UnixListener& listener) {
    std::optional<UnixStream> accepted;
    EXPECT_TRUE(RunUntil([&] {
      auto next = listener.TryAccept();
      EXPECT_TRUE(next.ok()) << next.status();
      if (next.ok() && next->has_value()) accepted = std::move(**next);
      return accepted.has_value();
    }));
    return accepted.has_value() ? std::move(*accepted) : UnixStream();
  }

  std::string dir_;
  std::unique_ptr<EventLoop> loop_;
};

struct IoResult {
  bool done = false;
  absl::StatusOr<size_t> bytes = size_t{0};
};

Task ReadInto(EventLoop* loop, const UnixStream* stream, absl::Span<uint8_t> buffer,
              IoResult* result) {
  result->bytes = co_await stream->Read(loop, buffer);
  result->done = true;
}

Task WriteFrom(EventLoop* loop, const UnixStream* stream, absl::Span<const uint8_t> bytes,
               IoResult* result) {
  result->bytes = co_await stream->Write(loop, bytes);
  result->done = true;
}

TEST_F(UnixSocketTest, ConnectToAMissingPathNamesThePathAndErrno) {
  const std::string path = dir_ + "/nobody";
  absl::StatusOr<UnixStream> stream = UnixStream::Connect(path);
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(stream.status().message()).find(path), std::string::npos);
  EXPECT_NE(std::string(stream.status().message()).find("connect"), std::string::npos);
  EXPECT_NE(std::string(stream.status().message()).find("errno 2"), std::string::npos);
}

TEST_F(UnixSocketTest, ConnectToASocketNobodyListensOnIsRefused) {
  // A socket file whose owner never called listen(2): a stale socket.
  const std::string path = dir_ + "/stale";
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strcpy(address.sun_path, path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  absl::StatusOr<UnixStream> stream = UnixStream::Connect(path);
  close(fd);
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable) << stream.status();
}

TEST_F(UnixSocketTest, PathsThatDoNotFitAreRejected) {
  const std::string long_path = dir_ + "/" + std::string(120, 'x');
  EXPECT_EQ(UnixStream::Connect(long_path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnixListener::Listen(long_path).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(UnixSocketTest, ListenRefusesAPathThatExistsAndUnlinksItsOwn) {
  const std::string path = dir_ + "/listener";
  {
    absl::StatusOr<UnixListener> listener = UnixListener::Listen(path);
    ASSERT_TRUE(listener.ok()) << listener.status();
    EXPECT_TRUE(std::filesystem::exists(path));
    EXPECT_EQ(UnixListener::Listen(path).status().code(), absl::StatusCode::kAlreadyExists);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(UnixSocketTest, BytesBothWaysThenEndOfStream) {
  absl::StatusOr<UnixListener> listener = UnixListener::Listen(dir_ + "/echo");
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<UnixStream> client = UnixStream::Connect(listener->path());
  ASSERT_TRUE(client.ok()) << client.status();
  UnixStream server = Accept(*listener);
  ASSERT_TRUE(server.valid());

  // The read is in flight before the bytes exist: io_uring parks it until they do.
  std::vector<uint8_t> buffer(64);
  IoResult read;
  ReadInto(loop_.get(), &server, absl::MakeSpan(buffer), &read);
  EXPECT_FALSE(read.done);
  const std::string hello = "hello";
  IoResult wrote;
  WriteFrom(loop_.get(), &*client,
            absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(hello.data()), hello.size()),
            &wrote);
  ASSERT_TRUE(RunUntil([&] { return read.done && wrote.done; }));
  ASSERT_TRUE(wrote.bytes.ok()) << wrote.bytes.status();
  EXPECT_EQ(*wrote.bytes, hello.size());
  ASSERT_TRUE(read.bytes.ok()) << read.bytes.status();
  EXPECT_EQ(std::string(buffer.begin(), buffer.begin() + *read.bytes), hello);

  // The other way, then the client shuts its writes: the server reads 0.
  IoResult back;
  WriteFrom(loop_.get(), &server, absl::MakeConstSpan(buffer.data(), 5), &back);
  std::vector<uint8_t> client_buffer(64);
  IoResult client_read;
  ReadInto(loop_.get(), &*client, absl::MakeSpan(client_buffer), &client_read);
  ASSERT_TRUE(RunUntil([&] { return back.done && client_read.done; }));
  ASSERT_TRUE(client_read.bytes.ok());
  EXPECT_EQ(*client_read.bytes, 5u);
  ASSERT_OK(client->ShutdownWrite());
  IoResult eof;
  ReadInto(loop_.get(), &server, absl::MakeSpan(buffer), &eof);
  ASSERT_TRUE(RunUntil([&] { return eof.done; }));
  ASSERT_TRUE(eof.bytes.ok());
  EXPECT_EQ(*eof.bytes, 0u);
}

TEST_F(UnixSocketTest, AbortEndsAReadInFlight) {
  auto pair = UnixStream::Pair("pair");
  ASSERT_TRUE(pair.ok());
  std::vector<uint8_t> buffer(16);
  IoResult read;
  ReadInto(loop_.get(), &pair->first, absl::MakeSpan(buffer), &read);
  EXPECT_OK(loop_->RunOnce(10ms));
  EXPECT_FALSE(read.done);  // Nobody writes: it waits.
  pair->first.Abort();
  ASSERT_TRUE(RunUntil([&] { return read.done; }));
  ASSERT_TRUE(read.bytes.ok()) << read.bytes.status();
  EXPECT_EQ(*read.bytes, 0u);
}

TEST_F(UnixSocketTest, AWriteToAVanishedPeerIsAnErrorNotASignal) {
  auto pair = UnixStream::Pair("pair");
  ASSERT_TRUE(pair.ok());
  pair->second.Close();
  const std::vector<uint8_t> bytes(100, 7);
  IoResult wrote;
  WriteFrom(loop_.get(), &pair->first, bytes, &wrote);
  ASSERT_TRUE(RunUntil([&] { return wrote.done; }));
  ASSERT_FALSE(wrote.bytes.ok());
  EXPECT_NE(std::string(wrote.bytes.status().message()).find("write: Broken pipe"),
            std::string::npos)
      << wrote.bytes.status();
}

TEST_F(UnixSocketTest, AWriteWaitsForAFullPeerToRead) {
  auto pair = UnixStream::Pair("pair");
  ASSERT_TRUE(pair.ok());
  // More than the socket buffers hold: the writes go on only as the peer reads.
  const std::vector<uint8_t> bytes(8 << 20, 0x5a);
  size_t written = 0;
  size_t read_total = 0;
  bool writer_done = false;
  bool reader_done = false;
  [](EventLoop* loop, const UnixStream* stream, const std::vector<uint8_t>* bytes, size_t* written,
     bool* done) -> Task {
    while (*written < bytes->size()) {
      auto n = co_await stream->Write(loop, absl::MakeConstSpan(*bytes).subspan(*written));
      if (!n.ok() || *n == 0) break;
      *written += *n;
    }
    *done = true;
  }(loop_.get(), &pair->first, &bytes, &written, &writer_done);
  EXPECT_OK(loop_->RunOnce(10ms));
  EXPECT_FALSE(writer_done);
  EXPECT_LT(written, bytes.size());
  std::vector<uint8_t> buffer(64 << 10);
  [](EventLoop* loop, const UnixStream* stream, std::vector<uint8_t>* buffer, size_t want,
     size_t* total, bool* done) -> Task {
    while (*total < want) {
      auto n = co_await stream->Read(loop, absl::MakeSpan(*buffer));
      if (!n.ok() || *n == 0) break;
      for (size_t i = 0; i < *n; ++i) {
        if ((*buffer)[i] != 0x5a) co_return;
      }
      *total += *n;
    }
    *done = true;
  }(loop_.get(), &pair->second, &buffer, bytes.size(), &read_total, &reader_done);
  ASSERT_TRUE(RunUntil([&] { return writer_done && reader_done; }));
  EXPECT_EQ(written, bytes.size());
  EXPECT_EQ(read_total, bytes.size());
}

TEST_F(UnixSocketTest, ShutdownWakesAWaitingListener) {
  absl::StatusOr<UnixListener> listener = UnixListener::Listen(dir_ + "/stop");
  ASSERT_TRUE(listener.ok());
  bool woke = false;
  [](EventLoop* loop, UnixListener* listener, bool* woke) -> Task {
    (void)co_await listener->WaitForConnection(loop);
    *woke = true;
  }(loop_.get(), &*listener, &woke);
  EXPECT_OK(loop_->RunOnce(10ms));
  EXPECT_FALSE(woke);
  listener->Shutdown();
  ASSERT_TRUE(RunUntil([&] { return woke; }));
  EXPECT_EQ(listener->TryAccept().status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace cvmbus::hw
