// GPADLs: GPADL_HEADER, GPADL_BODY, GPADL_TEARDOWN and the device's replies (gpadl_table.h has
// the states). Every GPADL_HEADER gets a GPADL_CREATED and every GPADL_TEARDOWN a
// GPADL_TORNDOWN, whatever goes wrong: Linux waits for both with no timeout.
#include <fmt/format.h>

#include <algorithm>

#include "base/format.h"
#include "guestmem/paged_range.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {

using internal::GpadlState;

void VmbusServer::SendCreated(uint32_t relid, GpadlId id, uint32_t status) {
  protocol::GpadlCreated created{};
  created.child_relid = relid;
  created.gpadl = id;
  created.creation_status = status;
  SendMessage(created);
}

void VmbusServer::SendTorndown(GpadlId id) {
  protocol::GpadlTorndown torndown{};
  torndown.gpadl = id;
  SendMessage(torndown);
}

void VmbusServer::HandleGpadlHeader(const protocol::ParsedMessage& message) {
  const protocol::GpadlHeader& header = *message.As<protocol::GpadlHeader>();
  const auto fail = [&](const std::string& why) {
    GuestError(
        fmt::format("GPADL_HEADER {:#x} on channel {}: {}", header.gpadl, header.child_relid, why));
    SendCreated(header.child_relid, header.gpadl, protocol::kStatusUnsuccessful);
  };
  Channel* channel = FindRelid(header.child_relid);
  if (channel == nullptr) return fail("unknown channel");
  if (channel->released()) return fail("the channel is not offered");
  const size_t expected_words = header.range_buflen / 8;
  if (absl::Status room =
          gpadls_.CheckAdd(channel->offer, header.gpadl, header.range_count, expected_words);
      !room.ok()) {
    return fail(std::string(room.message()));
  }
  Gpadl gpadl;
  gpadl.id = header.gpadl;
  gpadl.owner = channel->offer;
  gpadl.relid = channel->relid;
  gpadl.range_count = header.range_count;
  gpadl.expected_words = expected_words;
  gpadl.words = message.words;  // At most expected_words (the parser's bound).
  gpadl.connection_epoch = connection_epoch_;
  gpadl.created_owed = true;
  Gpadl& added = gpadls_.Add(std::move(gpadl));
  if (added.words.size() >= added.expected_words) FinishGpadl(added);
}

void VmbusServer::HandleGpadlBody(const protocol::ParsedMessage& message) {
  const protocol::GpadlBody& body = *message.As<protocol::GpadlBody>();
  Gpadl* gpadl = gpadls_.Find(body.gpadl);
  // No answer is possible: GPADL_CREATED needs the channel, which a body does not name (and
  // the GPADL's header, if there was one, was answered already).
  if (gpadl == nullptr) {
    return GuestError(fmt::format("GPADL_BODY for unknown GPADL {:#x}", body.gpadl));
  }
  if (gpadl->state != GpadlState::kInProgress) {
    return GuestError(fmt::format("GPADL_BODY for GPADL {:#x}, which is {}", body.gpadl,
                                  internal::GpadlStateName(gpadl->state)));
  }
  // Senders may pad a body to 240 bytes: the GPADL's remaining length says what counts.
  const size_t take = std::min(message.words.size(), gpadl->expected_words - gpadl->words.size());
  gpadl->words.insert(gpadl->words.end(), message.words.begin(), message.words.begin() + take);
  if (gpadl->words.size() >= gpadl->expected_words) FinishGpadl(*gpadl);
}

void VmbusServer::FinishGpadl(Gpadl& gpadl) {
  const GpadlId id = gpadl.id;
  // The one validation of the range buffer (guestmem's rules, as the device will read it).
  absl::StatusOr<std::vector<guestmem::PagedRange>> ranges =
      guestmem::ParseGpaRanges(gpadl.words, gpadl.range_count);
  if (!ranges.ok()) {
    GuestError(
        fmt::format("GPADL {:#x} on channel {}: {}", id, gpadl.relid, ranges.status().message()));
    const uint32_t relid = gpadl.relid;
    const uint32_t waiters = gpadl.teardown_waiters;
    gpadls_.Erase(id);
    SendCreated(relid, id, protocol::kStatusUnsuccessful);
    for (uint32_t i = 0; i < waiters; ++i) SendTorndown(id);
    return;
  }
  Channel* channel = FindOffer(gpadl.owner);
  if (channel == nullptr || channel->revoked()) {
    // A GPADL for a revoked channel succeeds at once: guests cope badly with a failure here,
    // and the device will never see it.
    gpadl.state = GpadlState::kAccepted;
    gpadl.created_owed = false;
    if (Answerable(gpadl.connection_epoch)) SendCreated(gpadl.relid, id, protocol::kStatusSuccess);
    return;
  }
  OfferGpadl(gpadl);
}

void VmbusServer::OfferGpadl(Gpadl& gpadl) {
  const GpadlId id = gpadl.id;
  if (gpadl.state == GpadlState::kInProgress) gpadl.state = GpadlState::kOffered;
  gpadl.op = NextOp();
  const OpId op = gpadl.op;
  Channel* channel = FindOffer(gpadl.owner);
  auto [rpc, reply] = MakeRpc<GpadlRequest, bool>(GpadlRequest{id, gpadl.range_count, gpadl.words});
  if (channel == nullptr || !channel->requests.Send(CreateGpadl{std::move(rpc)}).ok()) {
    return OnGpadlReply(id, op, false);  // Its device is gone: a refusal.
  }
  AwaitReply<bool>("GPADL reply", std::move(reply), [this, id, op](absl::StatusOr<bool> accepted) {
    OnGpadlReply(id, op, std::move(accepted));
  });
}

void VmbusServer::OnGpadlReply(GpadlId id, OpId op, absl::StatusOr<bool> accepted) {
  Gpadl* gpadl = gpadls_.Find(id);
  if (gpadl == nullptr || gpadl->op != op ||
      (gpadl->state != GpadlState::kOffered && gpadl->state != GpadlState::kOfferedTearingDown)) {
    return StaleReply("GPADL", gpadl == nullptr ? 0 : gpadl->owner, op);
  }
  const bool ok = accepted.ok() && *accepted;
  gpadl->op = 0;
  if (gpadl->created_owed && Answerable(gpadl->connection_epoch)) {
    SendCreated(gpadl->relid, id, ok ? protocol::kStatusSuccess : protocol::kStatusUnsuccessful);
  }
  gpadl->created_owed = false;
  const bool teardown_wanted = gpadl->state == GpadlState::kOfferedTearingDown;
  if (!ok) {
    Log(fmt::format("GPADL {:#x} on channel {}: the device refused it{}", id, gpadl->relid,
                    accepted.ok() ? "" : fmt::format(" ({})", accepted.status().message())));
    return GpadlGone(id);
  }
  gpadl->state = GpadlState::kAccepted;
  if (teardown_wanted) TeardownWithDevice(*gpadl);
}

void VmbusServer::HandleGpadlTeardown(const protocol::GpadlTeardown& teardown) {
  const GpadlId id = teardown.gpadl;
  Gpadl* gpadl = gpadls_.Find(id);
  Channel* channel = FindRelid(teardown.child_relid);
  if (gpadl == nullptr || channel == nullptr || gpadl->owner != channel->offer) {
    // Nothing to tear down; answered, since the guest waits regardless.
    GuestError(
        fmt::format("GPADL_TEARDOWN: no GPADL {:#x} on channel {}", id, teardown.child_relid));
    return SendTorndown(id);
  }
  // The answer belongs to this connection (a GPADL created before a servicing keeps its
  // older epoch for its own GPADL_CREATED).
  gpadl->connection_epoch = connection_epoch_;
  switch (gpadl->state) {
    case GpadlState::kInProgress:
      GuestError(fmt::format("GPADL_TEARDOWN: GPADL {:#x} is still being assembled", id));
      gpadls_.Erase(id);
      SendCreated(teardown.child_relid, id, protocol::kStatusUnsuccessful);
      return SendTorndown(id);
    case GpadlState::kOffered:
      // The device is still looking at it: its answer first, then the teardown.
      ++gpadl->teardown_waiters;
      gpadl->state = GpadlState::kOfferedTearingDown;
      return;
    case GpadlState::kOfferedTearingDown:
    case GpadlState::kTearingDown:
      ++gpadl->teardown_waiters;  // Answered with the first.
      return;
    case GpadlState::kAccepted:
      break;
  }
  ++gpadl->teardown_waiters;
  if (gpadl->teardown_deferred) return;
  if (channel->revoked()) return GpadlGone(id);  // No device to tell.
  const internal::OpenParams* open = channel->open_params();
  if (open != nullptr && open->data.ring_gpadl_id == id) {
    // The ring of an open (or opening, or closing) channel: the device may be using it. Torn
    // down once the channel is closed. Linux tears the ring down right after CLOSECHANNEL,
    // before the close is done; waiting for the close keeps a closing channel's ring GPADL
    // until the device has let go of it, which is also what a saved closing channel needs
    // (its restore hands the device the ring again).
    Log(
        fmt::format("GPADL_TEARDOWN: GPADL {:#x} is the ring of channel {}, which is {}: torn "
                    "down once it is closed",
                    id, channel->relid, internal::StateName(channel->state)));
    gpadl->teardown_deferred = true;
    return;
  }
  TeardownWithDevice(*gpadl);
}

void VmbusServer::TeardownWithDevice(Gpadl& gpadl) {
  const GpadlId id = gpadl.id;
  Channel* channel = FindOffer(gpadl.owner);
  auto [rpc, reply] = MakeRpc<GpadlId, Unit>(id);
  if (channel == nullptr || channel->revoked() ||
      !channel->requests.Send(TeardownGpadl{std::move(rpc)}).ok()) {
    return GpadlGone(id);  // No device to tell.
  }
  gpadl.state = GpadlState::kTearingDown;
  gpadl.op = NextOp();
  const OpId op = gpadl.op;
  AwaitReply<Unit>("teardown reply", std::move(reply),
                   [this, id, op](absl::StatusOr<Unit>) { OnTeardownReply(id, op); });
}

void VmbusServer::OnTeardownReply(GpadlId id, OpId op) {
  Gpadl* gpadl = gpadls_.Find(id);
  if (gpadl == nullptr || gpadl->op != op || gpadl->state != GpadlState::kTearingDown) {
    return StaleReply("teardown", gpadl == nullptr ? 0 : gpadl->owner, op);
  }
  GpadlGone(id);  // A dropped teardown counts: the device is not using it any more.
}

void VmbusServer::GpadlGone(GpadlId id) {
  Gpadl* gpadl = gpadls_.Find(id);
  if (gpadl == nullptr) return;
  const uint32_t waiters = Answerable(gpadl->connection_epoch) ? gpadl->teardown_waiters : 0;
  gpadls_.Erase(id);
  for (uint32_t i = 0; i < waiters; ++i) SendTorndown(id);
  CheckDisconnected();
}

}  // namespace cvmbus::paravisor
