// The two ends of a VMBus ring buffer: OutgoingRing (we write, the peer reads) and IncomingRing
// (the peer writes, we read), over a guestmem::RingMemory in either view.
//
// Signalling. Neither class signals anyone: each operation that may need the peer woken
// returns `true` for "signal the peer now", and the caller signals through whatever it has
// (an eventfd, io_uring MSG_RING, a KVM irqfd). The rules (vmbus-facts.md, Linux
// drivers/hv/ring_buffer.c, DPDK vmbus_bufring.c):
//   - writer, after publishing its write index: full barrier, then signal iff the reader's
//     interrupt_mask is 0 and the read index equals the write index before this commit (the
//     empty -> non-empty edge);
//   - reader, after publishing its read index: full barrier, then, if the writer set its
//     pending_send_sz feature bit and pending_send_sz (low 3 bits ignored) is nonzero, signal
//     iff the free space went from <= pending_send_sz to > it. interrupt_mask does not gate it.
//
// Trust. The peer's index and control words are loaded once per use, validated and cached: in
// range, 8-aligned, and moved only forward, never past our own index (the writer's index may
// only add bytes after those we have read; the reader's may only release bytes we published).
// Our own index is read from the control page once, at Create (a restored ring's position);
// from then on it lives in private memory and is only ever published (stored), never read
// back: not even by a barrier, which is a seq_cst store and not a read-modify-write of the
// shared word. Packets are copied into a private PacketBuffer once and parsed there. A
// corrupt ring returns a typed RingError (ring/errors.h), and every later call returns the
// same error: a ring that lied once is not trusted again.
//
// Threads. Each object is used by one thread at a time; the peer runs concurrently on the other
// end of the shared memory.
#ifndef CVMBUS_RING_RING_H_
#define CVMBUS_RING_RING_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "guestmem/ring_memory.h"
#include "ring/packet.h"
#include "ring/protocol.h"

namespace cvmbus::ring {

// A reusable private buffer for incoming packets: its storage grows to the largest packet seen
// and is reused, so steady-state reads do not allocate.
class PacketBuffer {
 public:
  const Packet& packet() const { return packet_; }

 private:
  friend class IncomingRing;
  std::vector<uint64_t> words_;  // The packet's private copy, trailer included.
  Packet packet_;
};

class OutgoingRing {
 public:
  // Starts writing at the write index the control page holds (0 for a new ring; the saved
  // position after a restore), validated. Sets our pending_send_sz feature bit.
  static absl::StatusOr<OutgoingRing> Create(guestmem::RingMemory memory);

  // Writes `packet` and publishes it. Returns "signal the peer". kFull if it does not fit now,
  // kTooLarge if it never can; nothing is written in either case. A write that needs to reload
  // the read index validates it as FreeBytes does.
  absl::StatusOr<bool> Write(const OutgoingPacket& packet);

  // Batching: Append writes without publishing; Commit publishes everything appended and
  // returns "signal the peer" (one signal at most for the whole batch).
  absl::Status Append(const OutgoingPacket& packet);
  bool Commit();

  // Bursts: a writer with several packets in a row can make each visible at once and still pay
  // the signalling rule's full barrier (a wait for the control line the reader shares) once
  // per burst instead of once per packet. CommitInBurst publishes like Commit but checks the
  // rule without the barrier; it returns "signal the peer" when the reader is visibly idle, and
  // every kBurstCheckInterval commits it ends the burst itself. EndBurst does the full check
  // for every index the burst published and returns "signal the peer"; its barrier re-stores
  // our committed write index, so a peer's overwrite of that word does not outlive it.
  // Contract: call EndBurst (or Commit, which ends a burst) before the writer stops writing:
  // before it sleeps, waits, or returns to its event loop. Until then a reader that went to
  // sleep during the burst may not have been signalled.
  static constexpr uint32_t kBurstCheckInterval = 16;
  bool CommitInBurst();
  bool EndBurst();
  bool in_burst() const { return in_burst_; }

  // Bytes a write may use now (the ring holds free_bytes - 1 at most: full != empty). Loads
  // the reader's index: kIndexOutOfRange (and the ring poisoned) if it is out of range, moved
  // back, or past our committed write index; kIndexUnaligned if not 8-aligned.
  absl::StatusOr<uint32_t> FreeBytes();

  // Flow control for a writer that got kFull: asks the reader to signal once `packet_bytes`
  // (a packet's length plus its trailer) fit, then re-checks. Returns true if they already fit
  // (retry now, do not sleep; the request is withdrawn). Otherwise the request stands until
  // the next successful write or CancelSpaceRequest. Validates the read index as FreeBytes.
  absl::StatusOr<bool> RequestSpace(uint32_t packet_bytes);
  void CancelSpaceRequest();

  uint32_t data_size() const { return memory_.data_size(); }
  // True if the reader has interrupt_mask set: it is draining now. A hint for a writer deciding
  // whether to wait briefly for space rather than sleep (loaded without a barrier).
  bool ReaderDraining() const {
    return memory_.LoadControl(control::kInterruptMask, std::memory_order_relaxed) != 0;
  }
  // Bytes appended but not yet committed.
  uint32_t uncommitted_bytes() const { return Distance(committed_, next_); }

  // Traffic so far: packets appended and their bytes (descriptor, payload, trailer), appends
  // refused for a full ring, and the corruption that stopped the ring (OK while it runs).
  uint64_t packets() const { return packets_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t full_refusals() const { return full_; }
  const absl::Status& error() const { return poisoned_; }

 private:
  explicit OutgoingRing(guestmem::RingMemory memory) : memory_(std::move(memory)) {}
  uint32_t Distance(uint32_t from, uint32_t to) const {
    return to >= from ? to - from : to + memory_.data_size() - from;
  }
  // Refreshes read_cache_ from the control page, loaded once with `order`. The new index must
  // be in range, 8-aligned and in [read_cache_, committed_] going forward modulo the data
  // size; anything else poisons the ring.
  absl::Status LoadReadIndex(std::memory_order order);
  absl::Status Poison(absl::Status status);
  bool Fits(uint32_t total_bytes) const;
  // Stores the write index (release) for everything appended.
  void Publish();
  absl::Status CopyIn(const OutgoingPacket& packet, uint32_t length, const uint64_t* header,
                      uint32_t header_bytes);

  guestmem::RingMemory memory_;
  uint32_t committed_ = 0;   // The write index we last published.
  uint32_t next_ = 0;        // Where the next append goes (== committed_ with no batch).
  uint32_t read_cache_ = 0;  // The reader's index as last loaded and validated.
  bool space_requested_ = false;
  bool in_burst_ = false;         // Commits since burst_start_ owe the full signal check.
  uint32_t burst_start_ = 0;      // The write index before the burst's first commit.
  uint32_t burst_commits_ = 0;    // Commits in the current burst.
  absl::Status poisoned_;         // Set once the reader corrupted the ring.
  std::vector<uint64_t> header_;  // Scratch for EncodeHeader.
  uint64_t packets_ = 0;
  uint64_t bytes_ = 0;
  uint64_t full_ = 0;
};

class IncomingRing {
 public:
  struct Options {
    // Largest packet accepted (length8 * 8); larger ones are kTooLarge. 0 = the data size.
    uint32_t max_packet_bytes = 0;
  };

  // Starts reading at the read index the control page holds, validated.
  static absl::StatusOr<IncomingRing> Create(guestmem::RingMemory memory, Options options);
  static absl::StatusOr<IncomingRing> Create(guestmem::RingMemory memory) {
    return Create(std::move(memory), Options());
  }

  // Copies the next packet into `buffer` and parses it; returns false if the ring is empty.
  // The packet stays unconsumed until Commit (so a batch costs one publication).
  absl::StatusOr<bool> Read(PacketBuffer* buffer);

  // Publishes everything read since the last Commit; returns "signal the peer" (the
  // pending_send_sz rule). Ends a burst.
  bool Commit();

  // Bursts, as OutgoingRing's: CommitInBurst publishes at once and checks the pending_send_sz
  // rule without the full barrier (signalling now when a request is visibly crossed); EndBurst
  // does the full check for everything the burst released. Contract: call EndBurst (or Commit)
  // before the reader stops reading: before it sleeps, waits, or returns to its event loop.
  static constexpr uint32_t kBurstCheckInterval = 16;
  bool CommitInBurst();
  // Its barrier re-stores our published read index (a peer's overwrite does not outlive it).
  bool EndBurst();
  bool in_burst() const { return in_burst_; }

  // Interrupt masking while draining: Mask() tells the writer not to signal; Unmask() clears
  // it and then re-checks the ring, returning true if packets arrived meanwhile (drain again
  // before sleeping, or a wake-up is lost).
  void Mask();
  absl::StatusOr<bool> Unmask();

  // True if packets are available now (loads the writer's index).
  absl::StatusOr<bool> HasPackets();

  uint32_t data_size() const { return memory_.data_size(); }

  // Traffic so far: packets read and their bytes (descriptor, payload, trailer), and the
  // corruption that stopped the ring (OK while it runs).
  uint64_t packets() const { return packets_; }
  uint64_t bytes() const { return bytes_; }
  const absl::Status& error() const { return poisoned_; }

 private:
  IncomingRing(guestmem::RingMemory memory, uint32_t max_packet_bytes)
      : memory_(std::move(memory)), max_packet_bytes_(max_packet_bytes) {}
  uint32_t Distance(uint32_t from, uint32_t to) const {
    return to >= from ? to - from : to + memory_.data_size() - from;
  }
  absl::Status LoadWriteIndex();
  absl::Status Poison(absl::Status status);
  // Stores next_ as the read index; returns the bytes released.
  uint32_t PublishReadIndex(std::memory_order order);
  // The writer's space request (pending_send_sz, when its feature bit is set) and the free
  // space now; nullopt without a request. Loads with `order`.
  struct SpaceRequest {
    uint32_t pending;
    uint32_t write;  // The writer's index when loaded.
    uint32_t free_now;
  };
  std::optional<SpaceRequest> LoadSpaceRequest(std::memory_order order) const;
  // The pending_send_sz rule for `released` bytes just published: the request was crossed
  // (and is then recorded as answered).
  bool SpaceCrossed(uint32_t released, std::memory_order order);

  guestmem::RingMemory memory_;
  uint32_t max_packet_bytes_;
  uint32_t committed_ = 0;    // The read index we last published.
  uint32_t next_ = 0;         // Where the next packet starts.
  uint32_t write_cache_ = 0;  // The writer's index as last loaded and validated.
  bool masked_ = false;       // What we last stored in interrupt_mask (only we write it).
  bool in_burst_ = false;     // Commits since the burst began owe the full check.
  uint32_t burst_commits_ = 0;
  // The last space request we signalled: its size and the writer's index then.
  struct AnsweredRequest {
    uint32_t pending = 0;
    uint32_t write = 0;
    bool operator==(const AnsweredRequest&) const = default;
  };
  std::optional<AnsweredRequest> answered_request_;
  absl::Status poisoned_;
  uint64_t packets_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace cvmbus::ring

#endif  // CVMBUS_RING_RING_H_
