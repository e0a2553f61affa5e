// IcGuest: the guest's end of one IC channel, answering as Linux's hv_util does
// (drivers/hv/hv_util.c: heartbeat_, shutdown_ and timesync_onchannelcallback), for tests.
// Each packet is copied into a 16 KiB buffer (Linux's recv_buffer); a packet shorter than the
// service needs is dropped unanswered, as Linux drops it; otherwise the buffer is rewritten in
// place (the negotiate answer, seq_num + 1, the shutdown status, or HV_E_FAIL for an unknown
// message type), icflags set to TRANSACTION | RESPONSE, and the received length sent back as
// one in-band packet with the same transaction id and no completion flag.
//
// The caller drives it: ServeOne handles one packet. Raw access (ReceiveRaw, SendRaw) lets a
// test misbehave. Threads: one caller at a time (the test's thread).
#ifndef CVMBUS_PARAVISOR_TESTING_IC_GUEST_H_
#define CVMBUS_PARAVISOR_TESTING_IC_GUEST_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "paravisor/devices/ic/ic_message.h"
#include "paravisor/devices/ic/ic_protocol.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::ic::testing {

enum class IcService { kHeartbeat, kShutdown, kTimeSync };

struct IcGuestOptions {
  IcService service = IcService::kHeartbeat;
  uint32_t relid = 0;
  uint32_t gpadl_id = 1;
  uint64_t first_gpn = 0x100;
  uint32_t ring_pages = 4;   // Per direction: Linux's VMBUS_RING_SIZE(3 * 4 KiB).
  bool confidential = true;  // Rings in private pages.
  // The guest's version lists, newest first; empty: Linux's for the service.
  std::vector<IcVersion> framework_versions;
  std::vector<IcVersion> message_versions;
  bool hibernation_supported = false;  // hv_is_hibernation_supported().
};

// What ServeOne saw and did.
struct IcGuestEvent {
  uint64_t transaction_id = 0;
  uint32_t received_bytes = 0;  // recvlen.
  uint16_t message_type = 0;
  bool answered = false;
  uint32_t status = 0;  // The answer's icmsg_hdr status.
  // NEGOTIATE:
  std::optional<IcVersions> negotiated;  // Set when vmbus_prep_negotiate_resp found a match.
  // HEARTBEAT: the host's sequence number (the answer carries it + 1).
  uint64_t sequence = 0;
  // SHUTDOWN: the request's flags, and whether Linux would start the operation.
  uint32_t shutdown_flags = 0;
  bool shutdown_started = false;
  // TIMESYNC: what adj_guesttime would get.
  uint64_t parent_time = 0;
  uint64_t reference_time = 0;  // 4.0 only.
  uint8_t time_flags = 0;
  bool reference_format = false;  // ictimesync_ref_data (4.0) rather than ictimesync_data.
};

class IcGuest {
 public:
  // Creates the ring GPADL and opens the channel.
  static absl::StatusOr<std::unique_ptr<IcGuest>> Attach(paravisor::vm::VirtualMachine* vm,
                                                         IcGuestOptions options);

  // Waits up to `timeout` for one packet and handles it as Linux does.
  absl::StatusOr<IcGuestEvent> ServeOne(std::chrono::milliseconds timeout);
  // Takes one packet without answering it.
  absl::Status ReceiveRaw(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout);
  // Sends any payload as a packet of `type` (no completion flag).
  absl::Status SendRaw(absl::Span<const uint8_t> payload, uint64_t transaction_id,
                       ring::PacketType type = ring::PacketType::kDataInBand);

  // The service version the last NEGOTIATE left (Linux's *_srv_version), if any.
  std::optional<IcVersion> service_version() const { return service_version_; }

  // CLOSECHANNEL, then the ring GPADL's teardown.
  absl::Status Close();

 private:
  IcGuest(paravisor::vm::VirtualMachine* vm, IcGuestOptions options,
          std::unique_ptr<paravisor::testing::GuestChannel> channel);
  void Negotiate(std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event);
  bool Heartbeat(std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event);
  bool Shutdown(std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event);
  bool TimeSync(const std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event);

  paravisor::vm::VirtualMachine* vm_;
  IcGuestOptions options_;
  std::unique_ptr<paravisor::testing::GuestChannel> channel_;
  std::optional<IcVersion> service_version_;
  bool open_ = true;
};

// Our Guid in the wire form offers carry.
bool OfferIs(const protocol::OfferChannel& offer, const Guid& interface_id);

}  // namespace cvmbus::paravisor::ic::testing

#endif  // CVMBUS_PARAVISOR_TESTING_IC_GUEST_H_
