#include "paravisor/devices/storvsp/srb_buffer.h"

#include <fmt/format.h>

namespace cvmbus::paravisor::storvsp {
namespace {

constexpr uint64_t kPageBytes = 4096;

absl::Status Refused(const std::string& why) {
  return absl::InvalidArgumentError(fmt::format("storvsp: SRB buffer: {}", why));
}

}  // namespace

absl::StatusOr<std::optional<SrbBuffer>> SrbBufferOf(const ring::Packet& packet,
                                                     uint32_t data_transfer_length,
                                                     uint32_t max_transfer_bytes) {
  if (data_transfer_length == 0) return std::optional<SrbBuffer>();
  if (data_transfer_length > max_transfer_bytes) {
    return Refused(fmt::format("{} bytes is over the {}-byte transfer limit", data_transfer_length,
                               max_transfer_bytes));
  }
  if (packet.type != ring::PacketType::kDataUsingGpaDirect) {
    return Refused(
        fmt::format("{} bytes to move but the packet carries no pages", data_transfer_length));
  }
  if (packet.gpa_ranges.size() != 1) {
    return Refused(fmt::format("{} ranges (storvsc sends one)", packet.gpa_ranges.size()));
  }
  const ring::GpaRange& range = packet.gpa_ranges[0];
  if (range.byte_offset >= kPageBytes) {
    return Refused(fmt::format("offset {} is outside the first page", range.byte_offset));
  }
  if (range.byte_count < data_transfer_length) {
    return Refused(fmt::format("the range holds {} bytes, the request moves {}", range.byte_count,
                               data_transfer_length));
  }
  const uint64_t pages =
      (uint64_t{range.byte_offset} + data_transfer_length + kPageBytes - 1) / kPageBytes;
  if (range.gpns.size() < pages) {
    return Refused(fmt::format("{} pages for {} bytes at offset {}, which need {}",
                               range.gpns.size(), data_transfer_length, range.byte_offset, pages));
  }
  SrbBuffer buffer;
  buffer.offset = range.byte_offset;
  buffer.length = data_transfer_length;
  buffer.gpns.assign(range.gpns.begin(), range.gpns.begin() + static_cast<ptrdiff_t>(pages));
  return std::optional<SrbBuffer>(std::move(buffer));
}

}  // namespace cvmbus::paravisor::storvsp
