#include "guestmem/paged_range.h"

#include <fmt/format.h>

#include <algorithm>

#include "base/format.h"
#include "guestmem/errors.h"

namespace cvmbus::guestmem {
namespace {

constexpr uint64_t kMaxGpn = (~uint64_t{0}) >> 12;

uint64_t PagesSpanned(uint32_t byte_offset, uint32_t byte_count) {
  return (uint64_t{byte_offset} + byte_count + 4095) / 4096;
}

}  // namespace

absl::StatusOr<PagedRange> PagedRange::Create(uint32_t byte_offset, uint32_t byte_count,
                                              absl::Span<const uint64_t> gpns) {
  if (byte_count == 0) {
    return MakeError(ErrorKind::kInvalidRange, "paged range: empty (byte_count 0)");
  }
  if (byte_offset >= 4096) {
    return MakeError(
        ErrorKind::kInvalidRange,
        fmt::format("paged range: byte_offset {} is not inside the first page", byte_offset));
  }
  const uint64_t needed = PagesSpanned(byte_offset, byte_count);
  if (gpns.size() < needed) {
    return MakeError(ErrorKind::kInvalidRange,
                     fmt::format("paged range: {} bytes at offset {} need {} pages, got {}",
                                 byte_count, byte_offset, needed, gpns.size()));
  }
  for (size_t i = 0; i < gpns.size(); ++i) {
    if (gpns[i] > kMaxGpn) {
      return MakeError(
          ErrorKind::kOverflow,
          fmt::format("paged range: page number {:#x} (index {}) overflows a GPA", gpns[i], i));
    }
  }
  return PagedRange(byte_offset, byte_count, std::vector<uint64_t>(gpns.begin(), gpns.end()));
}

absl::Status PagedRange::CheckSubRange(uint64_t offset, uint64_t len) const {
  if (offset + len < offset) {
    return MakeError(ErrorKind::kOverflow,
                     fmt::format("paged range: offset {} + length {} overflows", offset, len));
  }
  if (offset + len > byte_count_) {
    return MakeError(ErrorKind::kOutOfRange,
                     fmt::format("paged range: bytes [{}, {}) are past its {} bytes", offset,
                                 offset + len, byte_count_));
  }
  return absl::OkStatus();
}

std::optional<GpaRangeFault> WalkGpaRanges(absl::Span<const uint64_t> words, size_t total_words,
                                           uint32_t range_count,
                                           absl::FunctionRef<void(const GpaRangeView&)> on_range) {
  if (range_count == 0) {
    return GpaRangeFault{GpaRangeFault::kNoRanges, 0, "no ranges (range_count 0)"};
  }
  total_words = std::max(total_words, words.size());
  size_t next = 0;  // Index of the next range's header word.
  uint32_t range = 0;
  while (next < words.size()) {
    if (range == range_count) {
      return GpaRangeFault{GpaRangeFault::kTrailingWords, range,
                           fmt::format("words after the last of {} ranges (word {} of {})",
                                       range_count, next, total_words)};
    }
    const uint32_t byte_count = static_cast<uint32_t>(words[next]);
    const uint32_t byte_offset = static_cast<uint32_t>(words[next] >> 32);
    if (byte_count == 0) {
      return GpaRangeFault{GpaRangeFault::kEmptyRange, range,
                           fmt::format("range {}: 0 bytes at offset {}", range, byte_offset)};
    }
    if (byte_offset >= 4096) {
      return GpaRangeFault{
          GpaRangeFault::kBadOffset, range,
          fmt::format("range {}: byte_offset {} is not inside the first page", range, byte_offset)};
    }
    const uint64_t pages = PagesSpanned(byte_offset, byte_count);
    if (pages > total_words - next - 1) {
      return GpaRangeFault{
          GpaRangeFault::kMissingPages, range,
          fmt::format("range {} ({} bytes at offset {}) needs {} page numbers, "
                      "{} words are left",
                      range, byte_count, byte_offset, pages, total_words - next - 1)};
    }
    const size_t have = std::min<size_t>(pages, words.size() - next - 1);
    const absl::Span<const uint64_t> gpns = words.subspan(next + 1, have);
    for (size_t i = 0; i < gpns.size(); ++i) {
      if (gpns[i] > kMaxGpn) {
        return GpaRangeFault{GpaRangeFault::kPageOverflow, range,
                             fmt::format("range {}: page number {:#x} (index {}) overflows a GPA",
                                         range, gpns[i], i)};
      }
    }
    if (have == pages) on_range(GpaRangeView{byte_count, byte_offset, gpns});
    next += 1 + pages;
    ++range;
  }
  if (words.size() == total_words && range != range_count) {
    return GpaRangeFault{
        GpaRangeFault::kMissingRanges, range,
        fmt::format("{} ranges declared, the {} words hold {}", range_count, total_words, range)};
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<PagedRange>> ParseGpaRanges(absl::Span<const uint64_t> buf,
                                                       uint32_t range_count) {
  std::vector<PagedRange> ranges;
  absl::Status made;
  std::optional<GpaRangeFault> fault =
      WalkGpaRanges(buf, buf.size(), range_count, [&](const GpaRangeView& range) {
        if (!made.ok()) return;
        absl::StatusOr<PagedRange> paged =
            PagedRange::Create(range.byte_offset, range.byte_count, range.gpns);
        if (!paged.ok()) {
          made = paged.status();
          return;
        }
        ranges.push_back(*std::move(paged));
      });
  if (fault.has_value()) {
    return MakeError(fault->kind == GpaRangeFault::kPageOverflow ? ErrorKind::kOverflow
                                                                 : ErrorKind::kInvalidRange,
                     fmt::format("gpa ranges: {}", fault->detail));
  }
  if (!made.ok()) return made;  // Not reached: the walk applies PagedRange's rules first.
  return ranges;
}

}  // namespace cvmbus::guestmem
