// The IC tests' common ground: an SEV-SNP VM whose guest connects at VMBus 6.0 with
// confidential channels, the three IC devices on the paravisor's server, and Linux-like guests
// (IcGuest) on private-page rings.
#ifndef CVMBUS_TESTS_IC_IC_FIXTURE_H_
#define CVMBUS_TESTS_IC_IC_FIXTURE_H_

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "paravisor/devices/ic/heartbeat_ic.h"
#include "paravisor/devices/ic/shutdown_ic.h"
#include "paravisor/devices/ic/timesync_ic.h"
#include "paravisor/protocol/header.h"
#include "paravisor/testing/ic_guest.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor::ic::testing {

using namespace std::chrono_literals;

class IcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto vm = paravisor::vm::VirtualMachine::Create();
    ASSERT_TRUE(vm.ok()) << vm.status();
    vm_ = *std::move(vm);
  }
  void TearDown() override {
    guests_.clear();
    if (vm_) {
      vm_->OnServer([&] {
        heartbeat_.reset();
        shutdown_.reset();
        timesync_.reset();
      });
    }
  }

  // Creates and starts devices on the server's thread (before Connect, so they are offered).
  void AddHeartbeat(HeartbeatOptions options = {}) {
    vm_->OnServer([&] {
      heartbeat_ = std::make_unique<HeartbeatIc>(vm_->server_loop(), &vm_->bus(), options);
      ASSERT_TRUE(heartbeat_->Start().ok());
    });
  }
  void AddShutdown(ShutdownOptions options = {}) {
    vm_->OnServer([&] {
      shutdown_ = std::make_unique<ShutdownIc>(vm_->server_loop(), &vm_->bus(), options);
      ASSERT_TRUE(shutdown_->Start().ok());
    });
  }
  void AddTimeSync(TimeSyncOptions options = {}) {
    vm_->OnServer([&] {
      timesync_ = std::make_unique<TimeSyncIc>(vm_->server_loop(), &vm_->bus(), options);
      ASSERT_TRUE(timesync_->Start().ok());
    });
  }

  // Connects as a Linux 6.19 CVM guest and collects the offers.
  void Connect() {
    auto version =
        vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels);
    ASSERT_TRUE(version.ok()) << version.status();
    auto offers = vm_->guest().RequestOffers();
    ASSERT_TRUE(offers.ok()) << offers.status();
    offers_ = *std::move(offers);
  }
  uint32_t RelidOf(const Guid& interface_id) {
    for (const protocol::OfferChannel& offer : offers_) {
      if (OfferIs(offer, interface_id)) return offer.child_relid;
    }
    ADD_FAILURE() << "no offer of " << interface_id.ToString();
    return 0;
  }

  // Opens the channel of `service` with a guest (its rings at `first_gpn`, GPADL `gpadl_id`).
  IcGuest* Attach(IcService service, IcGuestOptions options = {}) {
    static const Guid kInterfaces[] = {kHeartbeatInterfaceId, kShutdownInterfaceId,
                                       kTimeSyncInterfaceId};
    options.service = service;
    options.relid = RelidOf(kInterfaces[static_cast<int>(service)]);
    if (options.first_gpn == 0x100) options.first_gpn = 0x100 + 0x20 * guests_.size();
    if (options.gpadl_id == 1) options.gpadl_id = 1 + static_cast<uint32_t>(guests_.size());
    auto guest = IcGuest::Attach(vm_.get(), options);
    EXPECT_TRUE(guest.ok()) << guest.status();
    if (!guest.ok()) return nullptr;
    guests_.push_back(*std::move(guest));
    return guests_.back().get();
  }

  // Runs `fn` on the server's thread and returns its value.
  template <typename F>
  auto OnServer(F fn) -> decltype(fn()) {
    decltype(fn()) value{};
    vm_->OnServer([&] { value = fn(); });
    return value;
  }

  // Polls `done` (on the server's thread) until it holds or `timeout` passes.
  bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (OnServer(done)) return true;
      std::this_thread::sleep_for(2ms);
    }
    return OnServer(done);
  }

  // Serves `guest`'s packets until `done` (on the server's thread) holds or `timeout` passes.
  bool ServeUntil(IcGuest* guest, const std::function<bool()>& done,
                  std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (OnServer(done)) return true;
      (void)guest->ServeOne(10ms);
    }
    return OnServer(done);
  }

  // A shutdown request whose result arrives on a future (shared: it may be answered late).
  std::future<absl::StatusOr<uint32_t>> RequestShutdown(const ShutdownRequest& request) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<uint32_t>>>();
    std::future<absl::StatusOr<uint32_t>> result = promise->get_future();
    vm_->OnServer([&] {
      shutdown_->RequestShutdown(request, [promise](absl::StatusOr<uint32_t> status) {
        promise->set_value(std::move(status));
      });
    });
    return result;
  }

  std::unique_ptr<paravisor::vm::VirtualMachine> vm_;
  std::vector<protocol::OfferChannel> offers_;
  std::unique_ptr<HeartbeatIc> heartbeat_;
  std::unique_ptr<ShutdownIc> shutdown_;
  std::unique_ptr<TimeSyncIc> timesync_;
  std::vector<std::unique_ptr<IcGuest>> guests_;
};

}  // namespace cvmbus::paravisor::ic::testing

#endif  // CVMBUS_TESTS_IC_IC_FIXTURE_H_
