#include "paravisor/devices/ic/ic_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <utility>

#include "base/format.h"
#include "hw/uring/signal.h"
#include "paravisor/devices/ic/ic_negotiation.h"
#include "ring/errors.h"

namespace cvmbus::paravisor::ic {
namespace {

// Timed-out transaction ids remembered, so that their late answers are told apart from
// answers to requests we never sent.
constexpr size_t kRememberedTimeouts = 64;

}  // namespace

std::string_view IcChannelStateName(IcChannelState state) {
  switch (state) {
    case IcChannelState::kClosed:
      return "closed";
    case IcChannelState::kNegotiating:
      return "negotiating";
    case IcChannelState::kReady:
      return "ready";
    case IcChannelState::kNegotiationFailed:
      return "negotiation failed";
    case IcChannelState::kNegotiationTimedOut:
      return "negotiation timed out";
    case IcChannelState::kRingFailed:
      return "ring failed";
  }
  return "unknown";
}

// One open of the channel. Shared by the serve task and the close path; the task holds the
// last reference while it runs.
struct IcDevice::OpenChannelState {
  // The guest's doorbell and our own wake-up; shared with the server, so the eventfd lives
  // until the last holder lets go.
  std::shared_ptr<hw::OwnedEventFdSignal> wake;
  ChannelRings rings;
  bool closing = false;                      // The serve task must stop.
  bool task_done = false;                    // The serve task has stopped.
  std::optional<Rpc<Unit, Unit>> close_rpc;  // Replied once the serve task has stopped.
};

std::optional<ChannelTraffic> IcDevice::traffic() const {
  if (!open_) return std::nullopt;
  return TrafficOf(open_->rings, options_.instance_id, 0);
}

IcDevice::IcDevice(hw::EventLoop* loop, ParentBus* bus, IcDeviceOptions options)
    : loop_(loop), bus_(bus), options_(std::move(options)) {}

IcDevice::~IcDevice() {
  *alive_ = false;
  // Handlers belong to the (already destroyed) service: drop them uncalled.
  for (auto& [id, outstanding] : outstanding_) loop_->CancelTimer(outstanding.timer);
  outstanding_.clear();
  if (open_) {  // Wake the serve task so it ends now.
    open_->closing = true;
    (void)open_->wake->Raise();
  }
}

absl::Status IcDevice::Start() {
  if (absl::Status status = Offer(); !status.ok()) return status;
  ServeRequests();
  return absl::OkStatus();
}

absl::Status IcDevice::Offer() {
  auto [request_send, request_recv] = MakeChannel<ChannelRequest>();
  auto [server_send, server_recv] = MakeChannel<ChannelServerRequest>();
  OfferParams params{.interface_name = options_.name,
                     .instance_id = options_.instance_id,
                     .interface_id = options_.interface_id,
                     // Hyper-V offers ICs as message-mode pipes (OpenVMM: ChannelType::Pipe
                     // with message_mode); Linux binds hv_utils by the class GUID alone.
                     .channel_type = DeviceChannel{.pipe_packets = true}};
  absl::StatusOr<OfferResources> resources = bus_->AddChild(
      OfferInput{std::move(params), std::move(request_send), std::move(server_recv)});
  if (!resources.ok()) return resources.status();
  resources_ = *std::move(resources);
  requests_ = std::make_unique<Receiver<ChannelRequest>>(std::move(request_recv));
  to_server_ = std::move(server_send);
  return absl::OkStatus();
}

absl::Status IcDevice::StartRestored(bool was_open) {
  if (absl::Status status = Offer(); !status.ok()) return status;
  // A random multiple of 2^32: far from where the old device's ids (from 1) could have got to.
  next_transaction_id_ = (std::random_device{}() | uint64_t{1}) << 32;
  std::shared_ptr<OpenChannelState> channel;
  std::optional<OpenResult> open_result;
  if (was_open) {
    channel = NewChannelState();
    if (channel == nullptr) {
      return absl::InternalError(fmt::format("{}: eventfd failed", options_.name));
    }
    open_result = OpenResult{Interrupt(channel->wake)};
  }
  absl::Status asked = AskServerToRestore(
      loop_, *to_server_, std::move(open_result), &gpadls_, &ic_stats_.gpadls, alive_,
      {.reopen =
           [this, channel](const OpenRequest& request) {
             ++ic_stats_.opens;
             if (absl::Status status = AttachAndNegotiate(request, channel); !status.ok()) {
               ic_stats_.last_error = status;  // A restore that cannot bring the rings back.
             }
           },
       .failed = [this](const absl::Status& status) { ic_stats_.last_error = status; }});
  if (!asked.ok()) return asked;
  ServeRequests();
  return absl::OkStatus();
}

std::shared_ptr<IcDevice::OpenChannelState> IcDevice::NewChannelState() {
  absl::StatusOr<std::shared_ptr<hw::OwnedEventFdSignal>> wake = hw::OwnedEventFdSignal::Create();
  if (!wake.ok()) return nullptr;
  auto channel = std::make_shared<OpenChannelState>();
  channel->wake = *std::move(wake);
  return channel;
}

absl::Status IcDevice::Revoke() {
  if (!to_server_.has_value()) {
    return absl::FailedPreconditionError(fmt::format("{}: not started", options_.name));
  }
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  return to_server_->Send(RevokeChannel{std::move(rpc)});
}

hw::Task IcDevice::ServeRequests() {
  return ServeChannelRequests(loop_, requests_.get(), &gpadls_, &ic_stats_.gpadls, alive_,
                              {.open = [this](const OpenRequest& request) { return Open(request); },
                               .close = [this](Rpc<Unit, Unit> rpc) { Close(std::move(rpc)); }});
}

std::optional<OpenResult> IcDevice::Open(const OpenRequest& request) {
  ++ic_stats_.opens;
  if (open_) {
    ic_stats_.last_error =
        absl::FailedPreconditionError(fmt::format("{}: already open", options_.name));
    return std::nullopt;
  }
  std::shared_ptr<OpenChannelState> channel = NewChannelState();
  if (channel == nullptr) {
    ic_stats_.last_error = absl::InternalError(fmt::format("{}: eventfd failed", options_.name));
    return std::nullopt;
  }
  if (absl::Status status = AttachAndNegotiate(request, channel); !status.ok()) {
    ic_stats_.last_error = status;
    return std::nullopt;
  }
  return OpenResult{Interrupt(channel->wake)};
}

absl::Status IcDevice::AttachAndNegotiate(const OpenRequest& request,
                                          std::shared_ptr<OpenChannelState> channel) {
  absl::StatusOr<ChannelRings> rings =
      OpenChannelRings(options_.name, loop_, *resources_, gpadls_, request, channel->wake->fd());
  if (!rings.ok()) return rings.status();
  channel->rings = *std::move(rings);
  open_ = channel;
  ic_stats_.state = IcChannelState::kNegotiating;
  ic_stats_.versions.reset();
  Serve(channel);
  // NEGOTIATE goes out after the open's reply, as a host speaks once the channel is open.
  loop_->Post([this, alive = alive_, weak = std::weak_ptr<OpenChannelState>(channel)] {
    if (!*alive) return;
    std::shared_ptr<OpenChannelState> current = weak.lock();
    if (current != nullptr && current == open_ && !current->closing) Negotiate();
  });
  return absl::OkStatus();
}

void IcDevice::Close(Rpc<Unit, Unit> rpc) {
  ++ic_stats_.closes;
  if (!open_) {
    std::move(rpc).Reply(Unit{});
    return;
  }
  std::shared_ptr<OpenChannelState> channel = std::move(open_);
  open_.reset();
  channel->closing = true;
  if (channel->task_done) {
    std::move(rpc).Reply(Unit{});
  } else {
    channel->close_rpc = std::move(rpc);
    (void)channel->wake->Raise();  // Wake the serve task so it sees `closing`.
  }
  EndChannel(IcChannelState::kClosed,
             absl::CancelledError(fmt::format("{}: the channel closed", options_.name)));
}

void IcDevice::EndChannel(IcChannelState state, const absl::Status& why) {
  ic_stats_.state = state;
  ic_stats_.versions.reset();
  std::map<uint64_t, Outstanding> ended = std::move(outstanding_);
  outstanding_.clear();
  timed_out_.clear();
  for (auto& [id, outstanding] : ended) {
    loop_->CancelTimer(outstanding.timer);
    outstanding.done(why);
  }
  OnClosed();
}

void IcDevice::Negotiate() {
  const std::vector<uint8_t> payload =
      BuildNegotiateRequest({.framework_versions = kHostFrameworkVersions,
                             .message_versions = options_.message_versions});
  absl::Status sent = SendRaw(kMessageTypeNegotiate, payload,
                              [this](absl::StatusOr<absl::Span<const uint8_t>> answer) {
                                OnNegotiateAnswer(std::move(answer));
                              });
  if (!sent.ok()) {
    ic_stats_.state = IcChannelState::kNegotiationFailed;
    ic_stats_.last_error = sent;
  }
}

void IcDevice::OnNegotiateAnswer(absl::StatusOr<absl::Span<const uint8_t>> answer) {
  if (!answer.ok()) {
    if (absl::IsCancelled(answer.status())) return;  // Closed: EndChannel set the state.
    ic_stats_.state = absl::IsDeadlineExceeded(answer.status())
                          ? IcChannelState::kNegotiationTimedOut
                          : IcChannelState::kNegotiationFailed;
    ic_stats_.last_error = answer.status();
    return;
  }
  absl::StatusOr<IcVersions> versions =
      ParseNegotiateResponse(*answer, {.framework_versions = kHostFrameworkVersions,
                                       .message_versions = options_.message_versions});
  if (!versions.ok()) {
    ic_stats_.state = IcChannelState::kNegotiationFailed;
    // "No common version" is a well-formed answer; anything else is a bad packet.
    if (IsIcError(versions.status(), IcError::kNoCommonVersion)) {
      ic_stats_.last_error = versions.status();
    } else {
      Reject(versions.status());
    }
    return;
  }
  ic_stats_.state = IcChannelState::kReady;
  ic_stats_.versions = *versions;
  ++ic_stats_.negotiations;
  OnReady();
}

absl::Status IcDevice::SendRequest(uint16_t message_type, absl::Span<const uint8_t> body,
                                   ResponseHandler done) {
  if (ic_stats_.state != IcChannelState::kReady) {
    return absl::FailedPreconditionError(
        fmt::format("{}: not ready ({})", options_.name, IcChannelStateName(ic_stats_.state)));
  }
  const std::vector<uint8_t> payload = EncodeIcRequest(message_type, versions(), body);
  return SendRaw(message_type, payload,
                 [this, message_type,
                  done = std::move(done)](absl::StatusOr<absl::Span<const uint8_t>> answer) {
                   if (!answer.ok()) {
                     done(answer.status());
                     return;
                   }
                   absl::StatusOr<IcResponse> response = ParseIcResponse(*answer, message_type);
                   if (!response.ok()) Reject(response.status());
                   done(std::move(response));
                 });
}

absl::Status IcDevice::SendRaw(uint16_t message_type, const std::vector<uint8_t>& payload,
                               RawHandler done) {
  if (!open_ || open_->closing) {
    return absl::FailedPreconditionError(fmt::format("{}: the channel is not open", options_.name));
  }
  const uint64_t id = next_transaction_id_++;
  absl::StatusOr<hw::EventLoop::Id> timer =
      StartTimer(options_.response_timeout, [this, id] { OnTimeout(id); });
  if (!timer.ok()) return timer.status();
  // No completion requested: the guest's answer is an in-band packet of its own that echoes
  // the transaction id (Linux: vmbus_sendpacket(..., requestid, VM_PKT_DATA_INBAND, 0)).
  const ring::OutgoingPacket packet{
      .type = ring::PacketType::kDataInBand, .transaction_id = id, .payload = payload};
  hw::RingWriter& writer = *open_->rings.writer;
  if (absl::Status appended = writer.ring().Append(packet); !appended.ok()) {
    loop_->CancelTimer(*timer);
    ++ic_stats_.send_failures;
    if (ring::IsRingError(appended, ring::RingError::kFull)) {
      return absl::ResourceExhaustedError(fmt::format(
          "{}: the host -> guest ring is full (type {} request)", options_.name, message_type));
    }
    return appended;
  }
  outstanding_[id] =
      Outstanding{.message_type = message_type, .done = std::move(done), .timer = *timer};
  ++ic_stats_.requests_sent;
  // The packet is in the ring either way; a failed signal is reported, and the timeout bounds
  // the wait.
  if (absl::Status flushed = writer.Flush(); !flushed.ok()) ic_stats_.last_error = flushed;
  return absl::OkStatus();
}

hw::Task IcDevice::Serve(std::shared_ptr<OpenChannelState> channel) {
  std::shared_ptr<bool> alive = alive_;
  ring::PacketBuffer buffer;
  while (!channel->closing) {
    absl::Status readable = co_await channel->rings.reader->Readable();
    if (!*alive) co_return;
    if (channel->closing) break;
    absl::Status failed = readable;
    while (failed.ok() && !channel->closing) {
      absl::StatusOr<bool> got = channel->rings.reader->ring().Read(&buffer);
      if (!got.ok()) {
        failed = got.status();
        break;
      }
      if (!*got) break;
      HandlePacket(buffer.packet());
      if (!*alive) co_return;
    }
    if (!failed.ok()) {
      // A corrupt ring is not trusted again: stop until the guest closes the channel.
      channel->closing = true;
      if (channel == open_) {
        ic_stats_.last_error = failed;
        EndChannel(IcChannelState::kRingFailed, failed);
      }
      break;
    }
    (void)channel->rings.reader->Release();
  }
  channel->task_done = true;
  if (channel->close_rpc.has_value()) std::move(*channel->close_rpc).Reply(Unit{});
}

void IcDevice::HandlePacket(const ring::Packet& packet) {
  if (packet.type != ring::PacketType::kDataInBand) {
    Reject(MakeIcError(IcError::kNotInBand,
                       fmt::format("{}: packet type {} with transaction id {}", options_.name,
                                   static_cast<int>(packet.type), packet.transaction_id)));
    return;
  }
  auto found = outstanding_.find(packet.transaction_id);
  if (found == outstanding_.end()) {
    if (std::find(timed_out_.begin(), timed_out_.end(), packet.transaction_id) !=
        timed_out_.end()) {
      ++ic_stats_.late_responses;
      return;
    }
    ++ic_stats_.unknown_transactions;
    Reject(MakeIcError(IcError::kUnknownTransaction,
                       fmt::format("{}: transaction id {} matches no outstanding request",
                                   options_.name, packet.transaction_id)));
    return;
  }
  Outstanding outstanding = std::move(found->second);
  outstanding_.erase(found);
  loop_->CancelTimer(outstanding.timer);
  ++ic_stats_.responses;
  outstanding.done(packet.payload);
}

void IcDevice::OnTimeout(uint64_t transaction_id) {
  auto found = outstanding_.find(transaction_id);
  if (found == outstanding_.end()) return;
  Outstanding outstanding = std::move(found->second);
  outstanding_.erase(found);
  ++ic_stats_.timeouts;
  timed_out_.push_back(transaction_id);
  if (timed_out_.size() > kRememberedTimeouts) timed_out_.pop_front();
  outstanding.done(absl::DeadlineExceededError(fmt::format(
      "{}: no answer to request {} (type {}) within {} ms", options_.name, transaction_id,
      outstanding.message_type,
      std::chrono::duration_cast<std::chrono::milliseconds>(options_.response_timeout).count())));
}

void IcDevice::RejectResponse(absl::Status error) { Reject(std::move(error)); }

void IcDevice::Reject(absl::Status error) {
  ++ic_stats_.bad_packets;
  ic_stats_.last_error = std::move(error);
}

absl::StatusOr<hw::EventLoop::Id> IcDevice::StartTimer(std::chrono::nanoseconds delay,
                                                       std::function<void()> fn) {
  return loop_->AddTimer(delay, [alive = alive_, fn = std::move(fn)] {
    if (*alive) fn();
  });
}

void IcDevice::CancelTimer(hw::EventLoop::Id id) {
  if (id != 0) loop_->CancelTimer(id);
}

}  // namespace cvmbus::paravisor::ic
