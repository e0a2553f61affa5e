// The channel state machine (channel.h): OPENCHANNEL, CLOSECHANNEL, MODIFYCHANNEL and the
// device's replies to them.
#include <fmt/format.h>

#include <cstring>

#include "base/format.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {
namespace {

// Bits 24-31 of a connection id are reserved (HV_CONNECTION_ID).
constexpr uint32_t kMaxConnectionId = 0xffffff;

}  // namespace

void VmbusServer::FailOpen(const internal::OpenParams& params, uint32_t relid) {
  if (!Answerable(params.connection_epoch)) return;
  protocol::OpenResult result{};
  result.child_relid = relid;
  result.open_id = params.open_id;
  result.status = protocol::kStatusUnsuccessful;
  SendMessage(result);
}

void VmbusServer::HandleOpen(const protocol::OpenChannel& open) {
  internal::OpenParams params;
  params.open_id = open.open_id;
  params.connection_epoch = connection_epoch_;
  const auto fail = [&](const std::string& why) {
    GuestError(fmt::format("OPENCHANNEL {}: {}", open.child_relid, why));
    FailOpen(params, open.child_relid);
  };
  Channel* channel = FindRelid(open.child_relid);
  if (channel == nullptr) return fail("unknown channel");
  if (open.target_vp != protocol::kTargetVpDisableInterrupt &&
      open.target_vp >= port_->vp_count()) {
    return fail(fmt::format("target VP {} does not exist (the guest has {})", open.target_vp,
                            port_->vp_count()));
  }
  OpenData& data = params.data;
  data.target_vp = open.target_vp;
  data.ring_offset = open.downstream_page_offset;
  data.ring_gpadl_id = open.ring_buffer_gpadl;
  data.connection_id = ChannelConnectionId(channel->relid);
  data.event_flag = static_cast<uint16_t>(channel->relid);
  if ((features_ & protocol::kFeatureGuestSpecifiedSignalParameters) != 0) {
    // The guest names the connection it will signal and the event flag we set for it.
    if (open.connection_id == 0 || open.connection_id > kMaxConnectionId ||
        open.connection_id == protocol::kMessageConnectionId ||
        open.connection_id == protocol::kMessageConnectionId4) {
      return fail(
          fmt::format("connection id {:#x} is not a valid connection id", open.connection_id));
    }
    data.connection_id = open.connection_id;
    data.event_flag = open.event_flag;
  }
  std::memcpy(data.user_data.data(), open.user_data, data.user_data.size());
  if (auto* closing = std::get_if<internal::Closing>(&channel->state)) {
    // Linux closes, tears the ring down and opens again without waiting for anything: the
    // open goes to the device once its close is done.
    if (closing->reopen.has_value()) return fail("already reopening");
    closing->reopen = params;
    return;
  }
  if (!std::holds_alternative<internal::Closed>(channel->state)) {
    return fail(fmt::format("the channel is {}", internal::StateName(channel->state)));
  }
  StartOpen(*channel, std::move(params));
}

void VmbusServer::StartOpen(Channel& channel, internal::OpenParams params) {
  const uint32_t relid = channel.relid;
  const auto fail = [&](const std::string& why) {
    GuestError(fmt::format("OPENCHANNEL {}: {}", relid, why));
    FailOpen(params, relid);
  };
  const Gpadl* ring = gpadls_.Find(params.data.ring_gpadl_id);
  if (ring == nullptr || ring->owner != channel.offer ||
      ring->state != internal::GpadlState::kAccepted || ring->teardown_deferred) {
    return fail(fmt::format("ring GPADL {} is not an accepted GPADL of this channel",
                            params.data.ring_gpadl_id));
  }
  for (const auto& [other_relid, other] : channels_) {
    const internal::OpenParams* other_open = other->open_params();
    if (other.get() != &channel && other_open != nullptr &&
        other_open->data.connection_id == params.data.connection_id) {
      return fail(fmt::format("connection id {:#x} is in use by channel {}",
                              params.data.connection_id, other_relid));
    }
  }
  if (!channel.device_attached) return fail("its device has not come back since servicing");
  // The guest -> host event exists from now on: a signal before the device answers is
  // latched, not lost.
  auto latch = std::make_shared<internal::EventLatch>();
  auto interrupt = std::make_shared<internal::GuestInterrupt>(
      port_->GuestEvent(params.data.target_vp, message_sint_, params.data.event_flag));
  OpenRequest request =
      OpenRequest::Make(params.data, Interrupt(interrupt), FeatureFlags{features_},
                        OfferFlags{VisibleOfferFlags(channel)});
  auto [rpc, reply] = MakeRpc<OpenRequest, std::optional<OpenResult>>(std::move(request));
  if (!channel.requests.Send(OpenChannel{std::move(rpc)}).ok()) return fail("its device is gone");
  const OpId op = NextOp();
  port_->SetEventTarget(params.data.connection_id, latch);
  WatchMonitor(channel, latch);
  channel.state = internal::Opening{.op = op,
                                    .params = std::move(params),
                                    .latch = std::move(latch),
                                    .interrupt = std::move(interrupt)};
  const OfferId offer = channel.offer;
  AwaitReply<std::optional<OpenResult>>(
      "open reply", std::move(reply),
      [this, offer, op](absl::StatusOr<std::optional<OpenResult>> result) {
        OnOpenReply(offer, op, std::move(result));
      });
}

void VmbusServer::OnOpenReply(OfferId offer, OpId op,
                              absl::StatusOr<std::optional<OpenResult>> result) {
  Channel* channel = FindOffer(offer);
  auto* opening = channel == nullptr ? nullptr : std::get_if<internal::Opening>(&channel->state);
  if (opening == nullptr || opening->op != op) {
    // The channel was revoked, erased or reset meanwhile: the device's signal (if any) is
    // dropped here with the reply, never installed.
    return StaleReply("open", offer, op);
  }
  std::shared_ptr<hw::Signal> signal;
  if (result.ok() && result->has_value()) signal = (*result)->guest_to_host_interrupt.signal();
  const bool opened = result.ok() && result->has_value();
  if (opening->released) {
    // The connection was reset while the device opened: close what it opened.
    if (opened) {
      internal::Open open{.op = op,
                          .params = opening->params,
                          .latch = opening->latch,
                          .interrupt = opening->interrupt,
                          .device_signal = nullptr};
      channel->state = std::move(open);
      CloseWithDevice(*channel, /*released=*/true);
    } else {
      port_->SetEventTarget(opening->params.data.connection_id, nullptr);
      opening->latch->Disconnect();
      opening->interrupt->Disconnect();
      UnwatchMonitor(*channel);
      channel->state = internal::Released{};
      ChannelStopped(*channel);
      CheckDisconnected();
    }
    return;
  }
  const internal::OpenParams params = opening->params;
  const uint32_t relid = channel->relid;
  if (opened && signal == nullptr) {
    // A device that says "open" but gives no event to signal cannot be told about the guest's
    // packets: the guest gets a failure, the device a close.
    Log(fmt::format("channel {}: the device opened without a guest -> host event: closed", relid));
    channel->state = internal::Open{.op = op,
                                    .params = params,
                                    .latch = opening->latch,
                                    .interrupt = opening->interrupt,
                                    .device_signal = nullptr};
    FailOpen(params, relid);
    CloseWithDevice(*channel, /*released=*/false);
    return;
  }
  if (!opened) {
    port_->SetEventTarget(params.data.connection_id, nullptr);
    opening->latch->Disconnect();
    opening->interrupt->Disconnect();
    UnwatchMonitor(*channel);
    channel->state = internal::Closed{};
    Log(fmt::format("channel {}: the device refused the open{}", relid,
                    result.ok() ? "" : fmt::format(" ({})", result.status().message())));
    FailOpen(params, relid);
    ChannelStopped(*channel);
    return;
  }
  internal::Open open{.op = op,
                      .params = params,
                      .latch = opening->latch,
                      .interrupt = opening->interrupt,
                      .device_signal = signal};
  channel->state = std::move(open);
  auto& now_open = std::get<internal::Open>(channel->state);
  // The device's signal takes over from the latch before the guest hears of the open, so the
  // guest's first doorbell already finds it (a port that binds eventfds in the kernel, KVM's,
  // completes it there instead of taking an exit); the SynIC and the monitor scanner raise it
  // directly from now on.
  UnwatchMonitor(*channel);
  WatchMonitor(*channel, signal);
  port_->SetEventTarget(params.data.connection_id, signal);
  // Then the answer, and only then the latched signal: it may make the device write to the
  // ring and interrupt the guest at once, which must not precede OPENCHANNEL_RESULT.
  protocol::OpenResult message{};
  message.child_relid = relid;
  message.open_id = params.open_id;
  message.status = protocol::kStatusSuccess;
  if (Answerable(params.connection_epoch)) SendMessage(message);
  if (absl::Status raised = now_open.latch->Connect(signal); !raised.ok()) {
    Log(fmt::format("channel {}: raising the device's event failed: {}", relid, raised));
  }
  if (options_.resignal_after_open.has_value()) {
    std::shared_ptr<bool> alive = alive_;
    (void)loop_->AddTimer(*options_.resignal_after_open, [this, alive, offer, op] {
      if (*alive) Guarded("re-signal after open", [&] { Resignal(offer, op); });
    });
  }
}

void VmbusServer::Resignal(OfferId offer, OpId open_op) {
  Channel* channel = FindOffer(offer);
  auto* open = channel == nullptr ? nullptr : std::get_if<internal::Open>(&channel->state);
  if (open == nullptr || open->op != open_op) return;  // Closed (or reopened) meanwhile.
  // Both directions, for guests (Linux netvsc) that ignored an interrupt before
  // OPENCHANNEL_RESULT, and devices that missed the guest's first signal.
  (void)open->interrupt->Raise();
  if (open->device_signal) (void)open->device_signal->Raise();
}

void VmbusServer::HandleClose(uint32_t relid) {
  Channel* channel = FindForGuest(relid, "CLOSECHANNEL");
  if (channel == nullptr) return;
  if (std::holds_alternative<internal::Revoked>(channel->state)) {
    // Linux closes a channel the host rescinded while it was open (vmbus_close on the
    // device's removal; hv_sock after waiting for the rescind): the device side is already
    // closed, so there is nothing to do, and it is no guest error.
    return;
  }
  if (!std::holds_alternative<internal::Open>(channel->state)) {
    GuestError(fmt::format("CLOSECHANNEL {}: the channel is {}", relid,
                           internal::StateName(channel->state)));
    return;
  }
  CloseWithDevice(*channel, /*released=*/false);
}

void VmbusServer::CloseWithDevice(Channel& channel, bool released) {
  auto& open = std::get<internal::Open>(channel.state);
  // From here the guest's signals and the monitor page reach nothing, the device's stale
  // interrupt raises reach nothing, and the server drops its share of the device's signal.
  port_->SetEventTarget(open.params.data.connection_id, nullptr);
  open.latch->Disconnect();
  open.interrupt->Disconnect();
  UnwatchMonitor(channel);
  const internal::OpenParams params = open.params;
  channel.state = internal::Closing{.op = 0, .params = params, .released = released};
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  if (!channel.requests.Send(CloseChannel{std::move(rpc)}).ok()) {
    // The device is gone: nothing to wait for.
    return OnCloseReply(channel.offer, 0);
  }
  const OpId op = NextOp();
  std::get<internal::Closing>(channel.state).op = op;
  const OfferId offer = channel.offer;
  AwaitReply<Unit>("close reply", std::move(reply),
                   [this, offer, op](absl::StatusOr<Unit>) { OnCloseReply(offer, op); });
}

void VmbusServer::OnCloseReply(OfferId offer, OpId op) {
  Channel* channel = FindOffer(offer);
  auto* closing = channel == nullptr ? nullptr : std::get_if<internal::Closing>(&channel->state);
  if (closing == nullptr || closing->op != op) return StaleReply("close", offer, op);
  // A dropped close is a close too: the device is not using the channel any more.
  if (closing->released) {
    channel->state = internal::Released{};
    ChannelStopped(*channel);
    return CheckDisconnected();
  }
  std::optional<internal::OpenParams> reopen = std::move(closing->reopen);
  channel->state = internal::Closed{};
  ChannelStopped(*channel);
  if (channel->is_hvsocket()) {
    // The guest waits for the host to rescind a closed hvsocket channel.
    if (reopen.has_value()) FailOpen(*reopen, channel->relid);
    return Revoke(offer);
  }
  if (reopen.has_value() && Answerable(reopen->connection_epoch)) {
    StartOpen(*channel, std::move(*reopen));
  }
}

void VmbusServer::ChannelStopped(Channel& channel) {
  for (const GpadlId id : gpadls_.IdsOf(channel.offer)) {
    Gpadl* gpadl = gpadls_.Find(id);
    if (gpadl != nullptr && gpadl->teardown_deferred) {
      gpadl->teardown_deferred = false;
      TeardownWithDevice(*gpadl);
    }
  }
}

void VmbusServer::AnswerModify(uint32_t relid, uint64_t epoch, uint32_t status) {
  // MODIFYCHANNEL_RESPONSE exists from 5.3; before it the guest waits for nothing.
  if (!Answerable(epoch) || version_ < protocol::kVersionWin10V5_3) return;
  protocol::ModifyChannelResponse response{};
  response.child_relid = relid;
  response.status = status;
  SendMessage(response);
}

void VmbusServer::HandleModify(const protocol::ModifyChannel& modify) {
  const uint32_t relid = modify.child_relid;
  const auto fail = [&](const std::string& why) {
    GuestError(fmt::format("MODIFYCHANNEL {} to VP {}: {}", relid, modify.target_vp, why));
    AnswerModify(relid, connection_epoch_, protocol::kStatusUnsuccessful);
  };
  Channel* channel = FindRelid(relid);
  if (channel == nullptr) return fail("unknown channel");
  auto* open = std::get_if<internal::Open>(&channel->state);
  if (open == nullptr) {
    return fail(fmt::format("the channel is {}", internal::StateName(channel->state)));
  }
  if (modify.target_vp == protocol::kTargetVpDisableInterrupt) {
    return fail("MODIFYCHANNEL cannot disable interrupts");
  }
  if (modify.target_vp >= port_->vp_count()) {
    return fail(fmt::format("the guest has {} VPs", port_->vp_count()));
  }
  if (open->params.data.target_vp == protocol::kTargetVpDisableInterrupt) {
    return fail("the channel was opened with interrupts disabled");  // OpenVMM #2877.
  }
  if (channel->modifies.size() >= options_.limits.modifies_in_flight) {
    return fail(fmt::format("{} requests wait for the device already", channel->modifies.size()));
  }
  auto [rpc, reply] = MakeRpc<ModifyRequest, int32_t>(ModifyTargetVp{modify.target_vp});
  if (!channel->requests.Send(ModifyChannel{std::move(rpc)}).ok()) return fail("device is gone");
  // The guest expects no interrupt on the old VP once it has the answer: retarget now.
  open->params.data.target_vp = modify.target_vp;
  open->interrupt->Retarget(
      port_->GuestEvent(modify.target_vp, message_sint_, open->params.data.event_flag));
  const OpId op = NextOp();
  channel->modifies.push_back(internal::PendingModify{
      .op = op, .target_vp = modify.target_vp, .connection_epoch = connection_epoch_});
  const OfferId offer = channel->offer;
  AwaitReply<int32_t>("modify reply", std::move(reply),
                      [this, offer, op](absl::StatusOr<int32_t> status) {
                        OnModifyReply(offer, op, std::move(status));
                      });
}

void VmbusServer::OnModifyReply(OfferId offer, OpId op, absl::StatusOr<int32_t> status) {
  Channel* channel = FindOffer(offer);
  if (channel == nullptr) return StaleReply("modify", offer, op);
  auto it = std::find_if(channel->modifies.begin(), channel->modifies.end(),
                         [op](const internal::PendingModify& m) { return m.op == op; });
  if (it == channel->modifies.end()) return StaleReply("modify", offer, op);
  const uint64_t epoch = it->connection_epoch;
  channel->modifies.erase(it);
  AnswerModify(channel->relid, epoch,
               status.ok() ? static_cast<uint32_t>(*status) : protocol::kStatusUnsuccessful);
}

}  // namespace cvmbus::paravisor
