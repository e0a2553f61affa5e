#include "paravisor/devices/ic/timesync_ic.h"

#include <time.h>

#include <vector>

namespace cvmbus::paravisor::ic {

TimeSample SystemTimeSample() {
  const auto since_unix = std::chrono::system_clock::now().time_since_epoch();
  const uint64_t unix_100ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(since_unix).count() / 100);
  timespec monotonic{};
  clock_gettime(CLOCK_MONOTONIC, &monotonic);
  const uint64_t reference_100ns =
      static_cast<uint64_t>(monotonic.tv_sec) * 10'000'000 + monotonic.tv_nsec / 100;
  return TimeSample{.parent_time_100ns = unix_100ns + kWindowsToUnixEpoch100ns,
                    .vm_reference_time_100ns = reference_100ns};
}

TimeSyncIc::TimeSyncIc(hw::EventLoop* loop, ParentBus* bus, TimeSyncOptions options)
    : IcDevice(loop, bus,
               {.name = "timesync ic",
                .interface_id = kTimeSyncInterfaceId,
                .instance_id = options.instance_id,
                .message_versions = {kTimeSyncVersion1, kTimeSyncVersion3, kTimeSyncVersion4},
                .response_timeout = options.response_timeout}),
      options_(std::move(options)) {}

TimeSyncIc::~TimeSyncIc() { CancelTimer(next_); }

TimeSyncStats TimeSyncIc::stats() const {
  TimeSyncStats stats = stats_;
  stats.channel = ic_stats();
  return stats;
}

void TimeSyncIc::OnReady() {
  sync_owed_ = true;
  Send();
}

void TimeSyncIc::OnClosed() {
  CancelTimer(next_);
  next_ = 0;
}

void TimeSyncIc::Send() {
  next_ = 0;
  const bool sync = sync_owed_;
  // Read the clock last, right before the write, so the sample is as fresh as it can be.
  const uint8_t flags = sync ? kTimeSyncFlagSync : kTimeSyncFlagSample;
  const TimeSample sample = options_.clock();
  std::vector<uint8_t> body;
  if (versions().message == kTimeSyncVersion4) {
    body = WireBytes(TimeSyncRefMessage{.parent_time = sample.parent_time_100ns,
                                        .vm_reference_time = sample.vm_reference_time_100ns,
                                        .flags = flags,
                                        .leap_flags = 0,
                                        .stratum = 0,
                                        .reserved = {}});
  } else {
    body = WireBytes(TimeSyncMessage{.parent_time = sample.parent_time_100ns,
                                     .child_time = 0,
                                     .round_trip_time = 0,
                                     .flags = flags,
                                     .reserved = {}});
  }
  absl::Status sent =
      SendRequest(kMessageTypeTimeSync, body, [this](absl::StatusOr<IcResponse> answer) {
        if (absl::IsCancelled(answer.status())) return;  // The channel closed.
        ++(answer.ok() ? stats_.answered : stats_.unanswered);
        ScheduleSample();
      });
  if (!sent.ok()) {
    ++stats_.unanswered;
    if (state() == IcChannelState::kReady) ScheduleSample();  // A full ring: try later.
    return;
  }
  sync_owed_ = false;
  ++(sync ? stats_.syncs_sent : stats_.samples_sent);
  stats_.last_sent = sample;
  stats_.last_flags = flags;
}

void TimeSyncIc::ScheduleSample() {
  if (state() != IcChannelState::kReady || next_ != 0) return;
  absl::StatusOr<hw::EventLoop::Id> next = StartTimer(options_.sample_period, [this] { Send(); });
  if (next.ok()) next_ = *next;
}

}  // namespace cvmbus::paravisor::ic
