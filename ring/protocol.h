// The VMBus ring buffer's wire format (one direction), as Linux (include/linux/hyperv.h),
// DPDK (drivers/bus/vmbus) and Hyper-V lay it out. All fields are little-endian.
#ifndef CVMBUS_RING_PROTOCOL_H_
#define CVMBUS_RING_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace cvmbus::ring {

// --- The control page (struct hv_ring_buffer): 4 KiB before the data area. ---
namespace control {
inline constexpr uint32_t kWriteIndex = 0x00;       // Writer's next byte offset ("in").
inline constexpr uint32_t kReadIndex = 0x04;        // Reader's next byte offset ("out").
inline constexpr uint32_t kInterruptMask = 0x08;    // Reader: "don't signal me" while nonzero.
inline constexpr uint32_t kPendingSendSize = 0x0c;  // Writer: "signal me when this fits".
inline constexpr uint32_t kFeatureBits = 0x40;      // Writer's features.
inline constexpr uint32_t kFeaturePendingSendSize = 1u << 0;
inline constexpr uint32_t kPageBytes = 4096;
}  // namespace control

// --- Packets. Every packet is 8-byte aligned and followed by an 8-byte trailer. ---
enum class PacketType : uint16_t {
  kDataInBand = 0x6,
  kDataUsingTransferPages = 0x7,
  kDataUsingGpaDirect = 0x9,
  kCompletion = 0xb,
};

inline constexpr uint16_t kFlagCompletionRequested = 0x1;
inline constexpr uint16_t kKnownFlags = kFlagCompletionRequested;

struct PacketDescriptor {  // struct vmpacket_descriptor
  uint16_t type;
  uint16_t data_offset8;  // Descriptor + type-specific header, in 8-byte units.
  uint16_t length8;       // Whole packet without the trailer, in 8-byte units.
  uint16_t flags;
  uint64_t transaction_id;
};
static_assert(sizeof(PacketDescriptor) == 16);
static_assert(offsetof(PacketDescriptor, data_offset8) == 2);
static_assert(offsetof(PacketDescriptor, length8) == 4);
static_assert(offsetof(PacketDescriptor, flags) == 6);
static_assert(offsetof(PacketDescriptor, transaction_id) == 8);
static_assert(std::is_trivially_copyable_v<PacketDescriptor>);

// After the descriptor of a kDataUsingTransferPages packet (struct
// vmtransfer_page_packet_header without its descriptor), then `range_count` ranges.
struct TransferPageHeader {
  uint16_t transfer_page_set_id;
  uint8_t sender_owns_set;
  uint8_t reserved;
  uint32_t range_count;
};
static_assert(sizeof(TransferPageHeader) == 8);
static_assert(offsetof(TransferPageHeader, range_count) == 4);

struct TransferPageRange {  // struct vmtransfer_page_range
  uint32_t byte_count;
  uint32_t byte_offset;
};
static_assert(sizeof(TransferPageRange) == 8);

// After the descriptor of a kDataUsingGpaDirect packet (struct vmdata_gpa_direct without its
// descriptor); then `range_count` ranges, each {u32 byte_count, u32 byte_offset,
// u64 gpn[ceil((byte_offset + byte_count) / 4096)]}.
struct GpaDirectHeader {
  uint32_t reserved;
  uint32_t range_count;
};
static_assert(sizeof(GpaDirectHeader) == 8);

inline constexpr uint32_t kDescriptorBytes = sizeof(PacketDescriptor);
inline constexpr uint32_t kTrailerBytes = 8;
// The smallest packet: a descriptor alone, plus its trailer.
inline constexpr uint32_t kMinPacketBytes = kDescriptorBytes + kTrailerBytes;

// The trailer the writer puts after a packet that starts at `write_index`.
constexpr uint64_t TrailerFor(uint32_t write_index) { return uint64_t{write_index} << 32; }

constexpr uint32_t AlignUp8(uint32_t bytes) { return (bytes + 7) & ~7u; }

}  // namespace cvmbus::ring

#endif  // CVMBUS_RING_PROTOCOL_H_
