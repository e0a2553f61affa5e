#include "paravisor/server/testing/fake_port.h"

#include <fmt/format.h>

namespace cvmbus::paravisor::testing {

class FakePort::EventSignal : public hw::Signal {
 public:
  EventSignal(FakePort* port, uint32_t vp, uint8_t sint, uint16_t flag)
      : port_(port), vp_(vp), sint_(sint), flag_(flag) {}
  absl::Status Raise() override {
    if (vp_ >= port_->vp_count_ || sint_ >= 16) {
      return absl::InvalidArgumentError(
          fmt::format("fake port: no VP {} SINT {} for event flag {}", vp_, sint_, flag_));
    }
    MutexLock lock(&port_->mu_);
    ++port_->events_[{vp_, sint_, flag_}];
    return absl::OkStatus();
  }

 private:
  FakePort* port_;
  uint32_t vp_;
  uint8_t sint_;
  uint16_t flag_;
};

absl::Status FakePort::AttachServer(hw::EventLoop* loop, std::vector<uint32_t>,
                                    MessageHandler on_message, std::function<void()> on_space) {
  MutexLock lock(&mu_);
  loop_ = loop;
  on_message_ = std::move(on_message);
  on_space_ = std::move(on_space);
  accepting_ = true;
  return absl::OkStatus();
}

void FakePort::DetachServer() {
  MutexLock lock(&mu_);
  loop_ = nullptr;
  on_message_ = nullptr;
  on_space_ = nullptr;
}

void FakePort::SetAccepting(bool accepting) {
  MutexLock lock(&mu_);
  accepting_ = accepting;
  if (accepting_) DeliverHeld();
}

bool FakePort::accepting() {
  MutexLock lock(&mu_);
  return accepting_;
}

void FakePort::DeliverHeld() {
  // One message at a time, as a SynIC drains its inbound queue: a handler that stops
  // accepting stops the next one.
  if (loop_ == nullptr || pumping_ || !accepting_ || held_.empty()) return;
  pumping_ = true;
  loop_->Post([this] { Pump(); });
}

void FakePort::Pump() {
  std::pair<uint32_t, std::vector<uint8_t>> next;
  MessageHandler handler;
  {
    MutexLock lock(&mu_);
    if (loop_ == nullptr || !accepting_ || held_.empty()) {
      pumping_ = false;
      return;
    }
    next = std::move(held_.front());
    held_.pop_front();
    handler = on_message_;
  }
  handler(next.first, std::move(next.second));
  MutexLock lock(&mu_);
  pumping_ = false;
  DeliverHeld();
}

absl::Status FakePort::Post(uint32_t connection_id, std::vector<uint8_t> bytes) {
  MutexLock lock(&mu_);
  if (loop_ == nullptr) return absl::FailedPreconditionError("fake port: no server");
  held_.emplace_back(connection_id, std::move(bytes));
  DeliverHeld();
  return absl::OkStatus();
}

absl::Status FakePort::PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> payload) {
  if (payload.size() > 240 || vp >= vp_count_ || sint >= 16) {
    return absl::InvalidArgumentError(fmt::format(
        "fake port: {} bytes to VP {} SINT {} cannot be posted", payload.size(), vp, sint));
  }
  absl::StatusOr<protocol::ParsedMessage> parsed = protocol::ParseMessage(payload);
  if (!parsed.ok()) return parsed.status();
  MutexLock lock(&mu_);
  if (queue_limit_.has_value() && posted_.size() >= *queue_limit_) {
    space_wanted_ = true;
    return absl::ResourceExhaustedError("fake port: the SINT queue is full");
  }
  posted_.push_back(Posted{vp, sint, *std::move(parsed)});
  ++messages_posted_;
  arrived_.notify_all();
  return absl::OkStatus();
}

std::shared_ptr<hw::Signal> FakePort::GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) {
  return std::make_shared<EventSignal>(this, vp, sint, flag);
}

void FakePort::SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) {
  MutexLock lock(&mu_);
  if (target) {
    targets_[connection_id] = std::move(target);
  } else {
    targets_.erase(connection_id);
  }
}

absl::Status FakePort::Signal(uint32_t connection_id) {
  std::shared_ptr<hw::Signal> target;
  {
    MutexLock lock(&mu_);
    auto it = targets_.find(connection_id);
    if (it == targets_.end()) {
      return absl::NotFoundError(fmt::format("fake port: no event port {:#x}", connection_id));
    }
    target = it->second;
  }
  return target->Raise();
}

bool FakePort::HasEventTarget(uint32_t connection_id) {
  MutexLock lock(&mu_);
  return targets_.contains(connection_id);
}

void FakePort::RunOnSpace() {
  std::function<void()> on_space;
  hw::EventLoop* loop = nullptr;
  {
    MutexLock lock(&mu_);
    if (!space_wanted_ || loop_ == nullptr) return;
    if (queue_limit_.has_value() && posted_.size() >= *queue_limit_) return;
    space_wanted_ = false;
    on_space = on_space_;
    loop = loop_;
  }
  if (on_space) loop->Post(on_space);
}

absl::StatusOr<FakePort::Posted> FakePort::WaitFor(protocol::MessageType type,
                                                   std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::optional<Posted> found;
  {
    MutexLock lock(&mu_);
    std::unique_lock<Mutex> wait_lock(mu_, std::adopt_lock);
    while (!found.has_value()) {
      for (auto it = posted_.begin(); it != posted_.end(); ++it) {
        if (it->message.type == type) {
          found = std::move(*it);
          posted_.erase(it);
          break;
        }
      }
      if (found.has_value()) break;
      if (arrived_.wait_until(wait_lock, deadline) == std::cv_status::timeout) break;
    }
    wait_lock.release();
  }
  if (!found.has_value()) {
    return absl::DeadlineExceededError(
        fmt::format("fake port: no {} from the server", protocol::MessageTypeName(type)));
  }
  RunOnSpace();
  return *std::move(found);
}

std::vector<FakePort::Posted> FakePort::TakeAll() {
  std::vector<Posted> out;
  {
    MutexLock lock(&mu_);
    out.assign(std::make_move_iterator(posted_.begin()), std::make_move_iterator(posted_.end()));
    posted_.clear();
  }
  RunOnSpace();
  return out;
}

uint64_t FakePort::events(uint32_t vp, uint8_t sint, uint16_t flag) {
  MutexLock lock(&mu_);
  auto it = events_.find({vp, sint, flag});
  return it == events_.end() ? 0 : it->second;
}

void FakePort::SetQueueLimit(std::optional<size_t> limit) {
  {
    MutexLock lock(&mu_);
    queue_limit_ = limit;
  }
  RunOnSpace();
}

uint64_t FakePort::messages_posted() {
  MutexLock lock(&mu_);
  return messages_posted_;
}

}  // namespace cvmbus::paravisor::testing
