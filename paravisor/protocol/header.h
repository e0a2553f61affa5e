// The VMBus channel control protocol: what every message shares. These messages travel as
// SynIC messages (guest -> host on connection id 1, or 4 from version 5.0; host -> guest on
// SINT 2), each a little-endian payload of at most 240 bytes that starts with MessageHeader.
//
// Layouts and numbers are Linux include/linux/hyperv.h; what Linux lacks (message types 18-20
// and 25-29, feature flags other than 0x10, extended message tails) is OpenVMM
// vm/devices/vmbus/vmbus_core/src/protocol.rs. paravisor/protocol/README.md cites the versions.
#ifndef CVMBUS_PARAVISOR_PROTOCOL_HEADER_H_
#define CVMBUS_PARAVISOR_PROTOCOL_HEADER_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace cvmbus::paravisor::protocol {

// The structs in this package are the wire layout, copied byte for byte: each is asserted to
// have no padding (std::has_unique_object_representations) and Linux's field offsets. They are
// naturally aligned rather than #pragma pack'ed, because every VMBus field already sits at an
// aligned offset; so references to their fields are never misaligned (packed structs made
// EXPECT_EQ and fmt::format bind misaligned references, which UBSan rejects). The two
// exceptions are noted where they occur.
static_assert(std::endian::native == std::endian::little, "VMBus is little-endian");

// --- Protocol versions: (major << 16) | minor, as INITIATE_CONTACT requests them. ---
constexpr uint32_t MakeVersion(uint16_t major, uint16_t minor) {
  return (uint32_t{major} << 16) | minor;
}
constexpr uint16_t VersionMajor(uint32_t version) { return static_cast<uint16_t>(version >> 16); }
constexpr uint16_t VersionMinor(uint32_t version) { return static_cast<uint16_t>(version); }

// Linux name (OpenVMM name): release.
inline constexpr uint32_t kVersionWs2008 = MakeVersion(0, 13);    // (V1): Windows Server 2008.
inline constexpr uint32_t kVersionWin7 = MakeVersion(1, 1);       // (Win7): WS2008 R2.
inline constexpr uint32_t kVersionWin8 = MakeVersion(2, 4);       // (Win8): WS2012.
inline constexpr uint32_t kVersionWin8_1 = MakeVersion(3, 0);     // (Win8_1): WS2012 R2.
inline constexpr uint32_t kVersionWin10 = MakeVersion(4, 0);      // (Win10).
inline constexpr uint32_t kVersionWin10V4_1 = MakeVersion(4, 1);  // (Win10Rs3_0).
inline constexpr uint32_t kVersionWin10V5 = MakeVersion(5, 0);    // (Win10Rs3_1).
inline constexpr uint32_t kVersionWin10V5_1 = MakeVersion(5, 1);  // (Win10Rs4).
inline constexpr uint32_t kVersionWin10V5_2 = MakeVersion(5, 2);  // (Win10Rs5): WS2019.
inline constexpr uint32_t kVersionWin10V5_3 = MakeVersion(5, 3);  // (Iron): WS2022.
inline constexpr uint32_t kVersionWin10V6_0 = MakeVersion(6, 0);  // (Copper): confidential.
static_assert(kVersionWs2008 == 0x0000000d && kVersionWin7 == 0x00010001);
static_assert(kVersionWin8 == 0x00020004 && kVersionWin10V6_0 == 0x00060000);

// Every version either side may speak, oldest first.
inline constexpr uint32_t kKnownVersions[] = {
    kVersionWs2008,    kVersionWin7,      kVersionWin8,      kVersionWin8_1,
    kVersionWin10,     kVersionWin10V4_1, kVersionWin10V5,   kVersionWin10V5_1,
    kVersionWin10V5_2, kVersionWin10V5_3, kVersionWin10V6_0,
};

// --- Feature flags (6.0+): INITIATE_CONTACT requests them, VERSION_RESPONSE grants a subset.
// Linux defines only kFeatureConfidentialChannels; the rest are OpenVMM's FeatureFlags bits.
inline constexpr uint32_t kFeatureGuestSpecifiedSignalParameters = 0x01;  // OPENCHANNEL tail.
inline constexpr uint32_t kFeatureChannelInterruptRedirection = 0x02;     // OPENCHANNEL flags.
inline constexpr uint32_t kFeatureModifyConnection = 0x04;                // Messages 25-26.
inline constexpr uint32_t kFeatureClientId = 0x08;              // INITIATE_CONTACT carries a GUID.
inline constexpr uint32_t kFeatureConfidentialChannels = 0x10;  // Offer flags 0x2 and 0x4.
inline constexpr uint32_t kFeaturePauseResume = 0x20;           // Messages 27-29.
// The server supplies the monitor pages in VERSION_RESPONSE (OpenVMM; a paravisor on a
// confidential VM, where the guest's own monitor pages are shared with the host).
inline constexpr uint32_t kFeatureServerSpecifiedMonitorPages = 0x40;
inline constexpr uint32_t kKnownFeatures = 0x7f;

// --- SynIC plumbing (Linux drivers/hv/hyperv_vmbus.h; OpenVMM for the redirect id). ---
inline constexpr uint32_t kMessageConnectionId = 1;   // Guest -> host before version 5.0.
inline constexpr uint32_t kMessageConnectionId4 = 4;  // INITIATE_CONTACT from version 5.0.
inline constexpr uint32_t kRedirectConnectionId = 0x800074;
inline constexpr uint8_t kMessageSint = 2;  // Host -> guest messages.

// The SynIC message payload (HV_MESSAGE_PAYLOAD_BYTE_COUNT): no message is longer.
inline constexpr size_t kMaxMessageBytes = 240;

// --- Message types (enum vmbus_channel_message_type; CHANNELMSG_* in Linux). ---
enum class MessageType : uint32_t {
  kInvalid = 0,  // CHANNELMSG_INVALID: never valid on the wire.
  kOfferChannel = 1,
  kRescindChannelOffer = 2,
  kRequestOffers = 3,
  kAllOffersDelivered = 4,
  kOpenChannel = 5,
  kOpenChannelResult = 6,
  kCloseChannel = 7,
  kGpadlHeader = 8,
  kGpadlBody = 9,
  kGpadlCreated = 10,
  kGpadlTeardown = 11,
  kGpadlTorndown = 12,
  kRelIdReleased = 13,
  kInitiateContact = 14,
  kVersionResponse = 15,
  kUnload = 16,
  kUnloadResponse = 17,
  kOpenReservedChannel = 18,           // Linux: CHANNELMSG_18 (OpenVMM names it).
  kCloseReservedChannel = 19,          // Linux: CHANNELMSG_19.
  kCloseReservedChannelResponse = 20,  // Linux: CHANNELMSG_20.
  kTlConnectRequest = 21,
  kModifyChannel = 22,
  kTlConnectResult = 23,
  kModifyChannelResponse = 24,
  kModifyConnection = 25,          // OpenVMM only.
  kModifyConnectionResponse = 26,  // OpenVMM only.
  kPause = 27,                     // OpenVMM only.
  kPauseResponse = 28,             // OpenVMM only.
  kResume = 29,                    // OpenVMM only.
};
inline constexpr uint32_t kLastMessageType = 29;

// struct vmbus_channel_message_header. Every message struct below starts with one.
struct MessageHeader {
  MessageType message_type;
  uint32_t padding;  // Zero when sent; ignored when received.
};
static_assert(sizeof(MessageHeader) == 8);
static_assert(offsetof(MessageHeader, padding) == 4);
static_assert(std::is_trivially_copyable_v<MessageHeader>);
static_assert(std::has_unique_object_representations_v<MessageHeader>);

// guid_t as the wire carries it: Windows GUID byte order (the first three fields
// little-endian), never interpreted here.
struct Guid {
  uint8_t bytes[16];
  friend bool operator==(const Guid&, const Guid&) = default;
};
static_assert(sizeof(Guid) == 16);
static_assert(std::is_trivially_copyable_v<Guid>);
static_assert(std::has_unique_object_representations_v<Guid>);

// NTSTATUS values the server puts in status fields (OpenVMM's constants).
inline constexpr uint32_t kStatusSuccess = 0;
inline constexpr uint32_t kStatusUnsuccessful = 0x8000ffff;
inline constexpr uint32_t kStatusConnectionRefused = 0xc0000236;

}  // namespace cvmbus::paravisor::protocol

#endif  // CVMBUS_PARAVISOR_PROTOCOL_HEADER_H_
