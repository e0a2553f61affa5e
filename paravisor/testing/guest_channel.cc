#include "paravisor/testing/guest_channel.h"

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include "guestmem/ring_memory.h"
#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::testing {

absl::StatusOr<std::unique_ptr<GuestChannel>> GuestChannel::Open(vm::VirtualMachine* vm,
                                                                 GuestChannelOptions options) {
  const uint64_t pages = 2 * uint64_t{options.ring_pages};
  const uint64_t gpa = options.first_gpn * 4096;
  if (options.confidential) {
    if (absl::Status status = vm->MakePrivate(gpa, pages * 4096); !status.ok()) return status;
  }
  const guestmem::GuestMemory view = options.confidential
                                         ? guestmem::GuestMemory::Private(vm->memory())
                                         : guestmem::GuestMemory::Untrusted(vm->memory());
  // A fresh ring: zeroed control pages (indices 0).
  if (absl::Status status = view.Zero(gpa, pages * 4096); !status.ok()) return status;
  std::vector<uint64_t> gpns;
  for (uint64_t i = 0; i < pages; ++i) gpns.push_back(options.first_gpn + i);
  absl::StatusOr<uint32_t> created = vm->guest().CreateGpadl(options.relid, options.gpadl_id, gpns);
  if (!created.ok()) return created.status();
  if (*created != protocol::kStatusSuccess) {
    return absl::FailedPreconditionError(
        fmt::format("GPADL {} refused: status {:#x}", options.gpadl_id, *created));
  }
  // Guest side of the rings: we write the first, read the second.
  auto out_memory =
      guestmem::RingMemory::Create(view, absl::MakeSpan(gpns).subspan(0, options.ring_pages));
  if (!out_memory.ok()) return out_memory.status();
  auto in_memory =
      guestmem::RingMemory::Create(view, absl::MakeSpan(gpns).subspan(options.ring_pages));
  if (!in_memory.ok()) return in_memory.status();
  auto out = ring::OutgoingRing::Create(*std::move(out_memory));
  if (!out.ok()) return out.status();
  auto in = ring::IncomingRing::Create(*std::move(in_memory));
  if (!in.ok()) return in.status();
  (void)vm->guest().ChannelEventFd(options.relid);  // Register before the host can signal.
  absl::StatusOr<uint32_t> opened =
      vm->guest().OpenChannel(options.relid, options.gpadl_id, options.ring_pages,
                              /*target_vp=*/0, options.connection_id);
  if (!opened.ok()) return opened.status();
  if (*opened != protocol::kStatusSuccess) {
    return absl::FailedPreconditionError(
        fmt::format("OPENCHANNEL {} refused: status {:#x}", options.relid, *opened));
  }
  return std::unique_ptr<GuestChannel>(
      new GuestChannel(vm, options, *std::move(out), *std::move(in)));
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

absl::Status GuestChannel::Receive(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout) {
  const int fd = vm_->guest().ChannelEventFd(options_.relid);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    absl::StatusOr<bool> got = in_.Read(buffer);
    if (!got.ok()) return got.status();
    if (*got) {
      if (in_.Commit()) {
        if (absl::Status status = Signal(); !status.ok()) return status;
      }
      return absl::OkStatus();
    }
    absl::StatusOr<bool> pending = in_.Unmask();  // Re-check after unmasking: no lost wake-up.
    if (!pending.ok()) return pending.status();
    if (*pending) continue;
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
