#include "paravisor/testing/guest_channel.h"

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include "base/status_macros.h"
#include "guestmem/ring_memory.h"
#include "paravisor/protocol/header.h"
#include "ring/errors.h"

namespace cvmbus::paravisor::testing {

absl::StatusOr<std::unique_ptr<GuestChannel>> GuestChannel::Open(vm::VirtualMachine* vm,
                                                                 GuestChannelOptions options) {
  absl::StatusOr<GuestRings> rings = OpenGuestRings(vm, {.relid = options.relid,
                                                         .gpadl_id = options.gpadl_id,
                                                         .first_gpn = options.first_gpn,
                                                         .ring_pages = options.ring_pages,
                                                         .confidential = options.confidential,
                                                         .connection_id = options.connection_id});
  if (!rings.ok()) return rings.status();
  return std::unique_ptr<GuestChannel>(
      new GuestChannel(vm, options, std::move(rings->out), std::move(rings->in)));
}

absl::Status GuestChannel::Send(absl::Span<const uint8_t> payload, uint64_t transaction_id) {
  return SendPacket({.flags = ring::kFlagCompletionRequested,
                     .transaction_id = transaction_id,
                     .payload = payload});
}

absl::Status GuestChannel::SendPacket(const ring::OutgoingPacket& packet) {
  absl::StatusOr<bool> signal = out_.Write(packet);
  if (!signal.ok()) return signal.status();
  if (!*signal) return absl::OkStatus();
  return Signal();
}

absl::Status GuestChannel::Signal() {
  ++signals_sent_;
  absl::Status status = vm_->guest().SignalHost(options_.relid);
  return options_.discard_signal_status ? absl::OkStatus() : status;
}

absl::StatusOr<bool> GuestChannel::TrySendPacket(const ring::OutgoingPacket& packet) {
  while (true) {
    absl::StatusOr<bool> signal = out_.Write(packet);
    if (signal.ok()) {
      if (*signal) CVMBUS_RETURN_IF_ERROR(Signal());
      return true;
    }
    if (!ring::IsRingError(signal.status(), ring::RingError::kFull)) return signal.status();
    std::vector<uint64_t> header;
    absl::StatusOr<uint32_t> length = ring::EncodeHeader(packet, &header);
    if (!length.ok()) return length.status();
    absl::StatusOr<bool> fits = out_.RequestSpace(*length + 8);  // The record and its trailer.
    if (!fits.ok()) return fits.status();
    if (!*fits) return false;
  }
}

absl::StatusOr<bool> GuestChannel::TrySendInBurst(const ring::OutgoingPacket& packet) {
  while (true) {
    absl::Status appended = out_.Append(packet);
    if (appended.ok()) {
      if (out_.CommitInBurst()) CVMBUS_RETURN_IF_ERROR(Signal());
      return true;
    }
    if (!ring::IsRingError(appended, ring::RingError::kFull)) return appended;
    CVMBUS_RETURN_IF_ERROR(EndBurst());  // The host may be asleep: it must see the burst.
    std::vector<uint64_t> header;
    absl::StatusOr<uint32_t> length = ring::EncodeHeader(packet, &header);
    if (!length.ok()) return length.status();
    absl::StatusOr<bool> fits = out_.RequestSpace(*length + 8);
    if (!fits.ok()) return fits.status();
    if (!*fits) return false;
  }
}

absl::Status GuestChannel::EndBurst() {
  if (out_.EndBurst()) return Signal();
  return absl::OkStatus();
}

absl::StatusOr<bool> GuestChannel::TryReceive(ring::PacketBuffer* buffer) {
  while (true) {
    absl::StatusOr<bool> got = in_.Read(buffer);
    if (!got.ok()) return got.status();
    if (*got) {
      if (in_.Commit()) CVMBUS_RETURN_IF_ERROR(Signal());
      return true;
    }
    absl::StatusOr<bool> pending = in_.Unmask();  // Re-check after unmasking: no lost wake-up.
    if (!pending.ok()) return pending.status();
    if (!*pending) return false;
  }
}

int GuestChannel::event_fd() { return vm_->guest().ChannelEventFd(options_.relid); }

absl::Status GuestChannel::Receive(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout) {
  const int fd = event_fd();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    absl::StatusOr<bool> got = TryReceive(buffer);
    if (!got.ok()) return got.status();
    if (*got) return absl::OkStatus();
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return absl::DeadlineExceededError("guest channel: no packet");
    pollfd wait{fd, POLLIN, 0};
    poll(&wait, 1, static_cast<int>(left.count()));
    uint64_t count;
    (void)!read(fd, &count, sizeof(count));
  }
}

absl::Status GuestChannel::Close() { return vm_->guest().CloseChannel(options_.relid); }

}  // namespace cvmbus::paravisor::testing
