// Channel-level messages of the VMBus channel control protocol: offers, open/close, modify,
// Hyper-V socket connects, and the reserved-channel messages 18-20.
//
// Each struct is the whole message, header included, with Linux's field offsets (hyperv.h);
// OpenVMM supplies types 18-20, TL_CONNECT_RESULT, the hvsocket user-defined layout and the
// extended tails. A struct whose `kBaseBytes` is less than its sizeof has a tail that only some
// versions or features send; the tail reads as zero when absent.
#ifndef CVMBUS_PARAVISOR_PROTOCOL_CHANNEL_MESSAGES_H_
#define CVMBUS_PARAVISOR_PROTOCOL_CHANNEL_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::protocol {

// --- Offer flags (vmbus_channel_offer.chn_flags, u16). ---
inline constexpr uint16_t kOfferEnumerateDeviceInterface = 0x0001;
// 6.0, paravisor offers only, and only when kFeatureConfidentialChannels was negotiated: the
// ring buffer (0x2), and GPA-direct ranges and extra GPADLs (0x4), must be in private memory.
// Linux rejects 0x4 without 0x2. Before 6.0 Linux named these bits SERVER_SUPPORTS_TRANSFER_PAGES
// and SERVER_SUPPORTS_GPADLS (never sent by hosts it talks to).
inline constexpr uint16_t kOfferConfidentialRingBuffer = 0x0002;
inline constexpr uint16_t kOfferConfidentialExternalMemory = 0x0004;
inline constexpr uint16_t kOfferNamedPipeMode = 0x0010;  // user_defined is PipeUserDefined.
inline constexpr uint16_t kOfferLoopback = 0x0100;       // Linux only.
inline constexpr uint16_t kOfferParent = 0x0200;         // Linux only.
inline constexpr uint16_t kOfferRequestMonitoredNotification = 0x0400;  // Linux only.
inline constexpr uint16_t kOfferTlnpiProvider = 0x2000;  // Hyper-V socket: HvsockUserDefined.

// Pipe modes (VMBUS_PIPE_TYPE_*).
inline constexpr uint32_t kPipeTypeByte = 0x0;
inline constexpr uint32_t kPipeTypeMessage = 0x4;

// OpenVMM HvsockParametersVersion.
inline constexpr uint32_t kHvsockParametersPreRs5 = 0;
inline constexpr uint32_t kHvsockParametersRs5 = 1;

// OPENCHANNEL / MODIFYCHANNEL target_vp meaning "no interrupts" (OpenVMM).
inline constexpr uint32_t kTargetVpDisableInterrupt = 0xffffffff;

// OPENCHANNEL flags in the 6.0 tail (OpenVMM OpenChannelFlags).
inline constexpr uint16_t kOpenChannelRedirectInterrupt = 0x0001;

inline constexpr size_t kUserDefinedBytes = 120;      // MAX_USER_DEFINED_BYTES.
inline constexpr size_t kPipeUserDefinedBytes = 116;  // MAX_PIPE_USER_DEFINED_BYTES.

// The user-defined area read as a pipe (kOfferNamedPipeMode).
struct PipeUserDefined {
  uint32_t pipe_mode;  // kPipeType*.
  uint8_t user_defined[kPipeUserDefinedBytes];
};
static_assert(sizeof(PipeUserDefined) == kUserDefinedBytes);
static_assert(offsetof(PipeUserDefined, user_defined) == 4);
static_assert(std::has_unique_object_representations_v<PipeUserDefined>);

// The user-defined area of a Hyper-V socket offer (kOfferTlnpiProvider), per OpenVMM
// HvsockUserDefinedParameters; Linux reads only is_for_guest_accept (its user_def[0]). The
// version is a u32 at the unaligned offset 6, so it is kept as bytes behind an accessor.
struct HvsockUserDefined {
  uint32_t pipe_mode;
  uint8_t is_for_guest_accept;  // Nonzero: the host connects to a listening guest.
  uint8_t is_for_guest_container;
  uint8_t version_bytes[4];  // kHvsockParameters*, little-endian.
  Guid silo_id;
  uint8_t padding[2];
  uint8_t unused[92];

  uint32_t version() const {
    return uint32_t{version_bytes[0]} | uint32_t{version_bytes[1]} << 8 |
           uint32_t{version_bytes[2]} << 16 | uint32_t{version_bytes[3]} << 24;
  }
};
static_assert(sizeof(HvsockUserDefined) == kUserDefinedBytes);
static_assert(offsetof(HvsockUserDefined, is_for_guest_accept) == 4);
static_assert(offsetof(HvsockUserDefined, is_for_guest_container) == 5);
static_assert(offsetof(HvsockUserDefined, version_bytes) == 6);
static_assert(offsetof(HvsockUserDefined, silo_id) == 10);
static_assert(offsetof(HvsockUserDefined, padding) == 26);
static_assert(offsetof(HvsockUserDefined, unused) == 28);
static_assert(std::has_unique_object_representations_v<HvsockUserDefined>);

union UserDefined {
  uint8_t bytes[kUserDefinedBytes];
  PipeUserDefined pipe;
  HvsockUserDefined hvsock;
};
static_assert(sizeof(UserDefined) == kUserDefinedBytes);
static_assert(std::has_unique_object_representations_v<UserDefined>);

// CHANNELMSG_OFFERCHANNEL, host -> guest (struct vmbus_channel_offer_channel, which embeds
// struct vmbus_channel_offer at offset 8).
struct OfferChannel {
  static constexpr MessageType kType = MessageType::kOfferChannel;
  static constexpr size_t kBaseBytes = 196;

  MessageHeader header;
  Guid interface_type;      // if_type: the device class.
  Guid interface_instance;  // if_instance: this device.
  uint32_t reserved[4];     // Linux: u64 reserved1, reserved2 (kept 4-aligned: see header.h).
  uint16_t channel_flags;   // chn_flags: kOffer*.
  uint16_t mmio_megabytes;  // MMIO space the device wants, in MiB.
  UserDefined user_defined;
  uint16_t sub_channel_index;        // 2.4+: 0 for a primary channel.
  uint16_t mmio_megabytes_optional;  // Linux: reserved3.
  uint32_t child_relid;              // The channel id.
  uint8_t monitor_id;
  uint8_t monitor_flags;     // Bit 0: monitor_allocated (1.1+ reads it as a bit field).
  uint16_t interrupt_flags;  // Bit 0: is_dedicated_interrupt (1.1+).
  uint32_t connection_id;    // 1.1+: the connection id the guest signals.

  bool monitor_allocated() const { return (monitor_flags & 1) != 0; }
  bool is_dedicated_interrupt() const { return (interrupt_flags & 1) != 0; }
};
static_assert(sizeof(OfferChannel) == 196);
static_assert(offsetof(OfferChannel, interface_type) == 8);
static_assert(offsetof(OfferChannel, interface_instance) == 24);
static_assert(offsetof(OfferChannel, reserved) == 40);
static_assert(offsetof(OfferChannel, channel_flags) == 56);
static_assert(offsetof(OfferChannel, mmio_megabytes) == 58);
static_assert(offsetof(OfferChannel, user_defined) == 60);
static_assert(offsetof(OfferChannel, sub_channel_index) == 180);
static_assert(offsetof(OfferChannel, mmio_megabytes_optional) == 182);
static_assert(offsetof(OfferChannel, child_relid) == 184);
static_assert(offsetof(OfferChannel, monitor_id) == 188);
static_assert(offsetof(OfferChannel, monitor_flags) == 189);
static_assert(offsetof(OfferChannel, interrupt_flags) == 190);
static_assert(offsetof(OfferChannel, connection_id) == 192);
static_assert(std::is_trivially_copyable_v<OfferChannel>);
static_assert(std::has_unique_object_representations_v<OfferChannel>);

// Messages that name only a channel: RESCIND_CHANNELOFFER (host -> guest), CLOSECHANNEL and
// RELID_RELEASED (guest -> host). One template, three distinct types.
template <MessageType kMessageType>
struct ChannelIdMessage {
  static constexpr MessageType kType = kMessageType;
  static constexpr size_t kBaseBytes = 12;
  MessageHeader header;
  uint32_t child_relid;
};
using RescindChannelOffer = ChannelIdMessage<MessageType::kRescindChannelOffer>;
using CloseChannel = ChannelIdMessage<MessageType::kCloseChannel>;
using RelIdReleased = ChannelIdMessage<MessageType::kRelIdReleased>;
static_assert(sizeof(RescindChannelOffer) == 12);
static_assert(offsetof(RescindChannelOffer, child_relid) == 8);
static_assert(std::is_trivially_copyable_v<RescindChannelOffer>);
static_assert(std::has_unique_object_representations_v<RescindChannelOffer>);

// CHANNELMSG_OPENCHANNEL, guest -> host (struct vmbus_channel_open_channel; the tail is
// OpenVMM's OpenChannel2, required when kFeatureGuestSpecifiedSignalParameters or
// kFeatureChannelInterruptRedirection was negotiated).
struct OpenChannel {
  static constexpr MessageType kType = MessageType::kOpenChannel;
  static constexpr size_t kBaseBytes = 148;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t open_id;                 // openid: echoed by OPENCHANNEL_RESULT.
  uint32_t ring_buffer_gpadl;       // ringbuffer_gpadlhandle.
  uint32_t target_vp;               // 2.4+: VP for host -> guest interrupts (0 before).
  uint32_t downstream_page_offset;  // downstream_ringbuffer_pageoffset: host -> guest ring,
                                    // in pages from the start of the GPADL.
  uint8_t user_data[kUserDefinedBytes];
  uint32_t connection_id;  // Tail, kFeatureGuestSpecifiedSignalParameters.
  uint16_t event_flag;     // Tail, kFeatureGuestSpecifiedSignalParameters.
  uint16_t flags;          // Tail, kFeatureChannelInterruptRedirection: kOpenChannel*.
};
static_assert(sizeof(OpenChannel) == 156);
static_assert(offsetof(OpenChannel, child_relid) == 8);
static_assert(offsetof(OpenChannel, open_id) == 12);
static_assert(offsetof(OpenChannel, ring_buffer_gpadl) == 16);
static_assert(offsetof(OpenChannel, target_vp) == 20);
static_assert(offsetof(OpenChannel, downstream_page_offset) == 24);
static_assert(offsetof(OpenChannel, user_data) == 28);
static_assert(offsetof(OpenChannel, connection_id) == OpenChannel::kBaseBytes);
static_assert(offsetof(OpenChannel, event_flag) == 152);
static_assert(offsetof(OpenChannel, flags) == 154);
static_assert(std::is_trivially_copyable_v<OpenChannel>);
static_assert(std::has_unique_object_representations_v<OpenChannel>);

// CHANNELMSG_OPENCHANNEL_RESULT, host -> guest (struct vmbus_channel_open_result).
struct OpenResult {
  static constexpr MessageType kType = MessageType::kOpenChannelResult;
  static constexpr size_t kBaseBytes = 20;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t open_id;
  uint32_t status;  // NTSTATUS: kStatusSuccess or a failure.
};
static_assert(sizeof(OpenResult) == 20);
static_assert(offsetof(OpenResult, child_relid) == 8);
static_assert(offsetof(OpenResult, open_id) == 12);
static_assert(offsetof(OpenResult, status) == 16);
static_assert(std::is_trivially_copyable_v<OpenResult>);
static_assert(std::has_unique_object_representations_v<OpenResult>);

// CHANNELMSG_MODIFYCHANNEL, guest -> host (struct vmbus_channel_modifychannel; 4.1+).
struct ModifyChannel {
  static constexpr MessageType kType = MessageType::kModifyChannel;
  static constexpr size_t kBaseBytes = 16;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t target_vp;
};
static_assert(sizeof(ModifyChannel) == 16);
static_assert(offsetof(ModifyChannel, child_relid) == 8);
static_assert(offsetof(ModifyChannel, target_vp) == 12);
static_assert(std::is_trivially_copyable_v<ModifyChannel>);
static_assert(std::has_unique_object_representations_v<ModifyChannel>);

// CHANNELMSG_MODIFYCHANNEL_RESPONSE, host -> guest
// (struct vmbus_channel_modifychannel_response; 5.3+).
struct ModifyChannelResponse {
  static constexpr MessageType kType = MessageType::kModifyChannelResponse;
  static constexpr size_t kBaseBytes = 16;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t status;  // NTSTATUS.
};
static_assert(sizeof(ModifyChannelResponse) == 16);
static_assert(offsetof(ModifyChannelResponse, child_relid) == 8);
static_assert(offsetof(ModifyChannelResponse, status) == 12);
static_assert(std::is_trivially_copyable_v<ModifyChannelResponse>);
static_assert(std::has_unique_object_representations_v<ModifyChannelResponse>);

// CHANNELMSG_TL_CONNECT_REQUEST, guest -> host (struct vmbus_channel_tl_connect_request, 4.0+;
// the silo-id tail is OpenVMM's TlConnectRequest2, 5.2+, and some guests omit it even then).
struct TlConnectRequest {
  static constexpr MessageType kType = MessageType::kTlConnectRequest;
  static constexpr size_t kBaseBytes = 40;

  MessageHeader header;
  Guid guest_endpoint_id;
  Guid host_service_id;
  Guid silo_id;  // Tail.
};
static_assert(sizeof(TlConnectRequest) == 56);
static_assert(offsetof(TlConnectRequest, guest_endpoint_id) == 8);
static_assert(offsetof(TlConnectRequest, host_service_id) == 24);
static_assert(offsetof(TlConnectRequest, silo_id) == TlConnectRequest::kBaseBytes);
static_assert(std::is_trivially_copyable_v<TlConnectRequest>);
static_assert(std::has_unique_object_representations_v<TlConnectRequest>);

// CHANNELMSG_TL_CONNECT_RESULT, host -> guest (OpenVMM TlConnectResult; 4.1+).
struct TlConnectResult {
  static constexpr MessageType kType = MessageType::kTlConnectResult;
  static constexpr size_t kBaseBytes = 44;

  MessageHeader header;
  Guid endpoint_id;
  Guid service_id;
  uint32_t status;  // NTSTATUS (OpenVMM: i32).
};
static_assert(sizeof(TlConnectResult) == 44);
static_assert(offsetof(TlConnectResult, endpoint_id) == 8);
static_assert(offsetof(TlConnectResult, service_id) == 24);
static_assert(offsetof(TlConnectResult, status) == 40);
static_assert(std::is_trivially_copyable_v<TlConnectResult>);
static_assert(std::has_unique_object_representations_v<TlConnectResult>);

// CHANNELMSG 18, guest -> host (OpenVMM OpenReservedChannel; 4.0+).
struct OpenReservedChannel {
  static constexpr MessageType kType = MessageType::kOpenReservedChannel;
  static constexpr size_t kBaseBytes = 28;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t target_vp;
  uint32_t target_sint;
  uint32_t ring_buffer_gpadl;
  uint32_t downstream_page_offset;
};
static_assert(sizeof(OpenReservedChannel) == 28);
static_assert(offsetof(OpenReservedChannel, child_relid) == 8);
static_assert(offsetof(OpenReservedChannel, target_vp) == 12);
static_assert(offsetof(OpenReservedChannel, target_sint) == 16);
static_assert(offsetof(OpenReservedChannel, ring_buffer_gpadl) == 20);
static_assert(offsetof(OpenReservedChannel, downstream_page_offset) == 24);
static_assert(std::is_trivially_copyable_v<OpenReservedChannel>);
static_assert(std::has_unique_object_representations_v<OpenReservedChannel>);

// CHANNELMSG 19, guest -> host (OpenVMM CloseReservedChannel; accepted even when not
// connected).
struct CloseReservedChannel {
  static constexpr MessageType kType = MessageType::kCloseReservedChannel;
  static constexpr size_t kBaseBytes = 20;

  MessageHeader header;
  uint32_t child_relid;
  uint32_t target_vp;
  uint32_t target_sint;
};
static_assert(sizeof(CloseReservedChannel) == 20);
static_assert(offsetof(CloseReservedChannel, child_relid) == 8);
static_assert(offsetof(CloseReservedChannel, target_vp) == 12);
static_assert(offsetof(CloseReservedChannel, target_sint) == 16);
static_assert(std::is_trivially_copyable_v<CloseReservedChannel>);
static_assert(std::has_unique_object_representations_v<CloseReservedChannel>);

// CHANNELMSG 20, host -> guest (OpenVMM CloseReservedChannelResponse; 4.0+).
using CloseReservedChannelResponse = ChannelIdMessage<MessageType::kCloseReservedChannelResponse>;

}  // namespace cvmbus::paravisor::protocol

#endif  // CVMBUS_PARAVISOR_PROTOCOL_CHANNEL_MESSAGES_H_
