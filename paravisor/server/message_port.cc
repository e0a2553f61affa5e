#include "paravisor/server/message_port.h"

#include <fmt/format.h>

namespace cvmbus::paravisor {
namespace {
constexpr size_t kMaxPayloadBytes = 240;  // HV_MESSAGE_PAYLOAD_BYTE_COUNT.
}  // namespace

// Raises whatever the guest registered for `relid` at the time of the raise.
class MessagePort::ChannelInterrupt : public hw::Signal {
 public:
  ChannelInterrupt(MessagePort* port, uint32_t relid) : port_(port), relid_(relid) {}
  absl::Status Raise() override {
    std::shared_ptr<hw::Signal> target;
    {
      MutexLock lock(&port_->mu_);
      auto it = port_->guest_targets_.find(relid_);
      if (it != port_->guest_targets_.end()) target = it->second;
    }
    if (!target) return absl::OkStatus();  // No guest listener: the interrupt is lost, as on HW.
    return target->Raise();
  }

 private:
  MessagePort* port_;
  uint32_t relid_;
};

absl::Status MessagePort::AttachServer(hw::EventLoop* loop, std::vector<uint32_t>,
                                       MessageHandler on_message, std::function<void()>) {
  MutexLock lock(&mu_);
  server_loop_ = loop;
  on_host_message_ = std::move(on_message);
  return absl::OkStatus();
}

void MessagePort::DetachServer() {
  MutexLock lock(&mu_);
  server_loop_ = nullptr;
  on_host_message_ = nullptr;
}

void MessagePort::AttachGuest(hw::EventLoop* loop,
                              std::function<void(std::vector<uint8_t>)> on_message) {
  MutexLock lock(&mu_);
  guest_loop_ = loop;
  on_guest_message_ = std::move(on_message);
}

absl::Status MessagePort::PostToGuest(uint32_t, uint8_t, absl::Span<const uint8_t> message) {
  if (message.size() > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(fmt::format(
        "message port: a {}-byte message exceeds the 240-byte SynIC payload", message.size()));
  }
  MutexLock lock(&mu_);
  if (guest_loop_ == nullptr) {
    return absl::FailedPreconditionError("message port: no guest attached");
  }
  ++messages_to_guest_;
  auto handler = on_guest_message_;
  guest_loop_->Post([handler, bytes = std::vector<uint8_t>(message.begin(), message.end())]() {
    handler(bytes);
  });
  return absl::OkStatus();
}

absl::Status MessagePort::PostToHost(uint32_t connection_id, absl::Span<const uint8_t> message) {
  if (message.size() > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(fmt::format(
        "message port: a {}-byte message exceeds the 240-byte SynIC payload", message.size()));
  }
  MutexLock lock(&mu_);
  if (server_loop_ == nullptr) {
    return absl::FailedPreconditionError("message port: no server attached");
  }
  ++messages_to_host_;
  auto handler = on_host_message_;
  server_loop_->Post(
      [handler, connection_id, bytes = std::vector<uint8_t>(message.begin(), message.end())]() {
        handler(connection_id, bytes);
      });
  return absl::OkStatus();
}

absl::Status MessagePort::SignalHost(uint32_t connection_id) {
  std::shared_ptr<hw::Signal> direct;
  {
    MutexLock lock(&mu_);
    auto it = host_targets_.find(connection_id);
    if (it != host_targets_.end()) direct = it->second;
  }
  if (direct) return direct->Raise();
  return absl::NotFoundError(
      fmt::format("message port: no channel event on connection {:#x}", connection_id));
}

void MessagePort::SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) {
  MutexLock lock(&mu_);
  if (target) {
    host_targets_[connection_id] = std::move(target);
  } else {
    host_targets_.erase(connection_id);
  }
}

std::shared_ptr<hw::Signal> MessagePort::GuestEvent(uint32_t, uint8_t, uint16_t flag) {
  return std::make_shared<ChannelInterrupt>(this, flag);
}

void MessagePort::SetGuestInterruptTarget(uint32_t relid, std::shared_ptr<hw::Signal> target) {
  MutexLock lock(&mu_);
  if (target) {
    guest_targets_[relid] = std::move(target);
  } else {
    guest_targets_.erase(relid);
  }
}

}  // namespace cvmbus::paravisor
