// Connection-level messages of the VMBus channel control protocol: version negotiation,
// offer enumeration, unload, and OpenVMM's 6.0 modify-connection and pause/resume.
//
// Each struct is the whole message, header included, with Linux's field offsets (hyperv.h).
// A struct whose `kBaseBytes` is less than its sizeof has a tail that only some versions or
// features send; the tail reads as zero when absent. Version gates are in messages.h.
#ifndef CVMBUS_PARAVISOR_PROTOCOL_CONNECTION_MESSAGES_H_
#define CVMBUS_PARAVISOR_PROTOCOL_CONNECTION_MESSAGES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "paravisor/protocol/header.h"

namespace cvmbus::paravisor::protocol {

// VERSION_RESPONSE connection_state (OpenVMM's ConnectionState). Hosts report failures only
// from version 2.4 (Win8); older ones answer "unsupported" instead.
inline constexpr uint8_t kConnectionSuccessful = 0;
inline constexpr uint8_t kConnectionFailedLowResources = 1;
inline constexpr uint8_t kConnectionFailedUnknownFailure = 2;

// The 5.0+ reading of INITIATE_CONTACT's interrupt-page slot.
struct InitiateContactTarget {
  uint8_t message_sint;  // msg_sint: the SINT the host answers on (5.0+).
  uint8_t message_vtl;   // msg_vtl: the guest's VTL (Linux sends it from 5.0; OpenVMM's
                         // server honours it from 5.1).
  uint8_t reserved[2];
  uint32_t feature_flags;  // 6.0+: the kFeature* bits the guest asks for.
};
static_assert(sizeof(InitiateContactTarget) == 8);
static_assert(offsetof(InitiateContactTarget, message_vtl) == 1);
static_assert(offsetof(InitiateContactTarget, reserved) == 2);
static_assert(offsetof(InitiateContactTarget, feature_flags) == 4);
static_assert(std::has_unique_object_representations_v<InitiateContactTarget>);

union InterruptPageOrTarget {
  uint64_t interrupt_page;  // Before 5.0: the GPA of the guest's interrupt page.
  InitiateContactTarget target;
};
static_assert(sizeof(InterruptPageOrTarget) == 8);
static_assert(std::has_unique_object_representations_v<InterruptPageOrTarget>);

// CHANNELMSG_INITIATE_CONTACT, guest -> host (struct vmbus_channel_initiate_contact; the
// client-id tail is OpenVMM's InitiateContact2). The layout of bytes 16..23 and the presence
// of the tail depend on `vmbus_version_requested`, which the message itself carries.
struct InitiateContact {
  static constexpr MessageType kType = MessageType::kInitiateContact;
  static constexpr size_t kBaseBytes = 40;

  MessageHeader header;
  uint32_t vmbus_version_requested;
  uint32_t target_vcpu;  // VP the host sends responses to (honoured from 3.0; 0 before).
  InterruptPageOrTarget interrupt_page_or_target;
  uint64_t monitor_page1;  // GPA of the parent -> child monitor page (0 with page2: none).
  uint64_t monitor_page2;  // GPA of the child -> parent monitor page.
  Guid client_id;          // Sent only from 6.0 with kFeatureClientId in feature_flags.

  // The interrupt page, when the requested version has one (before 5.0).
  std::optional<uint64_t> interrupt_page() const {
    if (vmbus_version_requested >= kVersionWin10V5) return std::nullopt;
    return interrupt_page_or_target.interrupt_page;
  }
  // The SINT for host -> guest messages: the field from 5.0, else the fixed kMessageSint.
  uint8_t message_sint() const {
    return vmbus_version_requested >= kVersionWin10V5 ? interrupt_page_or_target.target.message_sint
                                                      : kMessageSint;
  }
  // The guest's VTL from 5.0 (as Linux sends it), else 0.
  uint8_t message_vtl() const {
    return vmbus_version_requested >= kVersionWin10V5 ? interrupt_page_or_target.target.message_vtl
                                                      : 0;
  }
  // The requested feature flags: the field from 6.0, else none.
  uint32_t feature_flags() const {
    return vmbus_version_requested >= kVersionWin10V6_0
               ? interrupt_page_or_target.target.feature_flags
               : 0;
  }
  // Whether this request's layout includes the client-id tail (bytes 40..55).
  bool carries_client_id() const { return (feature_flags() & kFeatureClientId) != 0; }
};
static_assert(sizeof(InitiateContact) == 56);
static_assert(offsetof(InitiateContact, vmbus_version_requested) == 8);
static_assert(offsetof(InitiateContact, target_vcpu) == 12);
static_assert(offsetof(InitiateContact, interrupt_page_or_target) == 16);
static_assert(offsetof(InitiateContact, monitor_page1) == 24);
static_assert(offsetof(InitiateContact, monitor_page2) == 32);
static_assert(offsetof(InitiateContact, client_id) == InitiateContact::kBaseBytes);
static_assert(std::is_trivially_copyable_v<InitiateContact>);
static_assert(std::has_unique_object_representations_v<InitiateContact>);

// CHANNELMSG_VERSION_RESPONSE, host -> guest (struct vmbus_channel_version_response). Three
// lengths (OpenVMM's VersionResponse, 2 and 3): 16 bytes; 20 with supported_features, sent
// when the guest asked for 6.0+ and the host accepted it; 40 with the monitor page GPAs, sent
// exactly when supported_features has kFeatureServerSpecifiedMonitorPages.
struct VersionResponse {
  static constexpr MessageType kType = MessageType::kVersionResponse;
  static constexpr size_t kBaseBytes = 16;
  static constexpr size_t kWithFeaturesBytes = 20;

  MessageHeader header;
  uint8_t version_supported;  // Nonzero: the requested version is accepted.
  uint8_t connection_state;   // kConnection*.
  uint16_t padding;
  // msg_conn_id: from 5.0, the connection id for every later guest -> host message. Before 5.0
  // OpenVMM puts the accepted version here (selected_version_or_connection_id).
  uint32_t message_connection_id;
  uint32_t supported_features;  // 6.0+: the kFeature* bits granted.
  uint32_t padding2;
  // With kFeatureServerSpecifiedMonitorPages: the pages the guest must use instead of its
  // own. parent_to_child may be 0 (the server sends no monitored interrupts).
  uint64_t parent_to_child_monitor_page;
  uint64_t child_to_parent_monitor_page;

  bool has_server_monitor_pages() const {
    return (supported_features & kFeatureServerSpecifiedMonitorPages) != 0;
  }
};
static_assert(sizeof(VersionResponse) == 40);
static_assert(offsetof(VersionResponse, version_supported) == 8);
static_assert(offsetof(VersionResponse, connection_state) == 9);
static_assert(offsetof(VersionResponse, padding) == 10);
static_assert(offsetof(VersionResponse, message_connection_id) == 12);
static_assert(offsetof(VersionResponse, supported_features) == VersionResponse::kBaseBytes);
static_assert(offsetof(VersionResponse, padding2) == VersionResponse::kWithFeaturesBytes);
static_assert(offsetof(VersionResponse, parent_to_child_monitor_page) == 24);
static_assert(offsetof(VersionResponse, child_to_parent_monitor_page) == 32);
static_assert(std::is_trivially_copyable_v<VersionResponse>);
static_assert(std::has_unique_object_representations_v<VersionResponse>);

// Header-only messages: the SynIC message itself is the whole request.
template <MessageType kMessageType>
struct HeaderOnlyMessage {
  static constexpr MessageType kType = kMessageType;
  static constexpr size_t kBaseBytes = 8;
  MessageHeader header;
};
using RequestOffers = HeaderOnlyMessage<MessageType::kRequestOffers>;            // Guest -> host.
using AllOffersDelivered = HeaderOnlyMessage<MessageType::kAllOffersDelivered>;  // Host -> guest.
using Unload = HeaderOnlyMessage<MessageType::kUnload>;                          // Guest -> host.
using UnloadResponse = HeaderOnlyMessage<MessageType::kUnloadResponse>;          // Host -> guest.
using Pause = HeaderOnlyMessage<MessageType::kPause>;                            // Guest -> host.
using PauseResponse = HeaderOnlyMessage<MessageType::kPauseResponse>;            // Host -> guest.
using Resume = HeaderOnlyMessage<MessageType::kResume>;                          // Guest -> host.
static_assert(sizeof(RequestOffers) == 8);
static_assert(offsetof(RequestOffers, header) == 0);
static_assert(std::is_trivially_copyable_v<RequestOffers>);
static_assert(std::has_unique_object_representations_v<RequestOffers>);

// CHANNELMSG 25, guest -> host (OpenVMM ModifyConnection; 6.0 with kFeatureModifyConnection):
// replaces the monitor pages of the connection.
struct ModifyConnection {
  static constexpr MessageType kType = MessageType::kModifyConnection;
  static constexpr size_t kBaseBytes = 24;

  MessageHeader header;
  uint64_t monitor_page1;  // parent_to_child_monitor_page_gpa.
  uint64_t monitor_page2;  // child_to_parent_monitor_page_gpa.
};
static_assert(sizeof(ModifyConnection) == 24);
static_assert(offsetof(ModifyConnection, monitor_page1) == 8);
static_assert(offsetof(ModifyConnection, monitor_page2) == 16);
static_assert(std::is_trivially_copyable_v<ModifyConnection>);
static_assert(std::has_unique_object_representations_v<ModifyConnection>);

// CHANNELMSG 26, host -> guest (OpenVMM ModifyConnectionResponse): 9 bytes on the wire, the
// one message whose length is not a multiple of 4, hence the one packed struct (alignment 1:
// copy its header fields out rather than binding references to them).
#pragma pack(push, 1)
struct ModifyConnectionResponse {
  static constexpr MessageType kType = MessageType::kModifyConnectionResponse;
  static constexpr size_t kBaseBytes = 9;

  MessageHeader header;
  uint8_t connection_state;  // kConnection*.
};
#pragma pack(pop)
static_assert(sizeof(ModifyConnectionResponse) == 9);
static_assert(alignof(ModifyConnectionResponse) == 1);
static_assert(offsetof(ModifyConnectionResponse, connection_state) == 8);
static_assert(std::is_trivially_copyable_v<ModifyConnectionResponse>);
static_assert(std::has_unique_object_representations_v<ModifyConnectionResponse>);

}  // namespace cvmbus::paravisor::protocol

#endif  // CVMBUS_PARAVISOR_PROTOCOL_CONNECTION_MESSAGES_H_
