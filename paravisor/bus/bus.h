// The bus contract between the VMBus server and the devices it offers: OpenVMM's
// vmbus_channel/src/bus.rs (MIT) as C++. A device offers a channel (ParentBus::AddChild) with
// OfferInput, and then receives ChannelRequests (open, close, GPADL, teardown, modify) on its
// receiver and may send ChannelServerRequests (restore, revoke) to the server.
//
// Memory: OfferResources hands the device guest memory through one of two views, chosen by
// the open request: the ring from the private view when `use_confidential_ring`, device data
// (GPA-direct ranges, extra GPADLs) from the private view when
// `use_confidential_external_memory`, else from the untrusted view. Both flags are the
// connection's confidential-channels feature AND the offer's flag. Asking for private memory
// that was never provided is an error (kFailedPrecondition), not a crash.
#ifndef CVMBUS_PARAVISOR_BUS_BUS_H_
#define CVMBUS_PARAVISOR_BUS_BUS_H_

#include <array>
#include <chrono>
#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/signal.h"
#include "paravisor/bus/guid.h"
#include "paravisor/bus/mpsc.h"
#include "paravisor/bus/rpc.h"

namespace cvmbus::paravisor {

using GpadlId = uint32_t;
// The 120 bytes of user-defined data in an offer or an open request.
using UserDefinedData = std::array<uint8_t, 120>;

// An interrupt object: signalling it wakes the other side. Cheap to copy; empty = no-op
// (kFailedPrecondition on Deliver).
class Interrupt {
 public:
  Interrupt() = default;
  explicit Interrupt(std::shared_ptr<hw::Signal> signal) : signal_(std::move(signal)) {}
  absl::Status Deliver() const {
    if (!signal_) return absl::FailedPreconditionError("interrupt: not connected");
    return signal_->Raise();
  }
  bool connected() const { return signal_ != nullptr; }
  const std::shared_ptr<hw::Signal>& signal() const { return signal_; }

 private:
  std::shared_ptr<hw::Signal> signal_;
};

// Connection feature flags (INITIATE_CONTACT, version 5.0+) and offer flags that decide the
// confidential views. Only the bits bus.rs looks at.
struct FeatureFlags {
  static constexpr uint32_t kConfidentialChannels = 0x10;
  uint32_t bits = 0;
  bool confidential_channels() const { return (bits & kConfidentialChannels) != 0; }
};
struct OfferFlags {
  static constexpr uint16_t kConfidentialRingBuffer = 0x2;
  static constexpr uint16_t kConfidentialExternalMemory = 0x4;
  uint16_t bits = 0;
  bool confidential_ring_buffer() const { return (bits & kConfidentialRingBuffer) != 0; }
  bool confidential_external_memory() const { return (bits & kConfidentialExternalMemory) != 0; }
};

// The identifying ids of an offer. Ordered and hashable; printed
// "{interface}-{instance}-index".
struct OfferKey {
  Guid interface_id;
  Guid instance_id;
  uint16_t subchannel_index = 0;  // 0: a primary channel.

  std::string ToString() const;
  friend auto operator<=>(const OfferKey&, const OfferKey&) = default;
  friend bool operator==(const OfferKey&, const OfferKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const OfferKey& key) {
    return H::combine(std::move(h), key.interface_id, key.instance_id, key.subchannel_index);
  }
};

// The channel's type.
struct DeviceChannel {
  bool pipe_packets = false;  // Ring packets carry pipe headers.
};
struct InterfaceChannel {
  UserDefinedData user_defined{};  // Interface-specific data put in the offer.
};
struct PipeChannel {
  bool message_mode = false;  // Message mode, else byte mode.
};
struct HvSocketChannel {
  bool is_connect = false;        // A connect to the guest (else from the guest).
  bool is_for_container = false;  // For a container in the guest.
  Guid silo_id;                   // Zero: no silo.
};
using ChannelType = std::variant<DeviceChannel, InterfaceChannel, PipeChannel, HvSocketChannel>;

struct OfferParams {
  std::string interface_name;  // Informational.
  Guid instance_id;
  Guid interface_id;
  uint16_t mmio_megabytes = 0;
  uint16_t mmio_megabytes_optional = 0;
  ChannelType channel_type = DeviceChannel{};
  uint16_t subchannel_index = 0;
  // Use monitor pages for interrupts, with this latency; nullopt: no monitor page.
  std::optional<std::chrono::nanoseconds> mnf_interrupt_latency;
  // Order among channels of the same interface (lower first); nullopt: after those with one.
  std::optional<uint32_t> offer_order;
  // The device can use encrypted memory for external GPADLs and GPA-direct ranges (only
  // meaningful with hardware isolation).
  bool allow_confidential_external_memory = false;

  OfferKey key() const { return OfferKey{interface_id, instance_id, subchannel_index}; }
};

// Channel open-specific data, from the guest's OPENCHANNEL.
struct OpenData {
  uint32_t target_vp = 0;    // VP for interrupts to the guest.
  uint32_t ring_offset = 0;  // Page offset of the host-to-guest ring in the ring GPADL.
  GpadlId ring_gpadl_id = 0;
  uint16_t event_flag = 0;     // Event flag used to notify the guest.
  uint32_t connection_id = 0;  // Connection id the guest uses to notify the host.
  UserDefinedData user_data{};
};

// What a device gets when its channel is opened.
struct OpenRequest {
  OpenData open_data;
  Interrupt interrupt;  // Signals the guest.
  bool use_confidential_ring = false;
  bool use_confidential_external_memory = false;

  // The rule of bus.rs: each flag is the connection's feature AND the offer's flag.
  static OpenRequest Make(OpenData open_data, Interrupt interrupt, FeatureFlags features,
                          OfferFlags offer) {
    return OpenRequest{open_data, std::move(interrupt),
                       features.confidential_channels() && offer.confidential_ring_buffer(),
                       features.confidential_channels() && offer.confidential_external_memory()};
  }
};

// The successful result of an open.
struct OpenResult {
  Interrupt guest_to_host_interrupt;  // What the server signals when the guest signals us.
};

// A GPADL from the guest: `count` ranges in the packed range buffer (guestmem::ParseGpaRanges).
struct GpadlRequest {
  GpadlId id = 0;
  uint16_t count = 0;
  std::vector<uint64_t> buf;
};

struct ModifyTargetVp {
  uint32_t target_vp = 0;
};
using ModifyRequest = std::variant<ModifyTargetVp>;

struct Unit {};  // The () of an Rpc with no input or no reply value.

// Requests from the control plane to a device.
struct OpenChannel {
  Rpc<OpenRequest, std::optional<OpenResult>> rpc;  // nullopt reply: the open failed.
};
struct CloseChannel {
  Rpc<Unit, Unit> rpc;  // Replied once the device stopped using the channel.
};
struct CreateGpadl {
  Rpc<GpadlRequest, bool> rpc;  // false: the device rejects the GPADL.
};
struct TeardownGpadl {
  Rpc<GpadlId, Unit> rpc;
};
struct ModifyChannel {
  Rpc<ModifyRequest, int32_t> rpc;  // The status to return to the guest.
};
using ChannelRequest =
    std::variant<OpenChannel, CloseChannel, CreateGpadl, TeardownGpadl, ModifyChannel>;

// A restored GPADL. `accepted`: it was saved in the accepted state; if restoring it fails, the
// whole restore fails. If false, the device will be offered the same GPADL again later. (The
// device may have saved itself depending on a GPADL whose acceptance the server's saved state
// missed.)
struct RestoredGpadl {
  GpadlRequest request;
  bool accepted = false;
};

struct RestoreResult {
  std::optional<OpenRequest> open_request;  // Set if the channel was saved open.
  std::vector<RestoredGpadl> gpadls;
};

// Requests from a device to the control plane.
struct RestoreChannel {
  // Input: the open result if the channel was saved open.
  FailableRpc<std::optional<OpenResult>, RestoreResult> rpc;
};
struct RevokeChannel {
  Rpc<Unit, Unit> rpc;  // Replied once the revoke completed. Dropping the offer also revokes.
};
using ChannelServerRequest = std::variant<RestoreChannel, RevokeChannel>;

struct OfferInput {
  OfferParams params;
  Sender<ChannelRequest> request_send;                 // Where the server sends requests.
  Receiver<ChannelServerRequest> server_request_recv;  // Where the device's requests arrive.
};

// Guest memory for an offered channel.
class OfferResources {
 public:
  OfferResources() = default;
  OfferResources(guestmem::GuestMemory untrusted_memory,
                 std::optional<guestmem::GuestMemory> private_memory)
      : untrusted_memory_(std::move(untrusted_memory)),
        private_memory_(std::move(private_memory)) {}

  // Device data memory for this open (GPA-direct ranges, extra GPADLs). Get it only while the
  // channel is open and do not keep it after close: the client and its capabilities may
  // change across opens.
  absl::StatusOr<guestmem::GuestMemory> guest_memory(const OpenRequest& open) const {
    return Get(open.use_confidential_external_memory, "external memory");
  }
  // The ring's memory for this open.
  absl::StatusOr<guestmem::GuestMemory> ring_memory(const OpenRequest& open) const {
    return Get(open.use_confidential_ring, "ring buffer");
  }

 private:
  absl::StatusOr<guestmem::GuestMemory> Get(bool use_private, const char* what) const;

  guestmem::GuestMemory untrusted_memory_;
  std::optional<guestmem::GuestMemory> private_memory_;
};

// Implemented by VMBus servers.
class ParentBus {
 public:
  virtual ~ParentBus() = default;
  // Offers a new channel. The offer lives until the device revokes it or drops its senders.
  virtual absl::StatusOr<OfferResources> AddChild(OfferInput request) = 0;
  // Another handle on the same bus (bus.rs keeps this for transparent subchannel offers).
  virtual std::unique_ptr<ParentBus> CloneBus() = 0;
  // Whether OpenResult::guest_to_host_interrupt must be backed by an OS event (an eventfd).
  virtual bool UseEvent() const { return true; }
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_BUS_BUS_H_
