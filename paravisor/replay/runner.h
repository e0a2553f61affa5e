// Runner: plays a parsed script's steps against a Machine (shared/docs/replay-format.md).
//
//   post    HvPostMessage; the HV_STATUS must be the step's (0 unless `-> STATUS`). No retry:
//           INSUFFICIENT_BUFFERS is a status like any other.
//   signal  HvSignalEvent (fast); must be 0.
//   expect  the next message (within 2 s) matches as a prefix; captures bind.
//   until   messages are read and discarded until one matches (within 2 s of the step's start).
//   quiet   no message is waiting, and none arrives within MILLIS ms.
//   event   event flag RELID was set since the last `event` for it, or is within 2 s.
//
// Each step is printed as it runs ("FILE:LINE: <the line>"), then what it saw, then the server
// log lines that appeared meanwhile. The first step that fails ends the run with a status
// "FILE:LINE: <step>: what differed" (kAborted; kInternal if the machine itself failed).
//
// Threads: a Runner is used by one thread at a time.
#ifndef CVMBUS_PARAVISOR_REPLAY_RUNNER_H_
#define CVMBUS_PARAVISOR_REPLAY_RUNNER_H_

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "paravisor/replay/machine.h"
#include "paravisor/replay/pattern.h"
#include "paravisor/replay/script.h"

namespace cvmbus::paravisor::replay {

inline constexpr std::chrono::milliseconds kStepTimeout{2000};

struct RunOptions {
  // Receives every output line (no newline). Null: silent.
  std::function<void(std::string_view line)> print;
  std::chrono::milliseconds timeout = kStepTimeout;  // expect, until, event.
};

class Runner {
 public:
  // `machine` must outlive the Runner.
  Runner(Machine* machine, RunOptions options) : machine_(machine), options_(std::move(options)) {}

  // Runs the steps in order and stops at the first that fails. Bindings carry over between
  // calls, so a test may run a script in parts and act on the machine in between.
  absl::Status Run(const Script& script);

  const Bindings& bindings() const { return bindings_; }

 private:
  absl::Status RunStep(const Script& script, const Step& step);
  absl::Status Post(const Step& step);
  absl::Status Signal(const Step& step);
  absl::Status Expect(const Step& step);
  absl::Status Until(const Step& step);
  absl::Status Quiet(const Step& step);
  absl::Status Event(const Step& step);
  // The connection id an operand names now.
  absl::StatusOr<uint32_t> Connection(const Operand& operand) const;
  void Print(std::string_view line) const;
  void PrintServerLog();

  Machine* const machine_;
  const RunOptions options_;
  Bindings bindings_;
};

// Runs `script` on a fresh Machine. OK if every step passed.
absl::Status RunScript(const Script& script, RunOptions options);

// "VERSION_RESPONSE (16 bytes)": a received message's type, from its first u32.
std::string DescribeMessage(absl::Span<const uint8_t> message);
// The name of an HV_STATUS ("SUCCESS", "INVALID_CONNECTION_ID", ...), or "" if unknown.
std::string_view HvStatusName(uint64_t status);

}  // namespace cvmbus::paravisor::replay

#endif  // CVMBUS_PARAVISOR_REPLAY_RUNNER_H_
