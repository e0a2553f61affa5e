#include "paravisor/devices/ic/shutdown_ic.h"

#include <algorithm>
#include <cstring>

namespace cvmbus::paravisor::ic {

uint32_t ShutdownFlags(const ShutdownRequest& request) {
  uint32_t flags = request.force ? kShutdownFlagForce : 0;
  switch (request.kind) {
    case ShutdownKind::kPowerOff:
      break;
    case ShutdownKind::kReboot:
      flags |= kShutdownFlagRestart;
      break;
    case ShutdownKind::kHibernate:
      flags |= kShutdownFlagHibernate;
      break;
  }
  return flags;
}

ShutdownIc::ShutdownIc(hw::EventLoop* loop, ParentBus* bus, ShutdownOptions options)
    : IcDevice(loop, bus,
               {.name = "shutdown ic",
                .interface_id = kShutdownInterfaceId,
                .instance_id = options.instance_id,
                .message_versions = {kShutdownVersion1, kShutdownVersion3, kShutdownVersion3_1,
                                     kShutdownVersion3_2},
                .response_timeout = options.response_timeout}) {}

ShutdownIc::~ShutdownIc() {
  if (pending_.has_value()) {
    Done done = std::move(*pending_);
    pending_.reset();
    done(absl::CancelledError("shutdown ic: the device was destroyed"));
  }
}

ShutdownStats ShutdownIc::stats() const {
  ShutdownStats stats = stats_;
  stats.channel = ic_stats();
  return stats;
}

void ShutdownIc::RequestShutdown(const ShutdownRequest& request, Done done) {
  if (pending_.has_value()) {
    done(absl::AlreadyExistsError("shutdown ic: a shutdown request is already in flight"));
    return;
  }
  ShutdownMessage message{.reason_code = request.reason_code,
                          .timeout_seconds = request.timeout_seconds,
                          .flags = ShutdownFlags(request),
                          .display_message = {}};
  std::memcpy(message.display_message, request.message.data(),
              std::min(request.message.size(), sizeof(message.display_message) - 1));
  absl::Status sent =
      SendRequest(kMessageTypeShutdown, WireBytes(message),
                  [this](absl::StatusOr<IcResponse> answer) { OnAnswer(std::move(answer)); });
  if (!sent.ok()) {
    done(sent);
    return;
  }
  ++stats_.requested;
  pending_ = std::move(done);
}

void ShutdownIc::OnAnswer(absl::StatusOr<IcResponse> answer) {
  if (!pending_.has_value()) return;
  Done done = std::move(*pending_);
  pending_.reset();
  if (!answer.ok()) {
    ++stats_.failed;
    done(answer.status());
    return;
  }
  const uint32_t status = answer->header.status;
  stats_.last_guest_status = status;
  ++(status == kStatusOk ? stats_.accepted : stats_.refused);
  done(status);
}

}  // namespace cvmbus::paravisor::ic
