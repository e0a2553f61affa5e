// PagedRange: a byte range laid over a list of guest page numbers, as VMBus GPADLs and
// GPA-direct packets describe buffers: {byte_count, byte_offset into the first page, gpn[]}.
//
// A PagedRange only exists validated: non-empty, byte_offset < 4096, no overflow, and enough
// pages to hold byte_offset + byte_count. It owns its page numbers (copied out of whatever
// untrusted buffer they came from), so it can be kept after that buffer changes.
#ifndef CVMBUS_GUESTMEM_PAGED_RANGE_H_
#define CVMBUS_GUESTMEM_PAGED_RANGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace cvmbus::guestmem {

// One contiguous piece of a PagedRange in guest physical address space.
struct GpaChunk {
  uint64_t gpa;
  uint64_t len;
};

class PagedRange {
 public:
  // Validates and copies. Extra pages beyond what the bytes need are kept but never touched.
  // Errors (kind kInvalidRange unless noted): byte_count == 0, byte_offset >= 4096, too few
  // pages; kOverflow when a page number does not fit a 64-bit GPA.
  static absl::StatusOr<PagedRange> Create(uint32_t byte_offset, uint32_t byte_count,
                                           absl::Span<const uint64_t> gpns);

  uint32_t byte_offset() const { return byte_offset_; }
  uint32_t byte_count() const { return byte_count_; }
  absl::Span<const uint64_t> gpns() const { return gpns_; }

  // Calls `fn(GpaChunk)` for each page-bounded piece of [offset, offset + len) within the
  // range, in order; stops at the first error `fn` returns. Fails (kOutOfRange) if the
  // sub-range does not fit in byte_count, kOverflow if offset + len wraps.
  template <typename Fn>
  absl::Status ForEachChunk(uint64_t offset, uint64_t len, Fn&& fn) const;

 private:
  PagedRange(uint32_t byte_offset, uint32_t byte_count, std::vector<uint64_t> gpns)
      : byte_offset_(byte_offset), byte_count_(byte_count), gpns_(std::move(gpns)) {}
  absl::Status CheckSubRange(uint64_t offset, uint64_t len) const;

  uint32_t byte_offset_;
  uint32_t byte_count_;
  std::vector<uint64_t> gpns_;
};

// Parses the GPA range buffer of a GPADL or a GPA-direct packet: `range_count` ranges, each
// {u32 byte_count, u32 byte_offset, u64 gpn[ceil((offset + count) / 4096)]}, packed in u64
// words. `buf` is an already-copied (private) buffer; trailing words are an error (kInvalidRange)
// so a caller cannot smuggle data past the declared ranges.
absl::StatusOr<std::vector<PagedRange>> ParseGpaRanges(absl::Span<const uint64_t> buf,
                                                       uint32_t range_count);

// ---------------------------------------------------------------------------------------------

template <typename Fn>
absl::Status PagedRange::ForEachChunk(uint64_t offset, uint64_t len, Fn&& fn) const {
  if (absl::Status status = CheckSubRange(offset, len); !status.ok()) return status;
  uint64_t position = uint64_t{byte_offset_} + offset;  // Byte position from page 0's start.
  while (len > 0) {
    const uint64_t page_index = position >> 12;
    const uint64_t in_page = position & 4095;
    const uint64_t chunk = std::min<uint64_t>(len, 4096 - in_page);
    if (absl::Status status = fn(GpaChunk{(gpns_[page_index] << 12) | in_page, chunk});
        !status.ok()) {
      return status;
    }
    position += chunk;
    len -= chunk;
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_PAGED_RANGE_H_
