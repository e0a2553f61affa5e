#include "paravisor/replay/runner.h"

#include <fmt/format.h>

#include "base/format.h"
#include "paravisor/protocol/messages.h"

namespace cvmbus::paravisor::replay {
namespace {

using Clock = std::chrono::steady_clock;

// The bytes of a step's output line: enough to read a VMBus header and its first fields.
constexpr size_t kBytesShown = 48;

std::string StatusText(uint64_t status) {
  const std::string_view name = HvStatusName(status);
  return name.empty() ? fmt::format("{:#x}", status) : fmt::format("{:#x} ({})", status, name);
}

std::string Seconds(std::chrono::milliseconds timeout) {
  return timeout.count() % 1000 == 0 ? fmt::format("{} s", timeout.count() / 1000)
                                     : fmt::format("{} ms", timeout.count());
}

}  // namespace

std::string_view HvStatusName(uint64_t status) {
  switch (status) {
    case synic::kStatusSuccess:
      return "SUCCESS";
    case synic::kStatusInvalidHypercallCode:
      return "INVALID_HYPERCALL_CODE";
    case synic::kStatusInvalidHypercallInput:
      return "INVALID_HYPERCALL_INPUT";
    case synic::kStatusInvalidAlignment:
      return "INVALID_ALIGNMENT";
    case synic::kStatusInvalidParameter:
      return "INVALID_PARAMETER";
    case synic::kStatusAccessDenied:
      return "ACCESS_DENIED";
    case synic::kStatusInvalidConnectionId:
      return "INVALID_CONNECTION_ID";
    case synic::kStatusInsufficientBuffers:
      return "INSUFFICIENT_BUFFERS";
  }
  return "";
}

std::string DescribeMessage(absl::Span<const uint8_t> message) {
  if (message.size() < 4) return fmt::format("a {}-byte message", message.size());
  const uint32_t type = uint32_t{message[0]} | uint32_t{message[1]} << 8 |
                        uint32_t{message[2]} << 16 | uint32_t{message[3]} << 24;
  return fmt::format("{} ({} bytes)",
                     protocol::MessageTypeName(static_cast<protocol::MessageType>(type)),
                     message.size());
}

void Runner::Print(std::string_view line) const {
  if (options_.print) options_.print(line);
}

void Runner::PrintServerLog() {
  for (const std::string& line : machine_->TakeServerLog())
    Print(fmt::format("  server: {}", line));
}

absl::Status Runner::Run(const Script& script) {
  for (const Step& step : script.steps) {
    Print(fmt::format("{}:{}: {}", script.file, step.line, step.source));
    absl::Status status = RunStep(script, step);
    PrintServerLog();
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status Runner::RunStep(const Script& script, const Step& step) {
  absl::Status status;
  switch (step.kind) {
    case Step::Kind::kPost:
      status = Post(step);
      break;
    case Step::Kind::kSignal:
      status = Signal(step);
      break;
    case Step::Kind::kExpect:
      status = Expect(step);
      break;
    case Step::Kind::kUntil:
      status = Until(step);
      break;
    case Step::Kind::kQuiet:
      status = Quiet(step);
      break;
    case Step::Kind::kEvent:
      status = Event(step);
      break;
  }
  if (status.ok()) return status;
  return absl::Status(status.code(), fmt::format("{}:{}: {}: {}", script.file, step.line,
                                                 StepKindName(step.kind), status.message()));
}

absl::StatusOr<uint32_t> Runner::Connection(const Operand& operand) const {
  if (operand.number.has_value()) return *operand.number;
  auto it = bindings_.find(operand.name);
  if (it == bindings_.end()) {  // The parser checks this; a hand-built step may not.
    return absl::AbortedError(fmt::format("${} is not bound", operand.name));
  }
  if (it->second > 0xffffffff) {
    return absl::AbortedError(
        fmt::format("${} is {:#x}, not a 32-bit connection id", operand.name, it->second));
  }
  return static_cast<uint32_t>(it->second);
}

absl::Status Runner::Post(const Step& step) {
  absl::StatusOr<uint32_t> connection = Connection(step.connection);
  if (!connection.ok()) return connection.status();
  absl::StatusOr<std::vector<uint8_t>> payload = Encode(step.bytes, bindings_);
  if (!payload.ok()) return absl::AbortedError(payload.status().message());
  const uint64_t status = machine_->PostMessage(*connection, *payload);
  Print(fmt::format("  HvPostMessage({:#x}, {} bytes) -> {}", *connection, payload->size(),
                    StatusText(status)));
  if (status != step.status) {
    return absl::AbortedError(
        fmt::format("HvPostMessage to connection {:#x} ({} bytes) returned {}, expected {}",
                    *connection, payload->size(), StatusText(status), StatusText(step.status)));
  }
  return absl::OkStatus();
}

absl::Status Runner::Signal(const Step& step) {
  absl::StatusOr<uint32_t> connection = Connection(step.connection);
  if (!connection.ok()) return connection.status();
  const uint64_t status = machine_->SignalEvent(*connection);
  Print(fmt::format("  HvSignalEvent({:#x}) -> {}", *connection, StatusText(status)));
  if (status != synic::kStatusSuccess) {
    return absl::AbortedError(fmt::format("HvSignalEvent on connection {:#x} returned {}",
                                          *connection, StatusText(status)));
  }
  return absl::OkStatus();
}

absl::Status Runner::Expect(const Step& step) {
  std::optional<std::vector<uint8_t>> message = machine_->NextMessage(options_.timeout);
  if (!message.has_value()) {
    return absl::AbortedError(
        fmt::format("no message arrived within {}", Seconds(options_.timeout)));
  }
  MatchResult match = Match(step.bytes, *message, bindings_);
  if (!match.matched) {
    return absl::AbortedError(fmt::format("{} differs: {}\n  message: {}",
                                          DescribeMessage(*message), match.mismatch,
                                          HexBytes(*message)));
  }
  Print(fmt::format("  got {}: {}", DescribeMessage(*message), HexBytes(*message, kBytesShown)));
  for (const auto& [name, value] : match.captured) {
    Print(fmt::format("  ${} = {:#x}", name, value));
    bindings_[name] = value;
  }
  return absl::OkStatus();
}

absl::Status Runner::Until(const Step& step) {
  const auto deadline = Clock::now() + options_.timeout;
  size_t skipped = 0;
  std::string last_mismatch;
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    std::optional<std::vector<uint8_t>> message =
        machine_->NextMessage(std::max(left, std::chrono::milliseconds(0)));
    if (!message.has_value()) {
      return absl::AbortedError(
          skipped == 0 ? fmt::format("no message arrived within {}", Seconds(options_.timeout))
                       : fmt::format("no matching message within {}; {} skipped, the last: {}",
                                     Seconds(options_.timeout), skipped, last_mismatch));
    }
    MatchResult match = Match(step.bytes, *message, bindings_);
    if (match.matched) {
      Print(
          fmt::format("  got {}: {}", DescribeMessage(*message), HexBytes(*message, kBytesShown)));
      for (const auto& [name, value] : match.captured) {
        Print(fmt::format("  ${} = {:#x}", name, value));
        bindings_[name] = value;
      }
      return absl::OkStatus();
    }
    ++skipped;
    last_mismatch = fmt::format("{}: {}", DescribeMessage(*message), match.mismatch);
    Print(fmt::format("  skipped {}: {}", DescribeMessage(*message),
                      HexBytes(*message, kBytesShown)));
  }
}

absl::Status Runner::Quiet(const Step& step) {
  std::optional<std::vector<uint8_t>> message =
      machine_->NextMessage(std::chrono::milliseconds(step.millis));
  if (message.has_value()) {
    return absl::AbortedError(fmt::format("{} arrived within {} ms: {}", DescribeMessage(*message),
                                          step.millis, HexBytes(*message)));
  }
  Print(fmt::format("  nothing within {} ms", step.millis));
  return absl::OkStatus();
}

absl::Status Runner::Event(const Step& step) {
  if (!machine_->TakeEvent(static_cast<uint16_t>(step.relid), options_.timeout)) {
    return absl::AbortedError(fmt::format("event flag {} of SINT 2 was not set within {}",
                                          step.relid, Seconds(options_.timeout)));
  }
  Print(fmt::format("  event flag {} set", step.relid));
  return absl::OkStatus();
}

absl::Status RunScript(const Script& script, RunOptions options) {
  absl::StatusOr<std::unique_ptr<Machine>> machine = Machine::Create();
  if (!machine.ok()) {
    return absl::InternalError(
        fmt::format("{}: the replay machine: {}", script.file, machine.status().message()));
  }
  Runner runner(machine->get(), std::move(options));
  return runner.Run(script);
}

}  // namespace cvmbus::paravisor::replay
