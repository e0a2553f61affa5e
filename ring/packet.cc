#include "ring/packet.h"

#include <fmt/format.h>

#include <cstring>

#include "guestmem/paged_range.h"
#include "ring/errors.h"

namespace cvmbus::ring {
namespace {

bool KnownType(uint16_t type) {
  switch (static_cast<PacketType>(type)) {
    case PacketType::kDataInBand:
    case PacketType::kDataUsingTransferPages:
    case PacketType::kDataUsingGpaDirect:
    case PacketType::kCompletion:
      return true;
  }
  return false;
}

// The fixed header after the descriptor that a type requires, in bytes.
uint32_t TypeHeaderBytes(PacketType type) {
  return type == PacketType::kDataUsingTransferPages ? sizeof(TransferPageHeader)
         : type == PacketType::kDataUsingGpaDirect   ? sizeof(GpaDirectHeader)
                                                     : 0;
}

uint64_t PagesSpanned(uint32_t byte_offset, uint32_t byte_count) {
  return (uint64_t{byte_offset} + byte_count + 4095) / 4096;
}

absl::Status BadRanges(const std::string& why) { return MakeRingError(RingError::kBadRanges, why); }

}  // namespace

absl::StatusOr<uint32_t> ValidateDescriptor(const PacketDescriptor& descriptor, uint32_t available,
                                            uint32_t max_packet_bytes) {
  if (descriptor.data_offset8 < kDescriptorBytes / 8) {
    return MakeRingError(RingError::kBadDataOffset,
                         fmt::format("packet data_offset8 {} is shorter than the 16-byte "
                                     "descriptor",
                                     descriptor.data_offset8));
  }
  if (descriptor.length8 < descriptor.data_offset8) {
    return MakeRingError(RingError::kBadLength,
                         fmt::format("packet length8 {} < data_offset8 {}", descriptor.length8,
                                     descriptor.data_offset8));
  }
  if (!KnownType(descriptor.type)) {
    return MakeRingError(RingError::kUnknownType,
                         fmt::format("packet type {:#x} is not in-band (0x6), transfer pages "
                                     "(0x7), GPA direct (0x9) or completion (0xb)",
                                     descriptor.type));
  }
  if ((descriptor.flags & ~kKnownFlags) != 0) {
    return MakeRingError(RingError::kUnknownFlags,
                         fmt::format("packet flags {:#x} has unknown bits {:#x}", descriptor.flags,
                                     descriptor.flags & ~kKnownFlags));
  }
  const uint32_t length = uint32_t{descriptor.length8} * 8;
  if (uint64_t{length} + kTrailerBytes > available) {
    return MakeRingError(RingError::kTruncated,
                         fmt::format("packet of {} bytes + 8-byte trailer, but only {} bytes are "
                                     "in the ring",
                                     length, available));
  }
  if (length > max_packet_bytes) {
    return MakeRingError(
        RingError::kTooLarge,
        fmt::format("packet of {} bytes exceeds the {}-byte limit", length, max_packet_bytes));
  }
  const uint32_t header = uint32_t{descriptor.data_offset8} * 8;
  const uint32_t needed = kDescriptorBytes + TypeHeaderBytes(PacketType(descriptor.type));
  if (header < needed) {
    return MakeRingError(RingError::kBadDataOffset,
                         fmt::format("packet type {:#x} needs a {}-byte header, data_offset8 {} "
                                     "gives {}",
                                     descriptor.type, needed, descriptor.data_offset8, header));
  }
  return length;
}

absl::Status ParsePacketBody(const PacketDescriptor& descriptor, absl::Span<const uint64_t> words,
                             Packet* packet) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(words.data());
  const uint32_t header_bytes = uint32_t{descriptor.data_offset8} * 8;
  const uint32_t length = uint32_t{descriptor.length8} * 8;
  packet->type = static_cast<PacketType>(descriptor.type);
  packet->flags = descriptor.flags;
  packet->transaction_id = descriptor.transaction_id;
  packet->payload = absl::Span<const uint8_t>(bytes + header_bytes, length - header_bytes);
  packet->transfer_ranges.clear();
  packet->gpa_ranges.clear();
  packet->transfer_page_set_id = 0;
  packet->sender_owns_set = false;

  if (packet->type == PacketType::kDataUsingTransferPages) {
    TransferPageHeader header;
    std::memcpy(&header, bytes + kDescriptorBytes, sizeof(header));
    const uint64_t ranges_end =
        kDescriptorBytes + sizeof(header) + uint64_t{header.range_count} * 8;
    if (header.range_count == 0) return BadRanges("transfer-page packet with 0 ranges");
    if (ranges_end > header_bytes) {
      return BadRanges(
          fmt::format("transfer-page packet: {} ranges end at byte {}, past the "
                      "{}-byte header",
                      header.range_count, ranges_end, header_bytes));
    }
    packet->transfer_page_set_id = header.transfer_page_set_id;
    packet->sender_owns_set = header.sender_owns_set != 0;
    packet->transfer_ranges.resize(header.range_count);
    std::memcpy(packet->transfer_ranges.data(), bytes + kDescriptorBytes + sizeof(header),
                header.range_count * sizeof(TransferPageRange));
    return absl::OkStatus();
  }

  if (packet->type == PacketType::kDataUsingGpaDirect) {
    GpaDirectHeader header;
    std::memcpy(&header, bytes + kDescriptorBytes, sizeof(header));
    // The ranges fill the rest of the header, by guestmem's rules for range buffers (the one
    // parser: the channel control protocol's GPADLs follow the same ones).
    const size_t first_word = (kDescriptorBytes + sizeof(header)) / 8;
    const absl::Span<const uint64_t> range_words =
        words.subspan(first_word, header_bytes / 8 - first_word);
    const std::optional<guestmem::GpaRangeFault> fault = guestmem::WalkGpaRanges(
        range_words, range_words.size(), header.range_count,
        [&](const guestmem::GpaRangeView& range) {
          packet->gpa_ranges.push_back(GpaRange{range.byte_count, range.byte_offset, range.gpns});
        });
    if (fault.has_value()) {
      packet->gpa_ranges.clear();
      return BadRanges(fmt::format("GPA-direct packet with {} ranges in a {}-byte header: {}",
                                   header.range_count, header_bytes, fault->detail));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> EncodeHeader(const OutgoingPacket& packet, std::vector<uint64_t>* header) {
  if (!KnownType(static_cast<uint16_t>(packet.type))) {
    return MakeRingError(RingError::kUnknownType, fmt::format("cannot send packet type {:#x}",
                                                              static_cast<uint16_t>(packet.type)));
  }
  if ((packet.flags & ~kKnownFlags) != 0) {
    return MakeRingError(RingError::kUnknownFlags,
                         fmt::format("cannot send flags {:#x}", packet.flags));
  }
  header->assign(2, 0);  // The descriptor, filled in last.
  if (packet.type == PacketType::kDataUsingTransferPages) {
    if (packet.transfer_ranges.empty()) return BadRanges("transfer-page packet with 0 ranges");
    TransferPageHeader fixed{packet.transfer_page_set_id,
                             static_cast<uint8_t>(packet.sender_owns_set ? 1 : 0), 0,
                             static_cast<uint32_t>(packet.transfer_ranges.size())};
    uint64_t word;
    std::memcpy(&word, &fixed, 8);
    header->push_back(word);
    for (const TransferPageRange& range : packet.transfer_ranges) {
      header->push_back(uint64_t{range.byte_count} | (uint64_t{range.byte_offset} << 32));
    }
  } else if (packet.type == PacketType::kDataUsingGpaDirect) {
    if (packet.gpa_ranges.empty()) return BadRanges("GPA-direct packet with 0 ranges");
    header->push_back(uint64_t{packet.gpa_ranges.size()} << 32);
    const size_t first = header->size();
    for (const GpaRange& range : packet.gpa_ranges) {
      if (range.gpns.size() != PagesSpanned(range.byte_offset, range.byte_count)) {
        return BadRanges(
            fmt::format("GPA-direct range of {} bytes at offset {} with {} page "
                        "numbers",
                        range.byte_count, range.byte_offset, range.gpns.size()));
      }
      header->push_back(uint64_t{range.byte_count} | (uint64_t{range.byte_offset} << 32));
      header->insert(header->end(), range.gpns.begin(), range.gpns.end());
    }
    // What we send obeys the rules we read by.
    const absl::Span<const uint64_t> range_words = absl::MakeConstSpan(*header).subspan(first);
    if (const std::optional<guestmem::GpaRangeFault> fault = guestmem::CheckGpaRanges(
            range_words, range_words.size(), static_cast<uint32_t>(packet.gpa_ranges.size()));
        fault.has_value()) {
      return BadRanges(fmt::format("cannot send this GPA-direct packet: {}", fault->detail));
    }
  }
  const uint64_t header_bytes = header->size() * 8;
  const uint64_t length =
      header_bytes +
      AlignUp8(static_cast<uint32_t>(std::min<size_t>(packet.payload.size(), 1u << 20)));
  if (header_bytes > 0xffff * 8 || packet.payload.size() > (1u << 19) || length > 0xffff * 8) {
    return MakeRingError(RingError::kTooLarge,
                         fmt::format("packet of {} header + {} payload bytes does not fit "
                                     "length8",
                                     header_bytes, packet.payload.size()));
  }
  const PacketDescriptor descriptor{
      static_cast<uint16_t>(packet.type), static_cast<uint16_t>(header_bytes / 8),
      static_cast<uint16_t>(length / 8), packet.flags, packet.transaction_id};
  std::memcpy(header->data(), &descriptor, sizeof(descriptor));
  return static_cast<uint32_t>(length);
}

}  // namespace cvmbus::ring
