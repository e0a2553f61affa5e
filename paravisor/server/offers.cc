// Offers: devices joining the bus, REQUESTOFFERS, revokes and RELID_RELEASED, and the relid and
// monitor-id allocators.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "base/format.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {
namespace {

protocol::Guid WireGuid(const Guid& guid) {
  protocol::Guid wire;
  static_assert(sizeof(wire) == sizeof(guid));
  std::memcpy(wire.bytes, &guid, sizeof(guid));
  return wire;
}

}  // namespace

absl::StatusOr<OfferResources> VmbusServer::AddChild(OfferInput input) {
  OfferResources resources(options_.untrusted_memory, options_.private_memory);
  // Registration happens on the loop; the input holds move-only parts, so it travels boxed.
  auto boxed = std::make_shared<OfferInput>(std::move(input));
  std::shared_ptr<bool> alive = alive_;
  loop_->Post([this, boxed, alive] {
    if (!*alive) return;
    Guarded("offer", [&] { Attach(boxed); });
  });
  return resources;
}

void VmbusServer::Attach(std::shared_ptr<OfferInput> boxed) {
  OfferInput& input = *boxed;
  const OfferKey key = input.params.key();
  auto server_requests =
      std::make_shared<Receiver<ChannelServerRequest>>(std::move(input.server_request_recv));
  Channel* channel = nullptr;
  if (auto restored = awaiting_device_.find(key); restored != awaiting_device_.end()) {
    // Servicing: the device takes its saved channel back (same relid, same state); it
    // confirms the state with RestoreChannel.
    channel = FindOffer(restored->second);
    awaiting_device_.erase(restored);
    if (channel == nullptr) return;
    channel->params = std::move(input.params);
    if (!channel->params.mnf_interrupt_latency.has_value() && channel->monitor_id.has_value()) {
      FreeMonitorId(*channel->monitor_id);  // The device no longer asks for MNF.
      channel->monitor_id.reset();
    }
  } else {
    for (const auto& [relid, other] : channels_) {
      if (other->params.key() == key && !other->revoked()) {
        Log(fmt::format("offer {} refused: the key is already offered (relid {})", key.ToString(),
                        relid));
        return;  // Dropping the input drops its channels: the device sees its sender closed.
      }
    }
    uint32_t relid;
    if (!free_relids_.empty()) {
      relid = free_relids_.front();
      free_relids_.erase(free_relids_.begin());
    } else if (next_relid_ <= kMaxChannels) {
      relid = next_relid_++;
    } else {
      Log(fmt::format("offer {} refused: all {} channels are in use", key.ToString(),
                      kMaxChannels));
      return;
    }
    auto fresh = std::make_unique<Channel>();
    channel = fresh.get();
    channel->offer = next_offer_++;
    channel->relid = relid;
    channel->params = std::move(input.params);
    if (options_.private_memory.has_value()) {  // Only a confidential VM has private memory.
      if (channel->params.allow_confidential_external_memory) {
        channel->offer_flags |= OfferFlags::kConfidentialExternalMemory;
      }
      channel->offer_flags |= OfferFlags::kConfidentialRingBuffer;  // Our rings can be private.
    }
    if (channel->params.mnf_interrupt_latency.has_value()) {
      channel->monitor_id = AllocateMonitorId();
    }
    by_offer_[channel->offer] = channel;
    channels_[relid] = std::move(fresh);
  }
  channel->requests = std::move(input.request_send);
  channel->device_attached = true;
  WatchServerRequests(channel->offer, std::move(server_requests));
  if (MayOffer(*channel)) SendOffer(*channel);
}

hw::Task VmbusServer::WatchServerRequests(OfferId offer,
                                          std::shared_ptr<Receiver<ChannelServerRequest>> r) {
  std::shared_ptr<bool> alive = alive_;
  while (true) {
    std::optional<ChannelServerRequest> request;
    try {
      request = co_await r->Next(loop_);
    } catch (...) {  // Nothing escapes a task: a receiver that failed is a device gone.
    }
    if (!*alive) co_return;
    bool done = false;
    Guarded("device request", [&] {
      if (!request.has_value()) {  // The device dropped its offer: revoke.
        Revoke(offer);
        done = true;
      } else if (auto* revoke = std::get_if<RevokeChannel>(&*request)) {
        Revoke(offer);
        std::move(revoke->rpc).Reply(Unit{});
      } else if (auto* restore = std::get_if<RestoreChannel>(&*request)) {
        std::move(restore->rpc).Reply(RestoreChannelState(offer, restore->rpc.input()));
      }
    });
    if (done) co_return;
  }
}

bool VmbusServer::MayOffer(const Channel& channel) const {
  if (!connected() || !offers_requested_ || !channel.device_attached) return false;
  const auto* released = std::get_if<internal::Released>(&channel.state);
  if (released == nullptr || released->declined_by_guest) return false;
  // A revoked channel with the same key that the guest has not released yet: Linux matches
  // offers by instance, so the new offer waits for RELID_RELEASED of the old one.
  for (const auto& [relid, other] : channels_) {
    if (other.get() != &channel && other->revoked() &&
        other->params.key() == channel.params.key()) {
      return false;
    }
  }
  return true;
}

void VmbusServer::HandleRequestOffers() {
  if (offers_requested_) {
    GuestError("REQUESTOFFERS twice on one connection");
    return;
  }
  offers_requested_ = true;
  std::vector<Channel*> order;
  for (auto& [relid, channel] : channels_) {
    if (MayOffer(*channel)) order.push_back(channel.get());
  }
  // Stable offer order: interface, then offer_order (unset last), then instance, subchannel.
  std::sort(order.begin(), order.end(), [](const Channel* a, const Channel* b) {
    const auto rank = [](const Channel* c) {
      return std::make_tuple(c->params.interface_id, !c->params.offer_order.has_value(),
                             c->params.offer_order.value_or(0), c->params.instance_id,
                             c->params.subchannel_index);
    };
    return rank(a) < rank(b);
  });
  for (Channel* channel : order) SendOffer(*channel);
  SendMessage(protocol::AllOffersDelivered{});
}

uint16_t VmbusServer::VisibleOfferFlags(const Channel& channel) const {
  uint16_t flags = channel.offer_flags;
  if ((features_ & protocol::kFeatureConfidentialChannels) == 0) {
    flags &= ~(OfferFlags::kConfidentialRingBuffer | OfferFlags::kConfidentialExternalMemory);
  }
  return flags;
}

void VmbusServer::SendOffer(Channel& channel) {
  protocol::OfferChannel offer{};
  offer.interface_type = WireGuid(channel.params.interface_id);
  offer.interface_instance = WireGuid(channel.params.instance_id);
  offer.channel_flags = VisibleOfferFlags(channel);
  offer.mmio_megabytes = channel.params.mmio_megabytes;
  offer.mmio_megabytes_optional = channel.params.mmio_megabytes_optional;
  std::visit(
      [&](const auto& type) {
        using T = std::decay_t<decltype(type)>;
        if constexpr (std::is_same_v<T, InterfaceChannel>) {
          offer.channel_flags |= protocol::kOfferEnumerateDeviceInterface;
          std::memcpy(offer.user_defined.bytes, type.user_defined.data(), 120);
        } else if constexpr (std::is_same_v<T, PipeChannel>) {
          offer.channel_flags |= protocol::kOfferNamedPipeMode;
          offer.user_defined.pipe.pipe_mode =
              type.message_mode ? protocol::kPipeTypeMessage : protocol::kPipeTypeByte;
        } else if constexpr (std::is_same_v<T, HvSocketChannel>) {
          offer.channel_flags |= protocol::kOfferTlnpiProvider | protocol::kOfferNamedPipeMode;
          offer.user_defined.hvsock.pipe_mode = protocol::kPipeTypeMessage;
          offer.user_defined.hvsock.is_for_guest_accept = type.is_connect ? 1 : 0;
          offer.user_defined.hvsock.is_for_guest_container = type.is_for_container ? 1 : 0;
          offer.user_defined.hvsock.version_bytes[0] = protocol::kHvsockParametersRs5;
          offer.user_defined.hvsock.silo_id = WireGuid(type.silo_id);
        } else if constexpr (std::is_same_v<T, DeviceChannel>) {
          if (type.pipe_packets) {
            offer.channel_flags |= protocol::kOfferNamedPipeMode;
            offer.user_defined.pipe.pipe_mode = protocol::kPipeTypeMessage;
          }
        }
      },
      channel.params.channel_type);
  offer.sub_channel_index = channel.params.subchannel_index;
  offer.child_relid = channel.relid;
  // A monitor id only where this connection has a monitor page that works.
  bool monitored = monitor_ != nullptr && channel.monitor_id.has_value();
  if (monitored) {
    absl::Status described =
        monitor_->Describe(*channel.monitor_id, ChannelConnectionId(channel.relid),
                           *channel.params.mnf_interrupt_latency);
    if (!described.ok()) {
      Log(fmt::format("channel {}: offered without MNF: {}", channel.relid, described));
      monitored = false;
    }
  }
  offer.monitor_id = monitored ? *channel.monitor_id : protocol::monitor::kNoMonitorId;
  offer.monitor_flags = monitored ? 1 : 0;
  offer.interrupt_flags = monitored ? 0 : 1;  // Dedicated interrupt.
  offer.connection_id = ChannelConnectionId(channel.relid);
  channel.state = internal::Closed{};
  SendMessage(offer);
}

void VmbusServer::Revoke(OfferId offer) {
  Channel* channel = FindOffer(offer);
  if (channel == nullptr || channel->revoked()) return;
  // Subchannels before their primary. Collected first: revoking erases channels.
  if (channel->params.subchannel_index == 0) {
    std::vector<OfferId> subchannels;
    for (const auto& [relid, other] : channels_) {
      if (other->offer != offer && other->params.subchannel_index != 0 && !other->revoked() &&
          other->params.instance_id == channel->params.instance_id &&
          other->params.interface_id == channel->params.interface_id) {
        subchannels.push_back(other->offer);
      }
    }
    for (const OfferId subchannel : subchannels) {
      if (Channel* sub = FindOffer(subchannel)) RevokeOne(*sub);
    }
  }
  if (Channel* primary = FindOffer(offer)) RevokeOne(*primary);
}

void VmbusServer::RevokeOne(Channel& channel) {
  const OfferId offer = channel.offer;
  const uint32_t relid = channel.relid;
  // The device is gone from the guest's point of view: stop its events, answer what the guest
  // waits for (Linux also wakes its waiters on the rescind), drop what the device owes us.
  if (auto* opening = std::get_if<internal::Opening>(&channel.state)) {
    port_->SetEventTarget(opening->params.data.connection_id, nullptr);
    opening->latch->Disconnect();
    opening->interrupt->Disconnect();
    UnwatchMonitor(channel);
    if (!opening->released) FailOpen(opening->params, relid);
  } else if (auto* open = std::get_if<internal::Open>(&channel.state)) {
    port_->SetEventTarget(open->params.data.connection_id, nullptr);
    open->latch->Disconnect();
    open->interrupt->Disconnect();
    UnwatchMonitor(channel);
  } else if (auto* closing = std::get_if<internal::Closing>(&channel.state)) {
    if (closing->reopen.has_value()) FailOpen(*closing->reopen, relid);
  }
  for (const internal::PendingModify& modify : channel.modifies) {
    AnswerModify(relid, modify.connection_epoch, protocol::kStatusUnsuccessful);
  }
  channel.modifies.clear();
  // GPADLs of a revoked channel succeed and tear down at once (Hyper-V's behaviour; OpenVMM
  // #3649: Linux hv_kvp crashed on a failure here). Whatever the device still owes is dropped.
  for (const GpadlId id : gpadls_.IdsOf(offer)) {
    Gpadl* gpadl = gpadls_.Find(id);
    switch (gpadl->state) {
      case internal::GpadlState::kOffered:
        if (gpadl->created_owed && Answerable(gpadl->connection_epoch)) {
          SendCreated(gpadl->relid, id, protocol::kStatusSuccess);
        }
        gpadl->created_owed = false;
        gpadl->state = internal::GpadlState::kAccepted;
        gpadl->op = 0;
        break;
      case internal::GpadlState::kOfferedTearingDown:
        if (gpadl->created_owed && Answerable(gpadl->connection_epoch)) {
          SendCreated(gpadl->relid, id, protocol::kStatusSuccess);
        }
        GpadlGone(id);
        break;
      case internal::GpadlState::kTearingDown:
        GpadlGone(id);
        break;
      case internal::GpadlState::kAccepted:
        if (gpadl->teardown_deferred) GpadlGone(id);
        break;
      case internal::GpadlState::kInProgress:
        break;  // Completes (successfully) when its last body arrives.
    }
  }
  if (channel.monitor_id.has_value()) {
    FreeMonitorId(*channel.monitor_id);
    channel.monitor_id.reset();
  }
  channel.requests = Sender<ChannelRequest>();  // The device's receiver sees the end.
  const bool guest_knows = connected() && !channel.released();
  channel.state = internal::Revoked{};
  if (guest_knows) {
    protocol::RescindChannelOffer rescind{};
    rescind.child_relid = relid;
    SendMessage(rescind);
  } else {
    EraseChannel(offer);  // The guest never saw it (or has let go of it): released at once.
  }
}

void VmbusServer::HandleRelIdReleased(uint32_t relid) {
  Channel* channel = FindForGuest(relid, "RELID_RELEASED");
  if (channel == nullptr) return;
  if (channel->revoked()) {
    EraseChannel(channel->offer);
    return;
  }
  if (std::holds_alternative<internal::Closed>(channel->state)) {
    // The guest could not register the offer (Linux: an allocation failure in vmbus_onoffer).
    // It is withdrawn for this connection; the next connection is offered it again.
    Log(
        fmt::format("RELID_RELEASED for channel {}, which was not rescinded: the guest did not "
                    "take the offer",
                    relid));
    channel->state = internal::Released{.declined_by_guest = true};
    for (const GpadlId id : gpadls_.IdsOf(channel->offer)) {
      if (Gpadl* gpadl = gpadls_.Find(id)) ReleaseGpadl(*gpadl);
    }
    return;
  }
  GuestError(
      fmt::format("RELID_RELEASED: channel {} is {}", relid, internal::StateName(channel->state)));
}

void VmbusServer::EraseChannel(OfferId offer) {
  Channel* channel = FindOffer(offer);
  if (channel == nullptr) return;
  for (const GpadlId id : gpadls_.IdsOf(offer)) gpadls_.Erase(id);
  if (channel->monitor_id.has_value()) FreeMonitorId(*channel->monitor_id);
  const uint32_t relid = channel->relid;
  const OfferKey key = channel->params.key();
  if (auto waiting = awaiting_device_.find(key);
      waiting != awaiting_device_.end() && waiting->second == offer) {
    awaiting_device_.erase(waiting);
  }
  by_offer_.erase(offer);
  channels_.erase(relid);
  FreeRelid(relid);
  CheckDisconnected();
  // A new offer of the same key may have waited for this one to go.
  for (auto& [other_relid, other] : channels_) {
    if (other->params.key() == key && MayOffer(*other)) SendOffer(*other);
  }
}

void VmbusServer::FreeRelid(uint32_t relid) {
  auto at = std::lower_bound(free_relids_.begin(), free_relids_.end(), relid);
  if (at == free_relids_.end() || *at != relid) free_relids_.insert(at, relid);
}

std::optional<uint8_t> VmbusServer::AllocateMonitorId() {
  for (uint8_t id = 0; id < 128; ++id) {
    if ((monitor_ids_[id / 64] & (uint64_t{1} << (id % 64))) == 0) {
      monitor_ids_[id / 64] |= uint64_t{1} << (id % 64);
      return id;
    }
  }
  return std::nullopt;  // Offered without MNF.
}

void VmbusServer::FreeMonitorId(uint8_t id) {
  if (id < 128) monitor_ids_[id / 64] &= ~(uint64_t{1} << (id % 64));
}

void VmbusServer::WatchMonitor(const Channel& channel, std::shared_ptr<hw::Signal> target) {
  if (monitor_ == nullptr || !channel.monitor_id.has_value() || !target) return;
  monitor_->Watch(*channel.monitor_id, std::move(target), *channel.params.mnf_interrupt_latency);
}

void VmbusServer::UnwatchMonitor(const Channel& channel) {
  if (monitor_ != nullptr && channel.monitor_id.has_value()) {
    monitor_->Unwatch(*channel.monitor_id);
  }
}

}  // namespace cvmbus::paravisor
