// KernelTest: the fixture of the personality tests. A PersonalityVm, its devices (echo and
// scripted ones on the server's loop) and the guest kernel running on it, with the steps every
// test shares: boot the personality (a kexec'd one after a predecessor that left a channel
// open), hand over to the next kernel, and check each kernel's account of the conversation
// when it goes (no answer its connection did not ask for).
//
// Threads: the test's thread drives the kernel; devices live on the server's loop and are
// touched only through OnServer/WaitUntil.
#ifndef CVMBUS_TESTS_PERSONALITIES_KERNEL_TEST_H_
#define CVMBUS_TESTS_PERSONALITIES_KERNEL_TEST_H_

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "paravisor/client/guest_personality.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/server/server.h"
#include "paravisor/server/testing/scripted_device.h"
#include "tests/personalities/personality_vm.h"

namespace cvmbus::paravisor::testing {

inline absl::Status ToStatus(const absl::Status& status) { return status; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& value) {
  return value.status();
}
#define ASSERT_OK(expr)                                                           \
  do {                                                                            \
    const absl::Status assert_ok_ = ::cvmbus::paravisor::testing::ToStatus(expr); \
    ASSERT_TRUE(assert_ok_.ok()) << assert_ok_;                                   \
  } while (0)

// The instance of the echo device the predecessor of a kexec'd kernel uses.
inline constexpr uint32_t kBystander = 0xb1;
// Pages for devices that never touch memory (scripted ones): above the rings.
inline constexpr uint64_t kScriptedGpn = 0x800;

inline OfferParams Params(const Guid& interface, uint32_t instance, bool mnf = false) {
  OfferParams params;
  params.interface_name = "personality";
  params.interface_id = interface;
  params.instance_id.data1 = instance;
  if (mnf) params.mnf_interrupt_latency = std::chrono::microseconds(50);
  return params;
}

inline std::vector<uint64_t> Gpns(uint64_t first, uint64_t count) {
  std::vector<uint64_t> gpns;
  for (uint64_t i = 0; i < count; ++i) gpns.push_back(first + i);
  return gpns;
}

inline std::string Lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& line : lines) text += "\n  " + line;
  return text;
}

// A VM, its devices and the kernel running on it. Subclasses pick the personality.
class KernelTest : public ::testing::Test {
 protected:
  explicit KernelTest(GuestPersonality personality) : personality_(std::move(personality)) {}

  void TearDown() override {
    if (kernel_ != nullptr) CheckAccount(*kernel_);
    kernel_.reset();
    if (vm_ != nullptr) {
      vm_->OnServer([&] {
        scripted_.clear();
        echoes_.clear();
      });
    }
    vm_.reset();
  }

  void StartVm(uint32_t max_version = protocol::kVersionWin10V6_0) {
    auto vm =
        PersonalityVm::Create({.isolated = personality_.isolated, .max_version = max_version});
    ASSERT_OK(vm);
    vm_ = *std::move(vm);
  }
  EchoDevice* AddEcho(OfferParams params) {
    EchoDevice* device = nullptr;
    vm_->OnServer([&] {
      echoes_.push_back(
          std::make_unique<EchoDevice>(vm_->server_loop(), &vm_->bus(), std::move(params)));
      device = echoes_.back().get();
      EXPECT_TRUE(device->Start().ok());
    });
    return device;
  }
  ScriptedDevice* AddScripted(OfferParams params, DeviceScript script = {}) {
    ScriptedDevice* device = nullptr;
    vm_->OnServer([&] {
      scripted_.push_back(std::make_unique<ScriptedDevice>(vm_->server_loop(), &vm_->bus(),
                                                           std::move(params), script));
      device = scripted_.back().get();
      EXPECT_TRUE(device->Offer().ok());
    });
    return device;
  }

  // Boots the personality's kernel. A kexec'd kernel has a predecessor: a kernel of its base
  // personality boots, opens a channel on a bystander echo device, carries traffic and stops
  // without UNLOAD; the kernel under test then boots onto that connection, which the server
  // must reset first.
  void BootKernel() {
    next_gpn_ = kFirstRingGpn;
    if (!personality_.kexec) {
      auto kernel = vm_->StartKernel(personality_);
      ASSERT_OK(kernel);
      kernel_ = *std::move(kernel);
      ASSERT_OK(kernel_->Boot());
      return;
    }
    EchoDevice* bystander = AddEcho(Params(kNetworkClassId, kBystander));
    auto before = vm_->StartKernel(personality_.Base());
    ASSERT_OK(before);
    kernel_ = *std::move(before);
    ASSERT_OK(kernel_->Boot());
    const protocol::OfferChannel* offer = OfferOf(kBystander);
    ASSERT_NE(offer, nullptr);
    {
      auto ring = GuestRing::Open(vm_.get(), kernel_.get(), *offer, Pages(4));
      ASSERT_OK(ring);
      ASSERT_OK((*ring)->Echo(1, 3));
    }  // Left open at the host.
    ASSERT_NO_FATAL_FAILURE(ReplaceKernel(personality_));
    ASSERT_OK(kernel_->Boot());
    vm_->OnServer([&] {
      EXPECT_EQ(bystander->stats().closes, 1u)
          << "the kexec'd kernel's INITIATE_CONTACT must close what its predecessor left open";
      EXPECT_EQ(vm_->server().gpadl_count(), 0u);
    });
  }
  // The running kernel hands over to a new one of `next` (PersonalityGuest::Reboot: without
  // UNLOAD if `next` is kexec'd); the new one is started, not booted, and reuses the pages.
  void ReplaceKernel(GuestPersonality next) {
    CheckAccount(*kernel_);
    auto replaced = PersonalityGuest::Reboot(std::move(kernel_), std::move(next));
    ASSERT_OK(replaced);
    kernel_ = *std::move(replaced);
    next_gpn_ = kFirstRingGpn;
  }
  // After a Shutdown: a clean boot of a new kernel of `next`.
  void BootNextKernel(GuestPersonality next) {
    CheckAccount(*kernel_);
    auto kernel = vm_->StartKernel(std::move(next));
    ASSERT_OK(kernel);
    kernel_ = *std::move(kernel);
    next_gpn_ = kFirstRingGpn;
    ASSERT_OK(kernel_->Boot());
  }
  void CheckAccount(const PersonalityGuest& kernel) {
    EXPECT_TRUE(kernel.Unsolicited().empty())
        << kernel.personality().name
        << " got answers its connection never asked for:" << Lines(kernel.Unsolicited());
  }

  // The kept offer of the device with instance `instance` (data1), or null.
  const protocol::OfferChannel* OfferOf(uint32_t instance) const {
    for (const protocol::OfferChannel& offer : kernel_->offers()) {
      if (OfferInstance(offer).data1 == instance) return &offer;
    }
    return nullptr;
  }
  uint32_t RelidOf(uint32_t instance) const {
    const protocol::OfferChannel* offer = OfferOf(instance);
    return offer == nullptr ? 0 : offer->child_relid;
  }
  // The running kernel's next free ring pages.
  uint64_t Pages(uint64_t count) {
    const uint64_t first = next_gpn_;
    next_gpn_ += count;
    return first;
  }
  size_t ChannelCount() {
    size_t count = 0;
    vm_->OnServer([&] { count = vm_->server().channel_count(); });
    return count;
  }
  std::vector<std::string> Events(ScriptedDevice* device) {
    std::vector<std::string> events;
    vm_->OnServer([&] { events = device->events(); });
    return events;
  }

  GuestPersonality personality_;
  std::unique_ptr<PersonalityVm> vm_;
  std::unique_ptr<PersonalityGuest> kernel_;
  std::vector<std::unique_ptr<ScriptedDevice>> scripted_;
  std::vector<std::unique_ptr<EchoDevice>> echoes_;
  uint64_t next_gpn_ = kFirstRingGpn;
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_TESTS_PERSONALITIES_KERNEL_TEST_H_
