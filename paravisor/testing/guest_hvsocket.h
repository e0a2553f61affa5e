// The guest's end of an hvsocket, for tests: what Linux's net/vmw_vsock/hyperv_transport.c does
// on the wire, driven from a test thread through the VM fixture's GuestClient.
//
//   - connect: TL_CONNECT_REQUEST (endpoint = local port, service = remote port, both in the
//     vsock template; no silo tail, as Linux), then the host's offer is opened;
//   - accept: a host-initiated offer (is_for_guest_accept) for the listening port is opened;
//   - rings: seven pages per direction (six of data and the control page, Linux's default),
//     in private memory on a confidential connection;
//   - send: in-band packets {pkt_type 1, data_size} with at most 4088 bytes of data each,
//     leaving room for the FIN (hvs_channel_writable_bytes); a full ring is waited out with
//     pending_send_sz, as Linux sets it, and the host's signal;
//   - receive: packets are checked as hvs_update_recv_data does (data_size within the payload
//     and at most the 16 KiB MTU) and an empty one is the FIN;
//   - close: FIN, then wait for the host's rescind, then CLOSECHANNEL, GPADL teardown and
//     RELID_RELEASED (vmbus_hvsock_device_unregister waits for the rescind).
// It keeps its own rings rather than a GuestChannel because it must wait for ring space.
//
// Threads: one test thread at a time. Every wait has a deadline; waits do not poll: a lost
// wake-up from the host shows as kDeadlineExceeded.
#ifndef CVMBUS_PARAVISOR_TESTING_GUEST_HVSOCKET_H_
#define CVMBUS_PARAVISOR_TESTING_GUEST_HVSOCKET_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/testing/guest_rings.h"
#include "paravisor/vm/virtual_machine.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::testing {

struct GuestHvSocketOptions {
  uint32_t gpadl_id = 1;
  uint64_t first_gpn = 0x100;  // 2 * ring_pages pages from here.
  uint32_t ring_pages = 7;     // Per ring, control page included.
  bool confidential = true;    // Ring pages private (the connection must allow it).
  std::chrono::milliseconds timeout = std::chrono::seconds(5);  // For connect and accept.
};

class GuestHvSocket {
 public:
  // connect(2) from `local_port` to the host's `remote_port`. kUnavailable if the host answers
  // TL_CONNECT_RESULT with a failure; kDeadlineExceeded if no offer comes; the open's failure
  // (kFailedPrecondition) if the host fails it.
  static absl::StatusOr<std::unique_ptr<GuestHvSocket>> Connect(vm::VirtualMachine* vm,
                                                                uint32_t local_port,
                                                                uint32_t remote_port,
                                                                GuestHvSocketOptions options = {});
  // accept(2) on `listen_port`: waits for the host's offer and opens it.
  static absl::StatusOr<std::unique_ptr<GuestHvSocket>> Accept(vm::VirtualMachine* vm,
                                                               uint32_t listen_port,
                                                               GuestHvSocketOptions options = {});

  // Writes what fits now; returns the bytes written (0: the ring is full). kFailedPrecondition
  // after Shutdown.
  absl::StatusOr<size_t> TrySend(absl::Span<const uint8_t> data);
  // Reads what has arrived, appending it to `out`; returns the bytes read.
  absl::StatusOr<size_t> TryReceive(std::vector<uint8_t>* out);
  // shutdown(SHUT_WR): the FIN (always fits: sends keep room for it).
  absl::Status Shutdown();

  // Sends all of `data` (then the FIN if `fin`) while receiving into `received`, until `data`
  // is sent and `received` holds `expect` bytes or the host's FIN came. Both at once, so an
  // echoing host that back-pressures cannot deadlock us. kAborted once the host rescinded the
  // channel (what arrived before is in `received`).
  absl::Status Exchange(absl::Span<const uint8_t> data, bool fin, size_t expect,
                        std::vector<uint8_t>* received, std::chrono::milliseconds timeout);
  absl::Status SendAll(absl::Span<const uint8_t> data, std::chrono::milliseconds timeout) {
    std::vector<uint8_t> ignored;
    return Exchange(data, false, 0, &ignored, timeout);
  }
  absl::Status ReceiveUntilFin(std::vector<uint8_t>* out, std::chrono::milliseconds timeout) {
    return Exchange({}, false, SIZE_MAX, out, timeout);
  }

  // Writes one in-band packet with exactly `payload` (for tests of a guest that breaks the
  // pipe protocol).
  absl::Status SendRawPayload(absl::Span<const uint8_t> payload);

  // Waits for the host to rescind the channel (consumes that message).
  absl::Status WaitForRescind(std::chrono::milliseconds timeout);
  // Linux's close: the FIN if not sent, the rescind (waited for), CLOSECHANNEL, GPADL teardown,
  // RELID_RELEASED.
  absl::Status Close(std::chrono::milliseconds timeout);
  // The guest closes the channel without waiting for anything (a crashed or killed socket).
  absl::Status CloseChannelNow();

  bool fin_received() const { return fin_received_; }
  bool fin_sent() const { return fin_sent_; }
  uint32_t relid() const { return offer_.child_relid; }
  const protocol::OfferChannel& offer() const { return offer_; }
  // The host end's port (the offer's instance id's first four bytes, for an accepted socket).
  uint32_t peer_port() const;

 private:
  GuestHvSocket(vm::VirtualMachine* vm, const GuestHvSocketOptions& options,
                protocol::OfferChannel offer, ring::OutgoingRing out, ring::IncomingRing in)
      : vm_(vm), options_(options), offer_(offer), out_(std::move(out)), in_(std::move(in)) {}
  static absl::StatusOr<std::unique_ptr<GuestHvSocket>> Open(vm::VirtualMachine* vm,
                                                             const protocol::OfferChannel& offer,
                                                             const GuestHvSocketOptions& options);
  // Waits for the host's signal. kAborted if the host rescinds the channel meanwhile (as
  // Linux's socket sees the rescind), kDeadlineExceeded at `deadline`.
  absl::Status WaitForSignal(std::chrono::steady_clock::time_point deadline);
  bool CheckRescinded();
  absl::Status Signal();

  vm::VirtualMachine* vm_;
  GuestHvSocketOptions options_;
  protocol::OfferChannel offer_;
  ring::OutgoingRing out_;
  ring::IncomingRing in_;
  ring::PacketBuffer buffer_;
  bool fin_sent_ = false;
  bool fin_received_ = false;
  bool rescinded_ = false;
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_PARAVISOR_TESTING_GUEST_HVSOCKET_H_
