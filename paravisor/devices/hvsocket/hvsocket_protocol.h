// The hvsocket wire format on a VMBus ring, as Linux's net/vmw_vsock/hyperv_transport.c sends
// and accepts it, and the vsock <-> hvsocket address mapping.
//
// Every packet is in-band (VM_PKT_DATA_INBAND, no completion) and its payload starts with a
// vmpipe_proto_header {u32 pkt_type = 1 (data), u32 data_size}, then data_size bytes of the
// stream (the ring pads the payload to 8). data_size 0 is the FIN: the sender shut down its
// writes (hvs_shutdown). A reader takes at most kMtuBytes per packet (hvs_update_recv_data
// refuses more, and data_size beyond the payload, with -EIO); Linux itself sends at most
// kLinuxSendChunkBytes per packet (HVS_SEND_BUF_SIZE).
//
// Addresses: a vsock port P is the service id P-facb-11e6-bd58-64006a7986d3, the port in the
// GUID's first four bytes (little-endian data1); Linux connects and accepts only ids of that
// form (is_valid_srv_id).
#ifndef CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_PROTOCOL_H_
#define CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/bus/guid.h"
#include "ring/packet.h"

namespace cvmbus::paravisor::hvsocket {

// struct vmpipe_proto_header.
struct PipeHeader {
  uint32_t packet_type;
  uint32_t data_size;
};
static_assert(sizeof(PipeHeader) == 8);
static_assert(offsetof(PipeHeader, packet_type) == 0);
static_assert(offsetof(PipeHeader, data_size) == 4);
static_assert(std::is_trivially_copyable_v<PipeHeader>);

inline constexpr uint32_t kPipePacketData = 1;    // The only type hyperv_transport.c sends.
inline constexpr uint32_t kMtuBytes = 16 * 1024;  // HVS_MTU_SIZE: most data one packet carries.
inline constexpr uint32_t kLinuxSendChunkBytes = 4096 - sizeof(PipeHeader);  // HVS_SEND_BUF_SIZE.
// Linux's default ring per direction: six 4 KiB pages of data (RINGBUFFER_HVS_SND/RCV_SIZE), so
// VMBUS_RING_SIZE adds the control page: 7 pages.
inline constexpr uint32_t kLinuxRingDataPages = 6;

// The ring bytes one packet of `data_bytes` takes: descriptor (16), pipe header, data padded
// to 8, trailer (8). Linux's HVS_PKT_LEN.
constexpr uint32_t PacketBytes(uint32_t data_bytes) {
  return 16 + sizeof(PipeHeader) + ((data_bytes + 7) & ~uint32_t{7}) + 8;
}

// 00000000-facb-11e6-bd58-64006a7986d3.
inline constexpr Guid kVsockTemplate{
    0, 0xfacb, 0x11e6, {0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3}};

constexpr Guid ServiceIdForPort(uint32_t port) {
  Guid id = kVsockTemplate;
  id.data1 = port;
  return id;
}
// The port of a service id in the vsock template; nullopt for any other GUID.
constexpr std::optional<uint32_t> PortOfServiceId(const Guid& id) {
  Guid stripped = id;
  stripped.data1 = 0;
  if (stripped != kVsockTemplate) return std::nullopt;
  return id.data1;
}

// The stream bytes of one packet the peer sent. `data` points into the packet's private copy.
struct PipeData {
  absl::Span<const uint8_t> data;
  bool fin() const { return data.empty(); }
};

// Parses a packet from the ring's private copy (never from shared memory). Errors
// (kInvalidArgument, naming what was wrong): not in-band, a payload shorter than the header,
// a pipe type other than data, data_size past the payload or above kMtuBytes.
absl::StatusOr<PipeData> ParsePipePacket(const ring::Packet& packet);

// The header of a data packet carrying `data_bytes` (0: the FIN).
inline PipeHeader DataHeader(uint32_t data_bytes) {
  return PipeHeader{kPipePacketData, data_bytes};
}

}  // namespace cvmbus::paravisor::hvsocket

#endif  // CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HVSOCKET_PROTOCOL_H_
