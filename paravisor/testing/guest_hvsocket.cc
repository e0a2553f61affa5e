#include "paravisor/testing/guest_hvsocket.h"

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "guestmem/ring_memory.h"
#include "paravisor/devices/hvsocket/hvsocket_protocol.h"
#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::testing {
namespace {

using hvsocket::PacketBytes;
using Clock = std::chrono::steady_clock;

protocol::Guid Wire(const Guid& guid) {
  protocol::Guid wire;
  std::memcpy(wire.bytes, &guid, sizeof(wire.bytes));
  return wire;
}

std::chrono::milliseconds Left(Clock::time_point deadline) {
  return std::max(std::chrono::milliseconds(0),
                  std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<GuestHvSocket>> GuestHvSocket::Connect(
    vm::VirtualMachine* vm, uint32_t local_port, uint32_t remote_port,
    GuestHvSocketOptions options) {
  // hvs_connect: vm_srv_id from the local port, host_srv_id from the remote one.
  const protocol::Guid endpoint = Wire(hvsocket::ServiceIdForPort(local_port));
  const protocol::Guid service = Wire(hvsocket::ServiceIdForPort(remote_port));
  protocol::TlConnectRequest request{};
  request.guest_endpoint_id = endpoint;
  request.host_service_id = service;
  absl::Status sent = vm->guest().SendRaw(protocol::EncodeTlConnectRequest(request, false));
  if (!sent.ok()) return sent;
  // hvs_open_connection matches the offer: if_type = the service, if_instance = our endpoint.
  const auto is_ours = [&](const protocol::ParsedMessage& message) {
    const auto* offer = message.As<protocol::OfferChannel>();
    return offer != nullptr && offer->interface_type == service &&
           offer->interface_instance == endpoint;
  };
  const auto is_answer = [&](const protocol::ParsedMessage& message) {
    const auto* result = message.As<protocol::TlConnectResult>();
    return result != nullptr && result->endpoint_id == endpoint && result->service_id == service;
  };
  const auto deadline = Clock::now() + options.timeout;
  while (Clock::now() < deadline) {
    auto offer = vm->guest().WaitForMatching(protocol::MessageType::kOfferChannel, is_ours,
                                             std::chrono::milliseconds(20));
    if (offer.ok()) return Open(vm, *offer->As<protocol::OfferChannel>(), options);
    auto answer = vm->guest().WaitForMatching(protocol::MessageType::kTlConnectResult, is_answer,
                                              std::chrono::milliseconds(1));
    if (answer.ok()) {
      const uint32_t status = answer->As<protocol::TlConnectResult>()->status;
      return absl::UnavailableError(
          fmt::format("hvsocket connect to port {}: refused, status {:#x}", remote_port, status));
    }
  }
  return absl::DeadlineExceededError(
      fmt::format("hvsocket connect to port {}: no offer", remote_port));
}

absl::StatusOr<std::unique_ptr<GuestHvSocket>> GuestHvSocket::Accept(vm::VirtualMachine* vm,
                                                                     uint32_t listen_port,
                                                                     GuestHvSocketOptions options) {
  const protocol::Guid service = Wire(hvsocket::ServiceIdForPort(listen_port));
  // conn_from_host = user_def[0] (is_for_guest_accept); the guest's port is if_type.
  auto offer = vm->guest().WaitForMatching(
      protocol::MessageType::kOfferChannel,
      [&](const protocol::ParsedMessage& message) {
        const auto* offer = message.As<protocol::OfferChannel>();
        return offer != nullptr && offer->interface_type == service &&
               (offer->channel_flags & protocol::kOfferTlnpiProvider) != 0 &&
               offer->user_defined.hvsock.is_for_guest_accept != 0;
      },
      options.timeout);
  if (!offer.ok()) return offer.status();
  return Open(vm, *offer->As<protocol::OfferChannel>(), options);
}

absl::StatusOr<std::unique_ptr<GuestHvSocket>> GuestHvSocket::Open(
    vm::VirtualMachine* vm, const protocol::OfferChannel& offer,
    const GuestHvSocketOptions& options) {
  const uint32_t relid = offer.child_relid;
  // chan->max_pkt_size = HVS_MAX_PKT_SIZE (the trailer not counted here).
  absl::StatusOr<GuestRings> rings =
      OpenGuestRings(vm, {.relid = relid,
                          .gpadl_id = options.gpadl_id,
                          .first_gpn = options.first_gpn,
                          .ring_pages = options.ring_pages,
                          .confidential = options.confidential,
                          .max_incoming_packet_bytes = PacketBytes(hvsocket::kMtuBytes) - 8});
  if (!rings.ok()) return rings.status();
  return std::unique_ptr<GuestHvSocket>(
      new GuestHvSocket(vm, options, offer, std::move(rings->out), std::move(rings->in)));
}

uint32_t GuestHvSocket::peer_port() const {
  uint32_t port;
  std::memcpy(&port, offer_.interface_instance.bytes, sizeof(port));
  return port;
}

absl::Status GuestHvSocket::Signal() { return vm_->guest().SignalHost(relid()); }

absl::StatusOr<size_t> GuestHvSocket::TrySend(absl::Span<const uint8_t> data) {
  if (fin_sent_) return absl::FailedPreconditionError("hvsocket: send after shutdown");
  size_t sent = 0;
  std::vector<uint8_t> packet;
  while (sent < data.size()) {
    absl::StatusOr<uint32_t> free_bytes = out_.FreeBytes();
    if (!free_bytes.ok()) return free_bytes.status();
    // hvs_channel_writable_bytes: never full, and room kept for the FIN.
    const uint32_t reserve = PacketBytes(1) + PacketBytes(0);
    if (*free_bytes <= reserve) break;
    const size_t room = (*free_bytes - reserve) & ~size_t{7};
    const size_t take =
        std::min({data.size() - sent, room, size_t{hvsocket::kLinuxSendChunkBytes}});
    if (take == 0) break;
    const hvsocket::PipeHeader header = hvsocket::DataHeader(static_cast<uint32_t>(take));
    packet.resize(sizeof(header) + take);
    std::memcpy(packet.data(), &header, sizeof(header));
    std::memcpy(packet.data() + sizeof(header), data.data() + sent, take);
    absl::StatusOr<bool> signal = out_.Write({.payload = packet});  // VM_PKT_DATA_INBAND, 0.
    if (!signal.ok()) return signal.status();
    if (*signal) {
      if (absl::Status status = Signal(); !status.ok()) return status;
    }
    sent += take;
  }
  return sent;
}

absl::Status GuestHvSocket::Shutdown() {
  if (fin_sent_) return absl::OkStatus();
  const hvsocket::PipeHeader header = hvsocket::DataHeader(0);
  absl::StatusOr<bool> signal = out_.Write(
      {.payload = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&header), sizeof(header))});
  if (!signal.ok()) return signal.status();
  fin_sent_ = true;
  return *signal ? Signal() : absl::OkStatus();
}

absl::StatusOr<size_t> GuestHvSocket::TryReceive(std::vector<uint8_t>* out) {
  size_t received = 0;
  while (!fin_received_) {
    absl::StatusOr<bool> got = in_.Read(&buffer_);
    if (!got.ok()) return got.status();
    if (!*got) break;
    const ring::Packet& packet = buffer_.packet();
    // hvs_update_recv_data's checks, and what the host must never send us.
    if (packet.type != ring::PacketType::kDataInBand || packet.payload.size() < 8) {
      return absl::DataLossError("hvsocket: a packet that is not a pipe packet");
    }
    hvsocket::PipeHeader header;
    std::memcpy(&header, packet.payload.data(), sizeof(header));
    if (header.packet_type != hvsocket::kPipePacketData ||
        header.data_size > packet.payload.size() - 8 || header.data_size > hvsocket::kMtuBytes) {
      return absl::DataLossError(fmt::format("hvsocket: bad pipe header type {} size {}",
                                             header.packet_type, header.data_size));
    }
    if (header.data_size == 0) {
      fin_received_ = true;
    } else {
      out->insert(out->end(), packet.payload.begin() + 8,
                  packet.payload.begin() + 8 + header.data_size);
      received += header.data_size;
    }
    if (in_.Commit()) {
      if (absl::Status status = Signal(); !status.ok()) return status;
    }
  }
  return received;
}

bool GuestHvSocket::CheckRescinded() {
  if (!rescinded_) rescinded_ = WaitForRescind(std::chrono::milliseconds(0)).ok();
  return rescinded_;
}

absl::Status GuestHvSocket::WaitForSignal(Clock::time_point deadline) {
  const int fd = vm_->guest().ChannelEventFd(relid());
  // Slices only to notice a rescind (a control message, not a channel signal); the ring is not
  // looked at again until the host signals, so a lost wake-up still shows. A signal is taken
  // before the rescind: what the host sent before rescinding is still read.
  for (auto slice = std::chrono::milliseconds(0);;
       slice = std::min(Left(deadline), std::chrono::milliseconds(20))) {
    pollfd wait{fd, POLLIN, 0};
    if (poll(&wait, 1, static_cast<int>(slice.count())) > 0) {
      uint64_t count;
      (void)!read(fd, &count, sizeof(count));
      return absl::OkStatus();
    }
    if (CheckRescinded()) return absl::AbortedError("hvsocket: the host rescinded the channel");
    if (Clock::now() >= deadline) return absl::DeadlineExceededError("hvsocket: no signal");
  }
}

absl::Status GuestHvSocket::SendRawPayload(absl::Span<const uint8_t> payload) {
  absl::StatusOr<bool> signal = out_.Write({.payload = payload});
  if (!signal.ok()) return signal.status();
  return *signal ? Signal() : absl::OkStatus();
}

absl::Status GuestHvSocket::Exchange(absl::Span<const uint8_t> data, bool fin, size_t expect,
                                     std::vector<uint8_t>* received,
                                     std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  size_t sent = 0;
  const size_t start = received->size();
  while (true) {
    bool progress = false;
    if (sent < data.size()) {
      absl::StatusOr<size_t> n = TrySend(data.subspan(sent));
      if (!n.ok()) return n.status();
      sent += *n;
      progress |= *n > 0;
    }
    if (sent == data.size() && fin && !fin_sent_) {
      if (absl::Status status = Shutdown(); !status.ok()) return status;
      progress = true;
    }
    const bool had_fin = fin_received_;
    absl::StatusOr<size_t> n = TryReceive(received);
    if (!n.ok()) return n.status();
    progress |= *n > 0 || fin_received_ != had_fin;
    const bool received_enough = received->size() - start >= expect || fin_received_;
    if (sent == data.size() && (received_enough || expect == 0)) return absl::OkStatus();
    if (progress) continue;
    // About to sleep: ask for each wake-up we need, then look once more (no lost wake-up).
    absl::StatusOr<bool> arrived = in_.Unmask();
    if (!arrived.ok()) return arrived.status();
    if (*arrived) continue;
    if (sent < data.size()) {
      // Linux keeps pending_send_sz at HVS_PKT_LEN(HVS_SEND_BUF_SIZE).
      absl::StatusOr<bool> fits =
          out_.RequestSpace(PacketBytes(hvsocket::kLinuxSendChunkBytes) + PacketBytes(0));
      if (!fits.ok()) return fits.status();
      if (*fits) continue;
    }
    if (absl::Status signalled = WaitForSignal(deadline); !signalled.ok()) {
      if (absl::IsAborted(signalled)) {
        // Linux still delivers what the ring holds after a rescind, the FIN included.
        absl::StatusOr<size_t> last = TryReceive(received);
        if (!last.ok()) return last.status();
        const bool got_enough = received->size() - start >= expect || fin_received_;
        if (sent == data.size() && (got_enough || expect == 0)) return absl::OkStatus();
        return signalled;
      }
      return absl::DeadlineExceededError(
          fmt::format("hvsocket: stalled with {} of {} bytes sent, {} received, fin {}", sent,
                      data.size(), received->size() - start, fin_received_));
    }
  }
}

absl::Status GuestHvSocket::WaitForRescind(std::chrono::milliseconds timeout) {
  if (rescinded_) return absl::OkStatus();
  const uint32_t relid = this->relid();
  auto rescind = vm_->guest().WaitForMatching(
      protocol::MessageType::kRescindChannelOffer,
      [relid](const protocol::ParsedMessage& message) {
        const auto* rescind = message.As<protocol::RescindChannelOffer>();
        return rescind != nullptr && rescind->child_relid == relid;
      },
      timeout);
  if (!rescind.ok()) return rescind.status();
  rescinded_ = true;
  return absl::OkStatus();
}

absl::Status GuestHvSocket::Close(std::chrono::milliseconds timeout) {
  if (!fin_sent_) {
    if (absl::Status status = Shutdown(); !status.ok()) return status;
  }
  if (absl::Status status = WaitForRescind(timeout); !status.ok()) return status;
  if (absl::Status status = vm_->guest().CloseChannel(relid()); !status.ok()) return status;
  if (absl::Status status = vm_->guest().TeardownGpadl(relid(), options_.gpadl_id); !status.ok()) {
    return status;
  }
  return vm_->guest().ReleaseRelid(relid());
}

absl::Status GuestHvSocket::CloseChannelNow() { return vm_->guest().CloseChannel(relid()); }

}  // namespace cvmbus::paravisor::testing
