// GPADL messages of the VMBus channel control protocol: how a guest describes memory it
// shares with a channel (a Guest Physical Address Descriptor List), and the host's replies.
//
// A GPADL is `range_count` ranges packed into one buffer of u64 words ("range words"):
//   range := { u32 byte_count, u32 byte_offset } (one word), then
//            ceil((byte_offset + byte_count) / 4096) page numbers (one word each),
// with byte_count > 0 and byte_offset < 4096. GPADL_HEADER declares the buffer's length
// (range_buflen, bytes) and carries its first words; GPADL_BODY messages carry the rest.
// Both are variable-length: the message size says how many words it carries.
#ifndef CVMBUS_PARAVISOR_PROTOCOL_GPADL_MESSAGES_H_
#define CVMBUS_PARAVISOR_PROTOCOL_GPADL_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::protocol {

inline constexpr uint32_t kGpadlPageBytes = 4096;

// The first word of each range (struct gpa_range without its pfn_array).
struct GpaRangeHeader {
  uint32_t byte_count;
  uint32_t byte_offset;  // Into the first page; < 4096.
};
static_assert(sizeof(GpaRangeHeader) == 8);
static_assert(offsetof(GpaRangeHeader, byte_offset) == 4);
static_assert(std::has_unique_object_representations_v<GpaRangeHeader>);

// CHANNELMSG_GPADL_HEADER, guest -> host (struct vmbus_channel_gpadl_header): these 20 bytes,
// then range words, unaligned (the first starts at offset 20), which ParsedMessage::words
// holds as a copy.
struct GpadlHeader {
  static constexpr MessageType kType = MessageType::kGpadlHeader;
  static constexpr size_t kBaseBytes = 20;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t gpadl;         // The id the guest chose; echoed by GPADL_BODY and GPADL_CREATED.
  uint16_t range_buflen;  // Bytes of range words in the whole GPADL (header and bodies).
  uint16_t range_count;   // rangecount. Linux always sends 1.
};
static_assert(sizeof(GpadlHeader) == 20);
static_assert(offsetof(GpadlHeader, child_relid) == 8);
static_assert(offsetof(GpadlHeader, gpadl) == 12);
static_assert(offsetof(GpadlHeader, range_buflen) == 16);
static_assert(offsetof(GpadlHeader, range_count) == 18);
static_assert(std::is_trivially_copyable_v<GpadlHeader>);
static_assert(std::has_unique_object_representations_v<GpadlHeader>);

// CHANNELMSG_GPADL_BODY, guest -> host (struct vmbus_channel_gpadl_body): these 16 bytes,
// then the next range words (page numbers, in practice).
struct GpadlBody {
  static constexpr MessageType kType = MessageType::kGpadlBody;
  static constexpr size_t kBaseBytes = 16;

  MessageHeader header;
  uint32_t message_number;  // msgnumber: Linux never sets it; OpenVMM calls it reserved.
  uint32_t gpadl;
};
static_assert(sizeof(GpadlBody) == 16);
static_assert(offsetof(GpadlBody, message_number) == 8);
static_assert(offsetof(GpadlBody, gpadl) == 12);
static_assert(std::is_trivially_copyable_v<GpadlBody>);
static_assert(std::has_unique_object_representations_v<GpadlBody>);

// CHANNELMSG_GPADL_CREATED, host -> guest (struct vmbus_channel_gpadl_created).
struct GpadlCreated {
  static constexpr MessageType kType = MessageType::kGpadlCreated;
  static constexpr size_t kBaseBytes = 20;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t gpadl;
  uint32_t creation_status;  // NTSTATUS.
};
static_assert(sizeof(GpadlCreated) == 20);
static_assert(offsetof(GpadlCreated, child_relid) == 8);
static_assert(offsetof(GpadlCreated, gpadl) == 12);
static_assert(offsetof(GpadlCreated, creation_status) == 16);
static_assert(std::is_trivially_copyable_v<GpadlCreated>);
static_assert(std::has_unique_object_representations_v<GpadlCreated>);

// CHANNELMSG_GPADL_TEARDOWN, guest -> host (struct vmbus_channel_gpadl_teardown).
struct GpadlTeardown {
  static constexpr MessageType kType = MessageType::kGpadlTeardown;
  static constexpr size_t kBaseBytes = 16;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t gpadl;
};
static_assert(sizeof(GpadlTeardown) == 16);
static_assert(offsetof(GpadlTeardown, child_relid) == 8);
static_assert(offsetof(GpadlTeardown, gpadl) == 12);
static_assert(std::is_trivially_copyable_v<GpadlTeardown>);
static_assert(std::has_unique_object_representations_v<GpadlTeardown>);

// CHANNELMSG_GPADL_TORNDOWN, host -> guest (struct vmbus_channel_gpadl_torndown).
struct GpadlTorndown {
  static constexpr MessageType kType = MessageType::kGpadlTorndown;
  static constexpr size_t kBaseBytes = 12;

  MessageHeader header;
  uint32_t gpadl;
};
static_assert(sizeof(GpadlTorndown) == 12);
static_assert(offsetof(GpadlTorndown, gpadl) == 8);
static_assert(std::is_trivially_copyable_v<GpadlTorndown>);
static_assert(std::has_unique_object_representations_v<GpadlTorndown>);

// How many range words one message can carry.
// GPADL_HEADER: (240 - 20) / 8 = 27 words, i.e. one range header and 26 page numbers (Linux's
// create_gpadl_header() puts at most 26 pfns in the header). GPADL_BODY: (240 - 16) / 8 = 28.
inline constexpr size_t kGpadlHeaderMaxWords = (kMaxMessageBytes - sizeof(GpadlHeader)) / 8;
inline constexpr size_t kGpadlHeaderMaxPfns = kGpadlHeaderMaxWords - 1;
inline constexpr size_t kGpadlBodyMaxWords = (kMaxMessageBytes - sizeof(GpadlBody)) / 8;
static_assert(kGpadlHeaderMaxWords == 27 && kGpadlHeaderMaxPfns == 26);
static_assert(kGpadlBodyMaxWords == 28);

// The number of page numbers that follow a range header.
constexpr uint64_t GpaRangePageCount(uint32_t byte_count, uint32_t byte_offset) {
  return (uint64_t{byte_offset} + byte_count + kGpadlPageBytes - 1) / kGpadlPageBytes;
}

}  // namespace cvmbus::paravisor::protocol

#endif  // CVMBUS_PARAVISOR_PROTOCOL_GPADL_MESSAGES_H_
