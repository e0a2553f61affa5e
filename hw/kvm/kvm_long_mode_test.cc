// Real long-mode vCPUs running freestanding C guests (//hw/kvm/testing/guests): the start
// state, CPUID, MSR exits to the HypervExitHandler, and MSI interrupts through the x2APIC.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/kvm/long_mode.h"
#include "hw/kvm/testing/guests/boot_guest.h"
#include "hw/kvm/testing/guests/cpuid_guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/msi_guest.h"
#include "hw/kvm/testing/guests/msr_guest.h"
#include "hw/kvm/testing/guests/string_guest.h"
#include "hw/kvm/testing/guests/tests.h"
#include "hw/kvm/testing/long_mode_guest.h"
#include "hw/kvm/testing/test_support.h"

namespace cvmbus::hw::kvm {
namespace {

using testing::FakeHyperv;
using testing::LongModeGuest;
using testing::MakeLongModeGuest;
using testing::TestEntry;

constexpr absl::Duration kGuestTimeout = absl::Seconds(10);

// Runs `guest` to its exit port and expects TEST_EXIT_OK.
void ExpectGuestOk(const LongModeGuest& guest) {
  absl::StatusOr<VcpuExit> exit = guest.vm->WaitForExit(kGuestTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status() << "; guest output: " << guest.vm->debug_output();
  EXPECT_EQ(exit->reason, VcpuExit::Reason::kExitPort);
  EXPECT_EQ(exit->value, TEST_EXIT_OK)
      << std::hex << exit->value << "; guest output: " << guest.vm->debug_output();
}

// Waits (bounded) until mailbox word `i` is `value`.
bool WaitForMailbox(const LongModeGuest& guest, uint32_t i, uint64_t value) {
  const absl::Time deadline = absl::Now() + kGuestTimeout;
  while (absl::Now() < deadline) {
    if (guest.Mailbox(i) == value) return true;
    absl::SleepFor(absl::Microseconds(200));
  }
  return false;
}

// --- The start state ---------------------------------------------------------------------------

TEST(KvmLongModeTest, GuestBootsInLongModeAndTakesExceptionsThroughItsIdt) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::boot_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  EXPECT_NE(guest->vm->debug_output().find("hello from long mode\n"), std::string::npos)
      << guest->vm->debug_output();
  EXPECT_EQ(guest->Mailbox(0) & 0x80010033, 0x80010033u);  // PG, WP, NE, ET, MP, PE.
  EXPECT_EQ(guest->Mailbox(1) & 0x20, 0x20u);              // PAE.
  EXPECT_EQ(guest->Mailbox(2) & 0x500, 0x500u);            // LMA, LME.
  EXPECT_EQ(guest->Mailbox(3), kLongModeCodeSelector);
  EXPECT_EQ(guest->Mailbox(4), 2u);  // Two UD2s, each through the guest's #UD handler.
  EXPECT_EQ(guest->Mailbox(5), TEST_TABLES_GPA + 0x1000u);  // CR3: the PML4, page 1.
  // A run of plain code makes no MSR or hypercall exits.
  const ExitCounts counts = guest->vm->exit_counts();
  EXPECT_EQ(counts.msr, 0u);
  EXPECT_EQ(counts.hypercall + counts.signal_fallback, 0u);
  EXPECT_GT(counts.other, 0u);  // The debug port and the exit port.
}

TEST(KvmLongModeTest, BadEntriesAreRefusedBeforeTheVcpuRuns) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::boot_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  LongModeEntry entry = TestEntry(program);
  entry.tables_gpa = TEST_TABLES_GPA + 8;
  EXPECT_EQ(guest->vm->StartVcpu(entry).code(), absl::StatusCode::kInvalidArgument);
  entry.tables_gpa = TEST_MEMORY_BYTES - 0x1000;  // The tables would run past guest memory.
  absl::Status outside = guest->vm->StartVcpu(entry);
  EXPECT_FALSE(outside.ok());
  EXPECT_NE(outside.message().find("page tables"), absl::string_view::npos) << outside;
  entry = TestEntry(program);
  entry.exit_port = kDefaultHypercallPort;
  EXPECT_EQ(guest->vm->StartVcpu(entry).code(), absl::StatusCode::kInvalidArgument);
  entry = TestEntry(program);
  entry.cpuid.push_back(entry.cpuid.front());  // 0x40000000 twice.
  EXPECT_EQ(guest->vm->StartVcpu(entry).code(), absl::StatusCode::kInvalidArgument);
  // None of these left a vCPU behind: a good entry still starts, and only once.
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  EXPECT_EQ(guest->vm->StartVcpu(TestEntry(program)).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  FakeHyperv late(nullptr);
  EXPECT_EQ(guest->vm->SetHypervExitHandler(&late).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(KvmLongModeTest, HypercallPortsMustBeUsable) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::boot_guest);
  EXPECT_EQ(MakeLongModeGuest(program, KvmOptions{.hypercall_port = 0x600, .signal_port = 0x600})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeLongModeGuest(program, KvmOptions{.signal_port = 0x20}).status().code(),
            absl::StatusCode::kInvalidArgument);  // The PIC's: its OUT never exits.
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  EXPECT_EQ(guest->vm->AddIoEventFd(PioAddress{kDefaultSignalPort}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- The guest runtime ---------------------------------------------------------------------------

TEST(KvmLongModeTest, GuestStringFunctionsCopyFillAndCompareExactly) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::string_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  EXPECT_EQ(guest->Mailbox(0), 0u) << "the first failing check";
  EXPECT_EQ(guest->Mailbox(1), 13u) << "checks run";
}

// --- CPUID -------------------------------------------------------------------------------------

TEST(KvmLongModeTest, GuestSeesTheHypervLeavesAndNoKvmSignature) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::cpuid_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  HypervCpuidFeatures features;
  features.recommendations = 1u << 9;
  features.max_vps = 3;
  LongModeEntry entry = TestEntry(program);
  entry.cpuid = HypervCpuidLeaves(features);
  ASSERT_OK(guest->vm->StartVcpu(entry));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  const std::vector<CpuidLeaf> expected = HypervCpuidLeaves(features);
  ASSERT_EQ(expected.size(), 7u);
  for (uint32_t i = 0; i < 7; ++i) {
    SCOPED_TRACE(::testing::Message() << "leaf 0x" << std::hex << 0x40000000 + i);
    EXPECT_EQ(guest->Mailbox(4 * i + 0), expected[i].eax);
    EXPECT_EQ(guest->Mailbox(4 * i + 1), expected[i].ebx);
    EXPECT_EQ(guest->Mailbox(4 * i + 2), expected[i].ecx);
    EXPECT_EQ(guest->Mailbox(4 * i + 3), expected[i].edx);
  }
  // The words Linux checks: max leaf >= 0x40000005, "Microsoft Hv", "Hv#1".
  EXPECT_EQ(guest->Mailbox(0), 0x40000006u);
  EXPECT_EQ(guest->Mailbox(1), 0x7263694du);  // "Micr"
  EXPECT_EQ(guest->Mailbox(2), 0x666f736fu);  // "osof"
  EXPECT_EQ(guest->Mailbox(3), 0x76482074u);  // "t Hv"
  EXPECT_EQ(guest->Mailbox(4), 0x31237648u);  // "Hv#1"
  EXPECT_EQ(guest->Mailbox(16), 1u << 9);     // 0x40000004 EAX.
  EXPECT_EQ(guest->Mailbox(20), 3u);          // 0x40000005 EAX.
  EXPECT_NE(guest->Mailbox(28) & (1u << 21), 0u) << "leaf 1 ECX lacks x2APIC";
  EXPECT_EQ(guest->Mailbox(29), 0u) << "a KVM signature leaf is visible";
  EXPECT_EQ(guest->Mailbox(30), 1u) << "the Hyper-V signature is not exactly at 0x40000000";
}

// --- MSR exits ---------------------------------------------------------------------------------

TEST(KvmLongModeTest, HypervMsrsReachTheHandlerAndItsErrorsBecomeGp) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::msr_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  FakeHyperv hyperv(guest->vm.get());
  hyperv.SetMsr(kHvMsrVpIndex, 0x1234);
  hyperv.RefuseMsr(0x40000099);  // 0x40000098 simply is not in the table.
  ASSERT_OK(guest->vm->SetHypervExitHandler(&hyperv));
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));

  EXPECT_EQ(guest->Mailbox(0), 0x1234u);  // rdmsr VP_INDEX: the handler's value.
  EXPECT_EQ(guest->Mailbox(1), 1u);
  EXPECT_EQ(guest->Mailbox(2), 1u);  // wrmsr GUEST_OS_ID succeeded.
  EXPECT_EQ(guest->Mailbox(3), 0u);  // The refused write faulted...
  EXPECT_EQ(guest->Mailbox(4), 0u);  // ...and so did the failed read...
  EXPECT_EQ(guest->Mailbox(5), 0u);  // ...and the MSR that is no one's.
  EXPECT_EQ(guest->Mailbox(8), 3u);  // Three #GPs, each caught by the guest's handler.
  // The x2APIC MSRs are KVM's: the guest read its APIC's ID and version.
  EXPECT_EQ(guest->Mailbox(6), 0u);
  EXPECT_EQ(guest->Mailbox(7) & 0xff, 0x14u);  // KVM's APIC version.

  // Exactly the Hyper-V accesses reached the handler, with their indices and values.
  const std::vector<FakeHyperv::MsrAccess> expected = {
      {.write = false, .index = kHvMsrVpIndex, .value = 0x1234, .ok = true},
      {.write = true, .index = kHvMsrGuestOsId, .value = TEST_GUEST_OS_ID, .ok = true},
      {.write = true, .index = 0x40000099, .value = 0x1234, .ok = false},
      {.write = false, .index = 0x40000098, .value = 0, .ok = false},
  };
  EXPECT_EQ(hyperv.msr_log(), expected);
  EXPECT_TRUE(hyperv.calls().empty());
  // One exit per Hyper-V access plus the unknown MSR 0x12345678; the x2APIC's none.
  EXPECT_EQ(guest->vm->exit_counts().msr, 5u);
}

TEST(KvmLongModeTest, WithoutAHandlerHypervMsrsRaiseGp) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::msr_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  EXPECT_EQ(guest->Mailbox(1), 0u);
  EXPECT_EQ(guest->Mailbox(2), 0u);
  EXPECT_EQ(guest->Mailbox(8), 5u);
}

// --- MSI interrupts ----------------------------------------------------------------------------

TEST(KvmLongModeTest, MsiIrqFdRunsTheGuestHandlerOfItsVector) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::msi_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  absl::StatusOr<int> irq_a = guest->vm->AddMsiIrqFd(TEST_MSI_VECTOR_A);
  ASSERT_TRUE(irq_a.ok()) << irq_a.status();
  absl::StatusOr<int> irq_b = guest->vm->AddMsiIrqFd(TEST_MSI_VECTOR_B, /*apic_id=*/0);
  ASSERT_TRUE(irq_b.ok()) << irq_b.status();
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_TRUE(WaitForMailbox(*guest, 0, 1)) << "guest not ready: " << guest->vm->debug_output();

  const uint64_t one = 1;
  const std::vector<int> order = {*irq_a, *irq_b, *irq_a};
  for (size_t i = 0; i < order.size(); ++i) {
    ASSERT_EQ(write(order[i], &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
    // One at a time: the guest's count says this one ran (and was EOIed) before the next.
    ASSERT_TRUE(WaitForMailbox(*guest, 1, i + 1))
        << "interrupt " << i << " did not run; guest output: " << guest->vm->debug_output();
  }
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  EXPECT_EQ(guest->Mailbox(2), TEST_MSI_VECTOR_A);
  EXPECT_EQ(guest->Mailbox(3), TEST_MSI_VECTOR_B);
  EXPECT_EQ(guest->Mailbox(4), TEST_MSI_VECTOR_A);
  EXPECT_EQ(guest->vm->exit_counts().msr, 0u);  // x2APIC enable and EOIs stay in the kernel.
}

TEST(KvmLongModeTest, MsiIrqFdRejectsBadVectorsAndDestinations) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::msi_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  EXPECT_EQ(guest->vm->AddMsiIrqFd(0x0f).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(guest->vm->AddMsiIrqFd(0x40, 256).status().code(), absl::StatusCode::kInvalidArgument);
  // The table still works after the refusals.
  EXPECT_TRUE(guest->vm->AddMsiIrqFd(0x40).ok());
}

}  // namespace
}  // namespace cvmbus::hw::kvm
