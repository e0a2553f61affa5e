// PersonalityGuest's channels (vmbus_establish_gpadl, vmbus_teardown_gpadl, vmbus_open,
// vmbus_close, vmbus_send_modifychannel) and the offers and rescinds after boot
// (vmbus_onoffer, vmbus_onoffer_rescind and the driver's removal).
#include <fmt/format.h>

#include <algorithm>

#include "base/format.h"
#include "base/status_macros.h"
#include "paravisor/client/guest_personality.h"

namespace cvmbus::paravisor {
namespace {

using protocol::MessageType;

// The wait AwaitOpen slices its timeout into, to notice a rescind.
constexpr auto kRescindPoll = std::chrono::milliseconds(10);

}  // namespace

// --- Channels ---

absl::StatusOr<uint32_t> PersonalityGuest::SendGpadl(uint32_t relid,
                                                     const std::vector<uint64_t>& gpns) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "GPADL_HEADER"));
  if (gpns.empty()) {
    return absl::InvalidArgumentError(
        fmt::format("{}: GPADL for channel {}: no pages", personality_.name, relid));
  }
  const uint32_t id = next_gpadl_id_++;
  std::vector<uint64_t> words;
  words.push_back(uint64_t{static_cast<uint32_t>(gpns.size() * 4096)});  // byte_count, offset 0.
  words.insert(words.end(), gpns.begin(), gpns.end());
  absl::StatusOr<std::vector<std::vector<uint8_t>>> messages =
      protocol::EncodeGpadl(relid, id, 1, words);
  const std::string what = fmt::format("GPADL {:#x} for channel {}", id, relid);
  if (!messages.ok()) return Error(messages.status(), what);
  Expect(MessageType::kGpadlCreated, id);
  for (const std::vector<uint8_t>& message : *messages) {
    if (absl::Status sent = client_->SendRaw(message); !sent.ok()) return Error(sent, what);
  }
  return id;
}

absl::StatusOr<uint32_t> PersonalityGuest::AwaitGpadl(uint32_t gpadl_id) {
  absl::StatusOr<protocol::ParsedMessage> created = client_->WaitForMatching(
      MessageType::kGpadlCreated,
      [gpadl_id](const protocol::ParsedMessage& m) {
        return m.As<protocol::GpadlCreated>()->gpadl == gpadl_id;
      },
      options_.timeout);
  if (!created.ok()) return Error(created.status(), fmt::format("GPADL {:#x}", gpadl_id));
  const protocol::GpadlCreated& answer = *created->As<protocol::GpadlCreated>();
  if (answer.creation_status == protocol::kStatusSuccess) gpadls_[gpadl_id] = answer.child_relid;
  return answer.creation_status;
}

absl::StatusOr<uint32_t> PersonalityGuest::CreateGpadl(uint32_t relid,
                                                       const std::vector<uint64_t>& gpns) {
  CVMBUS_ASSIGN_OR_RETURN(const uint32_t id, SendGpadl(relid, gpns));
  CVMBUS_ASSIGN_OR_RETURN(const uint32_t status, AwaitGpadl(id));
  if (status != protocol::kStatusSuccess) {
    return absl::FailedPreconditionError(
        fmt::format("{}: GPADL {:#x} for channel {} ({} pages from GPN {:#x}): GPADL_CREATED "
                    "status {:#x}",
                    personality_.name, id, relid, gpns.size(), gpns.front(), status));
  }
  return id;
}

absl::Status PersonalityGuest::TeardownGpadl(uint32_t relid, uint32_t gpadl_id) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "GPADL_TEARDOWN"));
  const std::string what = fmt::format("GPADL_TEARDOWN {:#x} on channel {}", gpadl_id, relid);
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = gpadl_id;
  Expect(MessageType::kGpadlTorndown, gpadl_id);
  if (absl::Status sent = client_->SendRaw(protocol::Encode(teardown)); !sent.ok()) {
    return Error(sent, what);
  }
  absl::StatusOr<protocol::ParsedMessage> torndown = client_->WaitForMatching(
      MessageType::kGpadlTorndown,
      [gpadl_id](const protocol::ParsedMessage& m) {
        return m.As<protocol::GpadlTorndown>()->gpadl == gpadl_id;
      },
      options_.timeout);
  if (!torndown.ok()) return Error(torndown.status(), what);
  gpadls_.erase(gpadl_id);
  return absl::OkStatus();
}

absl::Status PersonalityGuest::SendOpen(uint32_t relid, uint32_t ring_gpadl_id,
                                        uint32_t downstream_page_offset, uint32_t target_vp) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "OPENCHANNEL"));
  protocol::OpenChannel open{};
  open.child_relid = relid;
  open.open_id = relid;  // __vmbus_open: openid = child_relid.
  open.ring_buffer_gpadl = ring_gpadl_id;
  open.target_vp = target_vp;
  open.downstream_page_offset = downstream_page_offset;
  const bool with_tail = (features_ & (protocol::kFeatureGuestSpecifiedSignalParameters |
                                       protocol::kFeatureChannelInterruptRedirection)) != 0;
  Expect(MessageType::kOpenChannelResult, relid);
  if (absl::Status sent = client_->SendRaw(protocol::EncodeOpenChannel(open, with_tail));
      !sent.ok()) {
    return Error(sent, fmt::format("OPENCHANNEL {}", relid));
  }
  open_[relid] = ring_gpadl_id;  // Until the answer says otherwise.
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> PersonalityGuest::AwaitOpen(uint32_t relid) {
  const std::string what = fmt::format("OPENCHANNEL {}", relid);
  const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    absl::StatusOr<protocol::ParsedMessage> result = client_->WaitForMatching(
        MessageType::kOpenChannelResult,
        [relid](const protocol::ParsedMessage& m) {
          return m.As<protocol::OpenResult>()->child_relid == relid;
        },
        std::clamp(left, std::chrono::milliseconds(0), std::chrono::milliseconds(kRescindPoll)));
    if (result.ok()) {
      const uint32_t status = result->As<protocol::OpenResult>()->status;
      if (status != protocol::kStatusSuccess) open_.erase(relid);
      return status;
    }
    if (Rescinded(relid)) {
      open_.erase(relid);
      return absl::AbortedError(
          fmt::format("{}: {}: the channel was rescinded while opening", personality_.name, what));
    }
    if (left.count() <= 0) {
      open_.erase(relid);
      return absl::DeadlineExceededError(
          fmt::format("{}: {}: no OPENCHANNEL_RESULT from the host within {} ms", personality_.name,
                      what, options_.timeout.count()));
    }
  }
}

absl::Status PersonalityGuest::Open(uint32_t relid, uint32_t ring_gpadl_id,
                                    uint32_t downstream_page_offset, uint32_t target_vp) {
  CVMBUS_RETURN_IF_ERROR(SendOpen(relid, ring_gpadl_id, downstream_page_offset, target_vp));
  CVMBUS_ASSIGN_OR_RETURN(const uint32_t status, AwaitOpen(relid));
  if (status != protocol::kStatusSuccess) {
    return absl::FailedPreconditionError(
        fmt::format("{}: OPENCHANNEL {} (ring GPADL {:#x}): OPENCHANNEL_RESULT status {:#x}",
                    personality_.name, relid, ring_gpadl_id, status));
  }
  return absl::OkStatus();
}

absl::Status PersonalityGuest::Close(uint32_t relid) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "CLOSECHANNEL"));
  protocol::CloseChannel close{};
  close.child_relid = relid;
  open_.erase(relid);
  if (absl::Status sent = client_->SendRaw(protocol::Encode(close)); !sent.ok()) {
    return Error(sent, fmt::format("CLOSECHANNEL {}", relid));
  }
  return absl::OkStatus();
}

absl::Status PersonalityGuest::SendModify(uint32_t relid, uint32_t target_vp) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "MODIFYCHANNEL"));
  const std::string what = fmt::format("MODIFYCHANNEL {} to VP {}", relid, target_vp);
  if (version_ < protocol::kVersionWin10V4_1) {
    return absl::FailedPreconditionError(
        fmt::format("{}: {}: not before version 4.1 (this connection is {})", personality_.name,
                    what, VersionText(version_)));
  }
  protocol::ModifyChannel modify{};
  modify.child_relid = relid;
  modify.target_vp = target_vp;
  if (version_ >= protocol::kVersionWin10V5_3) Expect(MessageType::kModifyChannelResponse, relid);
  if (absl::Status sent = client_->SendRaw(protocol::Encode(modify)); !sent.ok()) {
    return Error(sent, what);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> PersonalityGuest::AwaitModify(uint32_t relid) {
  const std::string what = fmt::format("MODIFYCHANNEL {}", relid);
  if (version_ < protocol::kVersionWin10V5_3) {
    return absl::FailedPreconditionError(
        fmt::format("{}: {}: there is no MODIFYCHANNEL_RESPONSE before 5.3 (this connection is "
                    "{})",
                    personality_.name, what, VersionText(version_)));
  }
  absl::StatusOr<protocol::ParsedMessage> response = client_->WaitForMatching(
      MessageType::kModifyChannelResponse,
      [relid](const protocol::ParsedMessage& m) {
        return m.As<protocol::ModifyChannelResponse>()->child_relid == relid;
      },
      options_.timeout);
  if (!response.ok()) return Error(response.status(), what);
  return response->As<protocol::ModifyChannelResponse>()->status;
}

absl::StatusOr<std::optional<uint32_t>> PersonalityGuest::ModifyChannel(uint32_t relid,
                                                                        uint32_t target_vp) {
  CVMBUS_RETURN_IF_ERROR(SendModify(relid, target_vp));
  if (version_ < protocol::kVersionWin10V5_3) return std::optional<uint32_t>();
  CVMBUS_ASSIGN_OR_RETURN(const uint32_t status, AwaitModify(relid));
  return std::optional<uint32_t>(status);
}

// --- Offers after boot ---

absl::StatusOr<protocol::OfferChannel> PersonalityGuest::NextOffer(
    std::chrono::milliseconds timeout) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "waiting for an offer"));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    absl::StatusOr<protocol::ParsedMessage> offer =
        client_->WaitFor(MessageType::kOfferChannel, std::max(left, std::chrono::milliseconds(0)));
    if (!offer.ok()) return Error(offer.status(), "waiting for an offer it keeps");
    const protocol::OfferChannel& channel = *offer->As<protocol::OfferChannel>();
    if (personality_.Keeps(channel)) {
      offers_.push_back(channel);
      return channel;
    }
    ++dropped_offers_;
  }
}

absl::StatusOr<uint32_t> PersonalityGuest::AwaitRescind(std::chrono::milliseconds timeout) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "waiting for a rescind"));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    absl::StatusOr<protocol::ParsedMessage> rescind = client_->WaitFor(
        MessageType::kRescindChannelOffer, std::max(left, std::chrono::milliseconds(0)));
    if (!rescind.ok()) return Error(rescind.status(), "waiting for a rescind");
    const uint32_t relid = rescind->As<protocol::RescindChannelOffer>()->child_relid;
    const bool kept = std::any_of(offers_.begin(), offers_.end(), [relid](const auto& offer) {
      return offer.child_relid == relid;
    });
    if (kept) return relid;  // Else: a channel it never registered; ignored.
  }
}

absl::Status PersonalityGuest::RemoveRescinded(uint32_t relid) {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "removing a rescinded channel"));
  if (open_.contains(relid)) CVMBUS_RETURN_IF_ERROR(Close(relid));
  std::vector<uint32_t> ids;
  for (const auto& [id, owner] : gpadls_) {
    if (owner == relid) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  for (const uint32_t id : ids) CVMBUS_RETURN_IF_ERROR(TeardownGpadl(relid, id));
  offers_.erase(std::remove_if(offers_.begin(), offers_.end(),
                               [relid](const auto& offer) { return offer.child_relid == relid; }),
                offers_.end());
  if (absl::Status released = client_->ReleaseRelid(relid); !released.ok()) {
    return Error(released, fmt::format("RELID_RELEASED {}", relid));
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
