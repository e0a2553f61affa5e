// cvmbusd and cvmbusctl as programs: a daemon started from a configuration file, asked over
// its control socket by cvmbusctl, and stopped by SIGTERM and by "cvmbusctl shutdown"; bad
// configurations and flags end the daemon at once with one line naming what was wrong.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace cvmbus::tests {
namespace {

using namespace std::chrono_literals;

constexpr char kDaemon[] = "paravisor/daemon/cvmbusd";
constexpr char kCtl[] = "paravisor/daemon/cvmbusctl";

std::string Dir() {
  static const std::string* dir = [] {
    char pattern[] = "/tmp/cvmbusd_process.XXXXXX";  // Short enough for a socket path.
    return new std::string(mkdtemp(pattern) != nullptr ? pattern : "/tmp");
  }();
  return *dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// A started program whose stdout and stderr go to files.
struct Process {
  pid_t pid = -1;
  std::string out_path;
  std::string err_path;
  std::string out() const { return ReadFile(out_path); }
  std::string err() const { return ReadFile(err_path); }
  // The exit status, or -1 if it has not exited within `timeout` (it is then killed).
  int Wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
      }
      std::this_thread::sleep_for(5ms);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

Process Spawn(const std::string& program, const std::vector<std::string>& args,
              const std::string& tag) {
  static int counter = 0;
  Process process;
  process.out_path = Dir() + "/" + tag + std::to_string(++counter) + ".out";
  process.err_path = Dir() + "/" + tag + std::to_string(counter) + ".err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, process.out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, process.err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<std::string> all = {program};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : all) argv.push_back(arg.data());
  argv.push_back(nullptr);
  EXPECT_EQ(posix_spawn(&process.pid, program.c_str(), &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return process;
}

// Runs cvmbusctl to its end.
Process Ctl(const std::string& socket, const std::vector<std::string>& args) {
  std::vector<std::string> all = {"--socket=" + socket};
  all.insert(all.end(), args.begin(), args.end());
  Process ctl = Spawn(kCtl, all, "ctl");
  return ctl;
}

bool WaitForFile(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (access(path.c_str(), F_OK) != 0) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// A configuration for a daemon with two echo channels, the three ICs and the in-process
// guest; its control socket is returned in *socket.
std::string WriteConfig(const std::string& name, std::string* socket) {
  *socket = Dir() + "/" + name + ".sock";
  const std::string path = Dir() + "/" + name + ".conf";
  WriteFile(path,
            "# cvmbusd test configuration\n"
            "memory { size_mib: 32 }\n"
            "isolation: ISOLATION_SNP\n"
            "guest { side: GUEST_CLIENT echo_packets_per_second: 200 }\n"
            "echo { channels: 2 }\n"
            "ic { heartbeat: true shutdown: true timesync: true }\n"
            "control_socket: \"" +
                *socket + "\"\n");
  return path;
}

TEST(CvmbusdProcessTest, InspectedWhileRunningThenStoppedBySigterm) {
  std::string socket;
  const std::string config = WriteConfig("sigterm", &socket);
  Process daemon = Spawn(kDaemon, {"--config=" + config}, "daemon");
  ASSERT_TRUE(WaitForFile(socket, 10s)) << daemon.err();

  Process version = Ctl(socket, {"inspect", "connection/version"});
  EXPECT_EQ(version.Wait(10s), 0) << version.err();
  // The guest may still be negotiating: ask until it has.
  std::string out = version.out();
  for (int i = 0; i < 200 && out != "connection/version = 6.0\n"; ++i) {
    std::this_thread::sleep_for(10ms);
    Process again = Ctl(socket, {"inspect", "connection/version"});
    EXPECT_EQ(again.Wait(10s), 0) << again.err();
    out = again.out();
  }
  EXPECT_EQ(out, "connection/version = 6.0\n");

  Process json = Ctl(socket, {"--json", "inspect", "channels/1"});
  EXPECT_EQ(json.Wait(10s), 0) << json.err();
  EXPECT_NE(json.out().find("\"interface_name\":\"cvmbus-echo\""), std::string::npos) << json.out();

  Process missing = Ctl(socket, {"inspect", "channels/99"});
  EXPECT_EQ(missing.Wait(10s), 1);
  EXPECT_EQ(missing.err(), "cvmbusctl: inspect: no '99' under '/channels'\n");

  Process unknown = Ctl(socket, {"inspect", "a", "b"});
  EXPECT_EQ(unknown.Wait(10s), 1);
  EXPECT_EQ(unknown.err(), "cvmbusctl: usage: inspect [PATH]\n");

  Process ring = Ctl(socket, {"ring", "1"});
  EXPECT_EQ(ring.Wait(10s), 0) << ring.err();
  EXPECT_EQ(ring.out().rfind("ring 1/guest_to_host: data area 0xf000 bytes (15 pages)\n", 0), 0u)
      << ring.out();
  EXPECT_NE(ring.out().find("ring 1/host_to_guest: data area 0xf000 bytes (15 pages)\n"),
            std::string::npos)
      << ring.out();

  Process unstick = Ctl(socket, {"unstick", "2"});
  EXPECT_EQ(unstick.Wait(10s), 0) << unstick.err();
  EXPECT_EQ(unstick.out(), "channel 2: both directions signalled\n");

  Process not_open = Ctl(socket, {"ring", "3"});  // The heartbeat: nobody opened it.
  EXPECT_EQ(not_open.Wait(10s), 1);
  EXPECT_EQ(not_open.err(), "cvmbusctl: channel 3: closed, not open\n");

  Process bad_relid = Ctl(socket, {"unstick", "0x3"});
  EXPECT_EQ(bad_relid.Wait(10s), 1);
  EXPECT_EQ(bad_relid.err(), "cvmbusctl: '0x3' is not a relid (1..2047)\n");

  const std::string state = Dir() + "/vmbus.state";
  Process save = Ctl(socket, {"save", state});
  EXPECT_EQ(save.Wait(10s), 0) << save.err();
  EXPECT_EQ(save.out().rfind("saved ", 0), 0u) << save.out();
  EXPECT_NE(save.out().find(" to " + state + ": version 6.0, 5 channels, 2 GPADLs\n"),
            std::string::npos)
      << save.out();
  EXPECT_GT(ReadFile(state).size(), 100u);
  Process again = Ctl(socket, {"save", state});  // Never over an existing file.
  EXPECT_EQ(again.Wait(10s), 1);
  EXPECT_EQ(again.err(), "cvmbusctl: save: " + state + ": File exists\n");

  ASSERT_EQ(kill(daemon.pid, SIGTERM), 0);
  EXPECT_EQ(daemon.Wait(20s), 0) << daemon.err();
  const std::string log = daemon.err();
  EXPECT_NE(log.find("I cvmbusd: SIGTERM: stopping"), std::string::npos) << log;
  EXPECT_NE(log.find("I cvmbusd: stopped"), std::string::npos) << log;
  EXPECT_EQ(log.find(" W "), std::string::npos) << "no warnings: " << log;
  EXPECT_EQ(access(socket.c_str(), F_OK), -1) << "the socket file is removed";
}

TEST(CvmbusdProcessTest, CvmbusctlShutdownStopsTheDaemon) {
  std::string socket;
  const std::string config = WriteConfig("shutdown", &socket);
  Process daemon = Spawn(
      kDaemon, {"--config=" + config, "--guest=none", "--echo_packets_per_second=0"}, "daemon");
  ASSERT_TRUE(WaitForFile(socket, 10s)) << daemon.err();
  Process shutdown = Ctl(socket, {"shutdown"});
  EXPECT_EQ(shutdown.Wait(10s), 0) << shutdown.err();
  EXPECT_EQ(shutdown.out(), "shutting down\n");
  EXPECT_EQ(daemon.Wait(20s), 0) << daemon.err();
  EXPECT_NE(daemon.err().find("SIGTERM: stopping"), std::string::npos) << daemon.err();
}

TEST(CvmbusdProcessTest, CvmbusctlServiceRestoresTheDaemonInPlace) {
  std::string socket;
  const std::string config = WriteConfig("service", &socket);  // Echo channels and the ICs.
  Process daemon = Spawn(kDaemon, {"--config=" + config}, "daemon");
  ASSERT_TRUE(WaitForFile(socket, 10s)) << daemon.err();
  for (int i = 0; i < 3; ++i) {
    Process service = Ctl(socket, {"service"});
    EXPECT_EQ(service.Wait(10s), 0) << service.err();
    EXPECT_EQ(service.out(), "servicing requested (see inspect daemon/servicing)\n");
  }
  std::string done;
  for (int i = 0; i < 500 && done != "daemon/servicing/done = 3\n"; ++i) {
    std::this_thread::sleep_for(10ms);
    Process ask = Ctl(socket, {"inspect", "daemon/servicing/done"});
    EXPECT_EQ(ask.Wait(10s), 0) << ask.err();
    done = ask.out();
  }
  EXPECT_EQ(done, "daemon/servicing/done = 3\n");
  Process guest = Ctl(socket, {"inspect", "guest/state"});
  EXPECT_EQ(guest.Wait(10s), 0);
  EXPECT_EQ(guest.out(), "guest/state = running\n");
  ASSERT_EQ(kill(daemon.pid, SIGTERM), 0);
  EXPECT_EQ(daemon.Wait(20s), 0) << daemon.err();
  EXPECT_NE(daemon.err().find("I cvmbusd: serviced"), std::string::npos) << daemon.err();

  // With a disk: it pauses, drains and is restored too.
  const std::string disk = Dir() + "/disk.img";
  WriteFile(disk, std::string(1 << 20, '\0'));
  const std::string with_disk = Dir() + "/with_disk.conf";
  WriteFile(with_disk, "disk { path: \"" + disk + "\" }\ncontrol_socket: \"" + socket + "\"\n");
  Process with = Spawn(kDaemon, {"--config=" + with_disk}, "daemon");
  ASSERT_TRUE(WaitForFile(socket, 10s)) << with.err();
  Process service = Ctl(socket, {"service"});
  EXPECT_EQ(service.Wait(10s), 0) << service.err();
  done.clear();
  for (int i = 0; i < 500 && done != "daemon/servicing/done = 1\n"; ++i) {
    std::this_thread::sleep_for(10ms);
    Process ask = Ctl(socket, {"inspect", "daemon/servicing/done"});
    EXPECT_EQ(ask.Wait(10s), 0) << ask.err();
    done = ask.out();
  }
  EXPECT_EQ(done, "daemon/servicing/done = 1\n");
  ASSERT_EQ(kill(with.pid, SIGTERM), 0);
  EXPECT_EQ(with.Wait(20s), 0) << with.err();
}

TEST(CvmbusdProcessTest, ABadConfigurationOrFlagEndsTheDaemonNamingTheField) {
  const std::string config = Dir() + "/bad.conf";
  WriteFile(config, "control_socket: \"/tmp/x.sock\"\nmemory { size_mib: 8 }\n");
  Process bad_value = Spawn(kDaemon, {"--config=" + config}, "bad");
  EXPECT_EQ(bad_value.Wait(10s), 2);
  EXPECT_EQ(bad_value.err(), "cvmbusd: config: memory.size_mib: 8 is outside 16..65536\n");

  WriteFile(config, "control_socket: \"/tmp/x.sock\"\nechos { channels: 1 }\n");
  Process bad_field = Spawn(kDaemon, {"--config=" + config}, "bad");
  EXPECT_EQ(bad_field.Wait(10s), 2);
  EXPECT_EQ(bad_field.err(), "cvmbusd: config " + config +
                                 ": line 2 column 7: Message type \"cvmbus.paravisor.daemon."
                                 "Config\" has no field named \"echos\".\n");

  Process bad_flag = Spawn(kDaemon, {"--control_socket=/tmp/x.sock", "--guest=vm"}, "bad");
  EXPECT_EQ(bad_flag.Wait(10s), 2);
  EXPECT_EQ(bad_flag.err(), "cvmbusd: --guest: 'vm' is not one of none, client, kvm\n");

  Process no_socket = Spawn(kDaemon, {}, "bad");
  EXPECT_EQ(no_socket.Wait(10s), 2);
  EXPECT_EQ(no_socket.err(), "cvmbusd: config: control_socket: required\n");

  Process missing = Spawn(kDaemon, {"--config=" + Dir() + "/none.conf"}, "bad");
  EXPECT_EQ(missing.Wait(10s), 2);
  EXPECT_EQ(missing.err(), "cvmbusd: config " + Dir() + "/none.conf: cannot be opened\n");
}

TEST(CvmbusdProcessTest, CvmbusctlWithoutADaemonSaysSo) {
  Process ctl = Ctl(Dir() + "/nobody.sock", {"inspect"});
  EXPECT_EQ(ctl.Wait(10s), 2);
  EXPECT_NE(ctl.err().find("cvmbusctl: NOT_FOUND: unix socket " + Dir() + "/nobody.sock: connect"),
            std::string::npos)
      << ctl.err();
  Process usage = Ctl(Dir() + "/nobody.sock", {"frobnicate"});
  EXPECT_EQ(usage.Wait(10s), 2);
  EXPECT_NE(usage.err().find("usage"), std::string::npos) << usage.err();
}

}  // namespace
}  // namespace cvmbus::tests
