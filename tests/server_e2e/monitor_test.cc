// Monitor pages (MNF) end to end: the guest client signals monitored channels by setting
// pending bits, the server's scanner turns them into channel events, an echo device answers.
#include <gtest/gtest.h>

#include "guestmem/guest_memory.h"
#include "hw/uring/signal.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/protocol/monitor_page.h"
#include "paravisor/server/server.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using testing::GuestChannel;
using vm::VirtualMachine;
namespace monitor = protocol::monitor;

constexpr uint64_t kServerPage = 0x3f000;
constexpr uint64_t kGuestPageToChild = 0x3d000;
constexpr uint64_t kGuestPageToParent = 0x3e000;
constexpr uint32_t kConfidentialAndServerPages =
    protocol::kFeatureConfidentialChannels | protocol::kFeatureServerSpecifiedMonitorPages;

OfferParams MonitoredParams(uint32_t instance) {
  OfferParams params;
  params.interface_name = "echo";
  params.interface_id.data1 = 1;
  params.instance_id.data1 = instance;
  params.mnf_interrupt_latency = 100us;
  return params;
}

struct Vm {
  explicit Vm(vm::VmOptions options) : vm(*VirtualMachine::Create(options)) {
    vm->OnServer([&] {
      device = std::make_unique<EchoDevice>(vm->server_loop(), &vm->bus(), MonitoredParams(1));
      EXPECT_TRUE(device->Start().ok());
    });
  }
  ~Vm() {
    vm->OnServer([&] { device.reset(); });
  }
  // Echoes `count` packets through the channel; every send signals the host.
  void Echo(uint32_t relid, bool confidential, int count) {
    auto channel = GuestChannel::Open(vm.get(), {.relid = relid,
                                                 .gpadl_id = 7,
                                                 .first_gpn = 0x200,
                                                 .ring_pages = 2,
                                                 .confidential = confidential});
    ASSERT_TRUE(channel.ok()) << channel.status();
    ring::PacketBuffer buffer;
    for (int i = 1; i <= count; ++i) {
      const std::vector<uint8_t> payload(static_cast<size_t>(i % 50), static_cast<uint8_t>(i));
      ASSERT_TRUE((*channel)->Send(payload, i).ok());
      ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok()) << i;
      ASSERT_EQ(buffer.packet().transaction_id, static_cast<uint64_t>(i));
    }
    ASSERT_TRUE((*channel)->Close().ok());
  }
  MonitorScanner::Stats MonitorStats() {
    MonitorScanner::Stats stats;
    vm->OnServer([&] {
      if (vm->server().monitor() != nullptr) stats = vm->server().monitor()->stats();
    });
    return stats;
  }
  std::unique_ptr<VirtualMachine> vm;
  std::unique_ptr<EchoDevice> device;
};

TEST(MonitorPageTest, ConfidentialVmHandsTheGuestItsOwnPrivatePageAndScansIt) {
  Vm vm({.server_monitor_page = kServerPage});
  const guestmem::GuestMemory private_view = guestmem::GuestMemory::Private(vm.vm->memory());
  // The guest offers its own (shared) pages too; the server's page replaces them.
  auto response =
      vm.vm->guest().Connect(protocol::kVersionWin10V6_0, kConfidentialAndServerPages,
                             {.parent_to_child = kGuestPageToChild,
                              .child_to_parent = kGuestPageToParent,
                              .own_pages = guestmem::GuestMemory::Untrusted(vm.vm->memory()),
                              .server_pages = private_view});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->connection_state, protocol::kConnectionSuccessful);
  EXPECT_EQ(response->supported_features, kConfidentialAndServerPages);
  EXPECT_EQ(response->parent_to_child_monitor_page, 0u);
  EXPECT_EQ(response->child_to_parent_monitor_page, kServerPage);

  const auto offers = *vm.vm->guest().RequestOffers();
  ASSERT_EQ(offers.size(), 1u);
  ASSERT_TRUE(offers[0].monitor_allocated());
  const uint8_t id = offers[0].monitor_id;
  EXPECT_EQ(id, 0);
  // The page describes the channel as Hyper-V's host does: latency in 100 ns units, the
  // connection to signal, the group enabled.
  EXPECT_EQ(*private_view.ReadPlain<uint16_t>(kServerPage + monitor::LatencyOffset(id)), 1000);
  EXPECT_EQ(*private_view.ReadPlain<uint32_t>(kServerPage + monitor::ParameterOffset(id)),
            offers[0].connection_id);
  EXPECT_EQ(*private_view.ReadPlain<uint32_t>(kServerPage + monitor::kTriggerState) & 1u, 1u);

  vm.Echo(offers[0].child_relid, /*confidential=*/true, 200);
  const MonitorScanner::Stats stats = vm.MonitorStats();
  EXPECT_GT(stats.signals, 0u);  // Every send set a pending bit; scans turned them into events.
  EXPECT_EQ(stats.unknown_bits, 0u);
  EXPECT_EQ(*private_view.ReadPlain<uint32_t>(kServerPage + monitor::PendingOffset(0)), 0u);
}

TEST(MonitorPageTest, ConfidentialVmWithoutTheFeatureOffersNoMonitorIds) {
  Vm vm({.server_monitor_page = kServerPage});
  auto response =
      vm.vm->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels,
                             {.parent_to_child = kGuestPageToChild,
                              .child_to_parent = kGuestPageToParent,
                              .own_pages = guestmem::GuestMemory::Untrusted(vm.vm->memory())});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->supported_features, protocol::kFeatureConfidentialChannels);
  EXPECT_EQ(response->child_to_parent_monitor_page, 0u);
  // The guest's pages are shared with the host, which could forge notifications through them.
  const auto offers = *vm.vm->guest().RequestOffers();
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_FALSE(offers[0].monitor_allocated());
  EXPECT_EQ(offers[0].monitor_id, monitor::kNoMonitorId);
  vm.Echo(offers[0].child_relid, /*confidential=*/true, 20);  // Through HvSignalEvent.
  vm.vm->OnServer([&] { EXPECT_EQ(vm.vm->server().monitor(), nullptr); });
}

TEST(MonitorPageTest, OtherVmsUseTheGuestsOwnPage) {
  Vm vm({.trusted_port = false, .isolated = false});
  const guestmem::GuestMemory shared = guestmem::GuestMemory::Untrusted(vm.vm->memory());
  auto response = vm.vm->guest().Connect(protocol::kVersionWin10V5_3, 0,
                                         {.parent_to_child = kGuestPageToChild,
                                          .child_to_parent = kGuestPageToParent,
                                          .own_pages = shared});
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->connection_state, protocol::kConnectionSuccessful);
  const auto offers = *vm.vm->guest().RequestOffers();
  ASSERT_TRUE(offers[0].monitor_allocated());
  EXPECT_EQ(*shared.ReadPlain<uint32_t>(kGuestPageToParent +
                                        monitor::ParameterOffset(offers[0].monitor_id)),
            offers[0].connection_id);
  vm.Echo(offers[0].child_relid, /*confidential=*/false, 100);
  EXPECT_GT(vm.MonitorStats().signals, 0u);
}

TEST(MonitorPageTest, BadMonitorPagesFailTheConnection) {
  Vm vm({.trusted_port = false, .isolated = false});
  const struct {
    uint64_t to_child, to_parent;
    const char* why;
  } bad[] = {
      {0, kGuestPageToParent, "one page without the other"},
      {kGuestPageToChild, 0, "the other page without the one"},
      {kGuestPageToChild, kGuestPageToParent + 0x10, "not page aligned"},
      {kGuestPageToChild, uint64_t{1} << 40, "not guest memory"},
  };
  for (const auto& pages : bad) {
    SCOPED_TRACE(pages.why);
    auto response = vm.vm->guest().Connect(
        protocol::kVersionWin10V6_0, 0,
        {.parent_to_child = pages.to_child, .child_to_parent = pages.to_parent});
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->connection_state, protocol::kConnectionFailedUnknownFailure);
  }
  EXPECT_EQ(vm.vm->TakeLog().size() >= 4, true);
  // Still disconnected, so a good request connects.
  auto good = vm.vm->guest().Connect(protocol::kVersionWin10V6_0, 0);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(good->connection_state, protocol::kConnectionSuccessful);
}

TEST(MonitorPageTest, ScannerDropsBitsOfUnknownIdsAndStopsOnALostPage) {
  Vm vm({.server_monitor_page = kServerPage});
  const guestmem::GuestMemory private_view = guestmem::GuestMemory::Private(vm.vm->memory());
  ASSERT_TRUE(vm.vm->guest()
                  .Connect(protocol::kVersionWin10V6_0, kConfidentialAndServerPages,
                           {.server_pages = private_view})
                  .ok());
  // Bits for ids no channel uses: cleared, counted, nothing raised.
  ASSERT_TRUE(
      private_view.WritePlain<uint32_t>(kServerPage + monitor::PendingOffset(3), 0x81).ok());
  vm.vm->OnServer([&] {
    MonitorScanner* scanner = const_cast<MonitorScanner*>(vm.vm->server().monitor());
    ASSERT_NE(scanner, nullptr);
    EXPECT_EQ(*scanner->ScanOnce(), 0);
    EXPECT_EQ(scanner->stats().unknown_bits, 2u);
  });
  EXPECT_EQ(*private_view.ReadPlain<uint32_t>(kServerPage + monitor::PendingOffset(3)), 0u);
  // Idle scans stretch the period (up to 16x); the first bit found restores it.
  vm.vm->OnServer([&] {
    MonitorScanner* scanner = const_cast<MonitorScanner*>(vm.vm->server().monitor());
    scanner->Watch(5, std::make_shared<hw::CallbackSignal>([] {}), 100us);
    const auto base = scanner->Interval();
    EXPECT_EQ(base, 100us);
    for (int i = 0; i < MonitorScanner::kIdleScans * 10; ++i) (void)scanner->ScanOnce();
    EXPECT_EQ(scanner->Interval(), base * MonitorScanner::kMaxBackoff);
    ASSERT_TRUE(private_view.FetchOr32(kServerPage + monitor::PendingOffset(0), 1u << 5).ok());
    EXPECT_EQ(*scanner->ScanOnce(), 1);
    EXPECT_EQ(scanner->Interval(), base);
    scanner->Unwatch(5);
  });
  // A hostile host converts the page to shared: the private view loses it, the scan stops
  // with an error (and a log line) instead of failing forever.
  ASSERT_NE(vm.vm->snp(), nullptr);
  ASSERT_TRUE(vm.vm->snp()->ConvertToShared(kServerPage, 4096).ok());
  vm.vm->TakeLog();
  vm.vm->OnServer([&] {
    MonitorScanner* scanner = const_cast<MonitorScanner*>(vm.vm->server().monitor());
    EXPECT_FALSE(scanner->ScanOnce().ok());
    EXPECT_EQ(scanner->ScanOnce().status().code(), absl::StatusCode::kFailedPrecondition);
  });
  const std::vector<std::string> log = vm.vm->TakeLog();
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.back().find("scan stopped"), std::string::npos) << log.back();
}

TEST(MonitorPageTest, TheServersPageSurvivesServicing) {
  Vm vm({.server_monitor_page = kServerPage});
  const guestmem::GuestMemory private_view = guestmem::GuestMemory::Private(vm.vm->memory());
  ASSERT_TRUE(vm.vm->guest()
                  .Connect(protocol::kVersionWin10V6_0, kConfidentialAndServerPages,
                           {.server_pages = private_view})
                  .ok());
  const uint32_t relid = (*vm.vm->guest().RequestOffers())[0].child_relid;
  auto channel = GuestChannel::Open(
      vm.vm.get(),
      {.relid = relid, .gpadl_id = 1, .first_gpn = 0x800, .ring_pages = 2, .confidential = true});
  ASSERT_TRUE(channel.ok()) << channel.status();
  ring::PacketBuffer buffer;
  const std::vector<uint8_t> payload = {1, 2};
  ASSERT_TRUE((*channel)->Send(payload, 1).ok());
  ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok());

  auto state = vm.vm->SaveAndStopServer();
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->monitor_page_gpa(), kServerPage);
  EXPECT_TRUE(state->monitor_page_server_allocated());
  vm.vm->OnServer([&] { vm.device.reset(); });
  // The guest writes and sets its pending bit while no server runs.
  ASSERT_TRUE((*channel)->Send(payload, 2).ok());
  ASSERT_TRUE(vm.vm->StartRestoredServer(*state).ok());
  vm.vm->OnServer([&] {
    vm.device =
        std::make_unique<EchoDevice>(vm.vm->server_loop(), &vm.vm->bus(), MonitoredParams(1));
    ASSERT_TRUE(vm.device->StartRestored(/*was_open=*/true).ok());
  });
  ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok());
  EXPECT_EQ(buffer.packet().transaction_id, 2u);
  for (uint64_t i = 3; i <= 50; ++i) {
    ASSERT_TRUE((*channel)->Send(payload, i).ok());
    ASSERT_TRUE((*channel)->Receive(&buffer, 5s).ok()) << i;
  }
  EXPECT_GT(vm.MonitorStats().signals, 0u);  // The restored server scans the same page.
  ASSERT_TRUE((*channel)->Close().ok());
}

TEST(MonitorPageTest, RestoreRefusesAServerPageThisServerDoesNotHave) {
  Vm vm({.isolated = false});
  saved::Server state;
  state.set_monitor_page_gpa(kServerPage);
  state.set_monitor_page_server_allocated(true);
  auto stopped = vm.vm->SaveAndStopServer();
  ASSERT_TRUE(stopped.ok());
  vm.vm->OnServer([&] { vm.device.reset(); });
  EXPECT_EQ(vm.vm->StartRestoredServer(state).code(), absl::StatusCode::kDataLoss);
  state.set_monitor_page_server_allocated(false);
  state.set_monitor_page_gpa(kServerPage + 8);  // Not page aligned.
  EXPECT_EQ(vm.vm->StartRestoredServer(state).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace cvmbus::paravisor
