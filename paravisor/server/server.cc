// The server's plumbing: the bus handle, guest message dispatch, the outbox and its
// backpressure, and the guard that keeps exceptions inside.
#include "paravisor/server/server.h"

#include <fmt/format.h>

#include <exception>

#include "base/format.h"

namespace cvmbus::paravisor {

using protocol::MessageType;
using protocol::ParsedMessage;

class VmbusServer::BusHandle : public ParentBus {
 public:
  explicit BusHandle(VmbusServer* server) : server_(server) {}
  absl::StatusOr<OfferResources> AddChild(OfferInput input) override {
    return server_->AddChild(std::move(input));
  }
  std::unique_ptr<ParentBus> CloneBus() override { return std::make_unique<BusHandle>(server_); }

 private:
  VmbusServer* server_;
};

VmbusServer::VmbusServer(hw::EventLoop* loop, synic::ServerPort* port, ServerOptions options)
    : loop_(loop), port_(port), options_(std::move(options)) {
  absl::Status attached = port_->AttachServer(
      loop_, {protocol::kMessageConnectionId, protocol::kMessageConnectionId4},
      [this](uint32_t connection_id, std::vector<uint8_t> bytes) {
        OnMessage(connection_id, std::move(bytes));
      },
      [this] { Guarded("outbox", [this] { FlushOutbox(); }); });
  if (!attached.ok()) {
    Log(fmt::format("cannot attach to the SynIC: {}", attached), log::Level::kError);
  }
}

VmbusServer::~VmbusServer() {
  *alive_ = false;
  if (hand_off_) {
    // The successor takes over the port, its queued posts and its event ports.
    port_->HandOffServer();
    return;
  }
  port_->DetachServer();
  // The SynIC must not keep raising what this server registered, nor keep devices' signals.
  for (auto& [relid, channel] : channels_) {
    if (const internal::OpenParams* params = channel->open_params()) {
      port_->SetEventTarget(params->data.connection_id, nullptr);
    }
  }
}

std::unique_ptr<ParentBus> VmbusServer::Bus() { return std::make_unique<BusHandle>(this); }

void VmbusServer::Log(const std::string& line, log::Level level) {
  if (options_.log) {
    options_.log(line);
  } else {
    logger_.Write(level, line);
  }
}

void VmbusServer::GuestError(const std::string& line) {
  ++stats_.guest_errors;
  Log(line, log::Level::kWarning);
}

void VmbusServer::Guarded(std::string_view what, const std::function<void()>& fn) noexcept {
  std::string why;
  try {
    fn();
    return;
  } catch (const std::exception& e) {
    try {
      why = e.what();
    } catch (...) {
    }
  } catch (...) {
    why = "not a std::exception";
  }
  ++stats_.internal_errors;
  try {
    Log(fmt::format("{}: caught an exception ({}); the server carries on", what, why),
        log::Level::kError);
  } catch (...) {  // Even the log line failed (out of memory): the count is all we keep.
  }
}

void VmbusServer::StaleReply(std::string_view what, OfferId offer, OpId op) {
  ++stats_.stale_replies;
  Log(fmt::format("{} reply for offer {} operation {} came after the operation was over: dropped",
                  what, offer, op));
}

VmbusServer::Channel* VmbusServer::FindRelid(uint32_t relid) {
  auto it = channels_.find(relid);
  return it == channels_.end() ? nullptr : it->second.get();
}

VmbusServer::Channel* VmbusServer::FindOffer(OfferId offer) {
  auto it = by_offer_.find(offer);
  return it == by_offer_.end() ? nullptr : it->second;
}

VmbusServer::Channel* VmbusServer::FindForGuest(uint32_t relid, const char* operation) {
  Channel* channel = FindRelid(relid);
  if (channel == nullptr) GuestError(fmt::format("{}: unknown channel {}", operation, relid));
  return channel;
}

// --- Messages to the guest ---------------------------------------------------------------------

void VmbusServer::Send(const std::vector<uint8_t>& bytes) {
  if (paused_) {
    // Held until RESUME, in order. Past kMaxHeldWhilePaused the server stops taking guest
    // requests (which produce most of these), but nothing is dropped.
    held_while_paused_.push_back(bytes);
    UpdateAccepting();
    return;
  }
  outbox_.push_back(Outgoing{message_vp_, message_sint_, bytes});
  FlushOutbox();
}

void VmbusServer::FlushOutbox() {
  while (!outbox_.empty()) {
    const Outgoing& next = outbox_.front();
    absl::Status status = port_->PostToGuest(next.vp, next.sint, next.bytes);
    if (absl::IsResourceExhausted(status)) break;  // Until on_space: the guest waits.
    if (!status.ok()) {  // A VP or SINT the guest named that does not exist.
      GuestError(fmt::format("message type {} to VP {} SINT {} not delivered: {}",
                             next.bytes.empty() ? 0 : next.bytes[0], next.vp, next.sint, status));
    }
    outbox_.pop_front();
  }
  UpdateAccepting();
}

void VmbusServer::UpdateAccepting() {
  const bool accepting =
      outbox_.empty() && held_while_paused_.size() < kMaxHeldWhilePaused && !holding_for_restore_;
  if (accepting != accepting_) port_->SetAccepting(accepting);
  accepting_ = accepting;
}

// --- Messages from the guest -------------------------------------------------------------------

void VmbusServer::OnMessage(uint32_t connection_id, std::vector<uint8_t> bytes) {
  Guarded("guest message", [&] {
    ++stats_.messages_handled;
    absl::StatusOr<ParsedMessage> parsed = protocol::ParseMessage(bytes);
    if (!parsed.ok()) {
      GuestError(fmt::format("malformed message on connection {}: {}", connection_id,
                             parsed.status().message()));
      return;
    }
    // While disconnected (or resetting) only a new contact and UNLOAD mean anything.
    if (!connected() && parsed->type != MessageType::kInitiateContact &&
        parsed->type != MessageType::kUnload) {
      GuestError(fmt::format(
          "{} while {}", protocol::MessageTypeName(parsed->type),
          phase_ == Phase::kDisconnecting ? "the connection is being reset" : "not connected"));
      return;
    }
    const protocol::NegotiatedConnection connection{version_, features_};
    if (connected() || parsed->type == MessageType::kInitiateContact) {
      if (absl::Status allowed =
              protocol::CheckAllowed(*parsed, protocol::Sender::kGuest, connection);
          !allowed.ok()) {
        GuestError(fmt::format("{} refused: {}", protocol::MessageTypeName(parsed->type),
                               allowed.message()));
        return;
      }
    }
    Dispatch(*parsed);
  });
}

void VmbusServer::Dispatch(const ParsedMessage& message) {
  switch (message.type) {
    case MessageType::kInitiateContact:
      return HandleInitiateContact(*message.As<protocol::InitiateContact>());
    case MessageType::kRequestOffers:
      return HandleRequestOffers();
    case MessageType::kOpenChannel:
      return HandleOpen(*message.As<protocol::OpenChannel>());
    case MessageType::kCloseChannel:
      return HandleClose(message.As<protocol::CloseChannel>()->child_relid);
    case MessageType::kGpadlHeader:
      return HandleGpadlHeader(message);
    case MessageType::kGpadlBody:
      return HandleGpadlBody(message);
    case MessageType::kGpadlTeardown:
      return HandleGpadlTeardown(*message.As<protocol::GpadlTeardown>());
    case MessageType::kRelIdReleased:
      return HandleRelIdReleased(message.As<protocol::RelIdReleased>()->child_relid);
    case MessageType::kUnload:
      return HandleUnload();
    case MessageType::kModifyChannel:
      return HandleModify(*message.As<protocol::ModifyChannel>());
    case MessageType::kModifyConnection:
      return HandleModifyConnection(*message.As<protocol::ModifyConnection>());
    case MessageType::kPause:
      return HandlePause();
    case MessageType::kResume:
      return HandleResume();
    case MessageType::kTlConnectRequest:
      return HandleTlConnect(*message.As<protocol::TlConnectRequest>());
    default:
      GuestError(fmt::format("{} is not supported by this server",
                             protocol::MessageTypeName(message.type)));
  }
}

}  // namespace cvmbus::paravisor
