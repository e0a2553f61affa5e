// Servicing: saving the VMBus server's state, and a restored channel's confirmation by its
// device (RestoreChannel). Restore itself is in server_restore.cc.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/format.h"
#include "paravisor/server/saved_codes.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {
namespace {

using internal::GpadlState;

std::string GuidBytes(const Guid& guid) {
  return std::string(reinterpret_cast<const char*>(&guid), sizeof(guid));
}

void SaveOpenData(const OpenData& data, saved::OpenData* out) {
  out->set_target_vp(data.target_vp);
  out->set_ring_offset(data.ring_offset);
  out->set_ring_gpadl_id(data.ring_gpadl_id);
  out->set_event_flag(data.event_flag);
  out->set_connection_id(data.connection_id);
  out->set_user_data(std::string(data.user_data.begin(), data.user_data.end()));
}

}  // namespace

absl::StatusOr<saved::Server> VmbusServer::Save() const {
  if (phase_ == Phase::kDisconnecting) {
    return absl::FailedPreconditionError(
        "vmbus server: the connection is being reset (waiting for devices); save once it is done");
  }
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
    out->set_interface_id(GuidBytes(channel->params.interface_id));
    out->set_instance_id(GuidBytes(channel->params.instance_id));
    out->set_subchannel_index(channel->params.subchannel_index);
    out->set_offer_flags(channel->offer_flags);
    uint32_t code = kSavedClosed;
    if (std::holds_alternative<internal::Opening>(channel->state)) code = kSavedOpening;
    if (std::holds_alternative<internal::Open>(channel->state)) code = kSavedOpen;
    if (const auto* closing = std::get_if<internal::Closing>(&channel->state)) {
      code = kSavedClosing;
      if (closing->reopen.has_value()) {
        out->mutable_reopen()->set_open_id(closing->reopen->open_id);
        SaveOpenData(closing->reopen->data, out->mutable_reopen()->mutable_open_data());
      }
    }
    if (const auto* released = std::get_if<internal::Released>(&channel->state)) {
      code = kSavedReleased;
      out->set_declined_by_guest(released->declined_by_guest);
    }
    out->set_state(code);
    out->set_offered_to_guest(code != kSavedReleased);
    out->set_revoked(channel->revoked());
    out->set_has_monitor_id(channel->monitor_id.has_value());
    out->set_monitor_id(channel->monitor_id.value_or(0));
    if (const internal::OpenParams* open = channel->open_params()) {
      out->set_has_ring_gpadl(true);
      out->set_ring_gpadl(open->data.ring_gpadl_id);
      out->set_open_id(open->open_id);
      SaveOpenData(open->data, out->mutable_open_data());
    }
    for (const internal::PendingModify& modify : channel->modifies) {
      out->add_pending_modify_vps(modify.target_vp);
    }
    for (const GpadlId id : gpadls_.IdsOf(channel->offer)) {
      const Gpadl& gpadl = *gpadls_.Find(id);
      saved::Gpadl* g = out->add_gpadls();
      g->set_id(id);
      g->set_state(static_cast<uint32_t>(gpadl.state));
      g->set_range_count(gpadl.range_count);
      g->set_expected_words(gpadl.expected_words);
      for (uint64_t word : gpadl.words) g->add_words(word);
      g->set_teardown_waiters(gpadl.teardown_waiters);
      g->set_created_owed(gpadl.created_owed);
      g->set_teardown_deferred(gpadl.teardown_deferred);
    }
  }
  return state;
}

absl::StatusOr<RestoreResult> VmbusServer::RestoreChannelState(
    OfferId offer, const std::optional<OpenResult>& open) {
  Channel* channel = FindOffer(offer);
  if (channel == nullptr) return absl::NotFoundError("vmbus server: restore of no channel");
  const uint32_t relid = channel->relid;
  if (!channel->awaiting_restore) {
    return absl::FailedPreconditionError(
        fmt::format("vmbus server: channel {} has no saved state to restore", relid));
  }
  std::shared_ptr<hw::Signal> signal;
  if (open.has_value()) signal = open->guest_to_host_interrupt.signal();
  const bool device_open = signal != nullptr;
  const bool saved_open = std::holds_alternative<internal::Open>(channel->state);
  const bool saved_in_flight = channel->busy();
  if (!saved_in_flight && saved_open != device_open) {
    return absl::FailedPreconditionError(
        fmt::format("vmbus server: channel {} was saved {} but the device restores it {}", relid,
                    saved_open ? "open" : "closed", device_open ? "open" : "closed"));
  }
  channel->awaiting_restore = false;
  RestoreResult result;
  std::vector<GpadlId> reoffer;
  std::vector<GpadlId> teardown;
  for (const GpadlId id : gpadls_.IdsOf(offer)) {
    Gpadl& gpadl = *gpadls_.Find(id);
    if (gpadl.state == GpadlState::kInProgress) continue;  // Still assembling: the guest goes on.
    // Accepted (or being torn down) GPADLs must restore; one the device never answered was not
    // accepted, and is offered to it again below.
    const bool accepted =
        gpadl.state == GpadlState::kAccepted || gpadl.state == GpadlState::kTearingDown;
    result.gpadls.push_back(
        RestoredGpadl{GpadlRequest{id, gpadl.range_count, gpadl.words}, accepted});
    if (!accepted) reoffer.push_back(id);
    if (gpadl.state == GpadlState::kTearingDown) teardown.push_back(id);
  }
  // What to do once the device has its reply: operations that were in flight go again.
  enum class Then { kNothing, kOpenAgain, kClose, kReopen };
  Then then = Then::kNothing;
  if (auto* opening = std::get_if<internal::Opening>(&channel->state)) {
    if (device_open) {  // The open finished while we were away: now it is open.
      channel->state = internal::Open{.op = NextOp(),
                                      .params = opening->params,
                                      .latch = opening->latch,
                                      .interrupt = opening->interrupt,
                                      .device_signal = nullptr};
      protocol::OpenResult answer{};
      answer.child_relid = relid;
      answer.open_id = std::get<internal::Open>(channel->state).params.open_id;
      answer.status = protocol::kStatusSuccess;
      if (connected()) SendMessage(answer);
    } else {
      then = Then::kOpenAgain;
    }
  } else if (auto* closing = std::get_if<internal::Closing>(&channel->state)) {
    then = device_open ? Then::kClose : Then::kReopen;
    (void)closing;
  }
  if (auto* now_open = std::get_if<internal::Open>(&channel->state); now_open && device_open) {
    now_open->device_signal = signal;
    result.open_request =
        OpenRequest::Make(now_open->params.data, Interrupt(now_open->interrupt),
                          FeatureFlags{features_}, OfferFlags{VisibleOfferFlags(*channel)});
    port_->SetEventTarget(now_open->params.data.connection_id, signal);
    WatchMonitor(*channel, signal);
    std::shared_ptr<internal::EventLatch> latch = now_open->latch;
    std::shared_ptr<internal::GuestInterrupt> interrupt = now_open->interrupt;
    // Both directions once: an interrupt raised while the old paravisor went away is not lost.
    // (A device's signal that throws must not cost the device its restore reply.)
    Guarded("restore signal", [&] {
      (void)latch->Connect(signal);
      (void)interrupt->Raise();
      (void)signal->Raise();
    });
  } else if (then == Then::kClose) {
    // Closed by the guest while the device was open: close it again, with its open result.
    auto& closing = std::get<internal::Closing>(channel->state);
    result.open_request = OpenRequest::Make(
        closing.params.data, Interrupt(std::make_shared<internal::GuestInterrupt>(nullptr)),
        FeatureFlags{features_}, OfferFlags{VisibleOfferFlags(*channel)});
  }
  std::vector<uint32_t> modifies;
  for (const internal::PendingModify& modify : channel->modifies) {
    if (modify.op == 0) modifies.push_back(modify.target_vp);
  }
  std::erase_if(channel->modifies, [](const internal::PendingModify& m) { return m.op == 0; });
  std::shared_ptr<bool> alive = alive_;
  loop_->Post([this, alive, offer, reoffer, teardown, then, modifies] {
    if (!*alive) return;
    Guarded("restore follow-up", [&] {
      Channel* again = FindOffer(offer);
      if (again == nullptr) return;
      for (const GpadlId id : reoffer) {
        if (Gpadl* gpadl = gpadls_.Find(id); gpadl != nullptr && gpadl->op == 0) OfferGpadl(*gpadl);
      }
      for (const GpadlId id : teardown) {
        if (Gpadl* gpadl = gpadls_.Find(id); gpadl != nullptr && gpadl->op == 0) {
          TeardownWithDevice(*gpadl);
        }
      }
      if (then == Then::kOpenAgain) {
        if (auto* opening = std::get_if<internal::Opening>(&again->state);
            opening && !opening->op) {
          internal::OpenParams params = opening->params;
          const bool latched = opening->latch->latched();  // Signalled while we were away.
          port_->SetEventTarget(params.data.connection_id, nullptr);
          opening->latch->Disconnect();
          again->state = internal::Closed{};
          StartOpen(*again, std::move(params));
          if (auto* reopened = std::get_if<internal::Opening>(&again->state); reopened && latched) {
            (void)reopened->latch->Raise();
          } else if (reopened == nullptr) {
            // The open failed again (say its ring's teardown was asked for meanwhile): the
            // channel is closed, so what waited for it to stop (that teardown) goes on now.
            ChannelStopped(*again);
          }
        }
      } else if (then == Then::kClose || then == Then::kReopen) {
        if (auto* closing = std::get_if<internal::Closing>(&again->state);
            closing && !closing->op) {
          if (then == Then::kReopen) {
            OnCloseReply(offer, 0);  // Closed already: finish it (and reopen, if asked).
          } else {
            internal::OpenParams params = closing->params;
            std::optional<internal::OpenParams> reopen = closing->reopen;
            auto interrupt = std::make_shared<internal::GuestInterrupt>(nullptr);
            again->state = internal::Open{.op = 0,
                                          .params = params,
                                          .latch = std::make_shared<internal::EventLatch>(),
                                          .interrupt = interrupt,
                                          .device_signal = nullptr};
            CloseWithDevice(*again, /*released=*/false);
            if (auto* now = std::get_if<internal::Closing>(&again->state)) now->reopen = reopen;
          }
        }
      }
      for (const uint32_t vp : modifies) {
        protocol::ModifyChannel modify{};
        modify.child_relid = again->relid;
        modify.target_vp = vp;
        HandleModify(modify);
      }
    });
  });
  // Guest messages held for the restore run after the follow-up just posted (posted later).
  MaybeEndRestoreHold();
  return result;
}

}  // namespace cvmbus::paravisor
