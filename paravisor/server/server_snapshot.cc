#include "paravisor/server/server.h"

namespace cvmbus::paravisor {

ServerSnapshot VmbusServer::Snapshot() const {
  ServerSnapshot out;
  out.connected = phase_ == Phase::kConnected;
  out.version = version_;
  out.feature_flags = features_;
  out.connection_epoch = connection_epoch_;
  out.paused = paused_;
  if (monitor_ != nullptr) {
    out.monitor_scans = monitor_->stats().scans;
    out.monitor_signals = monitor_->stats().signals;
  }
  out.messages_handled = stats_.messages_handled;
  out.guest_errors = stats_.guest_errors;
  out.stale_replies = stats_.stale_replies;
  out.internal_errors = stats_.internal_errors;
  out.log_lines_suppressed = log_limit_.total_suppressed();
  for (const auto& [relid, channel] : channels_) {
    ChannelSnapshot c{.relid = relid,
                      .state = std::string(internal::StateName(channel->state)),
                      .interface_name = channel->params.interface_name,
                      .interface_id = channel->params.interface_id,
                      .instance_id = channel->params.instance_id,
                      .subchannel_index = channel->params.subchannel_index,
                      .hvsocket = channel->is_hvsocket(),
                      .offer_flags = channel->offer_flags,
                      .monitor_id = channel->monitor_id,
                      .device_attached = channel->device_attached,
                      .gpadls = gpadls_.CountOf(channel->offer),
                      .pending_modifies = channel->modifies.size()};
    if (const internal::OpenParams* params = channel->open_params()) c.open = params->data;
    out.channels.push_back(std::move(c));
  }
  for (const auto& [id, gpadl] : gpadls_.all()) {
    out.gpadls.push_back(
        GpadlSnapshot{.id = id,
                      .relid = gpadl.relid,
                      .state = std::string(internal::GpadlStateName(gpadl.state)),
                      .ranges = gpadl.range_count,
                      .pages = internal::PageWords(gpadl.range_count, gpadl.words.size())});
  }
  return out;
}

}  // namespace cvmbus::paravisor
