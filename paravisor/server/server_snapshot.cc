#include <fmt/format.h>

#include "guestmem/paged_range.h"
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
    if (const auto* open = std::get_if<internal::Open>(&channel->state)) {
      c.interrupts_to_guest = open->interrupt->raised();
    } else if (const auto* opening = std::get_if<internal::Opening>(&channel->state)) {
      c.interrupts_to_guest = opening->interrupt->raised();
    }
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

absl::StatusOr<RingPages> VmbusServer::RingPagesOf(uint32_t relid) const {
  auto found = channels_.find(relid);
  if (found == channels_.end()) {
    return absl::NotFoundError(fmt::format("channel {}: no such channel", relid));
  }
  const Channel& channel = *found->second;
  const auto* open = std::get_if<internal::Open>(&channel.state);
  if (open == nullptr) {
    return absl::FailedPreconditionError(
        fmt::format("channel {}: {}, not open", relid, internal::StateName(channel.state)));
  }
  const Gpadl* gpadl = gpadls_.Find(open->params.data.ring_gpadl_id);
  if (gpadl == nullptr) {
    return absl::InternalError(fmt::format("channel {}: its ring GPADL {} is gone", relid,
                                           open->params.data.ring_gpadl_id));
  }
  absl::StatusOr<std::vector<guestmem::PagedRange>> ranges =
      guestmem::ParseGpaRanges(gpadl->words, gpadl->range_count);
  if (!ranges.ok()) return ranges.status();
  if (ranges->size() != 1) {
    return absl::FailedPreconditionError(
        fmt::format("channel {}: its ring GPADL has {} ranges", relid, ranges->size()));
  }
  const absl::Span<const uint64_t> pages = (*ranges)[0].gpns();
  const uint32_t split = open->params.data.ring_offset;
  if (split == 0 || split >= pages.size()) {
    return absl::FailedPreconditionError(
        fmt::format("channel {}: ring offset {} of {} pages", relid, split, pages.size()));
  }
  const bool confidential =
      (VisibleOfferFlags(channel) & protocol::kOfferConfidentialRingBuffer) != 0 &&
      options_.private_memory.has_value();
  return RingPages{.guest_to_host = {pages.begin(), pages.begin() + split},
                   .host_to_guest = {pages.begin() + split, pages.end()},
                   .memory = confidential ? *options_.private_memory : options_.untrusted_memory,
                   .confidential = confidential};
}

absl::Status VmbusServer::Unstick(uint32_t relid) {
  auto found = channels_.find(relid);
  if (found == channels_.end()) {
    return absl::NotFoundError(fmt::format("channel {}: no such channel", relid));
  }
  auto* open = std::get_if<internal::Open>(&found->second->state);
  if (open == nullptr) {
    return absl::FailedPreconditionError(
        fmt::format("channel {}: {}, not open", relid, internal::StateName(found->second->state)));
  }
  absl::Status guest = open->interrupt->Raise();
  absl::Status device = open->device_signal ? open->device_signal->Raise() : absl::OkStatus();
  if (!guest.ok()) return guest;
  return device;
}

}  // namespace cvmbus::paravisor
