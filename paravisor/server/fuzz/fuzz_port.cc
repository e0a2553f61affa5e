#include "paravisor/server/fuzz/fuzz_port.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "base/format.h"
#include "paravisor/server/fuzz/invariant.h"

namespace cvmbus::paravisor::fuzz {
namespace {

// SERVER_FUZZ_LOG=1: every message through the port on stderr, to follow a reproducer.
bool Verbose() {
  static const bool verbose = std::getenv("SERVER_FUZZ_LOG") != nullptr;
  return verbose;
}

void Trace(const char* direction, const protocol::ParsedMessage& message) {
  uint32_t relid = 0;
  uint32_t id = 0;
  std::visit(
      [&](const auto& body) {
        if constexpr (requires { body.child_relid; }) relid = body.child_relid;
        if constexpr (requires { body.gpadl; }) id = body.gpadl;
        if constexpr (requires { body.open_id; }) id = body.open_id;
      },
      message.body);
  std::fprintf(stderr, "%s %s relid %u id %#x\n", direction,
               std::string(protocol::MessageTypeName(message.type)).c_str(), relid, id);
}

}  // namespace

// A guest event: counts its raises; refuses a VP or SINT that does not exist, as the SynIC's.
class FuzzPort::EventSignal : public hw::Signal {
 public:
  EventSignal(std::shared_ptr<Counters> counters, uint32_t vp, uint8_t sint, uint16_t flag)
      : counters_(std::move(counters)), vp_(vp), sint_(sint), flag_(flag) {}
  absl::Status Raise() override {
    if (vp_ >= kVpCount || sint_ >= 16) {
      return absl::InvalidArgumentError(
          fmt::format("fuzz port: no VP {} SINT {} for event flag {}", vp_, sint_, flag_));
    }
    ++counters_->events;
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<Counters> counters_;
  uint32_t vp_;
  uint8_t sint_;
  uint16_t flag_;
};

absl::Status FuzzPort::AttachServer(hw::EventLoop* loop, std::vector<uint32_t>,
                                    MessageHandler on_message, std::function<void()> on_space) {
  if (attached_) return absl::AlreadyExistsError("fuzz port: a server is attached");
  FUZZ_REQUIRE(loop == loop_, "the server attached with another loop");
  attached_ = true;
  handed_off_server_ = false;
  on_message_ = std::move(on_message);
  on_space_ = std::move(on_space);
  accepting_ = true;
  ++activity_;
  Schedule();  // Posts a predecessor did not take.
  return absl::OkStatus();
}

void FuzzPort::DetachServer() {
  attached_ = false;
  handed_off_server_ = false;
  on_message_ = nullptr;
  on_space_ = nullptr;
  inbound_.clear();
  ++activity_;
}

void FuzzPort::HandOffServer() {
  attached_ = false;
  handed_off_server_ = true;
  on_message_ = nullptr;
  on_space_ = nullptr;
  for (const auto& [connection_id, target] : targets_) handed_off_.insert(connection_id);
  ++activity_;
}

void FuzzPort::SetAccepting(bool accepting) {
  accepting_ = accepting;
  ++activity_;
  Schedule();
}

absl::Status FuzzPort::PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> payload) {
  FUZZ_REQUIRE(attached_, "the server posted while detached");
  absl::StatusOr<protocol::ParsedMessage> parsed = protocol::ParseMessage(payload);
  FUZZ_REQUIRE(parsed.ok(), "the server posted a message that does not parse ({} bytes): {}",
               payload.size(), parsed.status());
  FUZZ_REQUIRE(vp < kVpCount && sint < 16,
               "the server posted {} to VP {} SINT {}, which cannot take messages (it checked "
               "INITIATE_CONTACT's target)",
               protocol::MessageTypeName(parsed->type), vp, sint);
  if (queue_limit_.has_value()) {
    if (unread_ >= *queue_limit_) {
      space_wanted_ = true;
      return absl::ResourceExhaustedError("fuzz port: the SINT queue is full");
    }
    ++unread_;
  }
  ++activity_;
  if (Verbose()) Trace("host -> guest:", *parsed);
  observer_->Posted(*parsed);
  return absl::OkStatus();
}

std::shared_ptr<hw::Signal> FuzzPort::GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) {
  return std::make_shared<EventSignal>(counters_, vp, sint, flag);
}

void FuzzPort::SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) {
  ++activity_;
  handed_off_.erase(connection_id);
  if (!target) {
    targets_.erase(connection_id);
    signals_held_.erase(connection_id);
    return;
  }
  targets_[connection_id] = target;
  if (signals_held_.erase(connection_id) > 0) {
    try {
      (void)target->Raise();
    } catch (...) {
    }
  }
}

absl::Status FuzzPort::Post(uint32_t connection_id, std::vector<uint8_t> bytes) {
  if (!attached_ && !handed_off_server_) {
    return absl::FailedPreconditionError("fuzz port: no server");
  }
  if (inbound_.size() >= kMaxInbound) {
    return absl::ResourceExhaustedError("fuzz port: HV_STATUS_INSUFFICIENT_BUFFERS");
  }
  inbound_.emplace_back(connection_id, std::move(bytes));
  ++activity_;
  Schedule();
  return absl::OkStatus();
}

void FuzzPort::Schedule() {
  // One message at a time, as the SynIC drains its inbound queue: a handler that stops
  // accepting stops the next one.
  if (pump_posted_ || !attached_ || !accepting_ || inbound_.empty()) return;
  pump_posted_ = true;
  loop_->Post([this, alive = alive_] {
    if (*alive) Pump();
  });
}

void FuzzPort::Pump() {
  pump_posted_ = false;
  if (!attached_ || !accepting_ || inbound_.empty()) return;
  std::pair<uint32_t, std::vector<uint8_t>> next = std::move(inbound_.front());
  inbound_.pop_front();
  ++activity_;
  if (Verbose()) {
    absl::StatusOr<protocol::ParsedMessage> parsed = protocol::ParseMessage(next.second);
    if (parsed.ok()) {
      Trace("guest -> host:", *parsed);
    } else {
      std::fprintf(stderr, "guest -> host: (malformed)\n");
    }
  }
  observer_->Delivered(next.second);
  MessageHandler handler = on_message_;
  handler(next.first, std::move(next.second));
  Schedule();
}

absl::Status FuzzPort::Signal(uint32_t connection_id) {
  auto it = targets_.find(connection_id);
  if (it == targets_.end()) {
    return absl::NotFoundError(fmt::format("fuzz port: no event port {:#x}", connection_id));
  }
  ++activity_;
  if (handed_off_.contains(connection_id)) {
    signals_held_.insert(connection_id);
    return absl::OkStatus();
  }
  std::shared_ptr<hw::Signal> target = it->second;
  try {
    return target->Raise();
  } catch (...) {
    return absl::InternalError("fuzz port: the event port's target threw");
  }
}

void FuzzPort::ReadAll() {
  unread_ = 0;
  if (!space_wanted_ || !attached_ || !on_space_) return;
  space_wanted_ = false;
  ++activity_;
  // The server attached when it runs, not the one now: a servicing may come in between.
  loop_->Post([this, alive = alive_] {
    if (*alive && attached_ && on_space_) on_space_();
  });
}

void FuzzPort::SetQueueLimit(std::optional<size_t> limit) {
  queue_limit_ = limit;
  unread_ = 0;
  ++activity_;
}

}  // namespace cvmbus::paravisor::fuzz
