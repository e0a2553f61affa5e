#include "paravisor/server/channel.h"

namespace cvmbus::paravisor::internal {
namespace {

// Raises a signal someone else implemented: whatever it throws becomes an error status, so
// that nothing escapes into the SynIC's or a device's thread.
absl::Status RaiseCaught(hw::Signal& signal) {
  try {
    return signal.Raise();
  } catch (...) {
    return absl::InternalError("vmbus server: a channel's signal threw when raised");
  }
}

}  // namespace

absl::Status EventLatch::Raise() {
  MutexLock lock(&mu_);
  if (disconnected_) return absl::OkStatus();  // Closed: the event goes nowhere, as on HW.
  if (!target_) {
    latched_ = true;
    return absl::OkStatus();
  }
  return RaiseCaught(*target_);
}

absl::Status EventLatch::Connect(std::shared_ptr<hw::Signal> target) {
  MutexLock lock(&mu_);
  if (disconnected_) return absl::OkStatus();
  target_ = std::move(target);
  if (!latched_ || !target_) return absl::OkStatus();
  latched_ = false;
  return RaiseCaught(*target_);
}

void EventLatch::Disconnect() {
  std::shared_ptr<hw::Signal> dropped;  // Released after the lock.
  MutexLock lock(&mu_);
  disconnected_ = true;
  latched_ = false;
  dropped = std::move(target_);
}

bool EventLatch::latched() {
  MutexLock lock(&mu_);
  return latched_;
}

absl::Status GuestInterrupt::Raise() {
  std::shared_ptr<hw::Signal> target;
  {
    MutexLock lock(&mu_);
    target = target_;
  }
  if (!target) return absl::OkStatus();  // Closed: a stale device interrupt goes nowhere.
  raised_.fetch_add(1, std::memory_order_relaxed);
  return RaiseCaught(*target);
}

void GuestInterrupt::Retarget(std::shared_ptr<hw::Signal> target) {
  MutexLock lock(&mu_);
  std::swap(target_, target);
}

std::string_view StateName(const ChannelPhase& state) {
  constexpr std::string_view kNames[] = {"released", "closed",  "opening",
                                         "open",     "closing", "revoked"};
  return kNames[state.index()];
}

const OpenParams* Channel::open_params() const {
  if (const auto* opening = std::get_if<Opening>(&state)) return &opening->params;
  if (const auto* open = std::get_if<Open>(&state)) return &open->params;
  if (const auto* closing = std::get_if<Closing>(&state)) return &closing->params;
  return nullptr;
}

}  // namespace cvmbus::paravisor::internal
