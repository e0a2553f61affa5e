// The VMBus channel control protocol's messages: every wire struct, and one table that says,
// per message type, who sends it, how long it is, and from which version (and feature) it is
// valid. Parsing and encoding are in codec.h.
//
// Sizes (bytes, header included; "+tail" is the optional version/feature-dependent tail):
//   OFFERCHANNEL 196          RESCIND_CHANNELOFFER 12    REQUESTOFFERS 8
//   ALLOFFERS_DELIVERED 8     OPENCHANNEL 148 (+8)       OPENCHANNEL_RESULT 20
//   CLOSECHANNEL 12           GPADL_HEADER 20 + 8n       GPADL_BODY 16 + 8n
//   GPADL_CREATED 20          GPADL_TEARDOWN 16          GPADL_TORNDOWN 12
//   RELID_RELEASED 12         INITIATE_CONTACT 40 (+16)  VERSION_RESPONSE 16 (+4)
//   UNLOAD 8                  UNLOAD_RESPONSE 8          OPEN_RESERVED_CHANNEL 28
//   CLOSE_RESERVED_CHANNEL 20 CLOSE_RESERVED_RESPONSE 12 TL_CONNECT_REQUEST 40 (+16)
//   MODIFYCHANNEL 16          TL_CONNECT_RESULT 44       MODIFYCHANNEL_RESPONSE 16
//   MODIFY_CONNECTION 24      MODIFY_CONNECTION_RESPONSE 9
//   PAUSE 8                   PAUSE_RESPONSE 8           RESUME 8
// Only GPADL_HEADER and GPADL_BODY are variable-length. Receivers accept longer messages and
// ignore the excess (Linux checks a minimum only; UEFI sends GPADL messages at full length).
//
// Field gates (the layout is always there; the field means something only from):
//   OFFERCHANNEL monitor_allocated, is_dedicated_interrupt, connection_id: 1.1;
//     sub_channel_index: 2.4; channel_flags 0x2/0x4: 6.0 with kFeatureConfidentialChannels.
//   OPENCHANNEL target_vp: 2.4; tail: 6.0 with feature 0x1 (signal parameters) or 0x2 (flags).
//   INITIATE_CONTACT target_vcpu: 3.0; interrupt_page: before 5.0; msg_sint, msg_vtl: 5.0;
//     feature_flags: 6.0; client_id tail: 6.0 with kFeatureClientId.
//   VERSION_RESPONSE msg_conn_id: 5.0; supported_features tail: 6.0.
//   TL_CONNECT_REQUEST silo_id tail: 5.2 (optional even then).
#ifndef CVMBUS_PARAVISOR_PROTOCOL_MESSAGES_H_
#define CVMBUS_PARAVISOR_PROTOCOL_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string_view>

#include "paravisor/protocol/channel_messages.h"
#include "paravisor/protocol/connection_messages.h"
#include "paravisor/protocol/gpadl_messages.h"
#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::protocol {

// Which side of the connection sends a message type. The guest is the VMBus client; the host
// (here: the paravisor's server, or the real host it relays) is the server.
enum class Sender : uint8_t { kGuest, kHost };

struct MessageInfo {
  MessageType type;
  std::string_view name;  // CHANNELMSG_ suffix.
  Sender sender;
  uint16_t base_bytes;  // What senders send without the optional tail (Linux's sizeof).
  uint16_t full_bytes;  // With the tail; equal to base_bytes when there is none.
  uint16_t min_bytes;   // The shortest acceptable: base_bytes, plus one word for GPADL messages.
  bool variable_length;
  uint32_t min_version;        // 0: valid even before a version is negotiated.
  uint32_t required_features;  // Nonzero: valid only if one of these bits was negotiated.
};

namespace internal {
template <typename T>
constexpr MessageInfo Info(std::string_view name, Sender sender, uint32_t min_version,
                           uint32_t required_features = 0, size_t extra_min_bytes = 0) {
  return MessageInfo{T::kType,
                     name,
                     sender,
                     static_cast<uint16_t>(T::kBaseBytes),
                     static_cast<uint16_t>(sizeof(T)),
                     static_cast<uint16_t>(T::kBaseBytes + extra_min_bytes),
                     extra_min_bytes != 0,
                     min_version,
                     required_features};
}
}  // namespace internal

// Indexed by message type number, 1..kLastMessageType. Versions: OpenVMM's per-message minimum
// (vmbus_messages! table), which agrees with Linux where Linux gates (MODIFYCHANNEL 4.1 in
// vmbus_send_modifychannel(); its response 5.3; hv_sock needs 4.0).
inline constexpr MessageInfo kMessageTable[] = {
    internal::Info<OfferChannel>("OFFERCHANNEL", Sender::kHost, kVersionWs2008),
    internal::Info<RescindChannelOffer>("RESCIND_CHANNELOFFER", Sender::kHost, kVersionWs2008),
    internal::Info<RequestOffers>("REQUESTOFFERS", Sender::kGuest, kVersionWs2008),
    internal::Info<AllOffersDelivered>("ALLOFFERS_DELIVERED", Sender::kHost, kVersionWs2008),
    internal::Info<OpenChannel>("OPENCHANNEL", Sender::kGuest, kVersionWs2008),
    internal::Info<OpenResult>("OPENCHANNEL_RESULT", Sender::kHost, kVersionWs2008),
    internal::Info<CloseChannel>("CLOSECHANNEL", Sender::kGuest, kVersionWs2008),
    internal::Info<GpadlHeader>("GPADL_HEADER", Sender::kGuest, kVersionWs2008, 0, 8),
    internal::Info<GpadlBody>("GPADL_BODY", Sender::kGuest, kVersionWs2008, 0, 8),
    internal::Info<GpadlCreated>("GPADL_CREATED", Sender::kHost, kVersionWs2008),
    internal::Info<GpadlTeardown>("GPADL_TEARDOWN", Sender::kGuest, kVersionWs2008),
    internal::Info<GpadlTorndown>("GPADL_TORNDOWN", Sender::kHost, kVersionWs2008),
    internal::Info<RelIdReleased>("RELID_RELEASED", Sender::kGuest, kVersionWs2008),
    internal::Info<InitiateContact>("INITIATE_CONTACT", Sender::kGuest, 0),
    internal::Info<VersionResponse>("VERSION_RESPONSE", Sender::kHost, 0),
    internal::Info<Unload>("UNLOAD", Sender::kGuest, kVersionWs2008),
    internal::Info<UnloadResponse>("UNLOAD_RESPONSE", Sender::kHost, kVersionWin7),
    internal::Info<OpenReservedChannel>("OPEN_RESERVED_CHANNEL", Sender::kGuest, kVersionWin10),
    internal::Info<CloseReservedChannel>("CLOSE_RESERVED_CHANNEL", Sender::kGuest, 0),
    internal::Info<CloseReservedChannelResponse>("CLOSE_RESERVED_RESPONSE", Sender::kHost,
                                                 kVersionWin10),
    internal::Info<TlConnectRequest>("TL_CONNECT_REQUEST", Sender::kGuest, kVersionWin10),
    internal::Info<ModifyChannel>("MODIFYCHANNEL", Sender::kGuest, kVersionWin10V4_1),
    internal::Info<TlConnectResult>("TL_CONNECT_RESULT", Sender::kHost, kVersionWin10V4_1),
    internal::Info<ModifyChannelResponse>("MODIFYCHANNEL_RESPONSE", Sender::kHost,
                                          kVersionWin10V5_3),
    internal::Info<ModifyConnection>("MODIFY_CONNECTION", Sender::kGuest, kVersionWin10V6_0,
                                     kFeatureModifyConnection),
    internal::Info<ModifyConnectionResponse>("MODIFY_CONNECTION_RESPONSE", Sender::kHost,
                                             kVersionWin10V6_0, kFeatureModifyConnection),
    internal::Info<Pause>("PAUSE", Sender::kGuest, kVersionWin10V6_0, kFeaturePauseResume),
    internal::Info<PauseResponse>("PAUSE_RESPONSE", Sender::kHost, kVersionWin10V6_0,
                                  kFeaturePauseResume),
    internal::Info<Resume>("RESUME", Sender::kGuest, kVersionWin10V6_0, kFeaturePauseResume),
};
static_assert(std::size(kMessageTable) == kLastMessageType);

// The table entry for `type`, or nullptr for kInvalid and numbers past kLastMessageType.
constexpr const MessageInfo* FindMessageInfo(MessageType type) {
  const uint32_t number = static_cast<uint32_t>(type);
  if (number == 0 || number > kLastMessageType) return nullptr;
  return &kMessageTable[number - 1];
}

// "OFFERCHANNEL", "GPADL_HEADER", ... (the CHANNELMSG_ suffix); "INVALID" for 0 and
// "UNKNOWN" past the table.
constexpr std::string_view MessageTypeName(MessageType type) {
  const MessageInfo* info = FindMessageInfo(type);
  if (info != nullptr) return info->name;
  return type == MessageType::kInvalid ? "INVALID" : "UNKNOWN";
}

static_assert([] {
  for (uint32_t number = 1; number <= kLastMessageType; ++number) {
    const MessageInfo& info = kMessageTable[number - 1];
    if (static_cast<uint32_t>(info.type) != number) return false;
    if (info.full_bytes > kMaxMessageBytes || info.min_bytes < sizeof(MessageHeader)) return false;
  }
  return true;
}());

}  // namespace cvmbus::paravisor::protocol

#endif  // CVMBUS_PARAVISOR_PROTOCOL_MESSAGES_H_
