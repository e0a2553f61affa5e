#include "paravisor/server/server.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <iostream>

#include "base/format.h"
#include "guestmem/paged_range.h"

namespace cvmbus::paravisor {
namespace {

using protocol::MessageType;
using protocol::ParsedMessage;

// Granted when asked (confidential channels only on a trusted port); the server's monitor
// pages (0x40) are granted separately, when the server has a page to give.
constexpr uint32_t kSupportedFeatures =
    protocol::kFeatureGuestSpecifiedSignalParameters | protocol::kFeatureModifyConnection |
    protocol::kFeatureConfidentialChannels | protocol::kFeaturePauseResume;
// Bits 24-31 of a connection id are reserved (HV_CONNECTION_ID).
constexpr uint32_t kMaxConnectionId = 0xffffff;

protocol::Guid WireGuid(const Guid& guid) {
  protocol::Guid wire;
  static_assert(sizeof(wire) == sizeof(guid));
  std::memcpy(wire.bytes, &guid, sizeof(guid));
  return wire;
}

bool KnownVersion(uint32_t version) {
  return std::find(std::begin(protocol::kKnownVersions), std::end(protocol::kKnownVersions),
                   version) != std::end(protocol::kKnownVersions);
}

}  // namespace

// --- ParentBus ---------------------------------------------------------------------------------

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
      [this] { FlushOutbox(); });
  if (!attached.ok()) Log(fmt::format("cannot attach to the SynIC: {}", attached));
}

VmbusServer::~VmbusServer() {
  *alive_ = false;
  port_->DetachServer();
}

std::unique_ptr<ParentBus> VmbusServer::Bus() { return std::make_unique<BusHandle>(this); }

void VmbusServer::Log(const std::string& line) {
  if (options_.log) {
    options_.log(line);
  } else {
    std::cerr << "vmbus server: " << line << "\n";
  }
}

void VmbusServer::GuestError(const std::string& line) {
  ++stats_.guest_errors;
  Log(line);
}

void VmbusServer::Send(const std::vector<uint8_t>& bytes) {
  if (paused_) {  // Held until RESUME, in order; bounded, so a guest that never resumes
                  // cannot grow the paravisor's memory.
    if (held_while_paused_.size() >= kMaxHeldWhilePaused) {
      GuestError(fmt::format("paused for more than {} messages: message type {} dropped",
                             kMaxHeldWhilePaused, bytes.empty() ? 0 : bytes[0]));
      return;
    }
    held_while_paused_.push_back(bytes);
    return;
  }
  outbox_.push_back(Outgoing{message_vp_, message_sint_, bytes});
  FlushOutbox();
}

void VmbusServer::FlushOutbox() {
  while (!outbox_.empty()) {
    const Outgoing& next = outbox_.front();
    absl::Status status = port_->PostToGuest(next.vp, next.sint, next.bytes);
    if (absl::IsResourceExhausted(status)) {
      if (accepting_) port_->SetAccepting(false);  // Until on_space: the guest waits.
      accepting_ = false;
      return;
    }
    if (!status.ok()) {  // A VP or SINT the guest named that does not exist.
      GuestError(fmt::format("message type {} to VP {} SINT {} not delivered: {}",
                             next.bytes.empty() ? 0 : next.bytes[0], next.vp, next.sint, status));
    }
    outbox_.pop_front();
  }
  if (!accepting_) port_->SetAccepting(true);
  accepting_ = true;
}

absl::StatusOr<OfferResources> VmbusServer::AddChild(OfferInput input) {
  OfferResources resources(options_.untrusted_memory, options_.private_memory);
  // Registration happens on the loop; the input holds move-only parts, so it travels boxed.
  auto boxed = std::make_shared<OfferInput>(std::move(input));
  std::shared_ptr<bool> alive = alive_;
  loop_->Post([this, boxed, alive] {
    if (!*alive) return;
    OfferInput& offer = *boxed;
    uint32_t relid;
    auto restored = pending_restores_.find(offer.params.key());
    if (restored != pending_restores_.end()) {
      relid = restored->second.relid();  // Servicing: the device keeps its channel id.
    } else if (!free_relids_.empty()) {
      relid = free_relids_.front();
      free_relids_.erase(free_relids_.begin());
    } else if (next_relid_ <= kMaxChannels) {
      relid = next_relid_++;
    } else {
      Log(fmt::format("offer {} refused: all {} channels are in use", offer.params.key().ToString(),
                      kMaxChannels));
      return;  // Dropping the input drops its channels: the device sees its sender closed.
    }
    for (const auto& [other_relid, other] : channels_) {
      if (other.params.key() == offer.params.key()) {
        Log(fmt::format("offer {} refused: the key is already offered (relid {})",
                        offer.params.key().ToString(), other_relid));
        return;
      }
    }
    Channel& channel = channels_[relid];
    channel.relid = relid;
    channel.params = std::move(offer.params);
    if (options_.private_memory.has_value()) {  // Only a confidential VM has private memory.
      if (channel.params.allow_confidential_external_memory) {
        channel.offer_flags |= OfferFlags::kConfidentialExternalMemory;
      }
      channel.offer_flags |= OfferFlags::kConfidentialRingBuffer;  // Our rings can be private.
    }
    channel.requests = std::move(offer.request_send);
    channel.server_requests =
        std::make_shared<Receiver<ChannelServerRequest>>(std::move(offer.server_request_recv));
    if (channel.params.mnf_interrupt_latency.has_value()) {
      for (uint8_t id = 0; id < 128; ++id) {
        if ((monitor_ids_[id / 64] & (uint64_t{1} << (id % 64))) == 0) {
          monitor_ids_[id / 64] |= uint64_t{1} << (id % 64);
          channel.monitor_id = id;
          break;
        }
      }
    }
    if (restored != pending_restores_.end()) {
      ApplySaved(restored->second, &channel);
      pending_restores_.erase(restored);
    }
    WatchServerRequests(relid, channel.server_requests);
    if (offers_requested_ && !channel.offered_to_guest) SendOffer(channel);
  });
  return resources;
}

hw::Task VmbusServer::WatchServerRequests(uint32_t relid,
                                          std::shared_ptr<Receiver<ChannelServerRequest>> r) {
  std::shared_ptr<bool> alive = alive_;
  while (true) {
    std::optional<ChannelServerRequest> request = co_await r->Next(loop_);
    if (!*alive) co_return;
    if (!request.has_value()) {  // The device dropped its offer: revoke.
      Revoke(relid);
      co_return;
    }
    if (auto* revoke = std::get_if<RevokeChannel>(&*request)) {
      Revoke(relid);
      std::move(revoke->rpc).Reply(Unit{});
      co_return;
    }
    if (auto* restore = std::get_if<RestoreChannel>(&*request)) {
      std::move(restore->rpc).Reply(RestoreChannelState(relid, restore->rpc.input()));
    }
  }
}

// --- Messages ----------------------------------------------------------------------------------

void VmbusServer::OnMessage(uint32_t connection_id, std::vector<uint8_t> bytes) {
  ++stats_.messages_handled;
  absl::StatusOr<ParsedMessage> parsed = protocol::ParseMessage(bytes);
  if (!parsed.ok()) {
    GuestError(fmt::format("malformed message on connection {}: {}", connection_id,
                           parsed.status().message()));
    return;
  }
  const protocol::NegotiatedConnection connection{version_, features_};
  if (absl::Status allowed = protocol::CheckAllowed(*parsed, protocol::Sender::kGuest, connection);
      !allowed.ok()) {
    GuestError(
        fmt::format("{} refused: {}", protocol::MessageTypeName(parsed->type), allowed.message()));
    return;
  }
  if (version_ == 0 && parsed->type != MessageType::kInitiateContact) {
    GuestError(fmt::format("{} before INITIATE_CONTACT", protocol::MessageTypeName(parsed->type)));
    return;
  }
  Dispatch(*parsed);
}

void VmbusServer::Dispatch(const ParsedMessage& message) {
  switch (message.type) {
    case MessageType::kInitiateContact:
      return HandleInitiateContact(message);
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

void VmbusServer::HandleInitiateContact(const ParsedMessage& message) {
  const protocol::InitiateContact& contact = *message.As<protocol::InitiateContact>();
  const uint32_t requested = contact.vmbus_version_requested;
  protocol::VersionResponse response{};
  if (version_ == 0) {
    // Answers go to the VP (from 3.0) and SINT (from 5.0) the guest named; this one too. A
    // guest kernel turns that SINT on before it connects (Linux: hv_synic_init before
    // vmbus_connect); one that names a SINT that cannot take messages gets no answer, rather
    // than answers that would wait in the SynIC and stall this server.
    const uint32_t vp = requested >= protocol::kVersionWin8_1 ? contact.target_vcpu : 0;
    const uint8_t sint = contact.message_sint();
    if (!port_->CanReceive(vp, sint)) {
      GuestError(fmt::format(
          "INITIATE_CONTACT for {:#x} names VP {} SINT {}, which cannot take messages: ignored",
          requested, vp, sint));
      return;
    }
    message_vp_ = vp;
    message_sint_ = sint;
  }
  if (version_ != 0) {
    GuestError(fmt::format("INITIATE_CONTACT for {:#x} while connected at {:#x}: UNLOAD first",
                           requested, version_));
  } else if (!KnownVersion(requested) || requested > options_.max_version) {
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
      version_ = requested;
      features_ = asked & supported;
      if (monitor_ != nullptr && monitor_server_allocated_) {
        features_ |= protocol::kFeatureServerSpecifiedMonitorPages;
        response.child_to_parent_monitor_page = monitor_->gpa();
      }
      response.connection_state = protocol::kConnectionSuccessful;
      response.message_connection_id = protocol::kMessageConnectionId;
      response.supported_features = features_;
      Log(fmt::format("connected: version {}.{}, features {:#x}, monitor page {}",
                      protocol::VersionMajor(version_), protocol::VersionMinor(version_), features_,
                      monitor_ == nullptr
                          ? std::string("none")
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
      if (channel.state != ChannelState::kClosed && channel.monitor_id.has_value()) {
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
  channel.offered_to_guest = true;
  SendMessage(offer);
}

void VmbusServer::HandleRequestOffers() {
  if (offers_requested_) {
    GuestError("REQUESTOFFERS twice on one connection");
    return;
  }
  offers_requested_ = true;
  std::vector<Channel*> order;
  for (auto& [relid, channel] : channels_) {
    if (!channel.revoked) order.push_back(&channel);
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

VmbusServer::Channel* VmbusServer::FindChannel(uint32_t relid, const char* operation) {
  auto it = channels_.find(relid);
  if (it == channels_.end()) {
    GuestError(fmt::format("{}: unknown channel {}", operation, relid));
    return nullptr;
  }
  return &it->second;
}

// --- Open, close, modify -----------------------------------------------------------------------

void VmbusServer::HandleOpen(const protocol::OpenChannel& open) {
  protocol::OpenResult result{};
  result.child_relid = open.child_relid;
  result.open_id = open.open_id;
  result.status = protocol::kStatusUnsuccessful;
  Channel* channel = FindChannel(open.child_relid, "OPENCHANNEL");
  if (channel == nullptr) return SendMessage(result);
  const auto fail = [&](const std::string& why) {
    GuestError(fmt::format("OPENCHANNEL {}: {}", open.child_relid, why));
    SendMessage(result);
  };
  if (channel->revoked) return fail("the channel was revoked");
  if (channel->state != ChannelState::kClosed) return fail("already open or opening");
  auto gpadl = channel->gpadls.find(open.ring_buffer_gpadl);
  if (gpadl == channel->gpadls.end() || gpadl->second.state != GpadlState::kAccepted) {
    return fail(fmt::format("ring GPADL {} is not an accepted GPADL of this channel",
                            open.ring_buffer_gpadl));
  }
  OpenData data;
  data.target_vp = open.target_vp;
  data.ring_offset = open.downstream_page_offset;
  data.ring_gpadl_id = open.ring_buffer_gpadl;
  data.connection_id = ChannelConnectionId(channel->relid);
  data.event_flag = static_cast<uint16_t>(channel->relid);
  if ((features_ & protocol::kFeatureGuestSpecifiedSignalParameters) != 0) {
    // The guest names the connection it will signal and the event flag we set for it.
    if (open.connection_id == 0 || open.connection_id > kMaxConnectionId) {
      return fail(
          fmt::format("connection id {:#x} is not a valid connection id", open.connection_id));
    }
    for (const auto& [relid, other] : channels_) {
      if (relid != channel->relid && other.state != ChannelState::kClosed &&
          other.open_data.connection_id == open.connection_id) {
        return fail(
            fmt::format("connection id {:#x} is in use by channel {}", open.connection_id, relid));
      }
    }
    data.connection_id = open.connection_id;
    data.event_flag = open.event_flag;
  }
  std::memcpy(data.user_data.data(), open.user_data, data.user_data.size());
  OpenRequest request = OpenRequest::Make(
      data, Interrupt(port_->GuestEvent(data.target_vp, message_sint_, data.event_flag)),
      FeatureFlags{features_}, OfferFlags{VisibleOfferFlags(*channel)});
  auto [rpc, reply] = MakeRpc<OpenRequest, std::optional<OpenResult>>(std::move(request));
  if (!channel->requests.Send(OpenChannel{std::move(rpc)}).ok()) return fail("device is gone");
  channel->state = ChannelState::kOpening;
  channel->ring_gpadl = open.ring_buffer_gpadl;
  channel->open_data = data;
  AwaitOpen(channel->relid, open.open_id, data.connection_id, std::move(reply));
}

hw::Task VmbusServer::AwaitOpen(uint32_t relid, uint32_t open_id, uint32_t connection_id,
                                ReplyFuture<std::optional<OpenResult>> reply) {
  std::shared_ptr<bool> alive = alive_;
  absl::StatusOr<std::optional<OpenResult>> result = co_await reply.On(loop_);
  if (!*alive) co_return;
  auto it = channels_.find(relid);
  if (it == channels_.end()) co_return;
  Channel& channel = it->second;
  protocol::OpenResult message{};
  message.child_relid = relid;
  message.open_id = open_id;
  if (result.ok() && result->has_value()) {
    channel.state = ChannelState::kOpen;
    port_->SetEventTarget(connection_id, (*result)->guest_to_host_interrupt.signal());
    WatchMonitor(channel, (*result)->guest_to_host_interrupt.signal());
    message.status = protocol::kStatusSuccess;
  } else {
    channel.state = ChannelState::kClosed;
    channel.ring_gpadl.reset();
    Log(fmt::format("channel {}: the device refused the open{}", relid,
                    result.ok() ? "" : fmt::format(" ({})", result.status().message())));
    message.status = protocol::kStatusUnsuccessful;
  }
  SendMessage(message);
}

void VmbusServer::HandleClose(uint32_t relid) {
  Channel* channel = FindChannel(relid, "CLOSECHANNEL");
  if (channel == nullptr) return;
  if (channel->state != ChannelState::kOpen) {
    GuestError(fmt::format("CLOSECHANNEL {}: the channel is not open", relid));
    return;
  }
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  channel->state = ChannelState::kClosing;
  port_->SetEventTarget(channel->open_data.connection_id, nullptr);
  UnwatchMonitor(*channel);
  if (!channel->requests.Send(CloseChannel{std::move(rpc)}).ok()) {
    channel->state = ChannelState::kClosed;
    channel->ring_gpadl.reset();
    return;
  }
  AwaitClose(relid, std::move(reply));
}

hw::Task VmbusServer::AwaitClose(uint32_t relid, ReplyFuture<Unit> reply) {
  std::shared_ptr<bool> alive = alive_;
  (void)co_await reply.On(loop_);
  if (!*alive) co_return;
  auto it = channels_.find(relid);
  if (it == channels_.end()) co_return;
  it->second.state = ChannelState::kClosed;
  it->second.ring_gpadl.reset();
}

void VmbusServer::HandleModify(const protocol::ModifyChannel& modify) {
  Channel* channel = FindChannel(modify.child_relid, "MODIFYCHANNEL");
  if (channel == nullptr) return;
  if (channel->state != ChannelState::kOpen) {
    GuestError(fmt::format("MODIFYCHANNEL {}: the channel is not open", modify.child_relid));
    return;
  }
  auto [rpc, reply] = MakeRpc<ModifyRequest, int32_t>(ModifyTargetVp{modify.target_vp});
  if (!channel->requests.Send(ModifyChannel{std::move(rpc)}).ok()) return;
  AwaitModify(modify.child_relid, std::move(reply));
}

hw::Task VmbusServer::AwaitModify(uint32_t relid, ReplyFuture<int32_t> reply) {
  std::shared_ptr<bool> alive = alive_;
  absl::StatusOr<int32_t> status = co_await reply.On(loop_);
  if (!*alive || version_ < protocol::kVersionWin10V5_3) co_return;  // No response before 5.3.
  protocol::ModifyChannelResponse response{};
  response.child_relid = relid;
  response.status = status.ok() ? static_cast<uint32_t>(*status) : protocol::kStatusUnsuccessful;
  SendMessage(response);
}

// --- GPADLs --------------------------------------------------------------------------------------

void VmbusServer::HandleGpadlHeader(const ParsedMessage& message) {
  const protocol::GpadlHeader& header = *message.As<protocol::GpadlHeader>();
  protocol::GpadlCreated created{};
  created.child_relid = header.child_relid;
  created.gpadl = header.gpadl;
  created.creation_status = protocol::kStatusUnsuccessful;
  Channel* channel = FindChannel(header.child_relid, "GPADL_HEADER");
  if (channel == nullptr) return SendMessage(created);
  for (const auto& [relid, other] : channels_) {
    if (other.gpadls.contains(header.gpadl)) {
      GuestError(fmt::format("GPADL_HEADER: GPADL id {} is already in use (channel {})",
                             header.gpadl, relid));
      return SendMessage(created);
    }
  }
  Gpadl& gpadl = channel->gpadls[header.gpadl];
  gpadl.range_count = header.range_count;
  gpadl.expected_words = header.range_buflen / 8;
  gpadl.words = message.words;
  if (gpadl.words.size() >= gpadl.expected_words) FinishGpadl(*channel, header.gpadl);
}

void VmbusServer::HandleGpadlBody(const ParsedMessage& message) {
  const protocol::GpadlBody& body = *message.As<protocol::GpadlBody>();
  for (auto& [relid, channel] : channels_) {
    auto it = channel.gpadls.find(body.gpadl);
    if (it == channel.gpadls.end()) continue;
    Gpadl& gpadl = it->second;
    if (gpadl.state != GpadlState::kInProgress) {
      GuestError(fmt::format("GPADL_BODY for GPADL {} which is already complete", body.gpadl));
      return;
    }
    const size_t take = std::min(message.words.size(), gpadl.expected_words - gpadl.words.size());
    gpadl.words.insert(gpadl.words.end(), message.words.begin(), message.words.begin() + take);
    if (gpadl.words.size() >= gpadl.expected_words) FinishGpadl(channel, body.gpadl);
    return;
  }
  GuestError(fmt::format("GPADL_BODY for unknown GPADL {}", body.gpadl));
}

void VmbusServer::FinishGpadl(Channel& channel, uint32_t gpadl_id) {
  Gpadl& gpadl = channel.gpadls[gpadl_id];
  protocol::GpadlCreated created{};
  created.child_relid = channel.relid;
  created.gpadl = gpadl_id;
  absl::Status valid = protocol::ValidateGpaRanges(gpadl.range_count, gpadl.words);
  if (!valid.ok()) {
    GuestError(fmt::format("GPADL {} on channel {}: {}", gpadl_id, channel.relid, valid.message()));
    channel.gpadls.erase(gpadl_id);
    created.creation_status = protocol::kStatusUnsuccessful;
    return SendMessage(created);
  }
  if (channel.revoked) {
    // A GPADL for a revoked channel succeeds at once: guests cope badly with a failure here,
    // and the device will never see it.
    gpadl.state = GpadlState::kAccepted;
    created.creation_status = protocol::kStatusSuccess;
    return SendMessage(created);
  }
  gpadl.state = GpadlState::kOffered;
  auto [rpc, reply] =
      MakeRpc<GpadlRequest, bool>(GpadlRequest{gpadl_id, gpadl.range_count, gpadl.words});
  if (!channel.requests.Send(CreateGpadl{std::move(rpc)}).ok()) {
    channel.gpadls.erase(gpadl_id);
    created.creation_status = protocol::kStatusUnsuccessful;
    return SendMessage(created);
  }
  AwaitGpadl(channel.relid, gpadl_id, std::move(reply));
}

hw::Task VmbusServer::AwaitGpadl(uint32_t relid, uint32_t gpadl_id, ReplyFuture<bool> reply) {
  std::shared_ptr<bool> alive = alive_;
  absl::StatusOr<bool> accepted = co_await reply.On(loop_);
  if (!*alive) co_return;
  auto channel = channels_.find(relid);
  if (channel == channels_.end()) co_return;
  protocol::GpadlCreated created{};
  created.child_relid = relid;
  created.gpadl = gpadl_id;
  if (accepted.ok() && *accepted) {
    channel->second.gpadls[gpadl_id].state = GpadlState::kAccepted;
    created.creation_status = protocol::kStatusSuccess;
  } else {
    channel->second.gpadls.erase(gpadl_id);
    created.creation_status = protocol::kStatusUnsuccessful;
  }
  SendMessage(created);
}

void VmbusServer::HandleGpadlTeardown(const protocol::GpadlTeardown& teardown) {
  Channel* channel = FindChannel(teardown.child_relid, "GPADL_TEARDOWN");
  if (channel == nullptr) return;
  auto it = channel->gpadls.find(teardown.gpadl);
  if (it == channel->gpadls.end()) {
    GuestError(fmt::format("GPADL_TEARDOWN: unknown GPADL {} on channel {}", teardown.gpadl,
                           teardown.child_relid));
    return;
  }
  if (it->second.state != GpadlState::kAccepted) {
    GuestError(
        fmt::format("GPADL_TEARDOWN: GPADL {} is not accepted (in progress or tearing "
                    "down)",
                    teardown.gpadl));
    return;
  }
  // Linux tears the ring GPADL down right after CLOSECHANNEL, before the close completes: the
  // device gets the close first (its requests are ordered), so only an open ring is refused.
  if (channel->ring_gpadl == teardown.gpadl &&
      (channel->state == ChannelState::kOpen || channel->state == ChannelState::kOpening)) {
    GuestError(fmt::format("GPADL_TEARDOWN: GPADL {} is the ring of open channel {}",
                           teardown.gpadl, teardown.child_relid));
    return;
  }
  if (channel->revoked) {
    channel->gpadls.erase(it);
    protocol::GpadlTorndown torndown{};
    torndown.gpadl = teardown.gpadl;
    return SendMessage(torndown);
  }
  it->second.state = GpadlState::kTearingDown;
  auto [rpc, reply] = MakeRpc<GpadlId, Unit>(teardown.gpadl);
  if (!channel->requests.Send(TeardownGpadl{std::move(rpc)}).ok()) {
    channel->gpadls.erase(it);
    protocol::GpadlTorndown torndown{};
    torndown.gpadl = teardown.gpadl;
    return SendMessage(torndown);
  }
  AwaitTeardown(teardown.child_relid, teardown.gpadl, std::move(reply));
}

hw::Task VmbusServer::AwaitTeardown(uint32_t relid, uint32_t gpadl_id, ReplyFuture<Unit> reply) {
  std::shared_ptr<bool> alive = alive_;
  (void)co_await reply.On(loop_);
  if (!*alive) co_return;
  auto channel = channels_.find(relid);
  if (channel != channels_.end()) channel->second.gpadls.erase(gpadl_id);
  protocol::GpadlTorndown torndown{};
  torndown.gpadl = gpadl_id;
  SendMessage(torndown);
}

// --- Revoke, release, unload -------------------------------------------------------------------

void VmbusServer::Revoke(uint32_t relid) {
  auto it = channels_.find(relid);
  if (it == channels_.end() || it->second.revoked) return;
  Channel& primary = it->second;
  // Subchannels before their primary.
  if (primary.params.subchannel_index == 0) {
    for (auto& [other_relid, other] : channels_) {
      if (other_relid != relid && other.params.subchannel_index != 0 &&
          other.params.instance_id == primary.params.instance_id &&
          other.params.interface_id == primary.params.interface_id) {
        Revoke(other_relid);
      }
    }
  }
  Channel& channel = channels_[relid];
  channel.revoked = true;
  if (channel.state != ChannelState::kClosed) {
    port_->SetEventTarget(channel.open_data.connection_id, nullptr);
    channel.state = ChannelState::kClosed;
  }
  UnwatchMonitor(channel);
  if (channel.monitor_id.has_value()) {
    monitor_ids_[*channel.monitor_id / 64] &= ~(uint64_t{1} << (*channel.monitor_id % 64));
    channel.monitor_id.reset();
  }
  if (channel.offered_to_guest && version_ != 0) {
    protocol::RescindChannelOffer rescind{};
    rescind.child_relid = relid;
    SendMessage(rescind);
  } else {
    HandleRelIdReleased(relid);  // The guest never saw it: release at once.
  }
}

void VmbusServer::HandleRelIdReleased(uint32_t relid) {
  auto it = channels_.find(relid);
  if (it == channels_.end()) {
    GuestError(fmt::format("RELID_RELEASED: unknown channel {}", relid));
    return;
  }
  if (!it->second.revoked) {
    GuestError(fmt::format("RELID_RELEASED: channel {} was not rescinded", relid));
    return;
  }
  channels_.erase(it);
  free_relids_.insert(std::lower_bound(free_relids_.begin(), free_relids_.end(), relid), relid);
}

void VmbusServer::HandleUnload() {
  paused_ = false;  // An unload ends a pause; what was held goes out first, then the answer.
  for (std::vector<uint8_t>& held : std::exchange(held_while_paused_, {})) Send(held);
  ResetConnection();
  SendMessage(protocol::UnloadResponse{});
  version_ = 0;
  features_ = 0;
}

void VmbusServer::ResetConnection() {
  std::vector<uint32_t> released;
  for (auto& [relid, channel] : channels_) {
    if (channel.state == ChannelState::kOpen || channel.state == ChannelState::kOpening) {
      auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
      (void)channel.requests.Send(CloseChannel{std::move(rpc)});
      port_->SetEventTarget(channel.open_data.connection_id, nullptr);
    }
    channel.state = ChannelState::kClosed;
    channel.ring_gpadl.reset();
    for (auto& [gpadl_id, gpadl] : channel.gpadls) {
      if (gpadl.state == GpadlState::kAccepted && !channel.revoked) {
        auto [rpc, reply] = MakeRpc<GpadlId, Unit>(gpadl_id);
        (void)channel.requests.Send(TeardownGpadl{std::move(rpc)});
      }
    }
    channel.gpadls.clear();
    channel.offered_to_guest = false;
    if (channel.revoked) released.push_back(relid);
  }
  for (uint32_t relid : released) {
    channels_.erase(relid);
    free_relids_.insert(std::lower_bound(free_relids_.begin(), free_relids_.end(), relid), relid);
  }
  offers_requested_ = false;
  monitor_.reset();  // The next INITIATE_CONTACT names the pages again.
  monitor_server_allocated_ = false;
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
}

void VmbusServer::HandleTlConnect(const protocol::TlConnectRequest& request) {
  HvSocketConnect connect;
  std::memcpy(&connect.endpoint_id, request.guest_endpoint_id.bytes, sizeof(Guid));
  std::memcpy(&connect.service_id, request.host_service_id.bytes, sizeof(Guid));
  std::memcpy(&connect.silo_id, request.silo_id.bytes, sizeof(Guid));
  if (options_.on_hvsocket_connect && options_.on_hvsocket_connect(connect)) {
    return;  // A listener offers the channel (instance = endpoint, interface = service).
  }
  Log(fmt::format("TL_CONNECT_REQUEST to service {}: no listener, refused",
                  connect.service_id.ToString()));
  protocol::TlConnectResult result{};
  result.endpoint_id = request.guest_endpoint_id;
  result.service_id = request.host_service_id;
  result.status = protocol::kStatusConnectionRefused;
  SendMessage(result);
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
