#include "ring/record_writer.h"

#include <cstring>

namespace cvmbus::ring::internal {

bool WriteRecordInPieces(const guestmem::RingMemory& memory, uint32_t offset, uint64_t prefix_low,
                         uint64_t prefix_high, absl::Span<const uint8_t> body, uint64_t suffix) {
  const uint32_t size = memory.data_size();
  const size_t padded = (body.size() + 7) & ~size_t{7};
  const size_t total = 16 + padded + 8;
  if (offset >= size || total > size) return false;
  const auto at = [&](size_t delta) {
    return static_cast<uint32_t>((uint64_t{offset} + delta) % size);
  };
  uint8_t tail[16] = {};  // Padding (< 8 bytes) then the suffix.
  const size_t padding = padded - body.size();
  std::memcpy(tail + padding, &suffix, sizeof(suffix));
  const uint64_t prefix[2] = {prefix_low, prefix_high};
  // Each piece is within the data area (checked above), so none of these can fail halfway.
  return memory.WriteData(offset, prefix, 16) &&
         (body.empty() || memory.WriteData(at(16), body.data(), body.size())) &&
         memory.WriteData(at(16 + body.size()), tail, padding + 8);
}

}  // namespace cvmbus::ring::internal
