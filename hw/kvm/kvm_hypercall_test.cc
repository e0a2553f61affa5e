// The hypercall page on a real long-mode vCPU: slow hypercalls reach HypervExitHandler::
// Hypercall with the guest's RCX/RDX/R8 and return its RAX; a fast HvSignalEvent of a bound
// connection id signals its eventfd in the kernel with no exit to user space, and one of an
// unbound id falls back to the handler. Guests: //hw/kvm/testing/guests.
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "guestmem/guest_memory.h"
#include "hw/kvm/hypercall_page.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/kvm/testing/guests/hypercall_guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/signal_guest.h"
#include "hw/kvm/testing/guests/tests.h"
#include "hw/kvm/testing/long_mode_guest.h"
#include "hw/kvm/testing/test_support.h"
#include "hw/kvm/unique_fd.h"

namespace cvmbus::hw::kvm {
namespace {

using testing::FakeHyperv;
using testing::LongModeGuest;
using testing::MakeLongModeGuest;
using testing::ReadEventFd;
using testing::TestEntry;
using Call = FakeHyperv::Call;

constexpr absl::Duration kGuestTimeout = absl::Seconds(10);
constexpr uint64_t kPostMessageResult = (uint64_t{7} << 32) | kHvStatusInsufficientBuffers;
constexpr uint64_t kOutputWord = 0xfeedfacecafebeef;

void ExpectGuestOk(const LongModeGuest& guest) {
  absl::StatusOr<VcpuExit> exit = guest.vm->WaitForExit(kGuestTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status() << "; guest output: " << guest.vm->debug_output();
  EXPECT_EQ(exit->reason, VcpuExit::Reason::kExitPort);
  EXPECT_EQ(exit->value, TEST_EXIT_OK)
      << std::hex << exit->value << "; guest output: " << guest.vm->debug_output();
}

TEST(KvmHypercallTest, SlowHypercallsReachTheHandlerAndReturnItsRax) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::hypercall_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  FakeHyperv hyperv(guest->vm.get());
  const guestmem::GuestMemory memory = guest->memory;
  uint64_t input_word = 0;
  hyperv.SetResponder([&](const Call& call) -> uint64_t {
    if ((call.control & 0xffff) == kHvCallPostMessage) {
      // The handler sees the guest's input page and writes its output page.
      absl::StatusOr<uint64_t> word = memory.ReadPlain<uint64_t>(call.input);
      input_word = word.ok() ? *word : 0;
      EXPECT_OK(memory.WritePlain<uint64_t>(call.output, kOutputWord));
      return kPostMessageResult;
    }
    return kHvStatusInvalidParameter | call.input << 16;  // Echoes RDX's low bits into RAX.
  });
  ASSERT_OK(guest->vm->SetHypervExitHandler(&hyperv));
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));

  EXPECT_EQ(guest->Mailbox(0), kPostMessageResult);  // All 64 bits of RAX arrive.
  EXPECT_EQ(guest->Mailbox(1), kOutputWord);
  EXPECT_EQ(input_word, TEST_POST_MESSAGE_WORD);
  EXPECT_EQ(guest->Mailbox(2), kHvStatusInvalidParameter | ((uint64_t{3} << 32 | 0x42) << 16));
  EXPECT_EQ(guest->Mailbox(3), kHvStatusInvalidParameter | (uint64_t{0x42} << 16));
  EXPECT_EQ(guest->Mailbox(4), 0u) << "the slow path clobbered a register it must preserve";
  EXPECT_EQ(guest->Mailbox(5), 0u) << "the signal path clobbered a register it must preserve";

  const std::vector<Call> calls = hyperv.calls();
  ASSERT_EQ(calls.size(), 5u);
  EXPECT_EQ(calls[0], (Call{.control = kHvCallPostMessage,
                            .input = TEST_HYPERCALL_INPUT_GPA,
                            .output = TEST_HYPERCALL_OUTPUT_GPA}));
  // A fast HvSignalEvent with a flag number or a rep count takes the hypercall port, with RDX
  // whole. (R8 is whatever the guest left there: fast_hypercall does not set it.)
  EXPECT_EQ(calls[1].control, kHvSignalEventFastControl);
  EXPECT_EQ(calls[1].input, uint64_t{3} << 32 | 0x42);
  EXPECT_EQ(calls[2].control, kHvSignalEventFastControl | uint64_t{1} << kHvRepCountShift);
  EXPECT_EQ(calls[2].input, 0x42u);
  EXPECT_EQ(calls[3], (Call{.control = kHvCallPostMessage,
                            .input = TEST_HYPERCALL_INPUT_GPA,
                            .output = TEST_HYPERCALL_OUTPUT_GPA}));
  EXPECT_EQ(calls[4], (Call{.control = kHvSignalEventFastControl, .input = 0x43, .output = 0}));
  const ExitCounts counts = guest->vm->exit_counts();
  EXPECT_EQ(counts.hypercall, 4u);
  EXPECT_EQ(counts.signal_fallback, 1u);
  EXPECT_EQ(counts.msr, 2u);  // GUEST_OS_ID and HYPERCALL.
}

TEST(KvmHypercallTest, WithoutAHandlerHypercallsFailWithInvalidCode) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::hypercall_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  // No handler, so no HYPERCALL MSR: we write the page and the guest just uses it.
  ASSERT_OK(guest->vm->WriteHypercallPage(TEST_HYPERCALL_PAGE_GPA));
  ASSERT_OK(guest->SetMailbox(16, TEST_PAGE_PRESET));
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));
  EXPECT_EQ(guest->Mailbox(0), kHvStatusInvalidHypercallCode);
  EXPECT_EQ(guest->Mailbox(2), kHvStatusInvalidHypercallCode);
  EXPECT_EQ(guest->Mailbox(3), kHvStatusInvalidHypercallCode);
  EXPECT_EQ(guest->Mailbox(4), 0u);
  EXPECT_EQ(guest->Mailbox(5), 0u);
  const ExitCounts counts = guest->vm->exit_counts();
  EXPECT_EQ(counts.hypercall, 4u);
  EXPECT_EQ(counts.signal_fallback, 1u);
  EXPECT_EQ(counts.msr, 0u);
}

TEST(KvmHypercallTest, HypercallPageMustBeAlignedGuestMemory) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::hypercall_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  EXPECT_EQ(guest->vm->WriteHypercallPage(TEST_HYPERCALL_PAGE_GPA + 8).code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status outside = guest->vm->WriteHypercallPage(TEST_MEMORY_BYTES);
  EXPECT_FALSE(outside.ok());
  EXPECT_NE(outside.message().find("hypercall page"), absl::string_view::npos) << outside;
  ASSERT_OK(guest->vm->WriteHypercallPage(TEST_HYPERCALL_PAGE_GPA));
  const std::array<uint8_t, kHypercallPageBytes> expected =
      HypercallPage(kDefaultHypercallPort, kDefaultSignalPort);
  std::vector<uint8_t> page(kHypercallPageBytes);
  ASSERT_OK(guest->memory.Read(TEST_HYPERCALL_PAGE_GPA, absl::MakeSpan(page)));
  EXPECT_TRUE(std::equal(page.begin(), page.end(), expected.begin()));
}

// --- Fast HvSignalEvent ------------------------------------------------------------------------

constexpr uint32_t kBoundId = 0x2001;
constexpr uint32_t kUnboundId = 0x2002;
constexpr uint64_t kSignals = 100;

TEST(KvmHypercallTest, BoundSignalEventsCompleteInTheKernelAndOthersFallBack) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::signal_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  ASSERT_OK(guest->SetMailbox(0, kBoundId));
  ASSERT_OK(guest->SetMailbox(1, kUnboundId));
  ASSERT_OK(guest->SetMailbox(2, kSignals));
  UniqueFd bound(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(bound.valid());
  ASSERT_OK(guest->vm->BindSignalEvent(kBoundId, bound.get()));
  FakeHyperv hyperv(guest->vm.get());
  KvmVm* const vm = guest->vm.get();
  hyperv.SetResponder([vm](const Call& call) -> uint64_t {
    if (call.control == TEST_CALL_UNBIND) {
      // On the vCPU thread, inside an exit: the KvmVm's registrations may change here.
      absl::Status status = vm->UnbindSignalEvent(static_cast<uint32_t>(call.input));
      EXPECT_OK(status);
      return status.ok() ? kHvStatusSuccess : kHvStatusInvalidParameter;
    }
    return call.control == kHvSignalEventFastControl ? kHvStatusInvalidConnectionId
                                                     : kHvStatusInvalidHypercallCode;
  });
  ASSERT_OK(guest->vm->SetHypervExitHandler(&hyperv));
  ASSERT_OK(guest->vm->StartVcpu(TestEntry(program)));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestOk(*guest));

  // Every bound signal returned HV_STATUS_SUCCESS and reached the eventfd...
  EXPECT_EQ(guest->Mailbox(8), 0u);
  absl::StatusOr<uint64_t> count = ReadEventFd(bound.get(), kGuestTimeout);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, kSignals);
  // ...without an exit: the only signal-port exits are the unbound id and the unbound-again id.
  const ExitCounts counts = guest->vm->exit_counts();
  EXPECT_EQ(counts.signal_fallback, 2u);
  EXPECT_EQ(counts.hypercall, 1u);  // TEST_CALL_UNBIND.
  EXPECT_EQ(counts.msr, 2u);
  // And no other exit: one per debug byte, one for the exit port.
  EXPECT_EQ(counts.other, std::string("signal done\n").size() + 1);
  EXPECT_EQ(guest->Mailbox(9), kHvStatusInvalidConnectionId);  // The handler's status.
  EXPECT_EQ(guest->Mailbox(10), kHvStatusSuccess);
  EXPECT_EQ(guest->Mailbox(11), kHvStatusInvalidConnectionId);  // Unbound now: the handler.
  const std::vector<Call> calls = hyperv.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].control, kHvSignalEventFastControl);
  EXPECT_EQ(calls[0].input, kUnboundId);
  EXPECT_EQ(calls[1].control, uint64_t{TEST_CALL_UNBIND});
  EXPECT_EQ(calls[1].input, kBoundId);
  EXPECT_EQ(calls[2].control, kHvSignalEventFastControl);
  EXPECT_EQ(calls[2].input, kBoundId);
  EXPECT_EQ(testing::DrainEventFd(bound.get()), 0u);  // Nothing after the unbind.
}

TEST(KvmHypercallTest, BindingRulesAndTheCallersDescriptor) {
  CVMBUS_SKIP_WITHOUT_KVM();
  const auto program = CVMBUS_GUEST_PROGRAM(guest::signal_guest);
  absl::StatusOr<LongModeGuest> guest = MakeLongModeGuest(program);
  ASSERT_TRUE(guest.ok()) << guest.status();
  UniqueFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(event.valid());
  EXPECT_EQ(guest->vm->BindSignalEvent(1, -1).code(), absl::StatusCode::kInvalidArgument);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  EXPECT_EQ(guest->vm->BindSignalEvent(1, pipe_fds[0]).code(),
            absl::StatusCode::kInvalidArgument);  // Not an eventfd.
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  EXPECT_EQ(guest->vm->UnbindSignalEvent(1).code(), absl::StatusCode::kNotFound);
  ASSERT_OK(guest->vm->BindSignalEvent(1, event.get()));
  EXPECT_EQ(guest->vm->BindSignalEvent(1, event.get()).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_OK(guest->vm->BindSignalEvent(2, event.get()));  // One eventfd may serve two ids.
  // The caller closes its descriptor: the binding, and its removal, do not depend on it.
  event.Reset();
  EXPECT_OK(guest->vm->UnbindSignalEvent(1));
  EXPECT_OK(guest->vm->UnbindSignalEvent(2));
  EXPECT_EQ(guest->vm->UnbindSignalEvent(2).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace cvmbus::hw::kvm
