#include "tests/hvsocket/host_program.h"

#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace cvmbus::paravisor::testing {

std::optional<std::string> FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = dir + "/" + name;
    if (!dir.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

bool WaitForPath(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

namespace {

bool Listening(const std::string& path) {
  std::ifstream table("/proc/net/unix");
  std::string line;
  std::getline(table, line);  // The header.
  while (std::getline(table, line)) {
    // "Num RefCount Protocol Flags Type St Inode Path": flags 00010000 is __SO_ACCEPTCON.
    std::istringstream fields(line);
    std::string num, refcount, protocol, flags, type, state, inode, socket_path;
    fields >> num >> refcount >> protocol >> flags >> type >> state >> inode >> socket_path;
    if (socket_path == path && flags == "00010000") return true;
  }
  return false;
}

}  // namespace

bool WaitForListener(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!Listening(path)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

absl::StatusOr<HostProgram> HostProgram::Start(std::vector<std::string> argv) {
  std::vector<char*> args;
  for (std::string& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  const int error = posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ);
  if (error != 0) {
    return absl::InternalError(fmt::format("spawn {}: {}", argv[0], std::strerror(error)));
  }
  return HostProgram(pid);
}

HostProgram::~HostProgram() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
}

void HostProgram::Kill(int signal) {
  if (pid_ > 0) kill(pid_, signal);
}

absl::StatusOr<int> HostProgram::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (pid_ > 0) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      pid_ = -1;
      return status;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError("host program: still running");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return absl::FailedPreconditionError("host program: not running");
}

}  // namespace cvmbus::paravisor::testing
