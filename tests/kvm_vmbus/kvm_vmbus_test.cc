// A real KVM vCPU as a VMBus guest of the paravisor: the freestanding guest program
// (vmbus_guest.c) finds Hyper-V by CPUID, programs the SynIC through MSR exits, posts every
// control message with HvPostMessage through the hypercall page, takes the answers from its
// SIMP slot by interrupt, and drives the echo channel with HvSignalEvent doorbells bound to
// the device's eventfd (no exit) and SINT interrupts through an MSI irqfd. Needs /dev/kvm.
#include <gtest/gtest.h>

#include "hw/kvm/testing/test_support.h"
#include "tests/kvm_vmbus/kvm_vmbus_machine.h"

namespace cvmbus::tests {
namespace {

void ExpectCleanRun(const KvmVmbusRun& run, uint32_t iterations, uint32_t warmup) {
  EXPECT_EQ(run.exit_code, VMBUS_GUEST_OK)
      << "failed step " << run.result.failed_step << " value " << run.result.failed_value << "\n"
      << run.debug_output;
  EXPECT_EQ(run.result.round_trips, iterations + warmup);
  EXPECT_EQ(run.echoed, iterations + warmup);
  EXPECT_EQ(run.result.signals_refused, 0u);  // Every doorbell named an open channel.
  EXPECT_NE(run.debug_output.find("round trips checked"), std::string::npos) << run.debug_output;
  EXPECT_NE(run.debug_output.find("closed, torn down, unloaded"), std::string::npos)
      << run.debug_output;
  // The doorbell never left the kernel: no HvSignalEvent fell back to an exit.
  EXPECT_EQ(run.exits.signal_fallback, 0u);
  // Two TIME_REF_COUNT reads bracket the timed round trips; between them, no exit at all.
  ASSERT_EQ(run.marks.size(), 2u);
  EXPECT_EQ(run.marks[1].exits.total() - run.marks[0].exits.total(), 1u)  // The second read.
      << "msr " << run.marks[1].exits.msr - run.marks[0].exits.msr << " hypercall "
      << run.marks[1].exits.hypercall - run.marks[0].exits.hypercall;
}

TEST(KvmVmbusTest, Linux61StyleGuestNegotiates53AndEchoesThroughTheSynic) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto machine = KvmVmbusMachine::Create({.warmup = 5, .iterations = 200, .payload_bytes = 64});
  ASSERT_TRUE(machine.ok()) << machine.status();
  absl::StatusOr<KvmVmbusRun> run = (*machine)->Run(absl::Seconds(60));
  ASSERT_TRUE(run.ok()) << run.status();
  ExpectCleanRun(*run, 200, 5);
  EXPECT_EQ(run->result.version, 0x50003u);
  EXPECT_EQ(run->result.features, 0u);
  EXPECT_EQ(run->result.offer_flags & 0x6, 0);  // No confidential channels on a plain VM.
}

TEST(KvmVmbusTest, ConfidentialGuestNegotiates60WithPrivateRings) {
  CVMBUS_SKIP_WITHOUT_KVM();
  auto machine = KvmVmbusMachine::Create(
      {.confidential = true, .warmup = 5, .iterations = 200, .payload_bytes = 200});
  ASSERT_TRUE(machine.ok()) << machine.status();
  absl::StatusOr<KvmVmbusRun> run = (*machine)->Run(absl::Seconds(60));
  ASSERT_TRUE(run.ok()) << run.status();
  ExpectCleanRun(*run, 200, 5);
  EXPECT_EQ(run->result.version, 0x60000u);
  EXPECT_EQ(run->result.features & 0x10, 0x10u);  // Confidential channels granted.
  EXPECT_EQ(run->result.offer_flags & 0x6, 0x6);  // Confidential ring and external memory.
}

}  // namespace
}  // namespace cvmbus::tests
