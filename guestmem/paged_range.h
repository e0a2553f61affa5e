// PagedRange: a byte range laid over a list of guest page numbers, as VMBus GPADLs and
// GPA-direct packets describe buffers: {byte_count, byte_offset into the first page, gpn[]}.
//
// A PagedRange only exists validated: non-empty, byte_offset < 4096, no overflow, and enough
// pages to hold byte_offset + byte_count. It owns its page numbers (copied out of whatever
// untrusted buffer they came from), so it can be kept after that buffer changes.
#ifndef CVMBUS_GUESTMEM_PAGED_RANGE_H_
#define CVMBUS_GUESTMEM_PAGED_RANGE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
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

// --- GPA range buffers: the one parser, and the one set of rules, for GPADLs (the channel
// control protocol's GPADL_HEADER/BODY), GPA-direct ring packets, and devices.
//
// A buffer packs `range_count` ranges in u64 words, each {u32 byte_count, u32 byte_offset}
// followed by exactly ceil((byte_offset + byte_count) / 4096) page numbers. The rules:
//   - at least one range (kNoRanges);
//   - byte_count != 0 (kEmptyRange) and byte_offset < 4096 (kBadOffset);
//   - every page number fits a 64-bit GPA (kPageOverflow);
//   - a range's page numbers are all in the buffer (kMissingPages);
//   - exactly `range_count` ranges (kMissingRanges) using every word (kTrailingWords).
// The buffer is an already-copied (private) one: it is read once.

struct GpaRangeFault {
  enum Kind : uint8_t {
    kNoRanges,
    kEmptyRange,
    kBadOffset,
    kPageOverflow,
    kMissingPages,
    kMissingRanges,
    kTrailingWords,
  };
  Kind kind;
  uint32_t range;      // The range it is about (range_count for kTrailingWords).
  std::string detail;  // "range 1: 0 bytes at offset 16", for the caller's own message.
};

// One range as the walk found it; `gpns` points into the walked buffer.
struct GpaRangeView {
  uint32_t byte_count;
  uint32_t byte_offset;
  absl::Span<const uint64_t> gpns;
};

// Walks the ranges that start in `words`, the first words of a buffer of `total_words` (a
// GPADL_HEADER carries only a prefix: its ranges are checked against the declared length,
// and the range count only once the whole buffer is there, words.size() == total_words).
// Calls `on_range` for each range that is whole and valid, in order, and returns the first
// rule broken, or nullopt.
std::optional<GpaRangeFault> WalkGpaRanges(absl::Span<const uint64_t> words, size_t total_words,
                                           uint32_t range_count,
                                           absl::FunctionRef<void(const GpaRangeView&)> on_range);
inline std::optional<GpaRangeFault> CheckGpaRanges(absl::Span<const uint64_t> words,
                                                   size_t total_words, uint32_t range_count) {
  return WalkGpaRanges(words, total_words, range_count, [](const GpaRangeView&) {});
}

// Parses a whole buffer into PagedRanges (which own their page numbers). Errors: kOverflow for
// kPageOverflow, kInvalidRange for the other rules; the message names the rule and the range.
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
