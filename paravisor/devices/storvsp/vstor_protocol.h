// The VSTOR protocol (Hyper-V synthetic SCSI) on the wire, as Linux's storvsc speaks it: the
// vstor_packet that every request and completion carries inside a VMBus packet, its operation
// codes, versions and statuses, and the size rules. The facts and their sources are in
// ../storvsp_protocol.md; section numbers below refer to it.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_VSTOR_PROTOCOL_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_VSTOR_PROTOCOL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace cvmbus::paravisor::storvsp {

// Operation codes (§1.2).
enum class VstorOperation : uint32_t {
  kCompleteIo = 1,
  kRemoveDevice = 2,
  kExecuteSrb = 3,
  kResetLun = 4,
  kResetAdapter = 5,
  kResetBus = 6,
  kBeginInitialization = 7,
  kEndInitialization = 8,
  kQueryProtocolVersion = 9,
  kQueryProperties = 10,
  kEnumerateBus = 11,
  kFcHbaData = 12,
  kCreateSubChannels = 13,
};

// Protocol versions, (major << 8) | minor (§2.1).
inline constexpr uint16_t kVersionWin6 = 0x0200;
inline constexpr uint16_t kVersionWin7 = 0x0402;
inline constexpr uint16_t kVersionWin8 = 0x0501;
inline constexpr uint16_t kVersionWin8_1 = 0x0600;
inline constexpr uint16_t kVersionWin10 = 0x0602;

// NTSTATUS values in the packet's status field (§1.3).
inline constexpr uint32_t kNtSuccess = 0;
inline constexpr uint32_t kNtInvalidParameter = 0xC000000D;
inline constexpr uint32_t kNtInvalidDeviceRequest = 0xC0000010;
inline constexpr uint32_t kNtRevisionMismatch = 0xC0000059;
inline constexpr uint32_t kNtInvalidDeviceState = 0xC0000184;

// REQUEST_COMPLETION_FLAG in the packet's flags (the guest sets it on every request).
inline constexpr uint32_t kRequestCompletionFlag = 0x1;
// storage_channel_properties.flags: the host offers subchannels.
inline constexpr uint32_t kSupportsMultiChannel = 0x1;

// Sizes (§2.3): a 12-byte header, then a body of at most 0x34 bytes (the Win8 vmscsi_request,
// the largest union member); the pre-Win8 vmscsi_request is 0x24.
inline constexpr size_t kHeaderBytes = 12;
inline constexpr size_t kMaxBodyBytes = 0x34;
inline constexpr size_t kScsiRequestBytesPreWin8 = 0x24;
inline constexpr size_t kMaxPacketBytes = kHeaderBytes + kMaxBodyBytes;  // 64.

// One guest request, copied out of the ring (the copy is what is validated and used).
struct VstorRequest {
  VstorOperation operation{};
  uint32_t flags = 0;
  uint32_t status = 0;
  // The body as sent, zero-extended to kMaxBodyBytes; body_bytes says how much was sent
  // (min(packet - header, kMaxBodyBytes): bytes beyond it are ignored, as Hyper-V does).
  std::array<uint8_t, kMaxBodyBytes> body{};
  size_t body_bytes = 0;
};

// Parses one vstor_packet (the VMBus packet's payload from its data offset). Errors
// (kInvalidArgument, naming what was wrong): shorter than the 12-byte header.
absl::StatusOr<VstorRequest> ParseVstorPacket(absl::Span<const uint8_t> packet);

// A completion (operation COMPLETE_IO, flags 0, `status`) whose body is `body` zero-padded or
// cut to `body_bytes`: a completion is as long as the request it answers (§2.4), which every
// Linux accepts (6.0+ sends and wants 64 bytes, older kernels 48 during initialization).
std::vector<uint8_t> EncodeCompletion(uint32_t status, absl::Span<const uint8_t> body,
                                      size_t body_bytes);

// storage_channel_properties (the QUERY_PROPERTIES completion's body, §3 step 5), 24 bytes.
struct ChannelProperties {
  uint16_t max_channel_count = 0;  // Subchannels the guest may ask for.
  uint32_t flags = 0;              // kSupportsMultiChannel.
  uint32_t max_transfer_bytes = 0;
};
std::array<uint8_t, 24> EncodeChannelProperties(const ChannelProperties& properties);

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_VSTOR_PROTOCOL_H_
