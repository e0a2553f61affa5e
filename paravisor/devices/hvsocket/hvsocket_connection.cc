#include "paravisor/devices/hvsocket/hvsocket_connection.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "hw/uring/ring_endpoint.h"
#include "paravisor/devices/hvsocket/hvsocket_protocol.h"
#include "ring/errors.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::hvsocket {
namespace {

// The guest's doorbell: one raise wakes both pumps, each on its own eventfd. Any thread (the
// SynIC raises it on the guest's).
class FanOutSignal : public hw::Signal {
 public:
  FanOutSignal(std::shared_ptr<hw::Signal> first, std::shared_ptr<hw::Signal> second)
      : first_(std::move(first)), second_(std::move(second)) {}
  absl::Status Raise() override {
    absl::Status first = first_->Raise();
    absl::Status second = second_->Raise();
    return first.ok() ? second : first;
  }

 private:
  std::shared_ptr<hw::Signal> first_;
  std::shared_ptr<hw::Signal> second_;
};

// The data one packet to the guest carries: at most the MTU, and at most half the ring, so the
// guest drains one packet while we fill the next.
uint32_t ChunkBytes(uint32_t ring_data_bytes) {
  const uint32_t half = ring_data_bytes / 2;
  const uint32_t overhead = PacketBytes(0);
  const uint32_t chunk = half > overhead + 8 ? (half - overhead) & ~uint32_t{7} : 8;
  return std::min(chunk, kMtuBytes);
}

}  // namespace

const char* ConnectionEndName(ConnectionEnd end) {
  switch (end) {
    case ConnectionEnd::kRunning:
      return "running";
    case ConnectionEnd::kClosed:
      return "closed";
    case ConnectionEnd::kGuestClosed:
      return "guest closed the channel";
    case ConnectionEnd::kRevoked:
      return "revoked by the server";
    case ConnectionEnd::kHostError:
      return "host socket failed";
    case ConnectionEnd::kGuestError:
      return "guest broke the protocol";
    case ConnectionEnd::kOpenTimeout:
      return "guest did not open the channel";
    case ConnectionEnd::kConnectFailed:
      return "host socket refused the connection";
    case ConnectionEnd::kRelayStopped:
      return "relay stopped";
  }
  return "?";
}

HvSocketConnection::HvSocketConnection(hw::EventLoop* loop, Params params)
    : loop_(loop), params_(std::move(params)) {
  stats_.id = params_.id;
  if (const auto* type = std::get_if<HvSocketChannel>(&params_.offer.channel_type)) {
    stats_.host_initiated = type->is_connect;
  }
  stats_.service_id = params_.offer.interface_id;
  stats_.instance_id = params_.offer.instance_id;
  stats_.socket_path = params_.socket_path;
  socket_ = std::move(params_.socket);
  params_.socket.reset();
}

// The open timer holds only a weak reference: it need not be cancelled here (which could run
// inside the loop's own teardown).
HvSocketConnection::~HvSocketConnection() = default;

absl::StatusOr<std::shared_ptr<HvSocketConnection>> HvSocketConnection::Start(hw::EventLoop* loop,
                                                                              ParentBus* bus,
                                                                              Params params) {
  if (!std::holds_alternative<HvSocketChannel>(params.offer.channel_type)) {
    return absl::InvalidArgumentError("hvsocket connection: the offer is not an hvsocket");
  }
  std::shared_ptr<HvSocketConnection> self(new HvSocketConnection(loop, std::move(params)));
  auto to_host_wake = hw::OwnedEventFdSignal::Create();
  if (!to_host_wake.ok()) return to_host_wake.status();
  auto to_guest_wake = hw::OwnedEventFdSignal::Create();
  if (!to_guest_wake.ok()) return to_guest_wake.status();
  self->to_host_wake_ = *std::move(to_host_wake);
  self->to_guest_wake_ = *std::move(to_guest_wake);

  auto [request_send, request_recv] = MakeChannel<ChannelRequest>();
  auto [server_send, server_recv] = MakeChannel<ChannelServerRequest>();
  absl::StatusOr<OfferResources> resources = bus->AddChild(
      OfferInput{self->params_.offer, std::move(request_send), std::move(server_recv)});
  if (!resources.ok()) return resources.status();
  self->resources_ = *std::move(resources);
  self->requests_ = std::make_unique<Receiver<ChannelRequest>>(std::move(request_recv));
  self->to_server_ = std::move(server_send);

  std::weak_ptr<HvSocketConnection> weak = self;
  absl::StatusOr<hw::EventLoop::Id> timer = loop->AddTimer(self->params_.open_timeout, [weak] {
    std::shared_ptr<HvSocketConnection> connection = weak.lock();
    if (connection == nullptr) return;
    connection->open_timer_.reset();
    if (!connection->stats_.opened) {
      connection->Abort(
          ConnectionEnd::kOpenTimeout,
          absl::DeadlineExceededError("hvsocket: the guest did not open the channel"));
    }
  });
  if (timer.ok()) self->open_timer_ = *timer;
  self->ServeRequests(self);
  return self;
}

hw::Task HvSocketConnection::ServeRequests(
    [[maybe_unused]] std::shared_ptr<HvSocketConnection> self) {  // Keeps us alive.
  while (true) {
    std::optional<ChannelRequest> request = co_await requests_->Next(loop_);
    if (!request.has_value()) break;
    if (auto* gpadl = std::get_if<CreateGpadl>(&*request)) {
      std::move(gpadl->rpc).Reply(gpadls_.Accept(gpadl->rpc.input()));
    } else if (auto* teardown = std::get_if<TeardownGpadl>(&*request)) {
      gpadls_.Remove(teardown->rpc.input());
      std::move(teardown->rpc).Reply(Unit{});
    } else if (auto* open = std::get_if<OpenChannel>(&*request)) {
      std::optional<OpenResult> result = Open(open->rpc.input());
      const bool failed = !result.has_value();
      std::move(open->rpc).Reply(std::move(result));
      // A failed open is answered first, then the channel goes: the guest's socket waits for
      // the rescind (Linux ignores TL_CONNECT_RESULT), so it must come.
      if (failed && pumps_running_ == 0 && ended()) Revoke();
    } else if (auto* close = std::get_if<CloseChannel>(&*request)) {
      Close(std::move(close->rpc));
    } else if (auto* modify = std::get_if<ModifyChannel>(&*request)) {
      std::move(modify->rpc).Reply(0);
    }
  }
  requests_ended_ = true;
  Abort(ConnectionEnd::kRevoked, absl::OkStatus());  // Nothing if it had ended already.
  MaybeFinish();
}

std::optional<OpenResult> HvSocketConnection::Open(const OpenRequest& request) {
  if (stats_.opened || ended()) return std::nullopt;  // One open per connection.
  if (!socket_.has_value()) {
    // Guest-initiated: connect only now, as OpenVMM does, so the host program never sees a
    // connection the guest could not open. An AF_UNIX connect answers at once.
    absl::StatusOr<hw::UnixStream> socket = hw::UnixStream::Connect(params_.socket_path);
    if (!socket.ok()) {
      stats_.end = ConnectionEnd::kConnectFailed;
      stats_.error = socket.status();
      stopping_ = true;
      return std::nullopt;
    }
    socket_ = *std::move(socket);
  }
  absl::StatusOr<ChannelRings> rings =
      OpenChannelRings("hvsocket", loop_, *resources_, gpadls_, request, to_host_wake_->fd());
  if (!rings.ok()) {
    stats_.end = ConnectionEnd::kGuestError;
    stats_.error = rings.status();
    stopping_ = true;
    socket_->Abort();
    return std::nullopt;
  }
  rings_ = *std::move(rings);
  stats_.opened = true;
  if (open_timer_.has_value()) loop_->CancelTimer(*std::exchange(open_timer_, std::nullopt));
  pumps_running_ = 2;
  PumpToHost(shared_from_this());
  PumpToGuest(shared_from_this());
  return OpenResult{Interrupt(std::make_shared<FanOutSignal>(to_host_wake_, to_guest_wake_))};
}

void HvSocketConnection::Close(Rpc<Unit, Unit> rpc) {
  if (pumps_running_ == 0) {
    std::move(rpc).Reply(Unit{});
    return;
  }
  close_rpc_ = std::move(rpc);
  // Stops the pumps even if the connection had ended for another reason already.
  Abort(ConnectionEnd::kGuestClosed, absl::OkStatus());
}

void HvSocketConnection::Abort(ConnectionEnd end, absl::Status why) {
  if (finished_) return;
  if (!ended()) {
    stats_.end = end;
    stats_.error = std::move(why);
  }
  stopping_ = true;
  if (socket_.has_value()) socket_->Abort();
  if (pumps_running_ > 0) {
    WakePumps();
    return;
  }
  if (!requests_ended_ && stats_.end != ConnectionEnd::kGuestClosed) Revoke();
}

void HvSocketConnection::WakePumps() {
  (void)to_host_wake_->Raise();
  (void)to_guest_wake_->Raise();
}

void HvSocketConnection::PumpStopped() {
  if (--pumps_running_ > 0) return;
  std::shared_ptr<HvSocketConnection> self = shared_from_this();  // on_finished may drop ours.
  if (!ended()) stats_.end = ConnectionEnd::kClosed;              // Both pumps saw their FIN.
  stopping_ = true;
  if (socket_.has_value()) socket_->Abort();
  if (close_rpc_.has_value()) {
    std::move(*close_rpc_).Reply(Unit{});  // Nothing touches the rings any more.
    close_rpc_.reset();
  } else if (!requests_ended_) {
    Revoke();
  }
  MaybeFinish();
}

void HvSocketConnection::Revoke() {
  if (revoke_sent_ || !to_server_.has_value()) return;
  revoke_sent_ = true;
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  (void)to_server_->Send(RevokeChannel{std::move(rpc)});
}

void HvSocketConnection::MaybeFinish() {
  if (finished_ || !requests_ended_ || pumps_running_ > 0) return;
  std::shared_ptr<HvSocketConnection> self = shared_from_this();
  finished_ = true;
  if (open_timer_.has_value()) loop_->CancelTimer(*std::exchange(open_timer_, std::nullopt));
  socket_.reset();
  rings_.reset();
  if (params_.on_finished) params_.on_finished(stats_);
}

hw::Task HvSocketConnection::PumpToHost(
    [[maybe_unused]] std::shared_ptr<HvSocketConnection> self) {  // Keeps us alive.
  // Host-initiated: the host program learns the guest accepted before any stream byte.
  size_t replied = 0;
  while (replied < params_.open_reply.size()) {
    const auto* reply = reinterpret_cast<const uint8_t*>(params_.open_reply.data());
    absl::StatusOr<size_t> wrote = co_await socket_->Write(
        loop_, absl::MakeConstSpan(reply, params_.open_reply.size()).subspan(replied));
    if (stopping_) break;
    if (!wrote.ok()) {
      Abort(ConnectionEnd::kHostError, wrote.status());
      break;
    }
    replied += *wrote;
  }
  ring::PacketBuffer buffer;
  hw::RingReader& reader = *rings_->reader;
  bool done = stopping_;
  while (!done) {
    absl::Status readable = co_await reader.Readable();
    if (stopping_) break;
    if (!readable.ok()) {
      Abort(ConnectionEnd::kGuestError, readable);
      break;
    }
    while (!done) {
      absl::StatusOr<bool> got = reader.ring().Read(&buffer);  // A private copy.
      if (!got.ok()) {
        Abort(ConnectionEnd::kGuestError, got.status());
        done = true;
        break;
      }
      if (!*got) break;
      ++stats_.packets_from_guest;
      absl::StatusOr<PipeData> data = ParsePipePacket(buffer.packet());
      if (!data.ok()) {
        Abort(ConnectionEnd::kGuestError, data.status());
        done = true;
        break;
      }
      if (data->fin()) {
        (void)reader.Release();
        stats_.guest_fin = true;
        if (absl::Status shut = socket_->ShutdownWrite(); !shut.ok()) {
          Abort(ConnectionEnd::kHostError, shut);
        }
        done = true;
        break;
      }
      // The next packet is read only once the socket took this one: the host's back-pressure
      // reaches the guest through the ring.
      size_t sent = 0;
      while (sent < data->data.size()) {
        absl::StatusOr<size_t> wrote = co_await socket_->Write(loop_, data->data.subspan(sent));
        if (stopping_) {
          done = true;
          break;
        }
        if (!wrote.ok()) {
          Abort(ConnectionEnd::kHostError, wrote.status());
          done = true;
          break;
        }
        sent += *wrote;
      }
      if (done) break;
      stats_.bytes_to_host += sent;
      (void)reader.Release();  // Frees the ring space; signals a guest waiting for it.
    }
    if (!stopping_) (void)reader.Release();
  }
  PumpStopped();
}

hw::Task HvSocketConnection::PumpToGuest(
    [[maybe_unused]] std::shared_ptr<HvSocketConnection> self) {  // Keeps us alive.
  hw::RingWriter& writer = *rings_->writer;
  const uint32_t chunk = ChunkBytes(writer.ring().data_size());
  // [pipe header][data]: one contiguous payload for the ring.
  std::vector<uint8_t> packet(sizeof(PipeHeader) + chunk);
  std::vector<uint8_t> early = std::move(params_.early_bytes);
  size_t early_sent = 0;
  std::optional<uint32_t> ready;  // Data waiting in `packet` for ring space.
  bool eof = false;
  while (!stopping_) {
    const uint32_t needed = PacketBytes(ready.value_or(eof ? 0 : chunk));
    // Wait for room for the next packet before reading the socket: a guest that does not
    // read leaves the host's bytes in the socket.
    absl::StatusOr<uint32_t> free_bytes = writer.ring().FreeBytes();
    if (!free_bytes.ok()) {
      Abort(ConnectionEnd::kGuestError, free_bytes.status());
      break;
    }
    if (*free_bytes <= needed) {
      (void)writer.Flush();  // End the burst: a guest asleep must see what we wrote.
      absl::StatusOr<bool> fits = writer.ring().RequestSpace(needed);
      if (!fits.ok()) {
        Abort(ConnectionEnd::kGuestError, fits.status());
        break;
      }
      if (!*fits) {
        // The guest signals once `needed` fits (pending_send_sz). Our own eventfd.
        (void)co_await loop_->Readable(to_guest_wake_->fd());
        hw::DrainEventFd(to_guest_wake_->fd());
      }
      continue;
    }
    if (ready.has_value() || eof) {
      const uint32_t data_bytes = ready.value_or(0);
      const PipeHeader header = DataHeader(data_bytes);
      std::memcpy(packet.data(), &header, sizeof(header));
      const ring::OutgoingPacket out{
          .type = ring::PacketType::kDataInBand,
          .payload = absl::MakeConstSpan(packet).subspan(0, sizeof(header) + data_bytes)};
      absl::Status appended = writer.ring().Append(out);
      if (ring::IsRingError(appended, ring::RingError::kFull)) continue;  // Wait again.
      if (!appended.ok()) {
        Abort(ConnectionEnd::kGuestError, appended);
        break;
      }
      (void)writer.Publish();
      ++stats_.packets_to_guest;
      stats_.bytes_to_guest += data_bytes;
      ready.reset();
      if (eof) {
        (void)writer.Flush();
        stats_.host_fin = true;
        break;
      }
      continue;
    }
    if (early_sent < early.size()) {  // What the host sent after its CONNECT line.
      const size_t take = std::min<size_t>(chunk, early.size() - early_sent);
      std::memcpy(packet.data() + sizeof(PipeHeader), early.data() + early_sent, take);
      early_sent += take;
      ready = static_cast<uint32_t>(take);
      continue;
    }
    absl::StatusOr<size_t> got =
        co_await socket_->Read(loop_, absl::MakeSpan(packet).subspan(sizeof(PipeHeader), chunk));
    if (stopping_) break;
    if (!got.ok()) {
      Abort(ConnectionEnd::kHostError, got.status());
      break;
    }
    if (*got == 0) {
      eof = true;  // The FIN goes once it fits.
    } else {
      ready = static_cast<uint32_t>(*got);
    }
  }
  PumpStopped();
}

}  // namespace cvmbus::paravisor::hvsocket
