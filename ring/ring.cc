#include "ring/ring.h"

#include <fmt/format.h>

#include <cstring>

#include "base/format.h"
#include "ring/errors.h"
#include "ring/record_writer.h"

namespace cvmbus::ring {
namespace {

using std::memory_order_acquire;
using std::memory_order_release;
using std::memory_order_seq_cst;

// Checks a peer index: inside the data area and 8-byte aligned.
absl::Status CheckIndex(const char* which, uint32_t index, uint32_t data_size) {
  if (index >= data_size) {
    return MakeRingError(
        RingError::kIndexOutOfRange,
        fmt::format("{} {:#x} is outside the {:#x}-byte data area", which, index, data_size));
  }
  if (index % 8 != 0) {
    return MakeRingError(RingError::kIndexUnaligned,
                         fmt::format("{} {:#x} is not 8-byte aligned", which, index));
  }
  return absl::OkStatus();
}

// Prefixes a packet error with where in the ring the packet starts, keeping its kind.
absl::Status AtPosition(uint32_t position, const absl::Status& error) {
  return MakeRingError(GetRingError(error).value_or(RingError::kTruncated),
                       fmt::format("incoming ring at {:#x}: {}", position, error.message()));
}

// (a + b) modulo `size` for a < size and b <= size, without a division (a hot-path cost).
inline uint32_t Advance(uint32_t a, uint32_t b, uint32_t size) {
  const uint32_t sum = a + b;
  return sum >= size ? sum - size : sum;
}

// Small packets are assembled privately and copied into the ring in one piece.
constexpr uint32_t kAssembleLimit = 128;

}  // namespace

// --- OutgoingRing ------------------------------------------------------------------------------

absl::StatusOr<OutgoingRing> OutgoingRing::Create(guestmem::RingMemory memory) {
  OutgoingRing ring(std::move(memory));
  const uint32_t size = ring.memory_.data_size();
  const uint32_t write = ring.memory_.LoadControl(control::kWriteIndex, memory_order_acquire);
  const uint32_t read = ring.memory_.LoadControl(control::kReadIndex, memory_order_acquire);
  if (absl::Status status = CheckIndex("outgoing ring: write index", write, size); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckIndex("outgoing ring: read index", read, size); !status.ok()) {
    return status;
  }
  ring.committed_ = ring.next_ = write;
  ring.read_cache_ = read;
  const uint32_t features = ring.memory_.LoadControl(control::kFeatureBits, memory_order_acquire);
  ring.memory_.StoreControl(control::kFeatureBits, features | control::kFeaturePendingSendSize,
                            memory_order_release);
  return ring;
}

absl::Status OutgoingRing::Poison(absl::Status status) {
  poisoned_ = status;
  return status;
}

absl::Status OutgoingRing::LoadReadIndex(std::memory_order order) {
  // acquire: the reader's copies out of the bytes it released happen-before our overwrite.
  // (seq_cst where the caller needs the store->load order of the space request: RequestSpace.)
  const uint32_t read = memory_.LoadControl(control::kReadIndex, order);
  if (absl::Status status = CheckIndex("outgoing ring: read index", read, memory_.data_size());
      !status.ok()) {
    return Poison(status);
  }
  // The reader may only release bytes, and only bytes we published: a read index behind its
  // last position would hand it our unread packets to free, one past committed_ (into bytes
  // appended but not committed, or beyond) would let us overwrite packets it has not read.
  if (Distance(read_cache_, read) > Distance(read_cache_, committed_)) {
    return Poison(MakeRingError(
        RingError::kIndexOutOfRange,
        fmt::format("outgoing ring: read index {:#x} is outside [{:#x}, {:#x}], from the reader's "
                    "last read index to our committed write index",
                    read, read_cache_, committed_)));
  }
  read_cache_ = read;
  return absl::OkStatus();
}

bool OutgoingRing::Fits(uint32_t total_bytes) const {
  // Strictly more free bytes than the packet: a full ring must not look empty.
  const uint32_t free_bytes = memory_.data_size() - Distance(read_cache_, next_);
  return free_bytes > total_bytes;
}

absl::StatusOr<uint32_t> OutgoingRing::FreeBytes() {
  if (!poisoned_.ok()) return poisoned_;
  if (absl::Status status = LoadReadIndex(memory_order_acquire); !status.ok()) return status;
  return memory_.data_size() - Distance(read_cache_, next_);
}

absl::Status OutgoingRing::CopyIn(const OutgoingPacket& packet, uint32_t length,
                                  const uint64_t* header, uint32_t header_bytes) {
  const uint32_t size = memory_.data_size();
  const uint32_t start = next_;
  const uint32_t payload_bytes = static_cast<uint32_t>(packet.payload.size());
  const uint32_t padding = length - header_bytes - payload_bytes;
  const uint64_t trailer = TrailerFor(start);
  const auto at = [&](uint32_t offset) { return Advance(start, offset, size); };
  bool copied;
  if (length + kTrailerBytes <= kAssembleLimit) {
    alignas(8) uint8_t assembled[kAssembleLimit];
    std::memcpy(assembled, header, header_bytes);
    if (payload_bytes > 0) {
      std::memcpy(assembled + header_bytes, packet.payload.data(), payload_bytes);
    }
    std::memset(assembled + header_bytes + payload_bytes, 0, padding);
    std::memcpy(assembled + length, &trailer, sizeof(trailer));
    copied = memory_.WriteData(start, assembled, length + kTrailerBytes);
  } else {
    uint8_t tail[16] = {};  // Padding (< 8 bytes) then the trailer.
    std::memcpy(tail + padding, &trailer, sizeof(trailer));
    // An empty payload is a default span whose data() is null: no copy at all, as above
    // (ring/fuzz/crashes/ubsan-null-payload-large-header is the input that took this path).
    copied = memory_.WriteData(start, header, header_bytes) &&
             (payload_bytes == 0 ||
              memory_.WriteData(at(header_bytes), packet.payload.data(), payload_bytes)) &&
             memory_.WriteData(at(header_bytes + payload_bytes), tail, padding + kTrailerBytes);
  }
  if (!copied) {  // Unreachable: every offset above is reduced modulo the data size.
    return absl::InternalError("outgoing ring: copy outside the data area");
  }
  return absl::OkStatus();
}

absl::Status OutgoingRing::Append(const OutgoingPacket& packet) {
  if (!poisoned_.ok()) return poisoned_;
  // In-band and completion packets (almost all traffic) need only a descriptor: it is built
  // here, in two registers, instead of through EncodeHeader's vector.
  const bool descriptor_only =
      (packet.type == PacketType::kDataInBand || packet.type == PacketType::kCompletion) &&
      (packet.flags & ~kKnownFlags) == 0 && packet.payload.size() <= 0xffff * 8 - 16;
  uint32_t length;
  if (descriptor_only) {
    length = kDescriptorBytes + AlignUp8(static_cast<uint32_t>(packet.payload.size()));
  } else {
    absl::StatusOr<uint32_t> encoded = EncodeHeader(packet, &header_);
    if (!encoded.ok()) return encoded.status();
    length = *encoded;
  }
  const uint32_t total = length + kTrailerBytes;
  if (total >= memory_.data_size()) {
    return MakeRingError(RingError::kTooLarge,
                         fmt::format("outgoing ring: a {}-byte packet can never fit a {:#x}-byte "
                                     "ring",
                                     total, memory_.data_size()));
  }
  if (!Fits(total)) {
    if (absl::Status status = LoadReadIndex(memory_order_acquire); !status.ok()) return status;
    if (!Fits(total)) {
      // A writer may spin on a full ring: this status is built once, not formatted per call.
      static const absl::Status* const kFullStatus = new absl::Status(
          MakeRingError(RingError::kFull, "outgoing ring: full (FreeBytes() tells how full)"));
      ++full_;
      return *kFullStatus;
    }
  }
  if (descriptor_only) {
    // struct vmpacket_descriptor, little-endian: type, data_offset8, length8, flags; then
    // the transaction id.
    const uint64_t first_word = uint64_t{static_cast<uint16_t>(packet.type)} |
                                uint64_t{kDescriptorBytes / 8} << 16 | uint64_t{length / 8} << 32 |
                                uint64_t{packet.flags} << 48;
    if (!WriteRecord(memory_, next_, first_word, packet.transaction_id, packet.payload,
                     TrailerFor(next_))) {
      return absl::InternalError("outgoing ring: copy outside the data area");
    }
  } else if (absl::Status status =
                 CopyIn(packet, length, header_.data(), static_cast<uint32_t>(header_.size() * 8));
             !status.ok()) {
    return status;
  }
  next_ = Advance(next_, total, memory_.data_size());
  ++packets_;
  bytes_ += total;
  return absl::OkStatus();
}

void OutgoingRing::Publish() {
  // release: the packet bytes happen-before the reader's acquire load of the index.
  memory_.StoreControl(control::kWriteIndex, next_, memory_order_release);
  committed_ = next_;
  if (space_requested_) CancelSpaceRequest();
}

bool OutgoingRing::Commit() {
  if (in_burst_) {
    Publish();
    return EndBurst();
  }
  if (next_ == committed_) return false;
  const uint32_t before = committed_;
  // seq_cst store, then seq_cst loads: the full barrier of the signalling rule. Either the
  // reader sees our new index when it unmasks and re-checks, or we see its mask cleared.
  memory_.StoreControl(control::kWriteIndex, next_, memory_order_seq_cst);
  committed_ = next_;
  if (space_requested_) CancelSpaceRequest();
  if (memory_.LoadControl(control::kInterruptMask, memory_order_seq_cst) != 0) return false;
  return memory_.LoadControl(control::kReadIndex, memory_order_seq_cst) == before;
}

bool OutgoingRing::CommitInBurst() {
  if (next_ == committed_) return false;
  const uint32_t before = committed_;
  Publish();
  if (in_burst_) {
    // Bounded: a reader asleep since the burst began waits at most kBurstCheckInterval
    // packets, and the burst's span stays under half the ring, so [burst_start_, committed_)
    // is unambiguous modulo the ring size. Other commits in a burst are a store and nothing
    // more: not even a load of the control line the reader writes.
    if (++burst_commits_ >= kBurstCheckInterval ||
        Distance(burst_start_, committed_) >= memory_.data_size() / 2) {
      return EndBurst();
    }
    return false;
  }
  in_burst_ = true;
  burst_start_ = before;
  burst_commits_ = 1;
  // The burst's first commit takes a look without the barrier: these loads may be older than
  // our store, so they can miss a reader that is just going to sleep (EndBurst catches it), but
  // a reader they see idle at `before` is idle: it cannot move past `before` before seeing our
  // store. Waking it now keeps a lone write as prompt as Commit's.
  if (memory_.LoadControl(control::kInterruptMask, memory_order_acquire) != 0) return false;
  if (memory_.LoadControl(control::kReadIndex, memory_order_acquire) != before) return false;
  // The caller signals now, and the reader reads up to wherever it then sees the write index.
  in_burst_ = false;
  return true;
}

bool OutgoingRing::EndBurst() {
  if (!in_burst_) return false;
  in_burst_ = false;
  // The full barrier of the signalling rule, once for the whole burst: our last index store
  // is visible before the loads below. It is a seq_cst store of committed_ again (xchg on x86),
  // not a read-modify-write of the shared word: the peer can write that word, and our index
  // comes only from our own state (a peer's overwrite is replaced, never read back or kept).
  memory_.StoreControl(control::kWriteIndex, committed_, memory_order_seq_cst);
  if (memory_.LoadControl(control::kInterruptMask, memory_order_seq_cst) != 0) return false;
  // The reader may have gone to sleep at any index the burst published except the last (it
  // has everything at the last): signal iff it is in [burst_start_, committed_).
  const uint32_t read = memory_.LoadControl(control::kReadIndex, memory_order_seq_cst);
  return Distance(burst_start_, read) < Distance(burst_start_, committed_);
}

absl::StatusOr<bool> OutgoingRing::Write(const OutgoingPacket& packet) {
  if (absl::Status status = Append(packet); !status.ok()) return status;
  return Commit();
}

absl::StatusOr<bool> OutgoingRing::RequestSpace(uint32_t packet_bytes) {
  if (!poisoned_.ok()) return poisoned_;
  // seq_cst store then seq_cst load: either the reader sees the request when it publishes its
  // read index, or we see the space it freed.
  memory_.StoreControl(control::kPendingSendSize, packet_bytes, memory_order_seq_cst);
  space_requested_ = true;
  if (absl::Status status = LoadReadIndex(memory_order_seq_cst); !status.ok()) return status;
  if (!Fits(packet_bytes)) return false;
  // It fits already: we will not sleep, so withdraw the request at once. Left set until our
  // next write, it would make a reader's end-of-burst check signal a writer that is not waiting.
  CancelSpaceRequest();
  return true;
}

void OutgoingRing::CancelSpaceRequest() {
  memory_.StoreControl(control::kPendingSendSize, 0, memory_order_release);
  space_requested_ = false;
}

// --- IncomingRing ------------------------------------------------------------------------------

absl::StatusOr<IncomingRing> IncomingRing::Create(guestmem::RingMemory memory, Options options) {
  const uint32_t size = memory.data_size();
  const uint32_t limit = options.max_packet_bytes == 0 ? size : options.max_packet_bytes;
  IncomingRing ring(std::move(memory), limit);
  const uint32_t read = ring.memory_.LoadControl(control::kReadIndex, memory_order_acquire);
  const uint32_t write = ring.memory_.LoadControl(control::kWriteIndex, memory_order_acquire);
  if (absl::Status status = CheckIndex("incoming ring: read index", read, size); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckIndex("incoming ring: write index", write, size); !status.ok()) {
    return status;
  }
  ring.committed_ = ring.next_ = read;
  ring.write_cache_ = write;
  ring.masked_ = ring.memory_.LoadControl(control::kInterruptMask, memory_order_acquire) != 0;
  return ring;
}

absl::Status IncomingRing::Poison(absl::Status status) {
  poisoned_ = status;
  return status;
}

absl::Status IncomingRing::LoadWriteIndex() {
  // acquire: the writer's packet bytes happen-before our copy of them. (seq_cst where the
  // caller needs the store->load order of the unmask handshake: see Unmask.)
  const uint32_t write = memory_.LoadControl(control::kWriteIndex, memory_order_seq_cst);
  if (absl::Status status = CheckIndex("incoming ring: write index", write, memory_.data_size());
      !status.ok()) {
    return Poison(status);
  }
  // The writer may only add bytes: bytes we have read but not yet released stay available.
  if (Distance(committed_, write) < Distance(committed_, next_)) {
    return Poison(MakeRingError(
        RingError::kIndexOutOfRange,
        fmt::format("incoming ring: write index {:#x} moved back behind our read position {:#x}",
                    write, next_)));
  }
  write_cache_ = write;
  return absl::OkStatus();
}

absl::StatusOr<bool> IncomingRing::Read(PacketBuffer* buffer) {
  if (!poisoned_.ok()) return poisoned_;
  if (next_ == write_cache_) {
    if (absl::Status status = LoadWriteIndex(); !status.ok()) return status;
    if (next_ == write_cache_) return false;
  }
  const uint32_t size = memory_.data_size();
  const uint32_t available = Distance(next_, write_cache_);
  if (available < kMinPacketBytes) {
    return Poison(MakeRingError(RingError::kTruncated,
                                fmt::format("incoming ring at {:#x}: {} bytes available, a packet "
                                            "needs at least {}",
                                            next_, available, kMinPacketBytes)));
  }
  // The descriptor is copied once and every decision is made on that copy.
  PacketDescriptor descriptor;
  memory_.ReadData(next_, &descriptor, sizeof(descriptor));
  // The common packet (in-band or completion, descriptor-only header, known flags, fits) is
  // checked inline; anything else goes through the full validation and its precise errors.
  const uint32_t simple_length = uint32_t{descriptor.length8} * 8;
  const bool simple = (descriptor.type == static_cast<uint16_t>(PacketType::kDataInBand) ||
                       descriptor.type == static_cast<uint16_t>(PacketType::kCompletion)) &&
                      descriptor.data_offset8 == kDescriptorBytes / 8 && descriptor.length8 >= 2 &&
                      (descriptor.flags & ~kKnownFlags) == 0 &&
                      simple_length + kTrailerBytes <= available &&
                      simple_length <= max_packet_bytes_;
  absl::StatusOr<uint32_t> length = simple_length;
  if (!simple) {
    length = ValidateDescriptor(descriptor, available, max_packet_bytes_);
    if (!length.ok()) return Poison(AtPosition(next_, length.status()));
  }
  std::vector<uint64_t>& words = buffer->words_;
  const uint32_t total_words = (*length + kTrailerBytes) / 8;
  if (words.size() < total_words) words.resize(total_words);
  std::memcpy(words.data(), &descriptor, sizeof(descriptor));
  memory_.ReadData(Advance(next_, kDescriptorBytes, size), words.data() + 2,
                   *length + kTrailerBytes - kDescriptorBytes);
  const uint64_t trailer = words[*length / 8];
  if (trailer != TrailerFor(next_)) {
    return Poison(MakeRingError(RingError::kBadTrailer,
                                fmt::format("incoming ring at {:#x}: trailer {:#x}, expected "
                                            "{:#x}",
                                            next_, trailer, TrailerFor(next_))));
  }
  if (simple) {
    Packet& packet = buffer->packet_;
    packet.type = static_cast<PacketType>(descriptor.type);
    packet.flags = descriptor.flags;
    packet.transaction_id = descriptor.transaction_id;
    packet.payload =
        absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(words.data()) + kDescriptorBytes,
                                  *length - kDescriptorBytes);
    packet.transfer_page_set_id = 0;
    packet.sender_owns_set = false;
    if (!packet.transfer_ranges.empty()) packet.transfer_ranges.clear();
    if (!packet.gpa_ranges.empty()) packet.gpa_ranges.clear();
  } else {
    absl::Status parsed = ParsePacketBody(
        descriptor, absl::Span<const uint64_t>(words.data(), *length / 8), &buffer->packet_);
    if (!parsed.ok()) return Poison(AtPosition(next_, parsed));
  }
  next_ = Advance(next_, *length + kTrailerBytes, size);
  ++packets_;
  bytes_ += *length + kTrailerBytes;
  return true;
}

uint32_t IncomingRing::PublishReadIndex(std::memory_order order) {
  const uint32_t released = Distance(committed_, next_);
  memory_.StoreControl(control::kReadIndex, next_, order);
  committed_ = next_;
  return released;
}

std::optional<IncomingRing::SpaceRequest> IncomingRing::LoadSpaceRequest(
    std::memory_order order) const {
  if ((memory_.LoadControl(control::kFeatureBits, order) & control::kFeaturePendingSendSize) == 0) {
    return std::nullopt;
  }
  // Some writers store size - 1; whole 8-byte units are what count.
  const uint32_t pending = memory_.LoadControl(control::kPendingSendSize, order) & ~7u;
  if (pending == 0) return std::nullopt;
  const uint32_t size = memory_.data_size();
  const uint32_t write = memory_.LoadControl(control::kWriteIndex, order);
  if (write >= size) return std::nullopt;  // Corrupt; the next Read reports it.
  return SpaceRequest{pending, write, size - Distance(committed_, write)};
}

bool IncomingRing::SpaceCrossed(uint32_t released, std::memory_order order) {
  const std::optional<SpaceRequest> request = LoadSpaceRequest(order);
  if (!request.has_value() || request->free_now < released) return false;
  const uint32_t free_before = request->free_now - released;
  if (free_before > request->pending || request->free_now <= request->pending) return false;
  answered_request_ = AnsweredRequest{request->pending, request->write};
  return true;
}

bool IncomingRing::Commit() {
  if (in_burst_) {
    if (next_ != committed_) PublishReadIndex(memory_order_release);
    return EndBurst();
  }
  if (next_ == committed_) return false;
  // seq_cst store, then seq_cst loads: the full barrier of the pending_send_sz rule.
  const uint32_t released = PublishReadIndex(memory_order_seq_cst);
  return SpaceCrossed(released, memory_order_seq_cst);
}

bool IncomingRing::CommitInBurst() {
  if (next_ == committed_) return false;
  const uint32_t released = PublishReadIndex(memory_order_release);
  if (!in_burst_) {
    in_burst_ = true;
    burst_commits_ = 0;
  }
  // Bounded: a writer waiting for space since the burst began waits at most
  // kBurstCheckInterval commits.
  if (++burst_commits_ >= kBurstCheckInterval) return EndBurst();
  // A look without the barrier: it may miss a writer that is just asking for space (EndBurst
  // catches it), but a request it sees crossed is crossed. The caller signals now and the
  // writer re-checks the space: the burst's check is settled.
  if (!SpaceCrossed(released, memory_order_acquire)) return false;
  in_burst_ = false;
  return true;
}

bool IncomingRing::EndBurst() {
  if (!in_burst_) return false;
  in_burst_ = false;
  // The full barrier of the rule, once for the whole burst. The writer may have asked for
  // space after reading any index the burst published (and written more since), then gone to
  // sleep: signal iff a request is pending and the space is there now, unless we signalled
  // this very request already: same size, and the writer has not written since. (A writer we
  // woke finds the space, which only grows until it writes, and writes; one that asks again
  // without writing asks for more, a new request. A writer that saw the space itself is about
  // to write: the signal is then one spare wake-up.) The barrier is a seq_cst store of
  // committed_ again, as OutgoingRing::EndBurst's: never a read-modify-write of the shared
  // word, which would read back (and keep) whatever the peer wrote over our index.
  memory_.StoreControl(control::kReadIndex, committed_, memory_order_seq_cst);
  const std::optional<SpaceRequest> request = LoadSpaceRequest(memory_order_seq_cst);
  if (!request.has_value() || request->free_now <= request->pending) return false;
  const AnsweredRequest key{request->pending, request->write};
  if (answered_request_ == key) return false;
  answered_request_ = key;
  return true;
}

void IncomingRing::Mask() {
  // Only we write our mask: skip redundant stores, each of which would pull the control line
  // (shared with the writer's index) away from the writer.
  if (masked_) return;
  memory_.StoreControl(control::kInterruptMask, 1, memory_order_release);
  masked_ = true;
}

absl::StatusOr<bool> IncomingRing::Unmask() {
  // seq_cst store then the seq_cst load in LoadWriteIndex: either the writer sees the mask
  // clear and signals, or we see its packet here.
  memory_.StoreControl(control::kInterruptMask, 0, memory_order_seq_cst);
  masked_ = false;
  return HasPackets();
}

absl::StatusOr<bool> IncomingRing::HasPackets() {
  if (!poisoned_.ok()) return poisoned_;
  if (next_ != write_cache_) return true;
  if (absl::Status status = LoadWriteIndex(); !status.ok()) return status;
  return next_ != write_cache_;
}

}  // namespace cvmbus::ring
