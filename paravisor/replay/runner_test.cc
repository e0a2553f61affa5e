// The runner against a real replay machine: each step kind passing and failing, the failure
// messages (file, line, what differed), what it prints, and `event` end to end (the test plays
// the guest's driver and writes a packet into the ring, which a script cannot do).
#include "paravisor/replay/runner.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "base/testing/status_testing.h"
#include "guestmem/ring_memory.h"
#include "paravisor/replay/machine.h"
#include "paravisor/replay/script.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::replay {
namespace {

using namespace std::chrono_literals;

// Linux 6.1's connect at 5.3, REQUESTOFFERS, up to ALLOFFERS_DELIVERED.
constexpr std::string_view kConnect =
    "post 4 u32:14 u32:0 u32:0x50003 u32:0 u8:2 u8:0 00 00 u32:0 u64:0x10000 u64:0x11000\n"
    "expect u32:15 u32:0 u8:1 u8:0 u16:0 $conn:u32\n"
    "post $conn u32:3 u32:0\n"
    "until u32:4 u32:0\n";

// Channel 1 opened on an 8-page ring at GPA 0x40000 (guest -> host ring: pages 0x40-0x43).
constexpr std::string_view kOpenChannel1 =
    "post $conn u32:8 u32:0 u32:1 u32:0xe1e10 u16:72 u16:1 u32:32768 u32:0 u64:0x40 u64:0x41 "
    "u64:0x42 u64:0x43 u64:0x44 u64:0x45 u64:0x46 u64:0x47\n"
    "expect u32:10 u32:0 u32:1 u32:0xe1e10 u32:0\n"
    "post $conn u32:5 u32:0 u32:1 u32:1 u32:0xe1e10 u32:0 u32:4 zero*120\n"
    "expect u32:6 u32:0 u32:1 u32:1 u32:0\n";

Script Parse(std::string_view text) {
  absl::StatusOr<Script> script = ParseScript("t.vmr", text);
  EXPECT_OK(script.status());
  return script.ok() ? *script : Script{};
}

class RunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Machine>> machine = Machine::Create();
    ASSERT_OK(machine.status());
    machine_ = *std::move(machine);
    runner_ = std::make_unique<Runner>(
        machine_.get(),
        RunOptions{.print = [this](std::string_view line) { printed_.emplace_back(line); },
                   .timeout = 300ms});
  }

  // Parses `text` as t.vmr and runs it on this test's machine.
  absl::Status Run(std::string_view text) { return runner_->Run(Parse(text)); }

  bool Printed(std::string_view line) const {
    for (const std::string& printed : printed_) {
      if (printed == line) return true;
    }
    return false;
  }

  bool PrintedPrefix(std::string_view prefix) const {
    for (const std::string& printed : printed_) {
      if (printed.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }

  std::unique_ptr<Machine> machine_;
  std::unique_ptr<Runner> runner_;
  std::vector<std::string> printed_;
};

TEST_F(RunnerTest, ConnectAndEnumerate) {
  ASSERT_OK(Run(std::string(kConnect) + "quiet 100\n"));
  EXPECT_EQ(runner_->bindings().at("conn"), 1u);
}

TEST_F(RunnerTest, PrintsEachStepAndItsResult) {
  ASSERT_OK(Run(kConnect));
  EXPECT_TRUE(
      Printed("t.vmr:1: post 4 u32:14 u32:0 u32:0x50003 u32:0 u8:2 u8:0 00 00 u32:0 u64:0x10000 "
              "u64:0x11000"));
  EXPECT_TRUE(Printed("  HvPostMessage(0x4, 40 bytes) -> 0x0 (SUCCESS)"));
  EXPECT_TRUE(Printed("t.vmr:2: expect u32:15 u32:0 u8:1 u8:0 u16:0 $conn:u32"));
  EXPECT_TRUE(Printed(
      "  got VERSION_RESPONSE (16 bytes): 0f 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00"));
  EXPECT_TRUE(Printed("  $conn = 0x1"));
  EXPECT_TRUE(Printed("  got ALLOFFERS_DELIVERED (8 bytes): 04 00 00 00 00 00 00 00"));
  // The server's log lines are printed too (their wording is the server's).
  EXPECT_TRUE(PrintedPrefix("  server: connected: version 5.3"));
}

TEST_F(RunnerTest, BindingsCarryOverBetweenRuns) {
  ASSERT_OK(Run(kConnect));
  absl::StatusOr<Script> part =
      ParseScript("part.vmr", "post $conn u32:16 u32:0\nexpect u32:17 u32:0\n", {"conn"});
  ASSERT_OK(part.status());
  EXPECT_OK(runner_->Run(*part));
  EXPECT_TRUE(Printed("  HvPostMessage(0x1, 8 bytes) -> 0x0 (SUCCESS)"));
}

TEST_F(RunnerTest, UnboundAtRunTime) {
  // Parsed as if $conn were bound, run on a Runner that never bound it.
  absl::StatusOr<Script> part = ParseScript("part.vmr", "post $conn u32:3 u32:0\n", {"conn"});
  ASSERT_OK(part.status());
  absl::Status status = runner_->Run(*part);
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(), "part.vmr:1: post: $conn is not bound");
}

TEST_F(RunnerTest, ExpectMismatchNamesFileLineAndBytes) {
  absl::Status status =
      Run("# connect\n"
          "post 4 u32:14 u32:0 u32:0x50003 u32:0 u8:2 u8:0 00 00 u32:0 u64:0x10000 u64:0x11000\n"
          "expect u32:15 u32:0 u8:1 u8:0 u16:0 u32:4\n");
  EXPECT_TRUE(absl::IsAborted(status)) << status;
  EXPECT_EQ(status.message(),
            "t.vmr:3: expect: VERSION_RESPONSE (16 bytes) differs: offsets 12-15, `u32:4` "
            "(token 6): expected 04 00 00 00, got 01 00 00 00\n"
            "  message: 0f 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00");
}

TEST_F(RunnerTest, ExpectShorterMessageFails) {
  absl::Status status = Run(std::string(kConnect) +
                            "post $conn u32:16 u32:0\n"
                            "expect u32:17 u32:0 u32:0\n");
  EXPECT_EQ(status.message(),
            "t.vmr:6: expect: UNLOAD_RESPONSE (8 bytes) differs: the message is 8 bytes; the "
            "pattern needs 12: offsets 8-11, `u32:0` (token 3) is past its end\n"
            "  message: 11 00 00 00 00 00 00 00");
}

TEST_F(RunnerTest, ExpectTimesOut) {
  absl::Status status = Run("expect u32:15\n");
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(), "t.vmr:1: expect: no message arrived within 300 ms");
}

TEST_F(RunnerTest, UntilSkipsThenTimesOut) {
  absl::Status status = Run(std::string(kConnect) + "post $conn u32:16 u32:0\nuntil u32:12\n");
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(),
            "t.vmr:6: until: no matching message within 300 ms; 1 skipped, the last: "
            "UNLOAD_RESPONSE (8 bytes): offsets 0-3, `u32:12` (token 1): expected 0c 00 00 00, "
            "got 11 00 00 00");
  EXPECT_TRUE(Printed("  skipped UNLOAD_RESPONSE (8 bytes): 11 00 00 00 00 00 00 00"));
}

TEST_F(RunnerTest, QuietFailsWhenAMessageArrives) {
  absl::Status status =
      Run("post 4 u32:14 u32:0 u32:0x50003 u32:0 u8:2 u8:0 00 00 u32:0 u64:0x10000 u64:0x11000\n"
          "quiet 1000\n");
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(),
            "t.vmr:2: quiet: VERSION_RESPONSE (16 bytes) arrived within 1000 ms: 0f 00 00 00 00 "
            "00 00 00 01 00 00 00 01 00 00 00");
}

TEST_F(RunnerTest, QuietSeesAMessageAlreadyWaiting) {
  ASSERT_OK(
      Run("post 4 u32:14 u32:0 u32:0x50003 u32:0 u8:2 u8:0 00 00 u32:0 u64:0x10000 u64:0x11000\n"));
  std::this_thread::sleep_for(100ms);  // The answer is in the guest's inbox by now.
  EXPECT_TRUE(absl::IsAborted(Run("quiet 0\n")));
}

TEST_F(RunnerTest, PostStatusMismatch) {
  absl::Status status = Run("post 5 u32:3 u32:0\n");
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(),
            "t.vmr:1: post: HvPostMessage to connection 0x5 (8 bytes) returned 0x12 "
            "(INVALID_CONNECTION_ID), expected 0x0 (SUCCESS)");
  status = Run("post 4 u32:3 u32:0 -> 0x12\n");
  EXPECT_EQ(status.message(),
            "t.vmr:1: post: HvPostMessage to connection 0x4 (8 bytes) returned 0x0 (SUCCESS), "
            "expected 0x12 (INVALID_CONNECTION_ID)");
}

TEST_F(RunnerTest, OversizedPayloadIsInvalidParameter) {
  ASSERT_OK(Run("post 4 zero*241 -> 0x5\npost 4 zero*4096 -> 5\nquiet 100\n"));
  EXPECT_TRUE(Printed("  HvPostMessage(0x4, 241 bytes) -> 0x5 (INVALID_PARAMETER)"));
}

TEST_F(RunnerTest, SignalMustSucceed) {
  absl::Status status = Run("signal 0x10001\n");  // Not open: no event port yet.
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(),
            "t.vmr:1: signal: HvSignalEvent on connection 0x10001 returned 0x12 "
            "(INVALID_CONNECTION_ID)");
}

TEST_F(RunnerTest, CapturedValueTooWideToWrite) {
  // Captures msg_conn_id, then the first offer's connection id (0x10001) as $c, and writes it
  // as a u8.
  absl::Status status = Run(std::string(kConnect.substr(0, kConnect.find("until"))) +
                            "expect u32:1 ??*188 $c:u32\n"
                            "post $conn u32:7 u32:0 $c:u8\n");
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(),
            "t.vmr:5: post: `$c:u8`: $c is 0x10001, which does not fit in 8 bits");
}

TEST_F(RunnerTest, CapturedConnectionTooWide) {
  absl::Status status =
      Run("post 4 u32:14 u32:0 u32:0x50003 u32:0 u8:2 u8:0 00 00 u32:0 u64:0x10000 u64:0x11000\n"
          "expect u32:15 u32:0 $big:u64\n"
          "post $big u32:3 u32:0\n");
  EXPECT_EQ(status.message(), "t.vmr:3: post: $big is 0x100000001, not a 32-bit connection id");
}

TEST_F(RunnerTest, EventTimesOut) {
  absl::Status status = Run("event 1\n");
  EXPECT_TRUE(absl::IsAborted(status));
  EXPECT_EQ(status.message(), "t.vmr:1: event: event flag 1 of SINT 2 was not set within 300 ms");
}

// `event`: the guest's driver (this test) writes a packet into channel 1's guest -> host ring
// and signals; the echo device answers into the host -> guest ring, which sets event flag 1.
TEST_F(RunnerTest, EventWhenTheDeviceAnswers) {
  ASSERT_OK(Run(std::string(kConnect) + std::string(kOpenChannel1)));
  const std::vector<uint64_t> to_host = {0x40, 0x41, 0x42, 0x43};
  const std::vector<uint64_t> to_guest = {0x44, 0x45, 0x46, 0x47};
  absl::StatusOr<guestmem::RingMemory> out_memory =
      guestmem::RingMemory::Create(machine_->guest_memory(), to_host);
  ASSERT_OK(out_memory.status());
  absl::StatusOr<ring::OutgoingRing> out = ring::OutgoingRing::Create(*std::move(out_memory));
  ASSERT_OK(out.status());
  const std::vector<uint8_t> payload = {1, 2, 3, 4, 5, 6, 7, 8};
  absl::StatusOr<bool> signal = out->Write(
      {.flags = ring::kFlagCompletionRequested, .transaction_id = 42, .payload = payload});
  ASSERT_OK(signal.status());
  EXPECT_TRUE(*signal);  // An empty ring became non-empty.
  ASSERT_OK(Run("signal 0x10001\nevent 1\nquiet 100\n"));
  EXPECT_TRUE(Printed("  event flag 1 set"));
  // The answer is in the host -> guest ring: a completion with the same transaction id.
  absl::StatusOr<guestmem::RingMemory> in_memory =
      guestmem::RingMemory::Create(machine_->guest_memory(), to_guest);
  ASSERT_OK(in_memory.status());
  absl::StatusOr<ring::IncomingRing> in = ring::IncomingRing::Create(*std::move(in_memory));
  ASSERT_OK(in.status());
  ring::PacketBuffer buffer;
  absl::StatusOr<bool> got = in->Read(&buffer);
  ASSERT_OK(got.status());
  ASSERT_TRUE(*got);
  EXPECT_EQ(buffer.packet().transaction_id, 42u);
  // The flag was consumed: a second `event 1` has nothing to take.
  EXPECT_TRUE(absl::IsAborted(Run("event 1\n")));
}

TEST(RunScriptTest, EveryScriptGetsAFreshMachine) {
  // On one machine the second INITIATE_CONTACT would find the server connected.
  const Script script = Parse(kConnect);
  EXPECT_OK(RunScript(script, {}));
  EXPECT_OK(RunScript(script, {}));
}

TEST(RunScriptTest, FailureNamesTheFile) {
  absl::StatusOr<Script> script = ParseScript("dir/x.vmr", "\n\nexpect u32:1\n");
  ASSERT_OK(script.status());
  absl::Status status = RunScript(*script, {.timeout = 100ms});
  EXPECT_EQ(status.message(), "dir/x.vmr:3: expect: no message arrived within 100 ms");
}

TEST(DescribeMessageTest, Names) {
  EXPECT_EQ(DescribeMessage(std::vector<uint8_t>{15, 0, 0, 0, 0, 0, 0, 0}),
            "VERSION_RESPONSE (8 bytes)");
  EXPECT_EQ(DescribeMessage(std::vector<uint8_t>{99, 0, 0, 0}), "UNKNOWN (4 bytes)");
  EXPECT_EQ(DescribeMessage(std::vector<uint8_t>{1, 2}), "a 2-byte message");
}

}  // namespace
}  // namespace cvmbus::paravisor::replay
