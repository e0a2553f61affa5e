// Packets as the ring carries them: parsing from private bytes and encoding headers.
//
// Parsing only ever looks at a private copy of the packet (the reader copies each packet out of
// the ring once, then parses the copy), so a peer that rewrites ring memory mid-parse changes
// nothing we read.
#ifndef CVMBUS_RING_PACKET_H_
#define CVMBUS_RING_PACKET_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "ring/protocol.h"

namespace cvmbus::ring {

// One range of a GPA-direct packet. `gpns` points into the packet's private copy (incoming) or
// the caller's memory (outgoing).
struct GpaRange {
  uint32_t byte_count = 0;
  uint32_t byte_offset = 0;  // Into the first page; < 4096.
  absl::Span<const uint64_t> gpns;
};

// A parsed incoming packet. Spans point into the PacketBuffer that holds its private copy and
// are valid until that buffer is reused.
struct Packet {
  PacketType type = PacketType::kDataInBand;
  uint16_t flags = 0;
  uint64_t transaction_id = 0;
  // Bytes from data_offset8 * 8 to length8 * 8: the payload, padded to 8 bytes by the sender.
  absl::Span<const uint8_t> payload;
  // kDataUsingTransferPages only.
  uint16_t transfer_page_set_id = 0;
  bool sender_owns_set = false;
  std::vector<TransferPageRange> transfer_ranges;
  // kDataUsingGpaDirect only.
  std::vector<GpaRange> gpa_ranges;

  bool completion_requested() const { return (flags & kFlagCompletionRequested) != 0; }
};

// Validates a descriptor against the bytes the ring holds (`available`, trailer included) and
// returns the packet's length without the trailer. Errors: kBadDataOffset, kBadLength,
// kUnknownType, kUnknownFlags, kTruncated, kTooLarge (longer than `max_packet_bytes`).
absl::StatusOr<uint32_t> ValidateDescriptor(const PacketDescriptor& descriptor, uint32_t available,
                                            uint32_t max_packet_bytes);

// Parses the type-specific header and payload of a packet whose private copy is `words`
// (length8 * 8 bytes; the descriptor already validated by ValidateDescriptor) into `packet`.
// Errors: kBadRanges.
absl::Status ParsePacketBody(const PacketDescriptor& descriptor, absl::Span<const uint64_t> words,
                             Packet* packet);

// What a writer sends. The payload is copied into the ring after the header and padded to 8.
struct OutgoingPacket {
  PacketType type = PacketType::kDataInBand;
  uint16_t flags = 0;
  uint64_t transaction_id = 0;
  absl::Span<const uint8_t> payload;
  // kDataUsingTransferPages only.
  uint16_t transfer_page_set_id = 0;
  bool sender_owns_set = false;
  absl::Span<const TransferPageRange> transfer_ranges;
  // kDataUsingGpaDirect only.
  absl::Span<const GpaRange> gpa_ranges;
};

// Encodes the descriptor and type-specific header of `packet` into `header` (replacing its
// contents, in 8-byte words) and returns the packet's total length without the trailer.
// Errors: kUnknownType, kUnknownFlags, kBadRanges (empty or malformed ranges), kTooLarge
// (the length does not fit length8).
absl::StatusOr<uint32_t> EncodeHeader(const OutgoingPacket& packet, std::vector<uint64_t>* header);

}  // namespace cvmbus::ring

#endif  // CVMBUS_RING_PACKET_H_
