#include "paravisor/devices/echo_device.h"

#include <fmt/format.h>

#include "base/format.h"
#include "ring/errors.h"
#include "ring/ring.h"

namespace cvmbus::paravisor {

// One open of the channel: its rings, endpoints and wake-up fd. Shared by the echo task and
// the close path; the task owns the last reference while it runs.
struct EchoDevice::OpenChannelState {
  // The guest's doorbell and our own wake-ups. Shared with the server (the open's answer), so
  // the eventfd lives until the last of us lets go: nobody writes to a closed or reused fd.
  std::shared_ptr<hw::OwnedEventFdSignal> wake;
  int wake_fd() const { return wake->fd(); }
  ChannelRings rings;
  bool closing = false;
  bool stopped = false;  // The echo task has ended (a close, or a ring that broke).
  std::optional<Rpc<Unit, Unit>> close_rpc;  // Replied when the echo task has stopped.
};

EchoDevice::~EchoDevice() {
  *alive_ = false;
  if (open_) {  // Wake the echo task so it ends now instead of waiting on a ring nobody serves.
    open_->closing = true;
    (void)open_->wake->Raise();
  }
}

std::optional<ChannelTraffic> EchoDevice::traffic() const {
  if (!open_) return std::nullopt;
  return TrafficOf(open_->rings, params_.instance_id, params_.subchannel_index);
}

absl::Status EchoDevice::Offer() {
  auto [request_send, request_recv] = MakeChannel<ChannelRequest>();
  auto [server_send, server_recv] = MakeChannel<ChannelServerRequest>();
  absl::StatusOr<OfferResources> resources =
      bus_->AddChild(OfferInput{params_, std::move(request_send), std::move(server_recv)});
  if (!resources.ok()) return resources.status();
  resources_ = *std::move(resources);
  requests_ = std::make_unique<Receiver<ChannelRequest>>(std::move(request_recv));
  to_server_ = std::move(server_send);
  return absl::OkStatus();
}

absl::Status EchoDevice::Start() {
  if (absl::Status status = Offer(); !status.ok()) return status;
  ServeRequests();
  return absl::OkStatus();
}

absl::Status EchoDevice::StartRestored(bool was_open) {
  if (absl::Status status = Offer(); !status.ok()) return status;
  std::shared_ptr<OpenChannelState> channel;
  std::optional<OpenResult> open_result;
  if (was_open) {
    channel = NewChannelState();
    if (channel == nullptr) return absl::InternalError("echo device: eventfd failed");
    open_result = OpenResult{Interrupt(channel->wake)};
  }
  absl::Status asked = AskServerToRestore(
      loop_, *to_server_, std::move(open_result), &gpadls_, &stats_.gpadls, alive_,
      {.reopen =
           [this, channel](const OpenRequest& request) {
             stats_.last_open = request;
             if (absl::Status status = AttachRings(request, channel); !status.ok()) {
               stats_.last_error = status;  // A restore that cannot bring the rings back.
             }
           },
       .failed = [this](const absl::Status& status) { stats_.last_error = status; }});
  if (!asked.ok()) return asked;
  ServeRequests();
  return absl::OkStatus();
}

absl::Status EchoDevice::Revoke() {
  if (!to_server_.has_value()) return absl::FailedPreconditionError("echo device: not started");
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  return to_server_->Send(RevokeChannel{std::move(rpc)});
}

hw::Task EchoDevice::ServeRequests() {
  return ServeChannelRequests(loop_, requests_.get(), &gpadls_, &stats_.gpadls, alive_,
                              {.open = [this](const OpenRequest& request) { return Open(request); },
                               .close = [this](Rpc<Unit, Unit> rpc) { Close(std::move(rpc)); }});
}

std::shared_ptr<EchoDevice::OpenChannelState> EchoDevice::NewChannelState() {
  absl::StatusOr<std::shared_ptr<hw::OwnedEventFdSignal>> wake = hw::OwnedEventFdSignal::Create();
  if (!wake.ok()) return nullptr;
  auto channel = std::make_shared<OpenChannelState>();
  channel->wake = *std::move(wake);
  return channel;
}

std::optional<OpenResult> EchoDevice::Open(const OpenRequest& request) {
  ++stats_.opens;
  stats_.last_open = request;
  if (open_) {
    stats_.last_error = absl::FailedPreconditionError("echo device: already open");
    return std::nullopt;
  }
  std::shared_ptr<OpenChannelState> channel = NewChannelState();
  if (channel == nullptr) {
    stats_.last_error = absl::InternalError("echo device: eventfd failed");
    return std::nullopt;
  }
  if (absl::Status status = AttachRings(request, channel); !status.ok()) {
    stats_.last_error = status;
    return std::nullopt;
  }
  stats_.last_error = absl::OkStatus();
  return OpenResult{Interrupt(channel->wake)};
}

absl::Status EchoDevice::AttachRings(const OpenRequest& request,
                                     std::shared_ptr<OpenChannelState> channel) {
  absl::StatusOr<ChannelRings> rings =
      OpenChannelRings("echo device", loop_, *resources_, gpadls_, request, channel->wake_fd());
  if (!rings.ok()) return rings.status();
  stats_.ring_view = rings->ring_memory.view();
  stats_.data_view = rings->data_memory.view();
  channel->rings = *std::move(rings);
  open_ = channel;
  Echo(channel);
  return absl::OkStatus();
}

void EchoDevice::Close(Rpc<Unit, Unit> rpc) {
  ++stats_.closes;
  if (!open_) {
    std::move(rpc).Reply(Unit{});
    return;
  }
  if (open_->stopped) {
    // The task gave up on a broken ring already: nothing is using the rings any more.
    open_.reset();
    std::move(rpc).Reply(Unit{});
    return;
  }
  open_->closing = true;
  open_->close_rpc = std::move(rpc);
  (void)open_->wake->Raise();  // Wake the echo task so it sees `closing`.
  open_.reset();
}

hw::Task EchoDevice::Echo(std::shared_ptr<OpenChannelState> channel) {
  std::shared_ptr<bool> alive = alive_;
  ring::PacketBuffer buffer;
  while (!channel->closing) {
    absl::Status readable = co_await channel->rings.reader->Readable();
    if (!*alive) co_return;
    if (!readable.ok() || channel->closing) {
      if (!readable.ok()) stats_.last_error = readable;
      break;
    }
    uint32_t unreleased = 0;
    while (!channel->closing) {
      absl::StatusOr<bool> got = channel->rings.reader->ring().Read(&buffer);
      if (!got.ok()) {
        stats_.last_error = got.status();  // A corrupt ring: stop serving it.
        channel->closing = true;
        break;
      }
      if (!*got) break;
      const ring::Packet& packet = buffer.packet();
      // A completion is owed only where the sender asked for one (VMBus's
      // COMPLETION_REQUESTED flag, as Linux's vmbus_sendpacket sets it): other packets are
      // consumed and counted, which is a one-way channel.
      // Release space in slices of 1/8 ring while draining, so a guest waiting for space
      // (pending_send_sz) is woken while we drain instead of after.
      unreleased += static_cast<uint32_t>(packet.payload.size()) + 24;
      if (unreleased >= channel->rings.reader->ring().data_size() / 8) {
        (void)channel->rings.reader->Release();
        unreleased = 0;
      }
      if ((packet.flags & ring::kFlagCompletionRequested) == 0) {
        ++stats_.packets_consumed;
        continue;
      }
      const ring::OutgoingPacket answer{.type = ring::PacketType::kCompletion,
                                        .transaction_id = packet.transaction_id,
                                        .payload = packet.payload};
      const uint32_t needed = static_cast<uint32_t>(packet.payload.size()) + 24;
      bool written = false;
      while (!channel->closing) {
        absl::Status appended = channel->rings.writer->ring().Append(answer);
        if (appended.ok()) {
          written = true;
          break;
        }
        if (!ring::IsRingError(appended, ring::RingError::kFull)) {
          stats_.last_error = appended;  // A corrupt ring: stop serving it.
          channel->closing = true;
          break;
        }
        (void)channel->rings.writer->Flush();
        absl::Status writable = co_await channel->rings.writer->Writable(needed);
        if (!*alive) co_return;
        if (!writable.ok()) {
          stats_.last_error = writable;
          channel->closing = true;
        }
      }
      if (!written) break;
      ++stats_.packets_echoed;
    }
    (void)channel->rings.reader->Release();
    (void)channel->rings.writer->Flush();
  }
  channel->stopped = true;
  if (channel->close_rpc.has_value()) std::move(*channel->close_rpc).Reply(Unit{});
}

}  // namespace cvmbus::paravisor
