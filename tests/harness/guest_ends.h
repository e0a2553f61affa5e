// The guest's end of a ring pair for the channel benchmark, two ways behind one interface, so
// the same driver loop measures both:
//   ChannelEnd  a channel the VMBus server set up (GuestChannel: the guest's GPADL, OPENCHANNEL,
//               HvSignalEvent through the paravisor's SynIC, interrupts through the guest
//               client's SIEFP, an EchoDevice on the server's loop);
//   RawEnd      the same two rings in the same (private) guest memory, driven by the same guest
//               ring code, with a RawEcho device task on an io_uring loop of its own and plain
//               eventfds for doorbells both ways: the channel minus the server, the SynIC and the
//               guest client's interrupt thread.
//
// Thread ownership: an end is used by one thread (the benchmark's guest thread); RawEcho runs
// its loop on a thread of its own.
#ifndef CVMBUS_TESTS_HARNESS_GUEST_ENDS_H_
#define CVMBUS_TESTS_HARNESS_GUEST_ENDS_H_

#include <atomic>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "paravisor/testing/guest_channel.h"
#include "ring/ring.h"

namespace cvmbus::bench {

class GuestEnd {
 public:
  virtual ~GuestEnd() = default;
  // As GuestChannel's: true if written (host signalled if the rules say so); false if full,
  // with the space requested so event_fd() fires when it frees.
  virtual absl::StatusOr<bool> TrySend(const ring::OutgoingPacket& packet) = 0;
  // The same in a burst (GuestChannel::TrySendInBurst); EndBurst before waiting.
  virtual absl::StatusOr<bool> TrySendInBurst(const ring::OutgoingPacket& packet) = 0;
  virtual absl::Status EndBurst() = 0;
  // True with the next packet; false if none, with the interrupt unmasked.
  virtual absl::StatusOr<bool> TryReceive(ring::PacketBuffer* buffer) = 0;
  // The eventfd the host's signals land on (read it to re-arm).
  virtual int event_fd() = 0;
  // True while the device drains the guest -> device ring (OutgoingRing::ReaderDraining).
  virtual bool PeerDraining() const = 0;
};

class ChannelEnd : public GuestEnd {
 public:
  explicit ChannelEnd(paravisor::testing::GuestChannel* channel) : channel_(channel) {}
  absl::StatusOr<bool> TrySend(const ring::OutgoingPacket& packet) override {
    return channel_->TrySendPacket(packet);
  }
  absl::StatusOr<bool> TrySendInBurst(const ring::OutgoingPacket& packet) override {
    return channel_->TrySendInBurst(packet);
  }
  absl::Status EndBurst() override { return channel_->EndBurst(); }
  absl::StatusOr<bool> TryReceive(ring::PacketBuffer* buffer) override {
    return channel_->TryReceive(buffer);
  }
  int event_fd() override { return channel_->event_fd(); }
  bool PeerDraining() const override { return channel_->HostDraining(); }

 private:
  paravisor::testing::GuestChannel* channel_;  // Not owned; outlives this end.
};

// A raw ring pair and its echo device: the guest -> device ring over `gpns_out`, the device ->
// guest ring over `gpns_in` (each: control page, then data), both in `memory`'s view. The
// device answers packets that request a completion and consumes the rest, as EchoDevice does,
// on its own loop thread pinned to `device_cpu`.
class RawEnd : public GuestEnd {
 public:
  static absl::StatusOr<std::unique_ptr<RawEnd>> Create(const guestmem::GuestMemory& memory,
                                                        const std::vector<uint64_t>& gpns_out,
                                                        const std::vector<uint64_t>& gpns_in,
                                                        int device_cpu);
  ~RawEnd() override;

  absl::StatusOr<bool> TrySend(const ring::OutgoingPacket& packet) override;
  absl::StatusOr<bool> TrySendInBurst(const ring::OutgoingPacket& packet) override;
  absl::Status EndBurst() override;
  absl::StatusOr<bool> TryReceive(ring::PacketBuffer* buffer) override;
  int event_fd() override { return to_guest_fd_; }
  bool PeerDraining() const override { return out_.ReaderDraining(); }

 private:
  RawEnd(ring::OutgoingRing out, ring::IncomingRing in, int to_device_fd, int to_guest_fd)
      : out_(std::move(out)),
        in_(std::move(in)),
        to_device_fd_(to_device_fd),
        to_guest_fd_(to_guest_fd) {}
  void SignalDevice();

  ring::OutgoingRing out_;
  ring::IncomingRing in_;
  int to_device_fd_;               // Owned: the device's doorbell.
  int to_guest_fd_;                // Owned: ours.
  std::atomic<bool> stop_{false};  // Asks the device's Echo task to end.
  std::thread device_;
};

}  // namespace cvmbus::bench

#endif  // CVMBUS_TESTS_HARNESS_GUEST_ENDS_H_
