// The guest's end of an open channel, for tests and the demo: it lays out the two rings in
// guest pages it owns (guest -> host ring first, host -> guest ring at `ring_pages`), creates
// the GPADL, opens the channel, and then sends packets and waits for answers the way a guest
// driver does (ring rules, HvSignalEvent, the channel's interrupt).
#ifndef CVMBUS_PARAVISOR_TESTING_GUEST_CHANNEL_H_
#define CVMBUS_PARAVISOR_TESTING_GUEST_CHANNEL_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "paravisor/testing/guest_rings.h"
#include "paravisor/vm/virtual_machine.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::testing {

struct GuestChannelOptions {
  uint32_t relid = 0;
  uint32_t gpadl_id = 0;
  uint64_t first_gpn = 0;     // 2 * ring_pages pages from here hold both rings.
  uint32_t ring_pages = 4;    // Per ring, control page included.
  bool confidential = false;  // Pages private (validated) and rings in the private view.
  // The connection id to signal, where the connection lets the guest choose (see
  // GuestClient::OpenChannel); default: the offer's.
  std::optional<uint32_t> connection_id;
  // Ignore HvSignalEvent's status, as Linux does (vmbus_set_event discards the hypercall's
  // result): a signal the host refuses is lost, not an error. Default: an error, which tests
  // want to see.
  bool discard_signal_status = false;
};

class GuestChannel {
 public:
  // Creates the GPADL and opens the channel. Errors carry the host's failure status.
  static absl::StatusOr<std::unique_ptr<GuestChannel>> Open(vm::VirtualMachine* vm,
                                                            GuestChannelOptions options);
  // Writes one in-band packet and signals the host if the ring rules say so.
  absl::Status Send(absl::Span<const uint8_t> payload, uint64_t transaction_id);
  // Writes one packet of any kind (a GPA-direct packet naming guest pages a device moves data
  // through, as storvsc's) and signals the host if the ring rules say so.
  absl::Status SendPacket(const ring::OutgoingPacket& packet);
  // Waits (up to `timeout`) for the next packet from the host; copies it into `packet`.
  absl::Status Receive(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout);
  // Without waiting, for a guest that drives many channels or keeps many packets in flight and
  // waits on event_fd() itself. TrySendPacket: true if the packet was written (and the host
  // signalled if the rules say so); false if the ring is full, with the space for it requested
  // (pending_send_sz), so the host signals event_fd() once it fits. TryReceive: true with the
  // next packet (its space released, the host signalled if the rules say so); false if there is
  // none, with the host's interrupt unmasked, so event_fd() fires on the next one.
  absl::StatusOr<bool> TrySendPacket(const ring::OutgoingPacket& packet);
  absl::StatusOr<bool> TryReceive(ring::PacketBuffer* buffer);
  // TrySendPacket in a burst (OutgoingRing::CommitInBurst: each packet visible at once, the
  // signalling rule's full barrier once per burst, where Linux pays it per packet). A full ring
  // ends the burst before asking for space. Call EndBurst before waiting for anything else.
  absl::StatusOr<bool> TrySendInBurst(const ring::OutgoingPacket& packet);
  absl::Status EndBurst();
  // The eventfd the channel's interrupt signals (GuestClient::ChannelEventFd); read it to re-arm.
  int event_fd();
  absl::Status Close();

  uint64_t signals_sent() const { return signals_sent_; }
  // True while the host is draining the guest -> host ring (it has interrupt_mask set): space
  // is about to free up. A hint for a writer choosing between spinning and sleeping.
  bool HostDraining() const { return out_.ReaderDraining(); }

 private:
  GuestChannel(vm::VirtualMachine* vm, GuestChannelOptions options, ring::OutgoingRing out,
               ring::IncomingRing in)
      : vm_(vm), options_(options), out_(std::move(out)), in_(std::move(in)) {}
  // HvSignalEvent to the host, counted; its status per options_.discard_signal_status.
  absl::Status Signal();

  vm::VirtualMachine* vm_;
  GuestChannelOptions options_;
  ring::OutgoingRing out_;
  ring::IncomingRing in_;
  uint64_t signals_sent_ = 0;
};

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_PARAVISOR_TESTING_GUEST_CHANNEL_H_
