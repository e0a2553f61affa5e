// The guest buffer of an EXECUTE_SRB: the GPA-direct range storvsc describes it with
// (../storvsp_protocol.md §4.4), checked against what the request says it moves.
//
// Linux sends exactly one range, page numbers in 4 KiB units, the byte offset into the first
// page, and a range at least as long as data_transfer_length (older kernels pad the
// descriptor with unused page slots, so the page count comes from offset + length, not from
// the descriptor's size). A request without data is an in-band packet, or a GPA-direct one
// whose length is 0.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_BUFFER_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_BUFFER_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "ring/packet.h"

namespace cvmbus::paravisor::storvsp {

// `length` bytes from byte `offset` of the first of `gpns` (each a 4 KiB guest page).
struct SrbBuffer {
  uint32_t offset = 0;
  uint32_t length = 0;
  std::vector<uint64_t> gpns;  // Exactly ceil((offset + length) / 4096) pages.
};

// The buffer of `packet` for a request that moves `data_transfer_length` bytes (nullopt when
// it moves none). Errors (kInvalidArgument, naming the rule): data with an in-band packet (no
// pages to move it through), more than one range, a range shorter than the transfer, an offset
// outside the first page, fewer pages than offset + length need, a transfer over
// `max_transfer_bytes`.
absl::StatusOr<std::optional<SrbBuffer>> SrbBufferOf(const ring::Packet& packet,
                                                     uint32_t data_transfer_length,
                                                     uint32_t max_transfer_bytes);

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_BUFFER_H_
