// Servicing: restoring the VMBus server's state.
//
// Restore validates the whole saved state before it changes anything (a state that does not
// hold together is refused with kDataLoss naming what is wrong, and the server stays empty),
// then rebuilds every derived structure from it: the channel and GPADL tables, the relid and
// monitor-id allocators, the channels' event ports (latched until their devices come back).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "base/format.h"
#include "guestmem/paged_range.h"
#include "paravisor/server/saved_codes.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {
namespace {

using internal::GpadlState;

constexpr uint32_t kMaxConnectionId = 0xffffff;
constexpr size_t kMaxGpadlWords = 0xffff / 8;  // GPADL_HEADER's range_buflen is 16 bits.

absl::StatusOr<Guid> GuidFrom(const std::string& bytes) {
  Guid guid;
  if (bytes.size() != sizeof(guid)) {
    return absl::DataLossError(
        fmt::format("saved state: a GUID of {} bytes (expected 16)", bytes.size()));
  }
  std::memcpy(&guid, bytes.data(), sizeof(guid));
  return guid;
}

OpenData LoadOpenData(const saved::OpenData& saved) {
  OpenData data;
  data.target_vp = saved.target_vp();
  data.ring_offset = saved.ring_offset();
  data.ring_gpadl_id = saved.ring_gpadl_id();
  data.event_flag = static_cast<uint16_t>(saved.event_flag());
  data.connection_id = saved.connection_id();
  std::memcpy(data.user_data.data(), saved.user_data().data(),
              std::min(saved.user_data().size(), data.user_data.size()));
  return data;
}

absl::Status Bad(uint32_t relid, const std::string& what) {
  return absl::DataLossError(fmt::format("saved state: channel {}: {}", relid, what));
}

absl::Status CheckOpenData(uint32_t relid, const saved::OpenData& data) {
  if (data.event_flag() > 0xffff)
    return Bad(relid, fmt::format("event flag {}", data.event_flag()));
  if (data.connection_id() == 0 || data.connection_id() > kMaxConnectionId) {
    return Bad(relid, fmt::format("connection id {:#x}", data.connection_id()));
  }
  if (data.user_data().size() > sizeof(UserDefinedData)) {
    return Bad(relid, fmt::format("{} bytes of user data", data.user_data().size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status VmbusServer::Restore(const saved::Server& state) {
  if (phase_ != Phase::kDisconnected || !channels_.empty() || !gpadls_.empty()) {
    return absl::FailedPreconditionError("vmbus server: restore into a server already in use");
  }
  // --- Validate everything first. ---
  const uint32_t version = state.version();
  const bool known =
      std::find(std::begin(protocol::kKnownVersions), std::end(protocol::kKnownVersions),
                version) != std::end(protocol::kKnownVersions);
  if (version != 0 && (!known || version > options_.max_version)) {
    return absl::DataLossError(
        fmt::format("saved state: version {:#x} is not one this server speaks (at most {:#x})",
                    version, options_.max_version));
  }
  if ((state.features() & ~protocol::kKnownFeatures) != 0 ||
      (version == 0 && state.features() != 0)) {
    return absl::DataLossError(fmt::format("saved state: features {:#x}", state.features()));
  }
  if ((state.features() & protocol::kFeatureConfidentialChannels) != 0 &&
      !(port_->trusted() && options_.private_memory.has_value())) {
    return absl::DataLossError(
        "saved state: confidential channels on a server that cannot offer them");
  }
  if (version == 0 && (state.offers_requested() || state.paused())) {
    return absl::DataLossError("saved state: offers requested or paused with no connection");
  }
  if (state.message_sint() >= 16) {
    return absl::DataLossError(
        fmt::format("saved state: message SINT {} (SINTs are 0..15)", state.message_sint()));
  }
  // One guest request yields at most an offer per channel and ALLOFFERS_DELIVERED.
  if (state.outbox_size() > static_cast<int>(kMaxChannels) + 1) {
    return absl::DataLossError(
        fmt::format("saved state: {} messages waiting for the SynIC (at most {})",
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
      (server_page && options_.server_monitor_page != std::optional<uint64_t>(monitor_page)) ||
      (monitor_page != 0 && version == 0)) {
    return absl::DataLossError(
        fmt::format("saved state: monitor page {:#x}{} is not one this server can use",
                    monitor_page, server_page ? " (the server's)" : ""));
  }
  if (state.next_relid() < 1 || state.next_relid() > kMaxChannels + 1) {
    return absl::DataLossError(
        fmt::format("saved state: next relid {} (1..{})", state.next_relid(), kMaxChannels + 1));
  }
  std::set<uint32_t> relids;
  std::set<OfferKey> live_keys;
  std::set<uint32_t> monitor_ids;
  absl::flat_hash_map<GpadlId, uint32_t> gpadl_owner;      // id -> relid
  absl::flat_hash_map<uint32_t, uint32_t> connection_ids;  // id -> relid
  uint64_t total_gpadls = 0;
  uint64_t total_pages = 0;
  for (const saved::Channel& channel : state.channels()) {
    const uint32_t relid = channel.relid();
    absl::StatusOr<Guid> interface_id = GuidFrom(channel.interface_id());
    absl::StatusOr<Guid> instance_id = GuidFrom(channel.instance_id());
    if (!interface_id.ok()) return interface_id.status();
    if (!instance_id.ok()) return instance_id.status();
    if (relid == 0 || relid > kMaxChannels || relid >= state.next_relid()) {
      return Bad(relid, fmt::format("relid {} is outside 1..{} (next relid {})", relid,
                                    kMaxChannels, state.next_relid()));
    }
    if (!relids.insert(relid).second) return Bad(relid, fmt::format("relid {} twice", relid));
    if (channel.subchannel_index() > 0xffff || channel.offer_flags() > 0xffff) {
      return Bad(relid, "subchannel index or offer flags do not fit 16 bits");
    }
    const uint32_t code = channel.state();
    if (code > kSavedReleased) return Bad(relid, fmt::format("state {}", code));
    if (channel.revoked() && code != kSavedClosed) {
      return Bad(relid, fmt::format("revoked in state {}", code));
    }
    if (version == 0 && code != kSavedReleased && !channel.revoked() &&
        !(code == kSavedClosed && !channel.offered_to_guest())) {
      return Bad(relid, fmt::format("state {} with no connection", code));
    }
    const OfferKey key{*interface_id, *instance_id,
                       static_cast<uint16_t>(channel.subchannel_index())};
    if (!channel.revoked() && !live_keys.insert(key).second) {
      return Bad(relid, fmt::format("key {} saved twice", key.ToString()));
    }
    if (channel.has_monitor_id()) {
      if (channel.monitor_id() >= 128) {
        return Bad(relid, fmt::format("monitor id {} (0..127)", channel.monitor_id()));
      }
      if (!monitor_ids.insert(channel.monitor_id()).second) {
        return Bad(relid, fmt::format("monitor id {} twice", channel.monitor_id()));
      }
    }
    const bool open_states = code == kSavedOpening || code == kSavedOpen || code == kSavedClosing;
    if (channel.reopen().has_open_data() && code != kSavedClosing) {
      return Bad(relid, "a reopen in a state that is not closing");
    }
    // A MODIFYCHANNEL the device has not answered outlives a CLOSECHANNEL, a reopen and the
    // guest's RELID_RELEASED of the closed offer; only a revoke answers it at once.
    if (channel.pending_modify_vps_size() > 0 && channel.revoked()) {
      return Bad(relid, "MODIFYCHANNELs pending on a revoked channel");
    }
    if (static_cast<uint32_t>(channel.pending_modify_vps_size()) >
        options_.limits.modifies_in_flight) {
      return Bad(relid,
                 fmt::format("{} MODIFYCHANNELs pending", channel.pending_modify_vps_size()));
    }
    // Its GPADLs.
    if (static_cast<uint32_t>(channel.gpadls_size()) > options_.limits.gpadls_per_channel) {
      return Bad(relid, fmt::format("{} GPADLs (at most {})", channel.gpadls_size(),
                                    options_.limits.gpadls_per_channel));
    }
    for (const saved::Gpadl& gpadl : channel.gpadls()) {
      const GpadlId id = gpadl.id();
      if (auto [it, fresh] = gpadl_owner.emplace(id, relid); !fresh) {
        return Bad(relid, fmt::format("GPADL {} is saved twice (channels {} and {})", id,
                                      it->second, relid));
      }
      if (gpadl.state() > static_cast<uint32_t>(GpadlState::kTearingDown) ||
          gpadl.range_count() == 0 || gpadl.range_count() > 0xffff ||
          gpadl.expected_words() > kMaxGpadlWords ||
          static_cast<uint64_t>(gpadl.words_size()) > gpadl.expected_words()) {
        return Bad(relid, fmt::format("GPADL {} is malformed (state {}, {} ranges, {} of {} words)",
                                      id, gpadl.state(), gpadl.range_count(), gpadl.words_size(),
                                      gpadl.expected_words()));
      }
      const auto gpadl_state = static_cast<GpadlState>(gpadl.state());
      if (gpadl_state != GpadlState::kInProgress) {
        std::vector<uint64_t> words(gpadl.words().begin(), gpadl.words().end());
        if (words.size() != gpadl.expected_words()) {
          return Bad(relid, fmt::format("GPADL {} is complete with {} of {} words", id,
                                        words.size(), gpadl.expected_words()));
        }
        if (absl::Status valid = guestmem::ParseGpaRanges(words, gpadl.range_count()).status();
            !valid.ok()) {
          return Bad(relid, fmt::format("GPADL {}: {}", id, valid.message()));
        }
      }
      if (gpadl.teardown_deferred() && gpadl_state != GpadlState::kAccepted) {
        return Bad(relid, fmt::format("GPADL {} defers a teardown in state {}", id, gpadl.state()));
      }
      const uint64_t pages =
          internal::PageWords(static_cast<uint16_t>(gpadl.range_count()), gpadl.expected_words());
      if (pages > options_.limits.pages_per_gpadl) {
        return Bad(relid, fmt::format("GPADL {} has more pages than a GPADL may have", id));
      }
      ++total_gpadls;
      total_pages += pages;
    }
    if (open_states) {
      if (absl::Status data = CheckOpenData(relid, channel.open_data()); !data.ok()) return data;
      if (channel.reopen().has_open_data()) {
        if (absl::Status data = CheckOpenData(relid, channel.reopen().open_data()); !data.ok()) {
          return data;
        }
      }
      const uint32_t ring = channel.open_data().ring_gpadl_id();
      const auto is_ring = [&](const saved::Gpadl& g) {
        return g.id() == ring && (g.state() == static_cast<uint32_t>(GpadlState::kAccepted) ||
                                  (code == kSavedClosing &&
                                   g.state() == static_cast<uint32_t>(GpadlState::kTearingDown)));
      };
      if (!channel.has_ring_gpadl() || channel.ring_gpadl() != ring ||
          std::none_of(channel.gpadls().begin(), channel.gpadls().end(), is_ring)) {
        std::string saved_gpadls;
        for (const saved::Gpadl& g : channel.gpadls()) {
          saved_gpadls +=
              fmt::format(" {} ({})", g.id(),
                          g.state() <= static_cast<uint32_t>(GpadlState::kTearingDown)
                              ? internal::GpadlStateName(static_cast<GpadlState>(g.state()))
                              : "a state that does not exist");
        }
        return Bad(relid, fmt::format("it is {} but its ring GPADL {} is not saved accepted "
                                      "(GPADLs saved:{})",
                                      code == kSavedOpen      ? "open"
                                      : code == kSavedOpening ? "opening"
                                                              : "closing",
                                      ring, saved_gpadls.empty() ? " none" : saved_gpadls));
      }
      if (auto [it, fresh] = connection_ids.emplace(channel.open_data().connection_id(), relid);
          !fresh) {
        return Bad(relid, fmt::format("connection id {:#x} is also channel {}'s",
                                      channel.open_data().connection_id(), it->second));
      }
    }
  }
  if (total_gpadls > options_.limits.gpadls || total_pages > options_.limits.gpadl_pages) {
    return absl::DataLossError(fmt::format(
        "saved state: {} GPADLs ({} page numbers) exceed the limits", total_gpadls, total_pages));
  }
  std::set<uint32_t> free_relids;
  for (const uint32_t relid : state.free_relids()) {
    if (relid == 0 || relid >= state.next_relid() || relids.contains(relid) ||
        !free_relids.insert(relid).second) {
      return absl::DataLossError(fmt::format(
          "saved state: free relid {} is out of range, in use by a channel, or listed twice",
          relid));
    }
  }

  // --- Rebuild. Nothing below can fail. ---
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
  version_ = version;
  features_ = state.features();
  phase_ = version != 0 ? Phase::kConnected : Phase::kDisconnected;
  ++connection_epoch_;
  offers_requested_ = state.offers_requested();
  next_relid_ = state.next_relid();
  free_relids_.assign(free_relids.begin(), free_relids.end());
  paused_ = state.paused();
  for (const std::string& held : state.held_messages()) {
    held_while_paused_.emplace_back(held.begin(), held.end());
  }
  message_vp_ = state.message_vp();
  message_sint_ = static_cast<uint8_t>(state.message_sint());
  for (const saved::Channel& saved : state.channels()) {
    auto channel = std::make_unique<Channel>();
    channel->offer = next_offer_++;
    channel->relid = saved.relid();
    channel->params.interface_id = *GuidFrom(saved.interface_id());
    channel->params.instance_id = *GuidFrom(saved.instance_id());
    channel->params.subchannel_index = static_cast<uint16_t>(saved.subchannel_index());
    channel->offer_flags = static_cast<uint16_t>(saved.offer_flags());
    channel->awaiting_restore = true;
    if (saved.has_monitor_id()) {
      const uint8_t id = static_cast<uint8_t>(saved.monitor_id());
      channel->monitor_id = id;
      monitor_ids_[id / 64] |= uint64_t{1} << (id % 64);
    }
    internal::OpenParams params{.data = LoadOpenData(saved.open_data()),
                                .open_id = saved.open_id(),
                                .connection_epoch = connection_epoch_};
    const auto new_latch = [&] {
      // Registered now: a guest signal while the device is away is latched, not lost.
      auto latch = std::make_shared<internal::EventLatch>();
      port_->SetEventTarget(params.data.connection_id, latch);
      return latch;
    };
    const auto new_interrupt = [&] {
      return std::make_shared<internal::GuestInterrupt>(
          port_->GuestEvent(params.data.target_vp, message_sint_, params.data.event_flag));
    };
    switch (saved.state()) {
      case kSavedClosed:
        if (saved.revoked()) {
          channel->state = internal::Revoked{};
        } else if (!saved.offered_to_guest()) {
          channel->state = internal::Released{};  // Older saved states said it this way.
        } else {
          channel->state = internal::Closed{};
        }
        break;
      case kSavedOpening:
        channel->state = internal::Opening{
            .op = 0, .params = params, .latch = new_latch(), .interrupt = new_interrupt()};
        break;
      case kSavedOpen:
        channel->state = internal::Open{.op = NextOp(),
                                        .params = params,
                                        .latch = new_latch(),
                                        .interrupt = new_interrupt(),
                                        .device_signal = nullptr};
        break;
      case kSavedClosing: {
        internal::Closing closing{.op = 0, .params = params};
        if (saved.reopen().has_open_data()) {
          closing.reopen = internal::OpenParams{.data = LoadOpenData(saved.reopen().open_data()),
                                                .open_id = saved.reopen().open_id(),
                                                .connection_epoch = connection_epoch_};
        }
        channel->state = std::move(closing);
        break;
      }
      case kSavedReleased:
        channel->state = internal::Released{.declined_by_guest = saved.declined_by_guest()};
        break;
    }
    for (const uint32_t vp : saved.pending_modify_vps()) {
      channel->modifies.push_back(
          internal::PendingModify{.op = 0, .target_vp = vp, .connection_epoch = connection_epoch_});
    }
    for (const saved::Gpadl& g : saved.gpadls()) {
      Gpadl gpadl;
      gpadl.id = g.id();
      gpadl.owner = channel->offer;
      gpadl.relid = channel->relid;
      gpadl.state = static_cast<GpadlState>(g.state());
      gpadl.range_count = static_cast<uint16_t>(g.range_count());
      gpadl.expected_words = g.expected_words();
      gpadl.words.assign(g.words().begin(), g.words().end());
      gpadl.connection_epoch = connection_epoch_;
      gpadl.created_owed = g.created_owed();
      gpadl.teardown_waiters = g.teardown_waiters();
      gpadl.teardown_deferred = g.teardown_deferred();
      gpadls_.Add(std::move(gpadl));
    }
    if (!channel->revoked()) {
      awaiting_device_[channel->params.key()] = channel->offer;
    }
    by_offer_[channel->offer] = channel.get();
    channels_[channel->relid] = std::move(channel);
  }
  for (const std::string& pending : state.outbox()) {
    outbox_.push_back(Outgoing{message_vp_, message_sint_, {pending.begin(), pending.end()}});
  }
  holding_for_restore_ = true;
  MaybeEndRestoreHold();  // At once if no channel waits for its device.
  if (holding_for_restore_) {
    std::shared_ptr<bool> alive = alive_;
    restore_hold_ = std::min<std::chrono::nanoseconds>(
        kMaxRestoreHold, options_.restore_claim_deadline.value_or(kMaxRestoreHold));
    (void)loop_->AddTimer(restore_hold_, [this, alive] {
      if (*alive) Guarded("restore hold", [&] { MaybeEndRestoreHold(/*force=*/true); });
    });
  }
  FlushOutbox();
  Log(
      fmt::format("restored: version {:#x}, features {:#x}, {} channels awaiting their devices, "
                  "{} GPADLs",
                  version_, features_, awaiting_device_.size(), gpadls_.size()));
  if (options_.restore_claim_deadline.has_value() && !awaiting_device_.empty()) {
    std::shared_ptr<bool> alive = alive_;
    (void)loop_->AddTimer(*options_.restore_claim_deadline, [this, alive] {
      if (*alive) Guarded("revoke unclaimed channels", [&] { RevokeUnclaimed(); });
    });
  }
  return absl::OkStatus();
}

void VmbusServer::MaybeEndRestoreHold(bool force) {
  if (!holding_for_restore_) return;
  std::vector<uint32_t> waiting;
  for (const auto& [relid, channel] : channels_) {
    if (channel->awaiting_restore && !channel->revoked()) waiting.push_back(relid);
  }
  if (!waiting.empty() && !force) return;
  if (!waiting.empty()) {
    Log(fmt::format("restore: guest messages taken again after {} ms with channels {} still "
                    "waiting for their devices",
                    std::chrono::duration_cast<std::chrono::milliseconds>(restore_hold_).count(),
                    fmt::join(waiting, ", ")),
        log::Level::kWarning);
  }
  holding_for_restore_ = false;
  UpdateAccepting();
}

void VmbusServer::RevokeUnclaimed() {
  // Taken out of awaiting_device_ first: a device offering one of these keys from now on gets
  // a new channel (once the guest has released the old relid), never the revoked one.
  std::vector<std::pair<OfferKey, OfferId>> unclaimed(awaiting_device_.begin(),
                                                      awaiting_device_.end());
  awaiting_device_.clear();
  for (const auto& [key, offer] : unclaimed) {
    Channel* channel = FindOffer(offer);
    if (channel == nullptr) continue;
    Log(fmt::format("channel {} ({}): no device took it back after the restore; revoked",
                    channel->relid, key.ToString()));
    Revoke(offer);
  }
  MaybeEndRestoreHold();
}

}  // namespace cvmbus::paravisor
