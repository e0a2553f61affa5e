// The control socket with a plain blocking client: requests, the handler's answers and errors,
// and every malformed request a local program could send.
#include "paravisor/daemon/control_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include "absl/strings/str_join.h"

namespace cvmbus::paravisor::daemon {
namespace {

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/cvmbus-cs-XXXXXX";  // Short: sockaddr_un holds 107 bytes.
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/control.sock";
    std::promise<absl::Status> started;
    thread_ = std::thread([&] {
      absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
      if (!loop.ok()) {
        started.set_value(loop.status());
        return;
      }
      loop_ = loop->get();
      absl::StatusOr<std::unique_ptr<ControlServer>> server = ControlServer::Create(
          loop_, path_, [](const std::vector<std::string>& words) -> absl::StatusOr<std::string> {
            if (words[0] == "fail") return absl::NotFoundError("no such thing");
            return absl::StrJoin(words, ",") + "\n";
          });
      started.set_value(server.status());
      if (server.ok()) (void)(*loop)->Run();
      server = absl::CancelledError("stopped");  // The server goes on the loop's thread.
    });
    ASSERT_TRUE(started.get_future().get().ok());
  }
  void TearDown() override {
    // Set before SetUp returned (or never); Stop is thread-safe, and the loop and its server
    // end on their own thread.
    if (loop_ != nullptr) loop_->Stop();
    thread_.join();
    std::filesystem::remove_all(dir_);
  }

  // Connects, sends `bytes` (then half-closes if `end`), and reads the reply to the end.
  std::string Ask(const std::string& bytes, bool end = false) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path_.c_str(), path_.size() + 1);
    EXPECT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0);
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;  // The server may close on an overlong request before reading it all.
      sent += static_cast<size_t>(n);
    }
    if (end) shutdown(fd, SHUT_WR);
    std::string reply;
    char buffer[4096];
    for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) reply.append(buffer, n);
    close(fd);
    return reply;
  }

  std::string dir_;
  std::string path_;
  hw::EventLoop* loop_ = nullptr;
  std::thread thread_;
};

TEST_F(ControlServerTest, ARequestGetsTheHandlersAnswer) {
  EXPECT_EQ(Ask("inspect channels/3\n"), "ok\ninspect,channels/3\n");
  EXPECT_EQ(Ask("  spaced   words \n"), "ok\nspaced,words\n");
  EXPECT_EQ(Ask("fail\n"), "error no such thing\n");
  // Bytes after the newline are ignored: one request per connection.
  EXPECT_EQ(Ask("first\nsecond\n"), "ok\nfirst\n");
}

TEST_F(ControlServerTest, MalformedRequestsAreAnsweredWithWhatWasWrong) {
  EXPECT_EQ(Ask("\n"), "error empty request\n");
  EXPECT_EQ(Ask("in\x01spect\n"), "error request holds byte 0x01, which is not printable ASCII\n");
  EXPECT_EQ(Ask("no newline", /*end=*/true), "error request ended without a newline\n");
  EXPECT_EQ(Ask(std::string(kMaxRequestBytes, 'x')), "error request longer than 4096 bytes\n");
  EXPECT_EQ(Ask(std::string(3 * kMaxRequestBytes, 'x') + "\n"),
            "error request longer than 4096 bytes\n");
}

TEST_F(ControlServerTest, TheSocketPathMustNotExist) {
  absl::StatusOr<std::unique_ptr<ControlServer>> second;
  std::promise<void> done;
  loop_->Post([&] {
    second = ControlServer::Create(loop_, path_, [](const std::vector<std::string>&) {
      return absl::StatusOr<std::string>("");
    });
    done.set_value();
  });
  done.get_future().wait();
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  EXPECT_EQ(Ask("still\n"), "ok\nstill\n");  // The first server is untouched.
}

TEST(SplitRequestTest, WordsAreSplitOnSpacesAndOnlyPrintableAsciiPasses) {
  EXPECT_EQ(*SplitRequest("ring 7"), (std::vector<std::string>{"ring", "7"}));
  EXPECT_EQ(SplitRequest("   ").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitRequest("a\tb").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitRequest("caf\xc3\xa9").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
