// cvmbusctl: asks a running cvmbusd over its control socket.
//
//   cvmbusctl --socket=/run/cvmbusd.sock inspect [PATH]      the tree, or the subtree at PATH
//   cvmbusctl --socket=... --json inspect channels/3          as JSON (default: path = value)
//   cvmbusctl --socket=... ring 3                             both rings of channel 3, dumped
//   cvmbusctl --socket=... unstick 3                          signal both directions once
//   cvmbusctl --socket=... save /var/tmp/vmbus.state          the server's saved state, to a file
//   cvmbusctl --socket=... service                            save and restore in place
//   cvmbusctl --socket=... shutdown                           an orderly stop, as SIGTERM
//
// Exit 0: answered; 1: the daemon answered with an error (printed); 2: bad usage or no daemon.
#include <fmt/format.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "base/format.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "hw/uring/unix_socket.h"
#include "paravisor/daemon/control_server.h"
#include "paravisor/daemon/inspect_tree.h"

ABSL_FLAG(std::string, socket, "/run/cvmbusd.sock", "The daemon's control socket.");
ABSL_FLAG(bool, json, false, "Print inspect output as JSON instead of path = value lines.");

namespace cvmbus::paravisor::daemon {
namespace {

constexpr char kUsage[] =
    "cvmbusctl [--socket=PATH] [--json] inspect [PATH] | ring RELID | unstick RELID | save FILE | "
    "service | shutdown";

// Sends `request` and reads the reply until the daemon closes the connection.
hw::Task Exchange(hw::EventLoop* loop, std::string path, std::string request,
                  absl::StatusOr<std::string>* reply) {
  absl::StatusOr<hw::UnixStream> stream = hw::UnixStream::Connect(path);
  if (!stream.ok()) {
    *reply = stream.status();
    loop->Stop();
    co_return;
  }
  size_t written = 0;
  while (written < request.size()) {
    absl::StatusOr<size_t> wrote = co_await stream->Write(
        loop, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(request.data()) + written,
                                  request.size() - written));
    if (!wrote.ok()) {
      *reply = wrote.status();
      loop->Stop();
      co_return;
    }
    written += *wrote;
  }
  std::string bytes;
  std::vector<uint8_t> buffer(64 * 1024);
  while (true) {
    absl::StatusOr<size_t> got = co_await stream->Read(loop, absl::MakeSpan(buffer));
    if (!got.ok()) {
      *reply = got.status();
      break;
    }
    if (*got == 0) {
      *reply = bytes;
      break;
    }
    if (bytes.size() + *got > (64u << 20)) {
      *reply = absl::ResourceExhaustedError("reply larger than 64 MiB");
      break;
    }
    bytes.append(reinterpret_cast<const char*>(buffer.data()), *got);
  }
  loop->Stop();
}

int Main(const std::vector<std::string>& words) {
  if (words.empty() || (words[0] != "inspect" && words[0] != "ring" && words[0] != "unstick" &&
                        words[0] != "save" && words[0] != "service" && words[0] != "shutdown")) {
    fmt::print(stderr, "cvmbusctl: usage: {}\n", kUsage);
    return 2;
  }
  absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
  if (!loop.ok()) {
    fmt::print(stderr, "cvmbusctl: {}\n", loop.status());
    return 2;
  }
  std::vector<std::string> sent = words;
  if (sent[0] == "save" && sent.size() == 2) {
    // The daemon writes the file: name it as this directory means it.
    std::error_code error;
    sent[1] = std::filesystem::absolute(sent[1], error).string();
  }
  const std::string request = absl::StrJoin(sent, " ") + "\n";
  if (request.size() > kMaxRequestBytes) {
    fmt::print(stderr, "cvmbusctl: request longer than {} bytes\n", kMaxRequestBytes);
    return 2;
  }
  absl::StatusOr<std::string> reply = absl::UnknownError("no reply");
  Exchange(loop->get(), absl::GetFlag(FLAGS_socket), request, &reply);
  if (absl::Status ran = (*loop)->Run(); !ran.ok()) reply = ran;
  if (!reply.ok()) {
    fmt::print(stderr, "cvmbusctl: {}\n", reply.status());
    return 2;
  }
  if (reply->rfind("ok\n", 0) != 0) {
    fmt::print(stderr, "cvmbusctl: {}", reply->rfind("error ", 0) == 0 ? reply->substr(6) : *reply);
    return 1;
  }
  const std::string body = reply->substr(3);
  if (words[0] != "inspect" || absl::GetFlag(FLAGS_json)) {
    fmt::print("{}", body);
    return 0;
  }
  absl::StatusOr<Tree> tree = ParseJson(body);
  if (!tree.ok()) {
    fmt::print(stderr, "cvmbusctl: the daemon's answer: {}\n",
               std::string(tree.status().message()));
    return 1;
  }
  fmt::print("{}", ToLines(*tree, words.size() == 2 ? words[1] : ""));
  return 0;
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(cvmbus::paravisor::daemon::kUsage);
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> words(rest.begin() + 1, rest.end());
  return cvmbus::paravisor::daemon::Main(words);
}
