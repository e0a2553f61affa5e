// Servicing: saving and restoring the VMBus server's state.
#include <fmt/format.h>

#include <cstring>

#include "base/format.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {
namespace {

std::string GuidBytes(const Guid& guid) {
  return std::string(reinterpret_cast<const char*>(&guid), sizeof(guid));
}

absl::StatusOr<Guid> GuidFrom(const std::string& bytes) {
  Guid guid;
  if (bytes.size() != sizeof(guid)) {
    return absl::DataLossError(
        fmt::format("saved state: a GUID of {} bytes (expected 16)", bytes.size()));
  }
  std::memcpy(&guid, bytes.data(), sizeof(guid));
  return guid;
}

}  // namespace

absl::StatusOr<saved::Server> VmbusServer::Save() const {
  saved::Server state;
  state.set_version(version_);
  state.set_features(features_);
  state.set_paused(paused_);
  state.set_message_vp(message_vp_);
  state.set_message_sint(message_sint_);
  for (const Outgoing& pending : outbox_) {
    state.add_outbox(std::string(pending.bytes.begin(), pending.bytes.end()));
  }
  for (const std::vector<uint8_t>& held : held_while_paused_) {
    state.add_held_messages(std::string(held.begin(), held.end()));
  }
  if (monitor_ != nullptr) {
    state.set_monitor_page_gpa(monitor_->gpa());
    state.set_monitor_page_server_allocated(monitor_server_allocated_);
  }
  state.set_offers_requested(offers_requested_);
  state.set_next_relid(next_relid_);
  for (uint32_t relid : free_relids_) state.add_free_relids(relid);
  for (const auto& [relid, channel] : channels_) {
    saved::Channel* out = state.add_channels();
    out->set_relid(relid);
    out->set_interface_id(GuidBytes(channel.params.interface_id));
    out->set_instance_id(GuidBytes(channel.params.instance_id));
    out->set_subchannel_index(channel.params.subchannel_index);
    out->set_offer_flags(channel.offer_flags);
    out->set_state(static_cast<uint32_t>(channel.state));
    out->set_offered_to_guest(channel.offered_to_guest);
    out->set_revoked(channel.revoked);
    out->set_has_monitor_id(channel.monitor_id.has_value());
    out->set_monitor_id(channel.monitor_id.value_or(0));
    out->set_has_ring_gpadl(channel.ring_gpadl.has_value());
    out->set_ring_gpadl(channel.ring_gpadl.value_or(0));
    saved::OpenData* open = out->mutable_open_data();
    open->set_target_vp(channel.open_data.target_vp);
    open->set_ring_offset(channel.open_data.ring_offset);
    open->set_ring_gpadl_id(channel.open_data.ring_gpadl_id);
    open->set_event_flag(channel.open_data.event_flag);
    open->set_connection_id(channel.open_data.connection_id);
    open->set_user_data(
        std::string(channel.open_data.user_data.begin(), channel.open_data.user_data.end()));
    for (const auto& [id, gpadl] : channel.gpadls) {
      saved::Gpadl* g = out->add_gpadls();
      g->set_id(id);
      g->set_state(static_cast<uint32_t>(gpadl.state));
      g->set_range_count(gpadl.range_count);
      g->set_expected_words(gpadl.expected_words);
      for (uint64_t word : gpadl.words) g->add_words(word);
    }
  }
  return state;
}

absl::Status VmbusServer::Restore(const saved::Server& state) {
  if (version_ != 0 || !channels_.empty()) {
    return absl::FailedPreconditionError("vmbus server: restore into a server already in use");
  }
  std::map<OfferKey, saved::Channel> pending;
  for (const saved::Channel& channel : state.channels()) {
    absl::StatusOr<Guid> interface_id = GuidFrom(channel.interface_id());
    absl::StatusOr<Guid> instance_id = GuidFrom(channel.instance_id());
    if (!interface_id.ok()) return interface_id.status();
    if (!instance_id.ok()) return instance_id.status();
    if (channel.relid() == 0 || channel.relid() > kMaxChannels || channel.state() > 3 ||
        channel.subchannel_index() > 0xffff || channel.monitor_id() >= 128) {
      return absl::DataLossError(
          fmt::format("saved state: channel {} is malformed", channel.relid()));
    }
    const OfferKey key{*interface_id, *instance_id,
                       static_cast<uint16_t>(channel.subchannel_index())};
    if (!pending.emplace(key, channel).second) {
      return absl::DataLossError(fmt::format("saved state: key {} saved twice", key.ToString()));
    }
  }
  if (state.message_sint() >= 16) {
    return absl::DataLossError(
        fmt::format("saved state: message SINT {} (SINTs are 0..15)", state.message_sint()));
  }
  // One guest request yields at most an offer per channel and ALLOFFERS_DELIVERED.
  if (state.outbox_size() > static_cast<int>(kMaxChannels) + 1) {
    return absl::DataLossError(
        fmt::format("saved state: {} messages waiting for the SynIC "
                    "(at most {})",
                    state.outbox_size(), kMaxChannels + 1));
  }
  for (const std::string& pending : state.outbox()) {
    if (pending.size() < 8 || pending.size() > protocol::kMaxMessageBytes) {
      return absl::DataLossError(
          fmt::format("saved state: a waiting message of {} bytes", pending.size()));
    }
  }
  if (state.held_messages_size() > static_cast<int>(kMaxHeldWhilePaused)) {
    return absl::DataLossError(fmt::format("saved state: {} held messages (at most {})",
                                           state.held_messages_size(), kMaxHeldWhilePaused));
  }
  for (const std::string& held : state.held_messages()) {
    if (held.size() < 8 || held.size() > protocol::kMaxMessageBytes) {
      return absl::DataLossError(
          fmt::format("saved state: a held message of {} bytes", held.size()));
    }
  }
  const uint64_t monitor_page = state.monitor_page_gpa();
  const bool server_page = state.monitor_page_server_allocated();
  if (monitor_page % 4096 != 0 ||
      (server_page && options_.server_monitor_page != std::optional<uint64_t>(monitor_page))) {
    return absl::DataLossError(
        fmt::format("saved state: monitor page {:#x}{} is not one this server can use",
                    monitor_page, server_page ? " (the server's)" : ""));
  }
  if (monitor_page != 0) {
    // Not cleared: a bit the guest set while the old server went away is found by the first
    // scan, so no notification is lost.
    const guestmem::GuestMemory& memory = server_page && options_.private_memory.has_value()
                                              ? *options_.private_memory
                                              : options_.untrusted_memory;
    monitor_ = std::make_unique<MonitorScanner>(loop_, memory, monitor_page,
                                                [this](const std::string& line) { Log(line); });
    monitor_server_allocated_ = server_page;
  }
  version_ = state.version();
  features_ = state.features();
  offers_requested_ = state.offers_requested();
  next_relid_ = std::min<uint32_t>(std::max<uint32_t>(state.next_relid(), 1), kMaxChannels + 1);
  free_relids_.assign(state.free_relids().begin(), state.free_relids().end());
  pending_restores_ = std::move(pending);
  paused_ = state.paused();
  held_while_paused_.clear();
  for (const std::string& held : state.held_messages()) {
    held_while_paused_.emplace_back(held.begin(), held.end());
  }
  message_vp_ = state.message_vp();
  message_sint_ = static_cast<uint8_t>(state.message_sint());
  outbox_.clear();
  for (const std::string& pending : state.outbox()) {
    outbox_.push_back(Outgoing{message_vp_, message_sint_, {pending.begin(), pending.end()}});
  }
  FlushOutbox();
  Log(fmt::format("restored: version {:#x}, features {:#x}, {} channels awaiting their devices",
                  version_, features_, pending_restores_.size()));
  return absl::OkStatus();
}

void VmbusServer::ApplySaved(const saved::Channel& saved, Channel* channel) {
  channel->offer_flags = static_cast<uint16_t>(saved.offer_flags());
  // An open or close that was in flight is settled as the device reports in RestoreChannel.
  channel->state = saved.state() == static_cast<uint32_t>(ChannelState::kOpen)
                       ? ChannelState::kOpen
                       : ChannelState::kClosed;
  channel->offered_to_guest = saved.offered_to_guest();
  channel->revoked = saved.revoked();
  if (saved.has_monitor_id()) channel->monitor_id = static_cast<uint8_t>(saved.monitor_id());
  if (saved.has_ring_gpadl()) channel->ring_gpadl = saved.ring_gpadl();
  const saved::OpenData& open = saved.open_data();
  channel->open_data.target_vp = open.target_vp();
  channel->open_data.ring_offset = open.ring_offset();
  channel->open_data.ring_gpadl_id = open.ring_gpadl_id();
  channel->open_data.event_flag = static_cast<uint16_t>(open.event_flag());
  channel->open_data.connection_id = open.connection_id();
  std::memcpy(channel->open_data.user_data.data(), open.user_data().data(),
              std::min(open.user_data().size(), channel->open_data.user_data.size()));
  for (const saved::Gpadl& g : saved.gpadls()) {
    Gpadl& gpadl = channel->gpadls[g.id()];
    gpadl.state = static_cast<GpadlState>(std::min<uint32_t>(g.state(), 3));
    gpadl.range_count = static_cast<uint16_t>(g.range_count());
    gpadl.expected_words = g.expected_words();
    gpadl.words.assign(g.words().begin(), g.words().end());
  }
  channel->awaiting_restore = true;
}

absl::StatusOr<RestoreResult> VmbusServer::RestoreChannelState(
    uint32_t relid, const std::optional<OpenResult>& open) {
  auto it = channels_.find(relid);
  if (it == channels_.end()) return absl::NotFoundError("vmbus server: restore of no channel");
  Channel& channel = it->second;
  if (!channel.awaiting_restore) {
    return absl::FailedPreconditionError(
        fmt::format("vmbus server: channel {} has no saved state to restore", relid));
  }
  const bool saved_open = channel.state == ChannelState::kOpen;
  if (saved_open != open.has_value()) {
    return absl::FailedPreconditionError(
        fmt::format("vmbus server: channel {} was saved {} but the device restores it {}", relid,
                    saved_open ? "open" : "closed", open.has_value() ? "open" : "closed"));
  }
  channel.awaiting_restore = false;
  RestoreResult result;
  std::vector<uint32_t> reoffer;
  for (auto& [id, gpadl] : channel.gpadls) {
    if (gpadl.state == GpadlState::kInProgress) continue;  // Still assembling: the guest goes on.
    // Accepted (or being torn down) GPADLs must restore; one the device never answered was not
    // accepted, and is offered to it again below.
    const bool accepted = gpadl.state != GpadlState::kOffered;
    result.gpadls.push_back(
        RestoredGpadl{GpadlRequest{id, gpadl.range_count, gpadl.words}, accepted});
    if (!accepted) reoffer.push_back(id);
  }
  if (saved_open) {
    Interrupt to_guest(port_->GuestEvent(channel.open_data.target_vp, message_sint_,
                                         channel.open_data.event_flag));
    result.open_request = OpenRequest::Make(channel.open_data, to_guest, FeatureFlags{features_},
                                            OfferFlags{VisibleOfferFlags(channel)});
    port_->SetEventTarget(channel.open_data.connection_id, open->guest_to_host_interrupt.signal());
    WatchMonitor(channel, open->guest_to_host_interrupt.signal());
    // Both directions once: an interrupt raised while the old paravisor went away is not lost.
    (void)to_guest.Deliver();
    (void)open->guest_to_host_interrupt.Deliver();
  }
  std::shared_ptr<bool> alive = alive_;
  loop_->Post([this, alive, relid, reoffer] {
    if (!*alive) return;
    auto again = channels_.find(relid);
    if (again == channels_.end()) return;
    for (uint32_t id : reoffer) {
      again->second.gpadls[id].state = GpadlState::kInProgress;
      FinishGpadl(again->second, id);
    }
  });
  return result;
}

}  // namespace cvmbus::paravisor
