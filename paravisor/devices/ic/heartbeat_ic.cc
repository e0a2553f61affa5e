#include "paravisor/devices/ic/heartbeat_ic.h"

#include <fmt/format.h>

namespace cvmbus::paravisor::ic {

std::string_view HeartbeatHealthName(HeartbeatHealth health) {
  switch (health) {
    case HeartbeatHealth::kNeverNegotiated:
      return "never negotiated";
    case HeartbeatHealth::kHealthy:
      return "healthy";
    case HeartbeatHealth::kMissed:
      return "missed";
  }
  return "unknown";
}

HeartbeatIc::HeartbeatIc(hw::EventLoop* loop, ParentBus* bus, HeartbeatOptions options)
    : IcDevice(loop, bus,
               {.name = "heartbeat ic",
                .interface_id = kHeartbeatInterfaceId,
                .instance_id = options.instance_id,
                .message_versions = {kHeartbeatVersion1, kHeartbeatVersion3},
                .response_timeout = options.response_timeout}),
      options_(options) {}

HeartbeatIc::~HeartbeatIc() { CancelTimer(tick_); }

HeartbeatStats HeartbeatIc::stats() const {
  HeartbeatStats stats = stats_;
  stats.channel = ic_stats();
  return stats;
}

void HeartbeatIc::OnReady() {
  stats_.health = HeartbeatHealth::kHealthy;
  stats_.consecutive_missed = 0;
  Beat();
}

void HeartbeatIc::OnClosed() {
  CancelTimer(tick_);
  tick_ = 0;
  stats_.health = HeartbeatHealth::kNeverNegotiated;
}

void HeartbeatIc::Beat() {
  tick_ = 0;
  const uint64_t sequence = next_sequence_++;
  const HeartbeatMessage message{.sequence_number = sequence, .reserved = {}};
  stats_.last_sequence = sequence;
  ++stats_.sent;
  absl::Status sent = SendRequest(kMessageTypeHeartbeat, WireBytes(message),
                                  [this, sequence](absl::StatusOr<IcResponse> answer) {
                                    OnAnswer(sequence, std::move(answer));
                                  });
  if (!sent.ok()) {
    if (state() != IcChannelState::kReady) return;  // Closed under us: no more beats.
    Miss();                                         // A full ring: the guest is not reading.
  }
  absl::StatusOr<hw::EventLoop::Id> tick = StartTimer(options_.interval, [this] { Beat(); });
  if (tick.ok()) tick_ = *tick;
}

void HeartbeatIc::OnAnswer(uint64_t sequence, absl::StatusOr<IcResponse> answer) {
  if (absl::IsCancelled(answer.status())) return;  // The channel closed.
  if (!answer.ok()) {
    Miss();
    return;
  }
  // heartbeat_onchannelcallback: seq_num += 1, everything else echoed.
  const uint64_t answered =
      answer->body.size() >= kHeartbeatMinBodyBytes ? ReadWire<uint64_t>(answer->body) : 0;
  if (answer->body.size() < kHeartbeatMinBodyBytes || answered != sequence + 1) {
    RejectResponse(MakeIcError(IcError::kBadBody,
                               fmt::format("heartbeat {} answered with {} ({} body bytes), not {}",
                                           sequence, answered, answer->body.size(), sequence + 1)));
    Miss();
    return;
  }
  ++stats_.answered;
  stats_.consecutive_missed = 0;
  stats_.health = HeartbeatHealth::kHealthy;
}

void HeartbeatIc::Miss() {
  ++stats_.missed;
  ++stats_.consecutive_missed;
  stats_.health = HeartbeatHealth::kMissed;
}

}  // namespace cvmbus::paravisor::ic
