#include "guestmem/paged_range.h"

#include <fmt/format.h>

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

absl::StatusOr<std::vector<PagedRange>> ParseGpaRanges(absl::Span<const uint64_t> buf,
                                                       uint32_t range_count) {
  std::vector<PagedRange> ranges;
  size_t word = 0;
  for (uint32_t i = 0; i < range_count; ++i) {
    if (word >= buf.size()) {
      return MakeError(ErrorKind::kInvalidRange,
                       fmt::format("gpa ranges: range {} of {} starts past the {}-word buffer", i,
                                   range_count, buf.size()));
    }
    const uint32_t byte_count = static_cast<uint32_t>(buf[word]);
    const uint32_t byte_offset = static_cast<uint32_t>(buf[word] >> 32);
    ++word;
    const uint64_t pages = PagesSpanned(byte_offset, byte_count);
    if (pages > buf.size() - word) {
      return MakeError(ErrorKind::kInvalidRange,
                       fmt::format("gpa ranges: range {} needs {} page numbers, {} words remain", i,
                                   pages, buf.size() - word));
    }
    absl::StatusOr<PagedRange> range =
        PagedRange::Create(byte_offset, byte_count, buf.subspan(word, pages));
    if (!range.ok()) {
      return MakeError(*GetErrorKind(range.status()),
                       fmt::format("gpa ranges: range {}: {}", i, range.status().message()));
    }
    ranges.push_back(*std::move(range));
    word += pages;
  }
  if (word != buf.size()) {
    return MakeError(
        ErrorKind::kInvalidRange,
        fmt::format("gpa ranges: {} ranges end at word {} of {}", range_count, word, buf.size()));
  }
  return ranges;
}

}  // namespace cvmbus::guestmem
