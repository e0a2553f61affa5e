// A hostile guest: tens of thousands of control messages, valid ones mutated at random and
// random bytes, against a server with devices and open channels. The server must answer or
// log, never crash, hang or leak (run under ASan in CI's sanitizer passes), and must still
// serve a well-behaved request afterwards. The connection has every feature and a monitor page,
// so pause/resume, MODIFY_CONNECTION, TL_CONNECT and OPENCHANNEL's tail are in the mix.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "paravisor/devices/echo_device.h"
#include "paravisor/server/server.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;

// Every feature the protocol knows (the server grants what it has).
constexpr uint32_t kAllFeatures = protocol::kKnownFeatures;

std::vector<std::vector<uint8_t>> Templates(uint32_t relid) {
  std::vector<std::vector<uint8_t>> out;
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = protocol::kVersionWin10V6_0;
  out.push_back(protocol::EncodeInitiateContact(contact));
  contact.interrupt_page_or_target.target.feature_flags =
      kAllFeatures & ~protocol::kFeatureClientId;
  contact.monitor_page1 = 0x3d000;
  contact.monitor_page2 = 0x3e000;
  out.push_back(protocol::EncodeInitiateContact(contact));
  out.push_back(protocol::Encode(protocol::RequestOffers{}));
  protocol::OpenChannel open{};
  open.child_relid = relid;
  open.ring_buffer_gpadl = 1;
  open.downstream_page_offset = 2;
  out.push_back(protocol::EncodeOpenChannel(open, false));
  open.connection_id = 0x4000;
  open.event_flag = 3;
  out.push_back(protocol::EncodeOpenChannel(open, true));
  protocol::CloseChannel close{};
  close.child_relid = relid;
  out.push_back(protocol::Encode(close));
  auto gpadl = protocol::EncodeGpadl(relid, 7, 1, {uint64_t{3 * 4096}, 0x300, 0x301, 0x302});
  for (auto& message : *gpadl) out.push_back(message);
  auto body = protocol::EncodeGpadlBody(protocol::GpadlBody{.gpadl = 7}, {{0x303}});
  out.push_back(*body);
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = 7;
  out.push_back(protocol::Encode(teardown));
  protocol::RelIdReleased released{};
  released.child_relid = relid;
  out.push_back(protocol::Encode(released));
  protocol::ModifyChannel modify{};
  modify.child_relid = relid;
  out.push_back(protocol::Encode(modify));
  protocol::ModifyConnection connection{};
  connection.monitor_page1 = 0x3b000;
  connection.monitor_page2 = 0x3c000;
  out.push_back(protocol::Encode(connection));
  out.push_back(protocol::Encode(protocol::Pause{}));
  out.push_back(protocol::Encode(protocol::Resume{}));
  protocol::TlConnectRequest connect{};
  connect.host_service_id.bytes[0] = 0x5e;
  out.push_back(protocol::EncodeTlConnectRequest(connect, true));
  out.push_back(protocol::Encode(protocol::Unload{}));
  return out;
}

TEST(ServerFuzzTest, HostileGuestMessagesNeverBreakTheServer) {
  auto vm = *vm::VirtualMachine::Create({.isolated = false});
  std::vector<std::unique_ptr<EchoDevice>> devices;
  vm->OnServer([&] {
    for (uint32_t i = 1; i <= 3; ++i) {
      OfferParams params;
      params.interface_id.data1 = 1;
      params.instance_id.data1 = i;
      params.subchannel_index = static_cast<uint16_t>(i == 3 ? 1 : 0);
      if (i == 3) params.instance_id.data1 = 1;          // A subchannel of device 1.
      if (i == 2) params.mnf_interrupt_latency = 100us;  // Scanned through the monitor page.
      devices.push_back(std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), params));
      ASSERT_TRUE(devices.back()->Start().ok());
    }
  });
  // Every feature, and monitor pages: the new messages and the scanner are in play.
  ASSERT_TRUE(vm->guest()
                  .Connect(protocol::kVersionWin10V6_0, kAllFeatures & ~protocol::kFeatureClientId,
                           {.parent_to_child = 0x3d000, .child_to_parent = 0x3e000})
                  .ok());
  const auto offers = *vm->guest().RequestOffers();
  ASSERT_EQ(offers.size(), 3u);
  auto channel = testing::GuestChannel::Open(
      vm.get(),
      {.relid = offers[0].child_relid, .gpadl_id = 1, .first_gpn = 0x100, .ring_pages = 2});
  ASSERT_TRUE(channel.ok()) << channel.status();

  std::mt19937 random(2026);
  const std::vector<std::vector<uint8_t>> templates = Templates(offers[1].child_relid);
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> message;
    if (random() % 8 == 0) {
      message.resize(random() % 260);  // Random bytes, possibly over 240 (refused at the port).
      for (uint8_t& byte : message) byte = static_cast<uint8_t>(random());
    } else {
      message = templates[random() % templates.size()];
      for (int flips = random() % 4; flips > 0 && !message.empty(); --flips) {
        message[random() % message.size()] = static_cast<uint8_t>(random());
      }
      if (random() % 16 == 0) message.resize(random() % (message.size() + 1));
    }
    (void)vm->guest().SendRaw(message);
  }
  vm->OnServer([] {});  // Everything posted so far has been handled.
  // Whatever state the guest left the connection in, a clean UNLOAD, INITIATE_CONTACT and open
  // work, and a channel echoes.
  (void)vm->guest().SendRaw(protocol::Encode(protocol::Unload{}));
  vm->OnServer([] {});
  std::this_thread::sleep_for(50ms);  // Let the guest loop deliver the last answers.
  vm->guest().DiscardInbox();
  ASSERT_TRUE(vm->guest().Connect(protocol::kVersionWin10V6_0, 0).ok());
  const auto again = *vm->guest().RequestOffers();
  ASSERT_EQ(again.size(), 3u);
  auto fresh = testing::GuestChannel::Open(
      vm.get(),
      {.relid = again[0].child_relid, .gpadl_id = 5000, .first_gpn = 0x200, .ring_pages = 2});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ring::PacketBuffer buffer;
  const std::vector<uint8_t> payload = {1, 2, 3, 4};
  ASSERT_TRUE((*fresh)->Send(payload, 77).ok());
  ASSERT_TRUE((*fresh)->Receive(&buffer, 5s).ok());
  EXPECT_EQ(buffer.packet().transaction_id, 77u);
  uint64_t errors = 0;
  vm->OnServer([&] {
    errors = vm->server().stats().guest_errors;
    devices.clear();
  });
  EXPECT_GT(errors, 1000u);  // The mutations were noticed, not silently accepted.
}

}  // namespace
}  // namespace cvmbus::paravisor
