// The hvsocket relay end to end: an SEV-SNP VM whose guest speaks hyperv_transport.c's wire
// protocol (GuestHvSocket) through the paravisor's VMBus server, and socat as the host program
// on the Unix-socket side, with the hybrid vsock convention in both directions.
#include "paravisor/devices/hvsocket/hvsocket_relay.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/testing/status_testing.h"
#include "paravisor/devices/hvsocket/hvsocket_protocol.h"
#include "paravisor/protocol/header.h"
#include "paravisor/testing/guest_hvsocket.h"
#include "paravisor/vm/virtual_machine.h"
#include "tests/hvsocket/host_program.h"

namespace cvmbus::paravisor::hvsocket {
namespace {

using namespace std::chrono_literals;
using testing::GuestHvSocket;
using testing::HostProgram;
using vm::VirtualMachine;

std::vector<uint8_t> Pattern(size_t bytes, uint32_t seed) {
  std::vector<uint8_t> data(bytes);
  uint32_t x = seed;
  for (uint8_t& byte : data) {
    x = x * 1664525 + 1013904223;
    byte = static_cast<uint8_t>(x >> 24);
  }
  return data;
}

std::vector<uint8_t> Bytes(const std::string& text) { return {text.begin(), text.end()}; }
std::string Text(const std::vector<uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

class HvSocketRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socat_ = testing::FindOnPath("socat");
    if (!socat_.has_value()) {
      GTEST_SKIP() << "socat is not installed (apt-get install socat, or tools/setup.sh): the "
                      "hvsocket relay tests need it as the real host program";
    }
    // Short paths: sockaddr_un holds 107 bytes, and Bazel's TEST_TMPDIR is longer.
    char dir[] = "/tmp/cvmbus-hv-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    vm::VmOptions options;
    options.on_hvsocket_connect = [this](const HvSocketConnect& connect) {
      return relay_ != nullptr && relay_->OnGuestConnect(connect);  // The server's loop thread.
    };
    auto vm = VirtualMachine::Create(options);
    ASSERT_TRUE(vm.ok()) << vm.status();
    vm_ = *std::move(vm);
    ASSERT_NO_FATAL_FAILURE(StartRelay({}));
    auto version =
        vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels);
    ASSERT_TRUE(version.ok()) << version.status();
    auto offers = vm_->guest().RequestOffers();
    ASSERT_TRUE(offers.ok() && offers->empty());
  }

  void TearDown() override {
    programs_.clear();
    if (vm_) vm_->OnServer([&] { relay_.reset(); });
    vm_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void StartRelay(HvSocketRelayOptions options) {
    options.host_socket_base = dir_ + "/host";
    options.listener_path = dir_ + "/relay.sock";
    vm_->OnServer([&] {
      relay_.reset();
      auto relay = HvSocketRelay::Create(vm_->server_loop(), &vm_->bus(), options);
      ASSERT_TRUE(relay.ok()) << relay.status();
      relay_ = *std::move(relay);
    });
  }

  std::string HostSocket(uint32_t port) const { return dir_ + "/host_" + std::to_string(port); }
  std::string File(const std::string& name) const { return dir_ + "/" + name; }

  // socat with `args`; if `listens_at` is set, waits until that socket exists.
  void Socat(std::vector<std::string> args, const std::string& listens_at = "") {
    args.insert(args.begin(), *socat_);
    auto program = HostProgram::Start(std::move(args));
    ASSERT_TRUE(program.ok()) << program.status();
    programs_.push_back(std::make_unique<HostProgram>(*std::move(program)));
    if (!listens_at.empty()) {
      ASSERT_TRUE(testing::WaitForListener(listens_at, 5s)) << listens_at;
    }
  }
  // socat listening on the host socket for `port`: the guest's connect target.
  void ListenOn(uint32_t port, const std::string& program, std::vector<std::string> options = {}) {
    options.push_back("UNIX-LISTEN:" + HostSocket(port));
    options.push_back(program);
    Socat(std::move(options), HostSocket(port));
  }

  std::deque<ConnectionStats> Finished() {
    std::deque<ConnectionStats> finished;
    vm_->OnServer([&] { finished = relay_->finished(); });
    return finished;
  }
  RelayStats Stats() {
    RelayStats stats;
    vm_->OnServer([&] { stats = relay_->stats(); });
    return stats;
  }
  // The first `count` finished connections, once that many ended (empty after 10 s).
  std::deque<ConnectionStats> WaitForFinished(size_t count) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      std::deque<ConnectionStats> finished = Finished();
      if (finished.size() >= count) return finished;
      std::this_thread::sleep_for(5ms);
    }
    return {};
  }

  std::unique_ptr<GuestHvSocket> Connect(uint32_t local_port, uint32_t remote_port,
                                         testing::GuestHvSocketOptions options = {}) {
    auto socket = GuestHvSocket::Connect(vm_.get(), local_port, remote_port, options);
    EXPECT_TRUE(socket.ok()) << socket.status();
    return socket.ok() ? *std::move(socket) : nullptr;
  }

  std::optional<std::string> socat_;
  std::string dir_;
  std::unique_ptr<VirtualMachine> vm_;
  std::unique_ptr<HvSocketRelay> relay_;  // Loop thread only.
  std::vector<std::unique_ptr<HostProgram>> programs_;
};

TEST_F(HvSocketRelayTest, BytesGoBothWaysThroughAnEchoingHost) {
  ASSERT_NO_FATAL_FAILURE(ListenOn(5000, "EXEC:cat"));
  std::unique_ptr<GuestHvSocket> socket = Connect(1025, 5000);
  ASSERT_NE(socket, nullptr);
  // The offer is the server's contract for a guest connect: instance = our endpoint.
  EXPECT_EQ(socket->offer().user_defined.hvsock.is_for_guest_accept, 0);
  std::vector<uint8_t> echoed;
  ASSERT_OK(socket->Exchange(Bytes("hello, hvsocket"), false, 15, &echoed, 5s));
  EXPECT_EQ(Text(echoed), "hello, hvsocket");
  // Linux's close: FIN, then the rescind comes once the host closed too.
  ASSERT_OK(socket->Close(5s));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kClosed) << finished[0].error;
  EXPECT_FALSE(finished[0].host_initiated);
  EXPECT_EQ(finished[0].service_id, ServiceIdForPort(5000));
  EXPECT_EQ(finished[0].instance_id, ServiceIdForPort(1025));
  EXPECT_EQ(finished[0].socket_path, HostSocket(5000));
  EXPECT_EQ(finished[0].bytes_to_host, 15u);
  EXPECT_EQ(finished[0].bytes_to_guest, 15u);
  EXPECT_EQ(finished[0].packets_from_guest, 2u);  // The data and the FIN.
  EXPECT_TRUE(finished[0].guest_fin);
  EXPECT_TRUE(finished[0].host_fin);
  EXPECT_EQ(Stats().guest_connects, 1u);
  // Linux's CLOSECHANNEL after the rescind is the normal end, not a guest mistake.
  uint64_t guest_errors = 0;
  vm_->OnServer([&] { guest_errors = vm_->server().stats().guest_errors; });
  EXPECT_EQ(guest_errors, 0u);
}

// Several MiB through an echo: both directions' flow control at once (the host's socket
// buffers, the guest's 24 KiB rings), checked byte for byte.
TEST_F(HvSocketRelayTest, ALargeTransferThroughAnEchoArrivesIntact) {
  ASSERT_NO_FATAL_FAILURE(ListenOn(5001, "EXEC:cat"));
  std::unique_ptr<GuestHvSocket> socket = Connect(1026, 5001);
  ASSERT_NE(socket, nullptr);
  const std::vector<uint8_t> data = Pattern(6 << 20, 1);
  std::vector<uint8_t> echoed;
  ASSERT_OK(socket->Exchange(data, /*fin=*/true, SIZE_MAX, &echoed, 60s));
  EXPECT_TRUE(socket->fin_received());
  ASSERT_EQ(echoed.size(), data.size());
  EXPECT_TRUE(echoed == data);
  ASSERT_OK(socket->Close(5s));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kClosed) << finished[0].error;
  EXPECT_EQ(finished[0].bytes_to_host, data.size());
  EXPECT_EQ(finished[0].bytes_to_guest, data.size());
  // Linux's packets carry at most 4088 bytes; the relay's at most the MTU.
  EXPECT_GE(finished[0].packets_from_guest, data.size() / kLinuxSendChunkBytes);
  EXPECT_GE(finished[0].packets_to_guest, data.size() / kMtuBytes);
}

TEST_F(HvSocketRelayTest, ALargeFileFromTheHostEndsWithTheFin) {
  const std::vector<uint8_t> data = Pattern(5 << 20, 2);
  {
    FILE* file = std::fopen(File("source").c_str(), "wb");
    ASSERT_NE(file, nullptr);
    ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), file), data.size());
    std::fclose(file);
  }
  ASSERT_NO_FATAL_FAILURE(
      Socat({"-u", "OPEN:" + File("source"), "UNIX-LISTEN:" + HostSocket(5002)}, HostSocket(5002)));
  std::unique_ptr<GuestHvSocket> socket = Connect(1027, 5002);
  ASSERT_NE(socket, nullptr);
  std::vector<uint8_t> received;
  ASSERT_OK(socket->ReceiveUntilFin(&received, 60s));
  ASSERT_EQ(received.size(), data.size());
  EXPECT_TRUE(received == data);
  ASSERT_OK(socket->Close(5s));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kClosed) << finished[0].error;
}

// The guest shuts down its writes first: the host reads end of stream, and still answers.
TEST_F(HvSocketRelayTest, GuestHalfCloseReachesTheHostWhichStillAnswers) {
  ASSERT_NO_FATAL_FAILURE(
      ListenOn(5003, "SYSTEM:cat > " + File("from_guest") + "; echo done", {"-t", "5"}));
  std::unique_ptr<GuestHvSocket> socket = Connect(1028, 5003);
  ASSERT_NE(socket, nullptr);
  std::vector<uint8_t> answer;
  ASSERT_OK(socket->Exchange(Bytes("abc"), /*fin=*/true, SIZE_MAX, &answer, 10s));
  EXPECT_EQ(Text(answer), "done\n");
  EXPECT_TRUE(socket->fin_received());
  EXPECT_EQ(testing::ReadFile(File("from_guest")), "abc");
  ASSERT_OK(socket->Close(5s));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kClosed) << finished[0].error;
}

// The host shuts down its writes first: the guest reads the FIN, and can still send.
TEST_F(HvSocketRelayTest, HostHalfCloseReachesTheGuestWhichStillSends) {
  // socat reads the greeting, then shuts down its writes (the file's end) and keeps copying the
  // other way into a file. (A SYSTEM child closing its stdout does not reach socat's EOF.)
  {
    FILE* greeting = std::fopen(File("greeting").c_str(), "w");
    ASSERT_NE(greeting, nullptr);
    std::fputs("hello\n", greeting);
    std::fclose(greeting);
  }
  ASSERT_NO_FATAL_FAILURE(ListenOn(
      5004, "OPEN:" + File("greeting") + "!!OPEN:" + File("after_fin") + ",creat", {"-t", "5"}));
  std::unique_ptr<GuestHvSocket> socket = Connect(1029, 5004);
  ASSERT_NE(socket, nullptr);
  std::vector<uint8_t> received;
  ASSERT_OK(socket->ReceiveUntilFin(&received, 10s));
  EXPECT_EQ(Text(received), "hello\n");
  vm_->OnServer([&] {
    std::vector<ConnectionStats> running = relay_->Connections();
    ASSERT_EQ(running.size(), 1u);
    EXPECT_TRUE(running[0].host_fin);
    EXPECT_FALSE(running[0].guest_fin);
  });
  ASSERT_OK(socket->SendAll(Bytes("sent after the host's FIN"), 5s));
  ASSERT_OK(socket->Close(10s));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kClosed) << finished[0].error;
  ASSERT_OK(programs_[0]->Wait(10s).status());  // It has written the file.
  EXPECT_EQ(testing::ReadFile(File("after_fin")), "sent after the host's FIN");
}

// The host program is killed while the guest streams: the connection is torn down, the guest
// gets the rescind, nothing hangs.
TEST_F(HvSocketRelayTest, AHostThatVanishesMidStreamTearsTheConnectionDown) {
  ASSERT_NO_FATAL_FAILURE(ListenOn(5005, "OPEN:/dev/null,wronly", {"-u"}));
  std::unique_ptr<GuestHvSocket> socket = Connect(1030, 5005);
  ASSERT_NE(socket, nullptr);
  std::atomic<bool> killed{false};
  std::thread killer([&] {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      uint64_t relayed = 0;
      vm_->OnServer([&] {
        for (const ConnectionStats& c : relay_->Connections()) relayed = c.bytes_to_host;
      });
      if (relayed >= (1 << 20)) break;
      std::this_thread::sleep_for(2ms);
    }
    programs_[0]->Kill(SIGKILL);
    killed = true;
  });
  const std::vector<uint8_t> data = Pattern(64 << 20, 3);  // More than goes before the kill.
  std::vector<uint8_t> ignored;
  absl::Status streamed = socket->Exchange(data, false, 0, &ignored, 30s);
  killer.join();
  ASSERT_TRUE(killed);
  EXPECT_TRUE(absl::IsAborted(streamed)) << streamed;  // The rescind ended the stream.
  ASSERT_OK(socket->Close(5s));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kHostError) << finished[0].error;
  EXPECT_FALSE(finished[0].error.ok());
  EXPECT_GE(finished[0].bytes_to_host, 1u << 20);
}

// Host-initiated: a host program asks the relay for the guest's port 6000 with "CONNECT", the
// guest accepts, the program reads "OK <port>" and then the stream goes both ways.
TEST_F(HvSocketRelayTest, AHostProgramConnectsToAListeningGuest) {
  ASSERT_NO_FATAL_FAILURE(Socat({"-t", "5", "UNIX-CONNECT:" + dir_ + "/relay.sock",
                                 "SYSTEM:echo CONNECT 6000; read ok; echo $ok > " + File("ok") +
                                     "; echo from-host; cat > " + File("from_guest")}));
  auto accepted = GuestHvSocket::Accept(vm_.get(), 6000);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  std::unique_ptr<GuestHvSocket> socket = *std::move(accepted);
  EXPECT_NE(socket->offer().user_defined.hvsock.is_for_guest_accept, 0);
  EXPECT_EQ(socket->peer_port(), 1u << 30);
  std::vector<uint8_t> received;
  ASSERT_OK(socket->Exchange({}, false, 10, &received, 10s));
  EXPECT_EQ(Text(received), "from-host\n");
  ASSERT_OK(socket->Exchange(Bytes("from-guest"), true, SIZE_MAX, &received, 10s));
  EXPECT_TRUE(socket->fin_received());
  ASSERT_OK(socket->Close(10s));
  EXPECT_EQ(testing::ReadFile(File("ok")), "OK 1073741824\n");
  EXPECT_EQ(testing::ReadFile(File("from_guest")), "from-guest");
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kClosed) << finished[0].error;
  EXPECT_TRUE(finished[0].host_initiated);
  EXPECT_EQ(finished[0].service_id, ServiceIdForPort(6000));
  EXPECT_EQ(finished[0].instance_id.data1, 1u << 30);
  EXPECT_EQ(Stats().host_connects, 1u);
}

// A guest that never accepts: the offer is rescinded after the open timeout and the host
// program's socket closes without an "OK".
TEST_F(HvSocketRelayTest, AHostConnectNobodyAcceptsTimesOut) {
  ASSERT_NO_FATAL_FAILURE(StartRelay({.open_timeout = 300ms}));
  ASSERT_NO_FATAL_FAILURE(Socat({"UNIX-CONNECT:" + dir_ + "/relay.sock",
                                 "SYSTEM:echo CONNECT 7000; cat > " + File("reply")}));
  auto offer = vm_->guest().WaitFor(protocol::MessageType::kOfferChannel, 5s);
  ASSERT_TRUE(offer.ok()) << offer.status();
  const uint32_t relid = offer->As<protocol::OfferChannel>()->child_relid;
  auto rescind = vm_->guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 5s);
  ASSERT_TRUE(rescind.ok()) << rescind.status();
  EXPECT_EQ(rescind->As<protocol::RescindChannelOffer>()->child_relid, relid);
  ASSERT_OK(vm_->guest().ReleaseRelid(relid));
  ASSERT_OK(programs_[0]->Wait(5s).status());  // Its socket was closed: it ends.
  EXPECT_EQ(testing::ReadFile(File("reply")), "");
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kOpenTimeout);
}

TEST_F(HvSocketRelayTest, AMalformedConnectLineIsRefused) {
  ASSERT_NO_FATAL_FAILURE(Socat(
      {"UNIX-CONNECT:" + dir_ + "/relay.sock", "SYSTEM:echo HELLO 7000; cat > " + File("reply")}));
  ASSERT_OK(programs_[0]->Wait(5s).status());
  EXPECT_EQ(testing::ReadFile(File("reply")), "");
  EXPECT_EQ(Stats().host_refused, 1u);
  EXPECT_TRUE(vm_->guest().NothingArrives(protocol::MessageType::kOfferChannel, 50ms));
}

// No socket file for the port: the connect is refused at once (TL_CONNECT_RESULT), no offer.
TEST_F(HvSocketRelayTest, AConnectToAPortWithNoListenerIsRefused) {
  auto socket = GuestHvSocket::Connect(vm_.get(), 1031, 5999);
  ASSERT_FALSE(socket.ok());
  EXPECT_TRUE(absl::IsUnavailable(socket.status())) << socket.status();
  EXPECT_EQ(Stats().guest_refused, 1u);
  EXPECT_TRUE(vm_->guest().NothingArrives(protocol::MessageType::kOfferChannel, 50ms));
}

// A socket file nobody listens on (a stale one): the open fails and the offer is rescinded, so
// a Linux guest (which ignores TL_CONNECT_RESULT) is not left waiting either.
TEST_F(HvSocketRelayTest, AConnectToAStaleSocketFailsTheOpenAndRescinds) {
  const int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strcpy(address.sun_path, HostSocket(5998).c_str());
  ASSERT_EQ(bind(stale, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  protocol::TlConnectRequest request{};
  const Guid endpoint = ServiceIdForPort(1032);
  const Guid service = ServiceIdForPort(5998);
  std::memcpy(request.guest_endpoint_id.bytes, &endpoint, 16);
  std::memcpy(request.host_service_id.bytes, &service, 16);
  ASSERT_OK(vm_->guest().SendRaw(protocol::EncodeTlConnectRequest(request, false)));
  auto offer = vm_->guest().WaitFor(protocol::MessageType::kOfferChannel, 5s);
  ASSERT_TRUE(offer.ok()) << offer.status();
  const uint32_t relid = offer->As<protocol::OfferChannel>()->child_relid;
  ASSERT_EQ(*vm_->guest().CreateGpadl(relid, 1, {0x100, 0x101, 0x102, 0x103}),
            protocol::kStatusSuccess);
  absl::StatusOr<uint32_t> opened = vm_->guest().OpenChannel(relid, 1, 2);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_NE(*opened, protocol::kStatusSuccess);
  auto rescind = vm_->guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 5s);
  ASSERT_TRUE(rescind.ok()) << rescind.status();
  EXPECT_EQ(rescind->As<protocol::RescindChannelOffer>()->child_relid, relid);
  ASSERT_OK(vm_->guest().TeardownGpadl(relid, 1));
  ASSERT_OK(vm_->guest().ReleaseRelid(relid));
  close(stale);
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kConnectFailed);
  EXPECT_NE(std::string(finished[0].error.message()).find(HostSocket(5998)), std::string::npos)
      << finished[0].error;
}

// The guest closes the channel without a FIN (a killed process): the host sees the stream
// end, the server rescinds, the connection ends as "guest closed".
TEST_F(HvSocketRelayTest, AGuestThatClosesTheChannelEndsTheConnection) {
  ASSERT_NO_FATAL_FAILURE(ListenOn(5006, "SYSTEM:cat > " + File("from_guest")));
  std::unique_ptr<GuestHvSocket> socket = Connect(1033, 5006);
  ASSERT_NE(socket, nullptr);
  ASSERT_OK(socket->SendAll(Bytes("partial"), 5s));
  // What is still in the ring when the channel closes is lost with it: wait until it went.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  uint64_t relayed = 0;
  while (relayed < 7 && std::chrono::steady_clock::now() < deadline) {
    vm_->OnServer([&] {
      for (const ConnectionStats& c : relay_->Connections()) relayed = c.bytes_to_host;
    });
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(relayed, 7u);
  ASSERT_OK(socket->CloseChannelNow());
  ASSERT_OK(socket->WaitForRescind(5s));
  ASSERT_OK(vm_->guest().TeardownGpadl(socket->relid(), 1));
  ASSERT_OK(vm_->guest().ReleaseRelid(socket->relid()));
  std::deque<ConnectionStats> finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kGuestClosed);
  ASSERT_OK(programs_[0]->Wait(5s).status());  // The host saw the end of the stream.
  EXPECT_EQ(testing::ReadFile(File("from_guest")), "partial");
}

// A guest packet that is not a pipe data packet: the relay stops and rescinds.
TEST_F(HvSocketRelayTest, AGuestThatBreaksThePipeProtocolIsCutOff) {
  ASSERT_NO_FATAL_FAILURE(ListenOn(5007, "EXEC:cat"));
  std::unique_ptr<GuestHvSocket> socket = Connect(1034, 5007);
  ASSERT_NE(socket, nullptr);
  const PipeHeader bad{2, 0};
  ASSERT_OK(socket->SendRawPayload(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&bad), sizeof(bad))));
  ASSERT_OK(socket->WaitForRescind(5s));
  std::deque<ConnectionStats> finished;
  ASSERT_OK(vm_->guest().CloseChannel(socket->relid()));
  ASSERT_OK(vm_->guest().TeardownGpadl(socket->relid(), 1));
  ASSERT_OK(vm_->guest().ReleaseRelid(socket->relid()));
  finished = WaitForFinished(1);
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0].end, ConnectionEnd::kGuestError);
  EXPECT_NE(std::string(finished[0].error.message()).find("pipe type 0x2"), std::string::npos)
      << finished[0].error;
}

// Stopping the relay (a device revoked) tears its connections down: the guest gets a rescind.
TEST_F(HvSocketRelayTest, StoppingTheRelayRescindsItsConnections) {
  ASSERT_NO_FATAL_FAILURE(ListenOn(5008, "EXEC:cat"));
  std::unique_ptr<GuestHvSocket> socket = Connect(1035, 5008);
  ASSERT_NE(socket, nullptr);
  std::vector<uint8_t> echoed;
  ASSERT_OK(socket->Exchange(Bytes("x"), false, 1, &echoed, 5s));
  vm_->OnServer([&] { relay_.reset(); });
  ASSERT_OK(socket->WaitForRescind(5s));
  ASSERT_OK(socket->Close(5s));
  ASSERT_OK(programs_[0]->Wait(5s).status());  // The host's socket was closed.
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/relay.sock"));
}

}  // namespace
}  // namespace cvmbus::paravisor::hvsocket
