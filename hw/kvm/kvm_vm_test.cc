#include "hw/kvm/kvm_vm.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/kvm/testing/guest_programs.h"
#include "hw/kvm/testing/test_support.h"

namespace cvmbus::hw::kvm {
namespace {

namespace programs = ::cvmbus::hw::kvm::testing;
using guestmem::BackingType;
using guestmem::GuestMemory;
using guestmem::GuestRegion;
using guestmem::MemoryBacking;
using programs::ReadEventFd;

constexpr absl::Duration kGuestTimeout = absl::Seconds(10);

std::shared_ptr<MemoryBacking> MakeBacking(BackingType type = BackingType::kMemfd,
                                           std::vector<GuestRegion> regions = {
                                               {0, programs::kGuestMemoryBytes}}) {
  guestmem::MemoryOptions options;
  options.name = "kvm-test";
  options.type = type;
  options.regions = std::move(regions);
  absl::StatusOr<std::shared_ptr<MemoryBacking>> backing = MemoryBacking::Create(options);
  EXPECT_TRUE(backing.ok()) << backing.status();
  return backing.ok() ? *backing : nullptr;
}

// A VM over `backing` with `program` loaded at kCodeGpa (not yet started).
std::unique_ptr<KvmVm> MakeVm(std::shared_ptr<MemoryBacking> backing,
                              absl::Span<const uint8_t> program) {
  if (backing == nullptr) return nullptr;
  absl::Status loaded = programs::LoadProgram(GuestMemory::Private(backing), program);
  EXPECT_TRUE(loaded.ok()) << loaded;
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(std::move(backing));
  EXPECT_TRUE(vm.ok()) << vm.status();
  return vm.ok() ? *std::move(vm) : nullptr;
}

// Waits (bounded) until the guest has written `expected` to the debug port.
bool WaitForDebugOutput(const KvmVm& vm, const std::string& expected) {
  const absl::Time deadline = absl::Now() + kGuestTimeout;
  while (absl::Now() < deadline) {
    if (vm.debug_output() == expected) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

// --- Create ------------------------------------------------------------------------------------

TEST(KvmVmCreateTest, MissingDeviceIsUnavailable) {
  auto backing = MakeBacking();
  ASSERT_NE(backing, nullptr);
  absl::StatusOr<std::unique_ptr<KvmVm>> vm =
      KvmVm::Create(backing, KvmOptions{.device_path = "/nonexistent/kvm"});
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.status().code(), absl::StatusCode::kUnavailable) << vm.status();
  EXPECT_NE(vm.status().message().find("/nonexistent/kvm"), absl::string_view::npos) << vm.status();
}

TEST(KvmVmCreateTest, DeviceThatIsNotKvmIsFailedPrecondition) {
  auto backing = MakeBacking();
  ASSERT_NE(backing, nullptr);
  absl::StatusOr<std::unique_ptr<KvmVm>> vm =
      KvmVm::Create(backing, KvmOptions{.device_path = "/dev/null"});
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.status().code(), absl::StatusCode::kFailedPrecondition) << vm.status();
  EXPECT_NE(vm.status().message().find("not a KVM device"), absl::string_view::npos) << vm.status();
}

TEST(KvmVmCreateTest, NullBackingIsInvalidArgument) {
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(nullptr);
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.status().code(), absl::StatusCode::kInvalidArgument) << vm.status();
}

// Decision: every backing type works, anonymous included (KVM maps this process's own pages).
// Each region becomes a slot: the guest reaches the second region across a hole, and the guest
// and guestmem see each other's stores.
class KvmVmBackingTest : public ::testing::TestWithParam<BackingType> {};

TEST_P(KvmVmBackingTest, GuestAndGuestmemShareEveryRegion) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto backing =
      MakeBacking(GetParam(), {{0, programs::kGuestMemoryBytes}, {programs::kHighPageGpa, 4096}});
  ASSERT_NE(backing, nullptr);
  const GuestMemory memory = GuestMemory::Private(backing);
  ASSERT_OK(memory.WritePlain<uint32_t>(programs::kHighPageGpa + 4, 0x12345678));
  auto vm = MakeVm(backing, programs::HighMemoryEcho());
  ASSERT_NE(vm, nullptr);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<VcpuExit> exit = vm->WaitForExit(kGuestTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->reason, VcpuExit::Reason::kExitPort);
  EXPECT_EQ(exit->value, 0x12345678u);  // The guest read our store.
  absl::StatusOr<uint32_t> marker = memory.ReadPlain<uint32_t>(programs::kHighPageGpa);
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(*marker, programs::kHighMarker);  // We read the guest's store.
}

INSTANTIATE_TEST_SUITE_P(Backings, KvmVmBackingTest,
                         ::testing::Values(BackingType::kAnonymous, BackingType::kMemfd),
                         [](const ::testing::TestParamInfo<BackingType>& info) {
                           return info.param == BackingType::kAnonymous ? "Anonymous" : "Memfd";
                         });

// --- The run loop's exits ----------------------------------------------------------------------

TEST(KvmVmRunTest, OutToAnUnhandledPortIsUnexpectedIo) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::OutToUnknownPort());
  ASSERT_NE(vm, nullptr);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<VcpuExit> exit = vm->WaitForExit(kGuestTimeout);
  ASSERT_FALSE(exit.ok());
  EXPECT_EQ(exit.status().code(), absl::StatusCode::kAborted) << exit.status();
  EXPECT_EQ(GetVcpuError(exit.status()), VcpuError::kUnexpectedIo) << exit.status();
  EXPECT_NE(exit.status().message().find("port 0x1234"), absl::string_view::npos) << exit.status();
}

TEST(KvmVmRunTest, WriteOutsideMemoryWithoutIoEventFdIsUnexpectedMmio) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::MmioDoorbell());
  ASSERT_NE(vm, nullptr);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<VcpuExit> exit = vm->WaitForExit(kGuestTimeout);
  ASSERT_FALSE(exit.ok());
  EXPECT_EQ(GetVcpuError(exit.status()), VcpuError::kUnexpectedMmio) << exit.status();
  EXPECT_NE(exit.status().message().find("0xf0000"), absl::string_view::npos) << exit.status();
}

TEST(KvmVmRunTest, MmioIoEventFdTurnsTheWriteIntoASignal) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::MmioDoorbell());
  ASSERT_NE(vm, nullptr);
  absl::StatusOr<int> doorbell = vm->AddIoEventFd(MmioAddress{programs::kMmioDoorbellGpa});
  ASSERT_TRUE(doorbell.ok()) << doorbell.status();
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<VcpuExit> exit = vm->WaitForExit(kGuestTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->value, 7u);
  absl::StatusOr<uint64_t> count = ReadEventFd(*doorbell, kGuestTimeout);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 1u);
}

TEST(KvmVmRunTest, WaitForExitTimesOutOnARunningGuest) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::HaltForever());
  ASSERT_NE(vm, nullptr);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<VcpuExit> exit = vm->WaitForExit(absl::Milliseconds(20));
  EXPECT_EQ(exit.status().code(), absl::StatusCode::kDeadlineExceeded) << exit.status();
}

TEST(KvmVmRunTest, VcpuCallsInTheWrongStateAreFailedPrecondition) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::HaltForever());
  ASSERT_NE(vm, nullptr);
  EXPECT_EQ(vm->WaitForExit(absl::ZeroDuration()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(vm->Stop().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  EXPECT_EQ(vm->StartVcpu(programs::EntryFor()).code(), absl::StatusCode::kFailedPrecondition);
}

// --- Doorbell registration ---------------------------------------------------------------------

TEST(KvmVmIoEventFdTest, RejectsBadRequests) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::HaltForever());
  ASSERT_NE(vm, nullptr);
  EXPECT_EQ(vm->AddIoEventFd(PioAddress{0x610}, {.len = 3}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vm->AddIoEventFd(PioAddress{0x610}, {.len = 0, .datamatch = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vm->AddIoEventFd(MmioAddress{programs::kResultGpa}).status().code(),
            absl::StatusCode::kInvalidArgument);  // Guest RAM: writes never trap.
  ASSERT_TRUE(vm->AddIoEventFd(PioAddress{0x610}, {.len = 1}).ok());
  EXPECT_EQ(vm->AddIoEventFd(PioAddress{0x610}, {.len = 1}).status().code(),
            absl::StatusCode::kAlreadyExists);
  // A line may have several irqfds (each is its own eventfd).
  absl::StatusOr<int> first = vm->AddIrqFd(4);
  absl::StatusOr<int> second = vm->AddIrqFd(4);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE(*first, *second);
}

// --- Stop and teardown -------------------------------------------------------------------------

TEST(KvmVmStopTest, StopEndsAGuestSpinningInGuestMode) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::SpinForever());
  ASSERT_NE(vm, nullptr);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  ASSERT_TRUE(WaitForDebugOutput(*vm, "S")) << "output so far: " << vm->debug_output();
  absl::SleepFor(absl::Milliseconds(20));  // Now spinning in JMP $.
  const absl::Time start = absl::Now();
  absl::StatusOr<VcpuExit> exit = vm->Stop();
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->reason, VcpuExit::Reason::kStopped);
  EXPECT_LT(took, absl::Seconds(2));
  // Stop is idempotent and keeps the result.
  exit = vm->Stop();
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->reason, VcpuExit::Reason::kStopped);
}

TEST(KvmVmStopTest, DestroyingAVmHaltedInHltIsPrompt) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto vm = MakeVm(MakeBacking(), programs::HaltForever());
  ASSERT_NE(vm, nullptr);
  ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
  ASSERT_TRUE(WaitForDebugOutput(*vm, "H")) << "output so far: " << vm->debug_output();
  absl::SleepFor(absl::Milliseconds(20));  // Now in HLT with IF = 0, waiting in the kernel.
  // The halt never exits to user space: nothing but the kick can end this run.
  EXPECT_EQ(vm->WaitForExit(absl::Milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  const absl::Time start = absl::Now();
  vm.reset();
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, absl::Seconds(2));
  std::printf("teardown of a VM halted in HLT: %s\n", absl::FormatDuration(took).c_str());
}

// What the process holds that a KvmVm could leak: descriptors (all, and those naming KVM or
// an eventfd), threads (all, and our vCPU threads), and mappings of a KVM object (kvm_run is
// "anon_inode:kvm-vcpu:0"). All threads includes KVM's own per-VM worker, which kernels since
// 6.13 run as a task of this process ("kvm-nx-lpage-re"). Total mappings are not counted:
// sanitizer runtimes map memory of their own for each new thread.
struct ProcessResources {
  size_t fds = 0;
  size_t kvm_fds = 0;
  size_t threads = 0;
  size_t vcpu_threads = 0;
  size_t kvm_mappings = 0;
};

ProcessResources CountResources() {
  ProcessResources counts;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++counts.fds;
    std::error_code error;
    const std::string target = std::filesystem::read_symlink(entry.path(), error).string();
    if (target.find("kvm") != std::string::npos || target.find("eventfd") != std::string::npos) {
      ++counts.kvm_fds;
    }
  }
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    ++counts.threads;
    std::ifstream comm(entry.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name == "kvm-vcpu0") ++counts.vcpu_threads;
  }
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("kvm") != std::string::npos) ++counts.kvm_mappings;
  }
  return counts;
}

TEST(KvmVmStopTest, TeardownReleasesEveryDescriptorThreadAndMapping) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto backing = MakeBacking();
  ASSERT_NE(backing, nullptr);
  const ProcessResources before = CountResources();
  for (int i = 0; i < 3; ++i) {
    auto vm = MakeVm(backing, programs::HaltForever());
    ASSERT_NE(vm, nullptr);
    ASSERT_TRUE(vm->AddIoEventFd(PioAddress{programs::kDoorbellPort}).ok());
    ASSERT_TRUE(vm->AddIoEventFd(MmioAddress{programs::kMmioDoorbellGpa}).ok());
    ASSERT_TRUE(vm->AddIrqFd(programs::kIrqGsi).ok());
    ASSERT_OK(vm->StartVcpu(programs::EntryFor()));
    ASSERT_TRUE(WaitForDebugOutput(*vm, "H"));
    // The counts see what a running VM holds: /dev/kvm, the VM, the vCPU, 3 eventfds; the
    // vCPU thread; the kvm_run mapping.
    const ProcessResources running = CountResources();
    EXPECT_EQ(running.kvm_fds, before.kvm_fds + 6);
    EXPECT_EQ(running.vcpu_threads, before.vcpu_threads + 1);
    EXPECT_GT(running.threads, before.threads);
    EXPECT_EQ(running.kvm_mappings, before.kvm_mappings + 1);
  }
  const ProcessResources after = CountResources();
  EXPECT_EQ(after.fds, before.fds);
  EXPECT_EQ(after.kvm_fds, before.kvm_fds);
  EXPECT_EQ(after.threads, before.threads);
  EXPECT_EQ(after.vcpu_threads, before.vcpu_threads);
  EXPECT_EQ(after.kvm_mappings, before.kvm_mappings);
  EXPECT_EQ(backing.use_count(), 1);  // No VM holds the memory any more.
}

}  // namespace
}  // namespace cvmbus::hw::kvm
