#include "paravisor/server/monitor_scanner.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "base/format.h"

namespace cvmbus::paravisor {

namespace monitor = protocol::monitor;

MonitorScanner::MonitorScanner(hw::EventLoop* loop, guestmem::GuestMemory memory, uint64_t gpa,
                               std::function<void(const std::string&)> log)
    : loop_(loop), memory_(std::move(memory)), gpa_(gpa), log_(std::move(log)) {}

MonitorScanner::~MonitorScanner() {
  if (timer_.has_value()) loop_->CancelTimer(*timer_);
}

absl::Status MonitorScanner::Clear() { return memory_.Zero(gpa_, monitor::kUsedBytes); }

absl::Status MonitorScanner::Describe(uint8_t monitor_id, uint32_t connection_id,
                                      std::chrono::nanoseconds latency) {
  if (monitor_id >= monitor::kMaxMonitorIds) {
    return absl::InvalidArgumentError(fmt::format("monitor id {} is not below 128", monitor_id));
  }
  const auto units = static_cast<uint16_t>(
      std::clamp<int64_t>(latency.count() / 100, 0, std::numeric_limits<uint16_t>::max()));
  const uint64_t parameter = connection_id;  // Flag number 0, reserved 0.
  if (absl::Status status =
          memory_.WritePlain<uint16_t>(gpa_ + monitor::LatencyOffset(monitor_id), units);
      !status.ok()) {
    return status;
  }
  if (absl::Status status =
          memory_.WritePlain<uint64_t>(gpa_ + monitor::ParameterOffset(monitor_id), parameter);
      !status.ok()) {
    return status;
  }
  return memory_
      .FetchOr32(gpa_ + monitor::kTriggerState, 1u << (monitor_id / monitor::kIdsPerGroup))
      .status();
}

void MonitorScanner::Watch(uint8_t monitor_id, std::shared_ptr<hw::Signal> target,
                           std::chrono::nanoseconds latency) {
  if (monitor_id >= monitor::kMaxMonitorIds) return;
  Watched& slot = watched_[monitor_id];
  if (!slot.target) ++watched_count_;
  slot = Watched{std::move(target), latency};
  Arm();
}

void MonitorScanner::Unwatch(uint8_t monitor_id) {
  if (monitor_id >= monitor::kMaxMonitorIds || !watched_[monitor_id].target) return;
  watched_[monitor_id] = Watched{};
  --watched_count_;
  if (watched_count_ == 0 && timer_.has_value()) {
    loop_->CancelTimer(*timer_);
    timer_.reset();
  }
}

std::chrono::nanoseconds MonitorScanner::Interval() const {
  std::chrono::nanoseconds shortest = kMaxInterval;
  for (const Watched& slot : watched_) {
    if (slot.target) shortest = std::min(shortest, slot.latency);
  }
  return std::min(std::clamp(shortest, kMinInterval, kMaxInterval) * backoff_, kMaxInterval);
}

void MonitorScanner::Arm() {
  if (timer_.has_value() || watched_count_ == 0 || broken_) return;
  absl::StatusOr<hw::EventLoop::Id> timer = loop_->AddTimer(Interval(), [this] {
    timer_.reset();
    (void)ScanOnce();
    Arm();
  });
  if (!timer.ok()) {
    log_(fmt::format("monitor page {:#x}: cannot arm the scan timer: {}", gpa_, timer.status()));
    return;
  }
  timer_ = *timer;
}

absl::StatusOr<int> MonitorScanner::ScanOnce() {
  if (broken_) return absl::FailedPreconditionError("monitor page scan stopped");
  ++stats_.scans;
  int raised = 0;
  for (uint32_t group = 0; group < monitor::kGroups; ++group) {
    const uint64_t at = gpa_ + monitor::PendingOffset(group);
    // Take the bits with a compare-and-swap to zero: a bit the guest sets between the load and
    // the swap makes the swap fail, and the next round takes it.
    absl::StatusOr<uint32_t> seen = memory_.ReadPlain<uint32_t>(at);
    uint32_t taken = 0;
    for (int round = 0; seen.ok() && *seen != 0 && round < 8; ++round) {
      absl::StatusOr<uint32_t> before = memory_.CompareExchange32(at, *seen, 0);
      if (!before.ok()) {
        seen = before.status();
      } else if (*before == *seen) {
        taken = *seen;
        break;
      } else {
        seen = before;
      }
    }
    if (!seen.ok()) {
      broken_ = true;
      log_(fmt::format("monitor page {:#x}: scan stopped: {}", gpa_, seen.status()));
      return seen.status();
    }
    for (uint32_t bit = 0; taken != 0 && bit < monitor::kIdsPerGroup; ++bit) {
      if ((taken & (1u << bit)) == 0) continue;
      taken &= ~(1u << bit);
      const Watched& slot = watched_[group * monitor::kIdsPerGroup + bit];
      if (!slot.target) {
        ++stats_.unknown_bits;
        continue;
      }
      // A device's signal that throws must not end the scan (or the process): it runs on a
      // loop timer, where nothing may escape.
      try {
        (void)slot.target->Raise();
      } catch (...) {
        log_(fmt::format("monitor id {}: the channel's event threw; dropped",
                         group * monitor::kIdsPerGroup + bit));
      }
      ++stats_.signals;
      ++raised;
    }
  }
  if (raised != 0) {
    idle_scans_ = 0;
    backoff_ = 1;
  } else if (++idle_scans_ >= kIdleScans && backoff_ < kMaxBackoff) {
    idle_scans_ = 0;
    backoff_ *= 2;
  }
  return raised;
}

}  // namespace cvmbus::paravisor
