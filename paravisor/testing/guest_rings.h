// The guest's half of opening a channel, as a guest driver does it (Linux's vmbus_open): lay
// out both rings in guest pages it owns (guest -> host ring first, host -> guest ring at
// `ring_pages`), make them private on a confidential channel, zero them, describe them in a
// GPADL, build its ring ends, and send OPENCHANNEL. Shared by the guest-side test drivers.
#ifndef CVMBUS_PARAVISOR_TESTING_GUEST_RINGS_H_
#define CVMBUS_PARAVISOR_TESTING_GUEST_RINGS_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "paravisor/vm/virtual_machine.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::testing {

struct GuestRingsOptions {
  uint32_t relid = 0;
  uint32_t gpadl_id = 0;
  uint64_t first_gpn = 0;     // 2 * ring_pages pages from here hold both rings.
  uint32_t ring_pages = 4;    // Per ring, control page included.
  bool confidential = false;  // Pages private (validated) and rings in the private view.
  // The largest packet the guest accepts from the host (0: the ring's data size).
  uint32_t max_incoming_packet_bytes = 0;
  // The connection id to signal, where the connection lets the guest choose; default: the
  // offer's.
  std::optional<uint32_t> connection_id;
};

struct GuestRings {
  ring::OutgoingRing out;  // guest -> host
  ring::IncomingRing in;   // host -> guest
};

// Errors carry the host's failure status for a refused GPADL or OPENCHANNEL.
absl::StatusOr<GuestRings> OpenGuestRings(vm::VirtualMachine* vm, const GuestRingsOptions& options);

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_PARAVISOR_TESTING_GUEST_RINGS_H_
