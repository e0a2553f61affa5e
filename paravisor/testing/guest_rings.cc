#include "paravisor/testing/guest_rings.h"

#include <fmt/format.h>

#include <vector>

#include "guestmem/ring_memory.h"
#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::testing {

absl::StatusOr<GuestRings> OpenGuestRings(vm::VirtualMachine* vm,
                                          const GuestRingsOptions& options) {
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
  // We write the first ring and read the second.
  auto out_memory =
      guestmem::RingMemory::Create(view, absl::MakeSpan(gpns).subspan(0, options.ring_pages));
  if (!out_memory.ok()) return out_memory.status();
  auto in_memory =
      guestmem::RingMemory::Create(view, absl::MakeSpan(gpns).subspan(options.ring_pages));
  if (!in_memory.ok()) return in_memory.status();
  auto out = ring::OutgoingRing::Create(*std::move(out_memory));
  if (!out.ok()) return out.status();
  auto in = ring::IncomingRing::Create(*std::move(in_memory),
                                       {.max_packet_bytes = options.max_incoming_packet_bytes});
  if (!in.ok()) return in.status();
  (void)vm->guest().ChannelEventFd(options.relid);  // Registered before the host can signal.
  absl::StatusOr<uint32_t> opened =
      vm->guest().OpenChannel(options.relid, options.gpadl_id, options.ring_pages,
                              /*target_vp=*/0, options.connection_id);
  if (!opened.ok()) return opened.status();
  if (*opened != protocol::kStatusSuccess) {
    return absl::FailedPreconditionError(
        fmt::format("OPENCHANNEL {} refused: status {:#x}", options.relid, *opened));
  }
  return GuestRings{.out = *std::move(out), .in = *std::move(in)};
}

}  // namespace cvmbus::paravisor::testing
