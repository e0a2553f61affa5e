// Writing one ring packet of the common shape (no GPA ranges) into a ring's data area: the
// 16-byte descriptor and transaction id, the payload zero-padded to a multiple of 8 bytes,
// then the 8-byte trailer (the packet's start offset). ring/'s knowledge, over guestmem's
// plain data copies.
#ifndef CVMBUS_RING_RECORD_WRITER_H_
#define CVMBUS_RING_RECORD_WRITER_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "guestmem/racy_copy.h"
#include "guestmem/ring_memory.h"

namespace cvmbus::ring {

namespace internal {
bool WriteRecordInPieces(const guestmem::RingMemory& memory, uint32_t offset, uint64_t prefix_low,
                         uint64_t prefix_high, absl::Span<const uint8_t> body, uint64_t suffix);
}  // namespace internal

// Writes `{prefix_low, prefix_high}`, then `body` zero-padded to a multiple of 8 bytes, then
// `suffix`, at `offset` of the data area, wrapping at its end. False, writing nothing, unless
// offset < data_size() and the whole record fits in the data area. Where the data is
// double-mapped, the prefix, padding and suffix are stored straight from registers: a prefix
// reloaded from a just-written stack copy would be a failed store forward, which waits for
// every earlier store (including the previous packet's, whose lines the reader may hold) to
// reach the cache.
inline bool WriteRecord(const guestmem::RingMemory& memory, uint32_t offset, uint64_t prefix_low,
                        uint64_t prefix_high, absl::Span<const uint8_t> body, uint64_t suffix) {
  const size_t padded = (body.size() + 7) & ~size_t{7};
  const size_t total = 16 + padded + 8;
  uint8_t* at = memory.ContiguousData(offset, total);
  if (at == nullptr) {
    return internal::WriteRecordInPieces(memory, offset, prefix_low, prefix_high, body, suffix);
  }
  guestmem::internal::RacyStore(at, &prefix_low, 8);
  guestmem::internal::RacyStore(at + 8, &prefix_high, 8);
  if (padded != 0) {
    const uint64_t zero = 0;
    guestmem::internal::RacyStore(at + 16 + padded - 8, &zero,
                                  8);  // Padding; the body overlays it.
    guestmem::internal::RacyStore(at + 16, body.data(), body.size());
  }
  guestmem::internal::RacyStore(at + 16 + padded, &suffix, 8);
  return true;
}

}  // namespace cvmbus::ring

#endif  // CVMBUS_RING_RECORD_WRITER_H_
