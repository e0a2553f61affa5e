// The connection's state machine: INITIATE_CONTACT, UNLOAD, the reset both can start, monitor
// pages, MODIFY_CONNECTION, PAUSE/RESUME and hvsocket connect requests.
//
//   Disconnected --INITIATE_CONTACT--> Connected --UNLOAD or INITIATE_CONTACT--> Disconnecting
//        ^                                                                           |
//        +---- every channel released, every GPADL gone: UNLOAD_RESPONSE, or -------+
//              the new contact handled (which may connect again at once)
//
// A reset releases every channel (an open one is closed with its device, an opening one is
// closed once its reply comes), tears every GPADL down with its device, and finishes only when
// every one of those requests was answered: a guest that sees UNLOAD_RESPONSE frees and reuses
// those pages (linux-guest.md), and a new kernel after kexec reuses GPADL ids.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/format.h"
#include "paravisor/server/server.h"

namespace cvmbus::paravisor {
namespace {

// Granted when asked (confidential channels only on a trusted port); the server's monitor
// pages (0x40) are granted separately, when the server has a page to give.
constexpr uint32_t kSupportedFeatures =
    protocol::kFeatureGuestSpecifiedSignalParameters | protocol::kFeatureModifyConnection |
    protocol::kFeatureConfidentialChannels | protocol::kFeaturePauseResume;

bool KnownVersion(uint32_t version) {
  return std::find(std::begin(protocol::kKnownVersions), std::end(protocol::kKnownVersions),
                   version) != std::end(protocol::kKnownVersions);
}

}  // namespace

void VmbusServer::HandleInitiateContact(const protocol::InitiateContact& contact) {
  const uint32_t requested = contact.vmbus_version_requested;
  // Answers go to the VP (from 3.0) and SINT (from 5.0) the guest named. A guest kernel turns
  // that SINT on before it connects (Linux: hv_synic_init before vmbus_connect); one that
  // names a SINT that cannot take messages gets no answer, rather than answers that would
  // wait in the SynIC and stall this server.
  const uint32_t vp = requested >= protocol::kVersionWin8_1 ? contact.target_vcpu : 0;
  const uint8_t sint = contact.message_sint();
  if (!port_->CanReceive(vp, sint)) {
    GuestError(fmt::format(
        "INITIATE_CONTACT for {:#x} names VP {} SINT {}, which cannot take messages: ignored",
        requested, vp, sint));
    return;
  }
  switch (phase_) {
    case Phase::kDisconnected:
      return Contact(contact);
    case Phase::kConnected:
      // kexec or a crash kernel: no UNLOAD came. Reset everything, then answer.
      Log(
          fmt::format("INITIATE_CONTACT for {:#x} while connected at {:#x}: resetting every "
                      "channel first",
                      requested, version_));
      return StartDisconnect(AfterDisconnect{.contact = contact});
    case Phase::kDisconnecting:
      // The latest contact wins (an UNLOAD before it no longer wants its answer).
      after_disconnect_ = AfterDisconnect{.contact = contact};
      return;
  }
}

void VmbusServer::Contact(const protocol::InitiateContact& contact) {
  const uint32_t requested = contact.vmbus_version_requested;
  message_vp_ = requested >= protocol::kVersionWin8_1 ? contact.target_vcpu : 0;
  message_sint_ = contact.message_sint();
  protocol::VersionResponse response{};
  if (!KnownVersion(requested) || requested > options_.max_version) {
    Log(fmt::format("guest asked for version {:#x}: not supported, it may retry lower", requested));
  } else {
    const uint32_t supported =
        kSupportedFeatures & (port_->trusted() && options_.private_memory.has_value()
                                  ? ~0u
                                  : ~protocol::kFeatureConfidentialChannels);
    const uint32_t asked = contact.feature_flags();
    response.version_supported = 1;
    const bool server_pages_asked = requested >= protocol::kVersionWin10V6_0 &&
                                    (asked & protocol::kFeatureServerSpecifiedMonitorPages) != 0;
    if (absl::Status monitor =
            SetUpMonitorPage(contact.monitor_page1, contact.monitor_page2, server_pages_asked);
        !monitor.ok()) {
      GuestError(fmt::format("INITIATE_CONTACT refused: {}", monitor.message()));
      response.connection_state = protocol::kConnectionFailedUnknownFailure;
    } else {
      phase_ = Phase::kConnected;
      ++connection_epoch_;
      version_ = requested;
      features_ = asked & supported;
      if (monitor_ != nullptr && monitor_server_allocated_) {
        features_ |= protocol::kFeatureServerSpecifiedMonitorPages;
        response.child_to_parent_monitor_page = monitor_->gpa();
      }
      response.connection_state = protocol::kConnectionSuccessful;
      response.message_connection_id = protocol::kMessageConnectionId;
      response.supported_features = features_;
      Log(fmt::format(
          "connected: version {}.{}, features {:#x}, messages to VP {} SINT {}, "
          "monitor page {}",
          protocol::VersionMajor(version_), protocol::VersionMinor(version_), features_,
          message_vp_, message_sint_,
          monitor_ == nullptr ? std::string("none")
                              : fmt::format("{:#x} ({})", monitor_->gpa(),
                                            monitor_server_allocated_ ? "server's" : "guest's")));
    }
  }
  Send(protocol::EncodeVersionResponse(response, requested >= protocol::kVersionWin10V6_0));
}

absl::Status VmbusServer::SetUpMonitorPage(uint64_t parent_to_child, uint64_t child_to_parent,
                                           bool server_pages_asked) {
  if ((parent_to_child == 0) != (child_to_parent == 0)) {
    return absl::InvalidArgumentError(fmt::format(
        "monitor pages {:#x} and {:#x}: give both or neither", parent_to_child, child_to_parent));
  }
  for (const uint64_t gpa : {parent_to_child, child_to_parent}) {
    if (gpa % 4096 != 0) {
      return absl::InvalidArgumentError(fmt::format("monitor page {:#x} is not page aligned", gpa));
    }
  }
  if (monitor_ != nullptr) {
    for (const auto& [relid, channel] : channels_) {
      if (channel->open_params() != nullptr && channel->monitor_id.has_value()) {
        return absl::FailedPreconditionError(
            fmt::format("channel {} is open and uses the current monitor page", relid));
      }
    }
  }
  // The server's own page (a paravisor's private page) when the guest accepts one. On a
  // confidential VM the guest's pages are shared with the host, which could then forge the
  // guest's notifications: MNF is used there only through the server's page. Elsewhere the
  // guest's child -> parent page, which must be guest memory.
  const bool use_server_page = options_.server_monitor_page.has_value() && server_pages_asked;
  const bool use_guest_page =
      !use_server_page && child_to_parent != 0 && !options_.private_memory.has_value();
  if (use_guest_page) {
    if (absl::Status readable =
            options_.untrusted_memory.ReadPlain<uint32_t>(child_to_parent).status();
        !readable.ok()) {
      return absl::InvalidArgumentError(fmt::format("monitor page {:#x} is not guest memory: {}",
                                                    child_to_parent, readable.message()));
    }
  }
  monitor_.reset();
  monitor_server_allocated_ = false;
  const auto log = [this](const std::string& line) { Log(line); };
  if (use_server_page) {
    const guestmem::GuestMemory& memory =
        options_.private_memory.has_value() ? *options_.private_memory : options_.untrusted_memory;
    auto scanner =
        std::make_unique<MonitorScanner>(loop_, memory, *options_.server_monitor_page, log);
    if (absl::Status cleared = scanner->Clear(); !cleared.ok()) {
      Log(fmt::format("server monitor page unusable, MNF off: {}", cleared));
      return absl::OkStatus();
    }
    monitor_ = std::move(scanner);
    monitor_server_allocated_ = true;
  } else if (use_guest_page) {
    monitor_ =
        std::make_unique<MonitorScanner>(loop_, options_.untrusted_memory, child_to_parent, log);
  }
  return absl::OkStatus();
}

void VmbusServer::HandleUnload() {
  switch (phase_) {
    case Phase::kDisconnected:
      // Nothing to reset (a guest that unloads twice, or a crash kernel's UNLOAD).
      return SendMessage(protocol::UnloadResponse{});
    case Phase::kConnected:
      return StartDisconnect(AfterDisconnect{.unload_response = true});
    case Phase::kDisconnecting:
      after_disconnect_ = AfterDisconnect{.unload_response = true};
      return;
  }
}

void VmbusServer::StartDisconnect(AfterDisconnect next) {
  // An unload ends a pause: what was held goes out first, then (later) the answer. A new
  // contact starts over: the new kernel does not want the old connection's messages.
  paused_ = false;
  std::vector<std::vector<uint8_t>> held = std::exchange(held_while_paused_, {});
  if (next.unload_response) {
    for (std::vector<uint8_t>& message : held) Send(message);
  } else if (!held.empty()) {
    Log(fmt::format("reset: {} messages held by the old connection's pause are dropped",
                    held.size()));
  }
  phase_ = Phase::kDisconnecting;
  after_disconnect_ = std::move(next);
  ++connection_epoch_;  // Nothing more is answered for the old connection.
  version_ = 0;
  features_ = 0;
  offers_requested_ = false;
  // Channels first (a close must reach a device before the teardown of its ring), then GPADLs.
  std::vector<OfferId> offers;
  offers.reserve(by_offer_.size());
  for (const auto& [relid, channel] : channels_) offers.push_back(channel->offer);
  resetting_ = true;  // CheckDisconnected waits for the end of the walk.
  for (const OfferId offer : offers) {
    if (Channel* channel = FindOffer(offer)) ReleaseChannel(*channel);
  }
  for (const GpadlId id : gpadls_.Ids()) {
    if (Gpadl* gpadl = gpadls_.Find(id)) ReleaseGpadl(*gpadl);
  }
  resetting_ = false;
  UpdateAccepting();
  CheckDisconnected();
}

void VmbusServer::ReleaseChannel(Channel& channel) {
  channel.modifies.clear();  // Their answers would go to a connection that is gone.
  if (auto* opening = std::get_if<internal::Opening>(&channel.state)) {
    opening->released = true;  // Closed once the device answers.
  } else if (std::holds_alternative<internal::Open>(channel.state)) {
    CloseWithDevice(channel, /*released=*/true);
  } else if (auto* closing = std::get_if<internal::Closing>(&channel.state)) {
    closing->released = true;
    closing->reopen.reset();
  } else if (channel.revoked()) {
    // The guest will never release it now: it is gone (its GPADLs need no device teardown).
    EraseChannel(channel.offer);
  } else {
    channel.state = internal::Released{};
  }
}

void VmbusServer::ReleaseGpadl(Gpadl& gpadl) {
  Channel* owner = FindOffer(gpadl.owner);
  switch (gpadl.state) {
    case internal::GpadlState::kInProgress:
      return gpadls_.Erase(gpadl.id);
    case internal::GpadlState::kOffered:
      gpadl.state = internal::GpadlState::kOfferedTearingDown;  // Torn down if accepted.
      return;
    case internal::GpadlState::kAccepted:
      if (owner == nullptr || owner->revoked() || !owner->device_attached) {
        return gpadls_.Erase(gpadl.id);  // No device to tell.
      }
      if (std::holds_alternative<internal::Opening>(owner->state)) {
        gpadl.teardown_deferred = true;  // It may be the ring: after the close.
        return;
      }
      if (const internal::OpenParams* open = owner->open_params();
          open != nullptr && open->data.ring_gpadl_id == gpadl.id) {
        // The ring of a channel being closed (ReleaseChannel just closed it, or the guest had):
        // torn down once the device has answered the close, as a GPADL_TEARDOWN of it is.
        gpadl.teardown_deferred = true;
        return;
      }
      return TeardownWithDevice(gpadl);
    case internal::GpadlState::kOfferedTearingDown:
    case internal::GpadlState::kTearingDown:
      return;  // The device's answer finishes it.
  }
}

void VmbusServer::CheckDisconnected() {
  if (phase_ != Phase::kDisconnecting || resetting_) return;
  for (const auto& [relid, channel] : channels_) {
    if (!channel->released()) return;
  }
  if (!gpadls_.empty()) return;
  phase_ = Phase::kDisconnected;
  monitor_.reset();  // The next INITIATE_CONTACT names the pages again.
  monitor_server_allocated_ = false;
  AfterDisconnect next = std::exchange(after_disconnect_, {});
  Log(fmt::format("connection reset: every channel released, every GPADL torn down{}",
                  next.unload_response ? "; UNLOAD answered"
                  : next.contact       ? "; the new contact is answered"
                                       : ""));
  if (next.unload_response) SendMessage(protocol::UnloadResponse{});
  if (next.contact.has_value()) Contact(*next.contact);
}

void VmbusServer::HandleModifyConnection(const protocol::ModifyConnection& modify) {
  protocol::ModifyConnectionResponse response{};
  const bool server_pages_asked = (features_ & protocol::kFeatureServerSpecifiedMonitorPages) != 0;
  if (absl::Status status =
          SetUpMonitorPage(modify.monitor_page1, modify.monitor_page2, server_pages_asked);
      !status.ok()) {
    GuestError(fmt::format("MODIFY_CONNECTION refused: {}", status.message()));
    response.connection_state = protocol::kConnectionFailedUnknownFailure;
  } else {
    response.connection_state = protocol::kConnectionSuccessful;
    Log(fmt::format("monitor page now {}", monitor_ == nullptr
                                               ? std::string("none")
                                               : fmt::format("{:#x}", monitor_->gpa())));
    // Offers made from here on describe their channels in the new page.
  }
  SendMessage(response);
}

void VmbusServer::HandlePause() {
  if (paused_) {
    GuestError("PAUSE while paused");
    return;
  }
  SendMessage(protocol::PauseResponse{});
  paused_ = true;
}

void VmbusServer::HandleResume() {
  if (!paused_) {
    GuestError("RESUME while not paused");
    return;
  }
  paused_ = false;
  for (std::vector<uint8_t>& held : std::exchange(held_while_paused_, {})) Send(held);
  UpdateAccepting();
}

void VmbusServer::HandleTlConnect(const protocol::TlConnectRequest& request) {
  HvSocketConnect connect;
  std::memcpy(&connect.endpoint_id, request.guest_endpoint_id.bytes, sizeof(Guid));
  std::memcpy(&connect.service_id, request.host_service_id.bytes, sizeof(Guid));
  std::memcpy(&connect.silo_id, request.silo_id.bytes, sizeof(Guid));
  bool accepted = false;
  if (options_.on_hvsocket_connect) {
    // A listener that throws is a listener that refused.
    Guarded("hvsocket listener", [&] { accepted = options_.on_hvsocket_connect(connect); });
  }
  if (accepted)
    return;  // A listener offers the channel (instance = endpoint, interface = service).
  Log(fmt::format("TL_CONNECT_REQUEST to service {}: no listener, refused",
                  connect.service_id.ToString()));
  // TL_CONNECT_RESULT exists from 4.1 (messages.h; OpenVMM's send_tl_connect_result): a 4.0
  // guest is told nothing, as Hyper-V tells it nothing.
  if (version_ < protocol::kVersionWin10V4_1) return;
  protocol::TlConnectResult result{};
  result.endpoint_id = request.guest_endpoint_id;
  result.service_id = request.host_service_id;
  result.status = protocol::kStatusConnectionRefused;
  SendMessage(result);
}

}  // namespace cvmbus::paravisor
