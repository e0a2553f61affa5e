#include "paravisor/server/fuzz/guest_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/format.h"
#include "paravisor/server/fuzz/invariant.h"

namespace cvmbus::paravisor::fuzz {
namespace {

using protocol::MessageType;

// What the server grants when asked, on a trusted port with private memory and a server
// monitor page (connection.cc): everything it implements.
constexpr uint32_t kGrantable =
    protocol::kFeatureGuestSpecifiedSignalParameters | protocol::kFeatureModifyConnection |
    protocol::kFeatureConfidentialChannels | protocol::kFeaturePauseResume |
    protocol::kFeatureServerSpecifiedMonitorPages;

Guid FromWire(const protocol::Guid& wire) {
  Guid guid;
  std::memcpy(&guid, wire.bytes, sizeof(guid));
  return guid;
}

bool KnownVersion(uint32_t version) {
  return std::find(std::begin(protocol::kKnownVersions), std::end(protocol::kKnownVersions),
                   version) != std::end(protocol::kKnownVersions);
}

template <typename T>
bool TakeOne(std::multiset<T>& set, const T& value) {
  auto it = set.find(value);
  if (it == set.end()) return false;
  set.erase(it);
  return true;
}

bool TakeOne(int& count) {
  if (count == 0) return false;
  --count;
  return true;
}

bool Offered(const std::string& state) {
  return state == "closed" || state == "opening" || state == "open" || state == "closing";
}

}  // namespace

const ChannelSnapshot* FindChannel(const ServerSnapshot& server, uint32_t relid) {
  for (const ChannelSnapshot& channel : server.channels) {
    if (channel.relid == relid) return &channel;
  }
  return nullptr;
}

const GpadlSnapshot* FindGpadl(const ServerSnapshot& server, uint32_t id) {
  for (const GpadlSnapshot& gpadl : server.gpadls) {
    if (gpadl.id == id) return &gpadl;
  }
  return nullptr;
}

void GuestModel::Owed::Merge(Owed&& other) {
  opens.merge(other.opens);
  creates.merge(other.creates);
  teardowns.merge(other.teardowns);
  modifies.merge(other.modifies);
  all_offers += other.all_offers;
  modify_connections += other.modify_connections;
  pauses += other.pauses;
  tl_results += other.tl_results;
  other = Owed();
}

void GuestModel::Delivered(const std::vector<uint8_t>& bytes) {
  absl::StatusOr<protocol::ParsedMessage> parsed = protocol::ParseMessage(bytes);
  if (!parsed.ok()) return;  // Refused, unanswered.
  const protocol::ParsedMessage& message = *parsed;
  if (const auto* contact = message.As<protocol::InitiateContact>()) {
    const uint32_t requested = contact->vmbus_version_requested;
    // The server ignores a contact whose answer could not be delivered (connection.cc).
    const uint32_t vp = requested >= protocol::kVersionWin8_1 ? contact->target_vcpu : 0;
    if (vp >= FuzzPort::kVpCount || contact->message_sint() >= 16) return;
    ConnectionRequested(ConnectionRequest{
        .unload = false,
        .version = requested,
        .features = contact->feature_flags(),
        .monitor_ok = (contact->monitor_page1 == 0) == (contact->monitor_page2 == 0) &&
                      contact->monitor_page1 % 4096 == 0 && contact->monitor_page2 % 4096 == 0});
    return;
  }
  if (message.type == MessageType::kUnload) {
    ConnectionRequested(ConnectionRequest{.unload = true});
    return;
  }
  if (phase_ != Phase::kConnected) return;  // Disconnected or resetting: ignored.
  if (!protocol::CheckAllowed(message, protocol::Sender::kGuest, {version_, features_}).ok()) {
    return;  // Refused by the server's gate, unanswered.
  }
  switch (message.type) {
    case MessageType::kRequestOffers:
      if (!offers_requested_) {
        offers_requested_ = true;
        ++owed_.all_offers;
      }
      return;
    case MessageType::kOpenChannel: {
      const auto& open = *message.As<protocol::OpenChannel>();
      owed_.opens.insert({open.child_relid, open.open_id});
      return;
    }
    case MessageType::kGpadlHeader: {
      const auto& header = *message.As<protocol::GpadlHeader>();
      owed_.creates.insert({header.child_relid, header.gpadl});
      return;
    }
    case MessageType::kGpadlTeardown:
      owed_.teardowns.insert(message.As<protocol::GpadlTeardown>()->gpadl);
      return;
    case MessageType::kModifyChannel:
      // MODIFYCHANNEL_RESPONSE exists from 5.3; before it nothing is owed.
      if (version_ >= protocol::kVersionWin10V5_3) {
        owed_.modifies.insert(message.As<protocol::ModifyChannel>()->child_relid);
      }
      return;
    case MessageType::kModifyConnection:
      ++owed_.modify_connections;
      return;
    case MessageType::kPause:
      if (!paused_) {
        ++owed_.pauses;
        paused_ = true;
      }
      return;
    case MessageType::kResume:
      paused_ = false;
      return;
    case MessageType::kRelIdReleased: {
      const uint32_t relid = message.As<protocol::RelIdReleased>()->child_relid;
      auto it = offers_.find(relid);
      if (paused_ || it == offers_.end()) {
        // An offer or rescind that a pause holds may be on its way, for a channel the server
        // may now erase, withdraw or give to a new offer: what the guest holds of this relid is
        // not known any more, until the next connection.
        uncertain_.insert(relid);
        DropOwedCreates(relid);
        if (it != offers_.end()) offers_.erase(it);
        created_.erase(relid);
        return;
      }
      // A GPADL the server was still assembling goes without an answer once the relid is
      // released (the guest did not finish it).
      DropOwedCreates(relid);
      if (!it->second.rescinded) {
        // The server withdraws a closed offer, refuses otherwise (ResolveReleases finds out).
        released_unrescinded_[relid] = it->second;
      }
      offers_.erase(it);
      created_.erase(relid);
      return;
    }
    default:
      return;
  }
}

void GuestModel::DropOwedCreates(uint32_t relid) {
  for (auto create = owed_.creates.begin(); create != owed_.creates.end();) {
    if (create->first == relid) {
      maybe_.creates.insert(*create);
      create = owed_.creates.erase(create);
    } else {
      ++create;
    }
  }
}

void GuestModel::ConnectionRequested(ConnectionRequest request) {
  if (phase_ == Phase::kConnected) {
    // The server resets every channel: nothing more is answered for this connection. Only
    // what a pause held may still come, before UNLOAD_RESPONSE (an INITIATE_CONTACT drops it).
    if (paused_ && request.unload) {
      maybe_.Merge(std::move(owed_));
      flushing_held_ = true;
    } else {
      maybe_ = Owed();
    }
    owed_ = Owed();
    paused_ = false;
  }
  phase_ = Phase::kWaiting;
  pending_connection_.push_back(request);
}

void GuestModel::Reset() {
  pending_connection_.clear();
  owed_ = Owed();
  maybe_ = Owed();
  offers_.clear();
  released_unrescinded_.clear();
  uncertain_.clear();
  created_.clear();
  offers_requested_ = false;
  paused_ = false;
  flushing_held_ = false;
}

void GuestModel::Posted(const protocol::ParsedMessage& message) {
  if (logging_) log_.push_back(message);
  const std::string_view name = protocol::MessageTypeName(message.type);
  if (message.type == MessageType::kVersionResponse ||
      message.type == MessageType::kUnloadResponse) {
    const bool unload = message.type == MessageType::kUnloadResponse;
    FUZZ_REQUIRE(phase_ == Phase::kWaiting && !pending_connection_.empty(),
                 "{} that no INITIATE_CONTACT or UNLOAD asked for", name);
    // The last request is answered; those before it were superseded while the server reset.
    const ConnectionRequest request = pending_connection_.back();
    FUZZ_REQUIRE(request.unload == unload, "{} answers {} (the latest connection request)", name,
                 request.unload ? "UNLOAD" : "INITIATE_CONTACT");
    Reset();
    phase_ = Phase::kDisconnected;
    version_ = 0;
    features_ = 0;
    if (unload) return;
    const auto& response = *message.As<protocol::VersionResponse>();
    const bool supported =
        KnownVersion(request.version) && request.version <= protocol::kVersionWin10V6_0;
    FUZZ_REQUIRE((response.version_supported != 0) == supported,
                 "VERSION_RESPONSE for version {:#x}: version_supported {} (every known version is "
                 "accepted as asked)",
                 request.version, response.version_supported);
    if (!supported) return;
    FUZZ_REQUIRE(
        (response.connection_state == protocol::kConnectionSuccessful) == request.monitor_ok,
        "VERSION_RESPONSE for version {:#x}: connection state {} for monitor pages that are "
        "{}",
        request.version, response.connection_state, request.monitor_ok ? "valid" : "invalid");
    if (response.connection_state != protocol::kConnectionSuccessful) return;
    const uint32_t expected =
        request.version >= protocol::kVersionWin10V6_0 ? request.features & kGrantable : 0;
    FUZZ_REQUIRE(response.supported_features == expected,
                 "VERSION_RESPONSE for version {:#x} features {:#x}: granted {:#x}, expected {:#x} "
                 "(every feature the server has, as asked)",
                 request.version, request.features, response.supported_features, expected);
    phase_ = Phase::kConnected;
    version_ = request.version;
    features_ = response.supported_features;
    return;
  }
  FUZZ_REQUIRE(phase_ != Phase::kDisconnected, "{} while the guest is not connected", name);
  FUZZ_REQUIRE(phase_ == Phase::kConnected || flushing_held_,
               "{} while the server resets the connection (only what a PAUSE held may come)", name);
  absl::Status allowed =
      protocol::CheckAllowed(message, protocol::Sender::kHost, {version_, features_});
  FUZZ_REQUIRE(allowed.ok(),
               "{} is not allowed on the connection (version {:#x}, features {:#x}): {}", name,
               version_, features_, allowed);
  switch (message.type) {
    case MessageType::kOfferChannel: {
      const auto& offer = *message.As<protocol::OfferChannel>();
      const uint32_t relid = offer.child_relid;
      const OfferKey key{FromWire(offer.interface_type), FromWire(offer.interface_instance),
                         offer.sub_channel_index};
      FUZZ_REQUIRE(offers_requested_, "OFFERCHANNEL {} before REQUESTOFFERS", relid);
      FUZZ_REQUIRE(relid >= 1 && relid <= 2047, "OFFERCHANNEL with relid {}", relid);
      FUZZ_REQUIRE(!offers_.contains(relid) || uncertain_.contains(relid),
                   "OFFERCHANNEL {} while the guest holds relid {} ({})", relid, relid,
                   offers_.at(relid).rescinded ? "rescinded" : "offered");
      for (const auto& [other, held] : offers_) {
        FUZZ_REQUIRE(!(held.key == key) || uncertain_.contains(other),
                     "OFFERCHANNEL {} for key {}, which relid {} holds", relid, key.ToString(),
                     other);
      }
      FUZZ_REQUIRE(offer.connection_id == 0x10000 + relid,
                   "OFFERCHANNEL {} with connection id {:#x}", relid, offer.connection_id);
      FUZZ_REQUIRE(
          !offer.monitor_allocated() ||
              (features_ & protocol::kFeatureServerSpecifiedMonitorPages) != 0,
          "OFFERCHANNEL {} is monitored but the guest has not the server's monitor page (on "
          "an isolated VM its own pages are shared with the host)",
          relid);
      released_unrescinded_.erase(relid);
      offers_[relid] = Offer{key, false};
      return;
    }
    case MessageType::kRescindChannelOffer: {
      const uint32_t relid = message.As<protocol::RescindChannelOffer>()->child_relid;
      auto it = offers_.find(relid);
      if (it == offers_.end()) {
        auto released = released_unrescinded_.find(relid);
        if (released != released_unrescinded_.end()) {
          // The server had refused that release (the channel was in use) and now revokes it.
          offers_[relid] = Offer{released->second.key, true};
          released_unrescinded_.erase(released);
          return;
        }
        FUZZ_REQUIRE(uncertain_.contains(relid),
                     "RESCIND_CHANNELOFFER {}, which the guest does not hold", relid);
        return;
      }
      FUZZ_REQUIRE(!it->second.rescinded || uncertain_.contains(relid),
                   "RESCIND_CHANNELOFFER {} twice", relid);
      it->second.rescinded = true;
      return;
    }
    default:
      return Answered(message);
  }
}

void GuestModel::Answered(const protocol::ParsedMessage& message) {
  const std::string_view name = protocol::MessageTypeName(message.type);
  bool matched = false;
  std::string what;
  for (Owed* owed : {&owed_, &maybe_}) {
    if (matched) break;
    switch (message.type) {
      case MessageType::kAllOffersDelivered:
        matched = TakeOne(owed->all_offers);
        break;
      case MessageType::kOpenChannelResult: {
        const auto& result = *message.As<protocol::OpenResult>();
        matched = TakeOne(owed->opens, {result.child_relid, result.open_id});
        what = fmt::format(" relid {} open id {}", result.child_relid, result.open_id);
        break;
      }
      case MessageType::kGpadlCreated: {
        const auto& created = *message.As<protocol::GpadlCreated>();
        matched = TakeOne(owed->creates, {created.child_relid, created.gpadl});
        if (matched && created.creation_status == protocol::kStatusSuccess) {
          created_[created.child_relid].insert(created.gpadl);
        }
        what = fmt::format(" relid {} GPADL {:#x}", created.child_relid, created.gpadl);
        break;
      }
      case MessageType::kGpadlTorndown: {
        const uint32_t id = message.As<protocol::GpadlTorndown>()->gpadl;
        matched = TakeOne(owed->teardowns, id);
        if (matched) {
          for (auto& [relid, ids] : created_) ids.erase(id);
        }
        what = fmt::format(" GPADL {:#x}", id);
        break;
      }
      case MessageType::kModifyChannelResponse: {
        const uint32_t relid = message.As<protocol::ModifyChannelResponse>()->child_relid;
        matched = TakeOne(owed->modifies, relid);
        what = fmt::format(" relid {}", relid);
        break;
      }
      case MessageType::kModifyConnectionResponse:
        matched = TakeOne(owed->modify_connections);
        break;
      case MessageType::kPauseResponse:
        matched = TakeOne(owed->pauses);
        break;
      case MessageType::kTlConnectResult:
        matched = TakeOne(owed->tl_results);
        break;
      default:
        Violated(fmt::format("the server sent {}, which it never sends", name));
    }
  }
  FUZZ_REQUIRE(matched, "{}{} answers no request of the guest (answered twice, or never asked)",
               name, what);
}

void GuestModel::ResolveReleases(const ServerSnapshot& server) {
  // Unpaused, a release reaches the server with nothing in flight (it takes no guest message
  // while messages wait for the SynIC): the channel is the one the guest held.
  for (auto it = released_unrescinded_.begin(); it != released_unrescinded_.end();) {
    const ChannelSnapshot* channel = FindChannel(server, it->first);
    if (channel != nullptr && Offered(channel->state)) {
      // The server refused the release (the channel is in use): the guest still holds it.
      offers_[it->first] = it->second;
    }
    // Else the server withdrew it (released) or let it go with its device (no rescind: the
    // guest had released it).
    it = released_unrescinded_.erase(it);
  }
}

void GuestModel::CheckSettled(const ServerSnapshot& server) const {
  FUZZ_REQUIRE(pending_connection_.empty(), "{} unanswered once every device has answered",
               pending_connection_.empty() || !pending_connection_.back().unload
                   ? "INITIATE_CONTACT"
                   : "UNLOAD");
  if (phase_ == Phase::kDisconnected) {
    FUZZ_REQUIRE(!server.connected,
                 "the guest is disconnected but the server is connected at {:#x}", server.version);
    for (const ChannelSnapshot& channel : server.channels) {
      FUZZ_REQUIRE(channel.state == "released", "channel {} is {} with no connection",
                   channel.relid, channel.state);
    }
    FUZZ_REQUIRE(server.gpadls.empty(), "{} GPADLs left with no connection (GPADL {:#x} first)",
                 server.gpadls.size(), server.gpadls.empty() ? 0 : server.gpadls[0].id);
    return;
  }
  FUZZ_REQUIRE(phase_ == Phase::kConnected, "the guest waits for its connection once settled");
  FUZZ_REQUIRE(
      server.connected && server.version == version_ && server.feature_flags == features_,
      "the guest is connected at {:#x} features {:#x}, the server {} at {:#x} features {:#x}",
      version_, features_, server.connected ? "connected" : "not connected", server.version,
      server.feature_flags);
  FUZZ_REQUIRE(server.paused == paused_, "the guest {} paused, the server {}",
               paused_ ? "is" : "is not", server.paused ? "is" : "is not");
  // Every owed answer came, but while paused (they are held) and where the guest is to blame.
  if (!paused_) {
    FUZZ_REQUIRE(owed_.all_offers == 0, "REQUESTOFFERS unanswered");
    FUZZ_REQUIRE(owed_.modify_connections == 0, "MODIFY_CONNECTION unanswered");
    FUZZ_REQUIRE(owed_.pauses == 0, "PAUSE unanswered");
    FUZZ_REQUIRE(owed_.tl_results == 0, "TL_CONNECT_REQUEST refused but unanswered");
    FUZZ_REQUIRE(owed_.opens.empty(), "OPENCHANNEL relid {} open id {} unanswered",
                 owed_.opens.empty() ? 0 : owed_.opens.begin()->first,
                 owed_.opens.empty() ? 0 : owed_.opens.begin()->second);
    FUZZ_REQUIRE(owed_.modifies.empty(), "MODIFYCHANNEL relid {} unanswered",
                 owed_.modifies.empty() ? 0 : *owed_.modifies.begin());
    for (const auto& [relid, id] : owed_.creates) {
      const GpadlSnapshot* gpadl = FindGpadl(server, id);
      // A GPADL whose bodies the guest has not all sent yet is answered once they come.
      FUZZ_REQUIRE(owed_.creates.count({relid, id}) == 1 && gpadl != nullptr &&
                       gpadl->relid == relid && gpadl->state == "in progress",
                   "GPADL_HEADER relid {} GPADL {:#x} unanswered (the server has it {})", relid, id,
                   gpadl == nullptr ? "nowhere" : gpadl->state);
    }
    for (const uint32_t id : owed_.teardowns) {
      const GpadlSnapshot* gpadl = FindGpadl(server, id);
      const ChannelSnapshot* channel =
          gpadl == nullptr ? nullptr : FindChannel(server, gpadl->relid);
      // The ring of an open channel is torn down once the guest closes it.
      FUZZ_REQUIRE(channel != nullptr && channel->state == "open" && channel->open.has_value() &&
                       channel->open->ring_gpadl_id == id,
                   "GPADL_TEARDOWN {:#x} unanswered (the GPADL is {}{})", id,
                   gpadl == nullptr ? "gone" : gpadl->state,
                   channel == nullptr
                       ? ""
                       : fmt::format(", its channel {} {}", channel->relid, channel->state));
    }
  }
  // The guest's offers are the server's channels.
  for (const ChannelSnapshot& channel : server.channels) {
    if (uncertain_.contains(channel.relid)) continue;
    auto held = offers_.find(channel.relid);
    if (channel.state == "released") {
      FUZZ_REQUIRE(held == offers_.end(), "the guest holds relid {}, which the server released",
                   channel.relid);
      continue;
    }
    FUZZ_REQUIRE(held != offers_.end(),
                 "the server has channel {} {}, which the guest does not hold", channel.relid,
                 channel.state);
    FUZZ_REQUIRE(held->second.key.interface_id == channel.interface_id &&
                     held->second.key.instance_id == channel.instance_id &&
                     held->second.key.subchannel_index == channel.subchannel_index,
                 "relid {} is {} to the guest but {}-{}-{} to the server", channel.relid,
                 held->second.key.ToString(), channel.interface_id.ToString(),
                 channel.instance_id.ToString(), channel.subchannel_index);
    FUZZ_REQUIRE(held->second.rescinded == (channel.state == "revoked"),
                 "relid {} is {} to the guest but {} to the server", channel.relid,
                 held->second.rescinded ? "rescinded" : "offered", channel.state);
  }
  for (const auto& [relid, held] : offers_) {
    FUZZ_REQUIRE(uncertain_.contains(relid) || FindChannel(server, relid) != nullptr,
                 "the guest holds relid {} ({}), which the server does not have", relid,
                 held.rescinded ? "rescinded" : "offered");
  }
}

}  // namespace cvmbus::paravisor::fuzz
