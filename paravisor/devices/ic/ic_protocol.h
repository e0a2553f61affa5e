// The wire format of the Hyper-V integration components (ICs): heartbeat, shutdown and time
// sync, as Linux's drivers/hv/hv_util.c reads them (include/linux/hyperv.h names in comments)
// and as Hyper-V and OpenVMM (vm/devices/hyperv_ic_protocol) send them.
//
// Framing. Every IC message is one in-band ring packet whose payload is
//   vmbuspipe_hdr (8 bytes) | icmsg_hdr (20 bytes) | message body (icmsgsize bytes)
// Linux calls the first 28 bytes ICMSG_HDR. The host sends requests
// (ICMSGHDRFLAG_TRANSACTION | REQUEST); Linux answers each by rewriting the same buffer in place
// (flags TRANSACTION | RESPONSE, and the status or body it changes) and sending back exactly as
// many bytes as it received, with the ring packet's transaction id echoed. Linux reads a packet
// into a 4 KiB buffer (HV_HYP_PAGE_SIZE): a longer one fails to read and stays in the ring.
//
// All fields are little-endian; every struct is packed and its size is asserted.
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_IC_PROTOCOL_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_IC_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "paravisor/bus/guid.h"

namespace cvmbus::paravisor::ic {

// --- Framing. ---

// vmbuspipe_hdr {u32 flags; u32 msgsize}: OpenVMM's PipeHeader {packet_type, len}. The host
// writes PIPE_PACKET_TYPE_DATA and the byte count after this header; Linux never reads it.
struct __attribute__((packed)) PipeHeader {
  uint32_t packet_type;
  uint32_t message_bytes;
};
inline constexpr uint32_t kPipePacketTypeData = 1;

// struct ic_version.
struct __attribute__((packed)) IcVersion {
  uint16_t major;
  uint16_t minor;
  friend bool operator==(const IcVersion&, const IcVersion&) = default;
};

// struct icmsg_hdr.
struct __attribute__((packed)) IcMessageHeader {
  IcVersion framework_version;  // icverframe
  uint16_t message_type;        // icmsgtype
  IcVersion message_version;    // icvermsg
  uint16_t message_bytes;       // icmsgsize: the body's length
  uint32_t status;              // HV_S_OK, HV_E_FAIL, ... (responses)
  uint8_t transaction_id;       // ictransaction_id: Hyper-V and OpenVMM send 0
  uint8_t flags;                // icflags: ICMSGHDRFLAG_*
  uint8_t reserved[2];
};

inline constexpr size_t kPipeHeaderBytes = sizeof(PipeHeader);
inline constexpr size_t kIcHeaderOffset = kPipeHeaderBytes;
// ICMSG_HDR: where every message body starts.
inline constexpr size_t kIcBodyOffset = kPipeHeaderBytes + sizeof(IcMessageHeader);
// The largest payload Linux's hv_util can receive (its recv buffer reads HV_HYP_PAGE_SIZE).
inline constexpr size_t kMaxIcPayloadBytes = 4096;

// ICMSGTYPE_*.
inline constexpr uint16_t kMessageTypeNegotiate = 0;
inline constexpr uint16_t kMessageTypeHeartbeat = 1;
inline constexpr uint16_t kMessageTypeKvpExchange = 2;
inline constexpr uint16_t kMessageTypeShutdown = 3;
inline constexpr uint16_t kMessageTypeTimeSync = 4;
inline constexpr uint16_t kMessageTypeVss = 5;
inline constexpr uint16_t kMessageTypeFcopy = 7;

// ICMSGHDRFLAG_*.
inline constexpr uint8_t kFlagTransaction = 0x1;
inline constexpr uint8_t kFlagRequest = 0x2;
inline constexpr uint8_t kFlagResponse = 0x4;

// Status codes (HRESULTs, hyperv.h "Some Hyper-V status codes").
inline constexpr uint32_t kStatusOk = 0x00000000;             // HV_S_OK
inline constexpr uint32_t kStatusFail = 0x80004005;           // HV_E_FAIL
inline constexpr uint32_t kStatusContinue = 0x80070103;       // HV_S_CONT
inline constexpr uint32_t kStatusNotSupported = 0x80070032;   // HV_ERROR_NOT_SUPPORTED
inline constexpr uint32_t kStatusMachineLocked = 0x800704F7;  // HV_ERROR_MACHINE_LOCKED
inline constexpr uint32_t kStatusDeviceNotConnected = 0x8007048F;
inline constexpr uint32_t kStatusInvalidArg = 0x80070057;    // HV_INVALIDARG
inline constexpr uint32_t kStatusGuidNotFound = 0x80041002;  // HV_GUID_NOTFOUND

// --- Version negotiation (ICMSGTYPE_NEGOTIATE). ---

// struct icmsg_negotiate, followed by icframe_vercnt framework versions and then icmsg_vercnt
// message versions. A response that agrees carries 1 and 1 (the chosen pair); Linux answers
// 0 and 0 when nothing matched.
struct __attribute__((packed)) NegotiateMessage {
  uint16_t framework_version_count;  // icframe_vercnt
  uint16_t message_version_count;    // icmsg_vercnt
  uint32_t reserved;
};
// IC_VERSION_NEGOTIATION_MAX_VER_COUNT: Linux rejects a negotiate with more in either list.
inline constexpr uint16_t kMaxNegotiateVersionCount = 100;

// Framework versions (UTIL_WS2K8_FW_VERSION 1.0, UTIL_FW_VERSION 3.0).
inline constexpr IcVersion kFrameworkVersion1{1, 0};
inline constexpr IcVersion kFrameworkVersion3{3, 0};

// Message versions per service: the host's offer (Hyper-V's, as OpenVMM lists them).
inline constexpr IcVersion kHeartbeatVersion1{1, 0};
inline constexpr IcVersion kHeartbeatVersion3{3, 0};
inline constexpr IcVersion kShutdownVersion1{1, 0};
inline constexpr IcVersion kShutdownVersion3{3, 0};
inline constexpr IcVersion kShutdownVersion3_1{3, 1};
inline constexpr IcVersion kShutdownVersion3_2{3, 2};
inline constexpr IcVersion kTimeSyncVersion1{1, 0};
inline constexpr IcVersion kTimeSyncVersion3{3, 0};
inline constexpr IcVersion kTimeSyncVersion4{4,
                                             0};  // ictimesync_ref_data replaces ictimesync_data.

// --- Heartbeat (ICMSGTYPE_HEARTBEAT). ---

// struct heartbeat_msg_data. The guest answers with seq_num + 1 (heartbeat_onchannelcallback);
// Linux requires only the sequence number to be present (ICMSG_HDR + 8 bytes).
struct __attribute__((packed)) HeartbeatMessage {
  uint64_t sequence_number;  // seq_num
  uint32_t reserved[8];
};
inline constexpr size_t kHeartbeatMinBodyBytes = 8;

// --- Shutdown (ICMSGTYPE_SHUTDOWN). ---

// struct shutdown_msg_data. Linux needs all of it (ICMSG_HDR + 2060 bytes) or drops the packet
// unanswered.
struct __attribute__((packed)) ShutdownMessage {
  uint32_t reason_code;
  uint32_t timeout_seconds;
  uint32_t flags;  // kShutdownFlag*
  uint8_t display_message[2048];
};
// shutdown_msg_data.flags: 0 shut down, 2 reboot, 4 hibernate, each optionally | 1 (force).
// Linux answers HV_S_OK to 0-3, to 4-5 only if the guest can hibernate (else HV_E_FAIL), and
// HV_E_FAIL to anything else.
inline constexpr uint32_t kShutdownFlagForce = 0x1;
inline constexpr uint32_t kShutdownFlagRestart = 0x2;
inline constexpr uint32_t kShutdownFlagHibernate = 0x4;
// SHTDN_REASON_FLAG_PLANNED (Windows SDK), the reason OpenVMM sends.
inline constexpr uint32_t kShutdownReasonPlanned = 0x80000000;

// --- Time sync (ICMSGTYPE_TIMESYNC). ---

// ICTIMESYNCFLAG_*.
inline constexpr uint8_t kTimeSyncFlagProbe = 0x0;
inline constexpr uint8_t kTimeSyncFlagSync = 0x1;    // Set the clock now (after boot, restore).
inline constexpr uint8_t kTimeSyncFlagSample = 0x2;  // A periodic sample: a hint.
// WLTIMEDELTA: 100 ns units from 1601-01-01 (the Windows epoch) to 1970-01-01.
inline constexpr uint64_t kWindowsToUnixEpoch100ns = 116444736000000000ull;

// Versions before 4.0: struct ictimesync_data (25 bytes, which Linux requires), padded to 28
// as Hyper-V sends it.
struct __attribute__((packed)) TimeSyncMessage {
  uint64_t parent_time;  // Host UTC, 100 ns since 1601.
  uint64_t child_time;
  uint64_t round_trip_time;
  uint8_t flags;  // kTimeSyncFlag*
  uint8_t reserved[3];
};
inline constexpr size_t kTimeSyncLinuxBodyBytes = 25;

// Version 4.0: struct ictimesync_ref_data (22 bytes, which Linux requires), padded to 24 as
// Hyper-V sends it. vm_reference_time is the guest's reference counter (TIME_REF_COUNT,
// 100 ns) when parent_time was read: Linux adds the time since then.
struct __attribute__((packed)) TimeSyncRefMessage {
  uint64_t parent_time;
  uint64_t vm_reference_time;  // vmreferencetime
  uint8_t flags;
  uint8_t leap_flags;
  uint8_t stratum;
  uint8_t reserved[5];
};
inline constexpr size_t kTimeSyncRefLinuxBodyBytes = 22;

// --- Channel identities. ---

// Interface (class) GUIDs, hyperv.h HV_HEART_BEAT_GUID, HV_SHUTDOWN_GUID, HV_TS_GUID.
inline constexpr Guid kHeartbeatInterfaceId{
    0x57164f39, 0x9115, 0x4e78, {0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d}};
inline constexpr Guid kShutdownInterfaceId{
    0x0e0b6031, 0x5213, 0x4934, {0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb}};
inline constexpr Guid kTimeSyncInterfaceId{
    0x9527e630, 0xd0ae, 0x497b, {0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf}};
// The instance GUIDs Hyper-V gives the one device of each class (OpenVMM uses the same).
inline constexpr Guid kHeartbeatInstanceId{
    0xfd149e91, 0x82e0, 0x4a7d, {0xaf, 0xa6, 0x2a, 0x41, 0x66, 0xcb, 0xd7, 0xc0}};
inline constexpr Guid kShutdownInstanceId{
    0xb6650ff7, 0x33bc, 0x4840, {0x80, 0x48, 0xe0, 0x67, 0x67, 0x86, 0xf3, 0x93}};
inline constexpr Guid kTimeSyncInstanceId{
    0x2dd1ce17, 0x079e, 0x403c, {0xb3, 0x52, 0xa1, 0x92, 0x1e, 0xe2, 0x07, 0xee}};

// --- Layout checks (hyperv.h sizes and offsets). ---
static_assert(sizeof(PipeHeader) == 8);
static_assert(sizeof(IcVersion) == 4);
static_assert(sizeof(IcMessageHeader) == 20);
static_assert(offsetof(IcMessageHeader, message_type) == 4);
static_assert(offsetof(IcMessageHeader, message_version) == 6);
static_assert(offsetof(IcMessageHeader, message_bytes) == 10);
static_assert(offsetof(IcMessageHeader, status) == 12);
static_assert(offsetof(IcMessageHeader, transaction_id) == 16);
static_assert(offsetof(IcMessageHeader, flags) == 17);
static_assert(kIcBodyOffset == 28);
static_assert(sizeof(NegotiateMessage) == 8);
static_assert(sizeof(HeartbeatMessage) == 40);
static_assert(sizeof(ShutdownMessage) == 2060);
static_assert(offsetof(ShutdownMessage, flags) == 8);
static_assert(sizeof(TimeSyncMessage) == 28);
static_assert(offsetof(TimeSyncMessage, flags) == 24);
static_assert(sizeof(TimeSyncRefMessage) == 24);
static_assert(offsetof(TimeSyncRefMessage, flags) == 16);
static_assert(kIcBodyOffset + sizeof(ShutdownMessage) <= kMaxIcPayloadBytes);
static_assert(std::is_trivially_copyable_v<IcMessageHeader>);
static_assert(std::is_trivially_copyable_v<NegotiateMessage>);
static_assert(std::is_trivially_copyable_v<HeartbeatMessage>);
static_assert(std::is_trivially_copyable_v<ShutdownMessage>);
static_assert(std::is_trivially_copyable_v<TimeSyncMessage>);
static_assert(std::is_trivially_copyable_v<TimeSyncRefMessage>);

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_IC_PROTOCOL_H_
