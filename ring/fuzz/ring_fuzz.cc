// libFuzzer target: IncomingRing and OutgoingRing over arbitrary ring bytes and indices.
//
// Input layout (bytes past the end of the input read as zero):
//   [0]       config: bits 0-1 data pages - 1 (1, 2 or 3; 3 reads as 3 pages); bit 2 split
//             copies (no double mapping); bit 3 data pages in reverse GPA order; bit 4 indices
//             taken modulo the data size; bit 5 interrupt_mask set; bit 6 reader limit of 256
//             bytes per packet
//   [1, 17)   write_index, read_index, pending_send_sz, feature_bits (u32 little-endian)
//   [17, 33)  four outgoing packets of 4 bytes: kind, payload size (u16), extra (see MakeOp)
//   [33, ...) the data area, in ring order
//
// Each run: the reader drains the ring until empty or error (every error must be a typed
// RingError, and must repeat on the next call), commits; a writer then appends the four
// packets after the write index (kFull / kTooLarge are fine for valid packets, the exact
// encoding error for the deliberately invalid ones); a fresh reader must read back exactly
// what was written. Any broken expectation is a __builtin_trap().
//
// Build and run: ring/fuzz/build_fuzzer.sh [OUTPUT]; tools/fuzz_smoke.sh ring/fuzz (which also
// replays the past crashes in ring/fuzz/crashes/).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "guestmem/ring_memory.h"
#include "ring/errors.h"
#include "ring/packet.h"
#include "ring/protocol.h"
#include "ring/ring.h"

// A broken expectation: crash so that libFuzzer records the input.
#define CVMBUS_FUZZ_CHECK(condition)    \
  do {                                  \
    if (!(condition)) __builtin_trap(); \
  } while (0)

namespace cvmbus::ring {
namespace {

constexpr uint32_t kPage = control::kPageBytes;
constexpr uint32_t kMaxDataPages = 3;
constexpr size_t kHeaderBytes = 33;
constexpr size_t kOps = 4;

// The fuzz input; reads past its end return zero.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Byte(size_t at) const { return at < size_ ? data_[at] : 0; }
  uint32_t U32(size_t at) const {
    return Byte(at) | Byte(at + 1) << 8 | Byte(at + 2) << 16 | uint32_t{Byte(at + 3)} << 24;
  }
  absl::Span<const uint8_t> From(size_t at) const {
    return at < size_ ? absl::Span<const uint8_t>(data_ + at, size_ - at)
                      : absl::Span<const uint8_t>();
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

struct Config {
  uint32_t data_pages;
  bool split_copies;
  bool reversed_pages;
  bool wrap_indices;
  bool masked;
  bool small_limit;
};

Config ParseConfig(uint8_t byte) {
  return Config{.data_pages = std::min<uint32_t>((byte & 3) + 1, kMaxDataPages),
                .split_copies = (byte & 0x04) != 0,
                .reversed_pages = (byte & 0x08) != 0,
                .wrap_indices = (byte & 0x10) != 0,
                .masked = (byte & 0x20) != 0,
                .small_limit = (byte & 0x40) != 0};
}

// One memfd-backed guest memory for every run: GPA page 0 is the control page, pages 1..3 the
// largest data area. Made once (mapping per run would dominate the run time) and never freed.
const std::shared_ptr<guestmem::MemoryBacking>& Backing() {
  static const auto* backing = [] {
    guestmem::MemoryOptions options;
    options.name = "ring-fuzz";
    options.regions = {{0, uint64_t{kMaxDataPages + 1} * kPage}};
    auto created = guestmem::MemoryBacking::Create(options);
    CVMBUS_FUZZ_CHECK(created.ok());
    return new std::shared_ptr<guestmem::MemoryBacking>(*std::move(created));
  }();
  return *backing;
}

// A new end of the ring, over the untrusted view as a shared ring is in production.
guestmem::RingMemory Open(const Config& config) {
  std::vector<uint64_t> gpns = {0};
  for (uint32_t i = 0; i < config.data_pages; ++i) {
    gpns.push_back(config.reversed_pages ? config.data_pages - i : 1 + i);
  }
  auto memory = guestmem::RingMemory::Create(guestmem::GuestMemory::Untrusted(Backing()), gpns,
                                             {.allow_double_mapping = !config.split_copies});
  CVMBUS_FUZZ_CHECK(memory.ok());
  return *std::move(memory);
}

// Every error out of the ring code must carry its RingError kind.
RingError Typed(const absl::Status& status) {
  const std::optional<RingError> kind = GetRingError(status);
  CVMBUS_FUZZ_CHECK(kind.has_value());
  return *kind;
}

volatile uint64_t sink;  // Keeps the reads of every parsed byte (for ASan) from being dropped.

// What the parser promises about any packet it accepts.
void CheckPacket(const Packet& packet, uint32_t data_size) {
  CVMBUS_FUZZ_CHECK(packet.payload.size() % 8 == 0 && packet.payload.size() < data_size);
  CVMBUS_FUZZ_CHECK((packet.flags & ~kKnownFlags) == 0);
  uint64_t sum = 0;
  for (uint8_t byte : packet.payload) sum += byte;
  CVMBUS_FUZZ_CHECK((packet.type == PacketType::kDataUsingTransferPages) ==
                    !packet.transfer_ranges.empty());
  for (const TransferPageRange& range : packet.transfer_ranges) sum += range.byte_count;
  CVMBUS_FUZZ_CHECK((packet.type == PacketType::kDataUsingGpaDirect) == !packet.gpa_ranges.empty());
  for (const GpaRange& range : packet.gpa_ranges) {
    CVMBUS_FUZZ_CHECK(range.byte_count > 0 && range.byte_offset < kPage);
    CVMBUS_FUZZ_CHECK(range.gpns.size() ==
                      (uint64_t{range.byte_offset} + range.byte_count + kPage - 1) / kPage);
    for (uint64_t gpn : range.gpns) sum += gpn;
  }
  sink = sink + sum;
}

// Drains the ring as the paravisor would, then exercises commit and the interrupt handshake.
void ReadAll(const Config& config, guestmem::RingMemory memory) {
  const uint32_t size = memory.data_size();
  auto reader =
      IncomingRing::Create(std::move(memory), {.max_packet_bytes = config.small_limit ? 256u : 0u});
  if (!reader.ok()) {
    Typed(reader.status());
    return;
  }
  PacketBuffer buffer;
  // Each packet takes at least 24 bytes of fewer than `size` available: more reads than this
  // means the reader stopped making progress.
  for (uint32_t reads = 0;; ++reads) {
    CVMBUS_FUZZ_CHECK(reads <= size / kMinPacketBytes);
    const absl::StatusOr<bool> got = reader->Read(&buffer);
    if (!got.ok()) {
      // A ring that lied once is not trusted again: the same error, every later call.
      const RingError kind = Typed(got.status());
      CVMBUS_FUZZ_CHECK(kind != RingError::kFull);
      const absl::StatusOr<bool> again = reader->Read(&buffer);
      CVMBUS_FUZZ_CHECK(!again.ok() && Typed(again.status()) == kind);
      break;
    }
    if (!*got) break;
    CheckPacket(buffer.packet(), size);
  }
  reader->Commit();
  if (absl::StatusOr<bool> has = reader->HasPackets(); !has.ok()) Typed(has.status());
  reader->Mask();
  if (absl::StatusOr<bool> more = reader->Unmask(); !more.ok()) Typed(more.status());
}

// One outgoing packet chosen by 4 input bytes: kind, payload size (u16), extra.
//   kind bits 0-2: 0 none, 1 in-band, 2 completion, 3 GPA direct, 4 transfer pages (extra
//   ranges; 0 is invalid), 5 unknown type 0x8, 6 unknown flag 0x2, 7 GPA range one page short;
//   bit 3 completion requested; bit 4 Append (published by the final Commit) instead of Write;
//   bits 5-7 transaction id. GPA direct: extra bits 0-2 (pages - 1) / 9, bits 3-4 ranges - 1,
//   bits 5-7 byte_offset / 512.
struct Op {
  OutgoingPacket packet;
  std::optional<RingError> invalid;  // The encoding error a deliberately bad packet gets.
  bool append = false;
  std::vector<uint64_t> gpns;
  std::vector<GpaRange> gpa_ranges;
  std::vector<TransferPageRange> transfer_ranges;
};

// The payload of every outgoing packet is a prefix of this pattern.
const std::vector<uint8_t>& Pattern() {
  static const auto* pattern = [] {
    auto* bytes = new std::vector<uint8_t>(1 << 16);
    for (size_t i = 0; i < bytes->size(); ++i) (*bytes)[i] = static_cast<uint8_t>(i * 7 + 1);
    return bytes;
  }();
  return *pattern;
}

// Fills `op` (whose spans then point into it: do not move it afterwards). False for "none".
bool MakeOp(const Input& input, size_t at, Op* op) {
  const uint8_t kind = input.Byte(at);
  const uint32_t payload_bytes = input.Byte(at + 1) | input.Byte(at + 2) << 8;
  const uint8_t extra = input.Byte(at + 3);
  OutgoingPacket& packet = op->packet;
  // An empty payload is a default (null) span, as callers with nothing to send pass it.
  if (payload_bytes > 0) packet.payload = absl::MakeConstSpan(Pattern()).subspan(0, payload_bytes);
  packet.flags = (kind & 0x08) != 0 ? kFlagCompletionRequested : 0;
  packet.transaction_id = kind >> 5;
  op->append = (kind & 0x10) != 0;
  switch (kind & 7) {
    case 0:
      return false;
    case 1:
      break;
    case 2:
      packet.type = PacketType::kCompletion;
      break;
    case 3:
    case 7: {
      packet.type = PacketType::kDataUsingGpaDirect;
      const uint32_t pages = (extra & 7) * 9 + 1;  // 1 to 64.
      const uint32_t byte_offset = (extra >> 5) * 512;
      const uint32_t ranges = ((extra >> 3) & 3) + 1;
      op->gpns.resize(ranges * pages);
      for (size_t i = 0; i < op->gpns.size(); ++i) op->gpns[i] = 0x1000 + i;
      for (uint32_t r = 0; r < ranges; ++r) {
        // byte_count so that the range spans exactly `pages` pages; one short when invalid.
        const size_t count = (kind & 7) == 7 && r == 0 ? pages - 1 : pages;
        op->gpa_ranges.push_back(GpaRange{pages * kPage - byte_offset, byte_offset,
                                          absl::MakeConstSpan(op->gpns).subspan(r * pages, count)});
      }
      packet.gpa_ranges = op->gpa_ranges;
      if ((kind & 7) == 7) op->invalid = RingError::kBadRanges;
      break;
    }
    case 4:
      packet.type = PacketType::kDataUsingTransferPages;
      packet.transfer_page_set_id = static_cast<uint16_t>(at);
      packet.sender_owns_set = (kind & 0x20) != 0;
      for (uint32_t i = 0; i < extra; ++i) op->transfer_ranges.push_back({i * 100 + 1, i * 4096});
      packet.transfer_ranges = op->transfer_ranges;
      if (extra == 0) op->invalid = RingError::kBadRanges;
      break;
    case 5:
      packet.type = static_cast<PacketType>(0x8);
      op->invalid = RingError::kUnknownType;
      break;
    case 6:
      packet.flags |= 0x2;
      op->invalid = RingError::kUnknownFlags;
      break;
  }
  return true;
}

// `read` is what a reader got back for `sent`: the same packet, payload padded with zeros.
void CheckRoundTrip(const OutgoingPacket& sent, const Packet& read) {
  CVMBUS_FUZZ_CHECK(read.type == sent.type && read.flags == sent.flags &&
                    read.transaction_id == sent.transaction_id);
  CVMBUS_FUZZ_CHECK(read.payload.size() == AlignUp8(static_cast<uint32_t>(sent.payload.size())));
  for (size_t i = 0; i < read.payload.size(); ++i) {
    CVMBUS_FUZZ_CHECK(read.payload[i] == (i < sent.payload.size() ? sent.payload[i] : 0));
  }
  CVMBUS_FUZZ_CHECK(read.gpa_ranges.size() == sent.gpa_ranges.size());
  for (size_t i = 0; i < read.gpa_ranges.size(); ++i) {
    const GpaRange& a = read.gpa_ranges[i];
    const GpaRange& b = sent.gpa_ranges[i];
    CVMBUS_FUZZ_CHECK(a.byte_count == b.byte_count && a.byte_offset == b.byte_offset &&
                      a.gpns == b.gpns);
  }
  CVMBUS_FUZZ_CHECK(read.transfer_ranges.size() == sent.transfer_ranges.size());
  for (size_t i = 0; i < read.transfer_ranges.size(); ++i) {
    CVMBUS_FUZZ_CHECK(read.transfer_ranges[i].byte_count == sent.transfer_ranges[i].byte_count &&
                      read.transfer_ranges[i].byte_offset == sent.transfer_ranges[i].byte_offset);
  }
  if (sent.type == PacketType::kDataUsingTransferPages) {
    CVMBUS_FUZZ_CHECK(read.transfer_page_set_id == sent.transfer_page_set_id &&
                      read.sender_owns_set == sent.sender_owns_set);
  }
}

// Writes the input's packets after the current write index, then reads them back.
void WriteAndVerify(const Config& config, const Input& input, const guestmem::RingMemory& raw) {
  const uint32_t write_start = raw.LoadControl(control::kWriteIndex, std::memory_order_acquire);
  auto writer = OutgoingRing::Create(Open(config));
  if (!writer.ok()) {
    Typed(writer.status());
    return;
  }
  std::vector<std::unique_ptr<Op>> written;
  for (size_t i = 0; i < kOps; ++i) {
    auto op = std::make_unique<Op>();
    if (!MakeOp(input, 17 + 4 * i, op.get())) continue;
    const absl::Status status =
        op->append ? writer->Append(op->packet) : writer->Write(op->packet).status();
    if (op->invalid.has_value()) {
      CVMBUS_FUZZ_CHECK(!status.ok() && Typed(status) == *op->invalid);
      continue;
    }
    if (status.ok()) {
      written.push_back(std::move(op));
      continue;
    }
    const RingError kind = Typed(status);
    CVMBUS_FUZZ_CHECK(kind == RingError::kFull || kind == RingError::kTooLarge);
    if (kind == RingError::kFull) {
      const absl::StatusOr<uint32_t> free_bytes = writer->FreeBytes();
      const absl::StatusOr<bool> fits = writer->RequestSpace(free_bytes.value_or(0) + 8);
      CVMBUS_FUZZ_CHECK(free_bytes.ok() && fits.ok() && !*fits);
      writer->CancelSpaceRequest();
    }
  }
  writer->Commit();
  CVMBUS_FUZZ_CHECK(writer->uncommitted_bytes() == 0);
  if (written.empty()) return;

  // A fresh reader starting where the writer started must see exactly what it wrote.
  raw.StoreControl(control::kReadIndex, write_start, std::memory_order_release);
  auto reader = IncomingRing::Create(Open(config));
  CVMBUS_FUZZ_CHECK(reader.ok());
  PacketBuffer buffer;
  for (const std::unique_ptr<Op>& op : written) {
    const absl::StatusOr<bool> got = reader->Read(&buffer);
    CVMBUS_FUZZ_CHECK(got.ok() && *got);
    CheckRoundTrip(op->packet, buffer.packet());
  }
  const absl::StatusOr<bool> end = reader->Read(&buffer);
  CVMBUS_FUZZ_CHECK(end.ok() && !*end);
}

void Run(const Input& input) {
  const Config config = ParseConfig(input.Byte(0));
  guestmem::RingMemory raw = Open(config);  // Sets up the ring, as the peer would.
  const uint32_t size = raw.data_size();
  const auto index = [&](size_t at) {
    return config.wrap_indices ? input.U32(at) % size : input.U32(at);
  };
  for (uint32_t offset = 0; offset < kPage; offset += 4) {
    raw.StoreControl(offset, 0, std::memory_order_relaxed);
  }
  raw.StoreControl(control::kWriteIndex, index(1), std::memory_order_relaxed);
  raw.StoreControl(control::kReadIndex, index(5), std::memory_order_relaxed);
  raw.StoreControl(control::kPendingSendSize, input.U32(9), std::memory_order_relaxed);
  raw.StoreControl(control::kFeatureBits, input.U32(13), std::memory_order_relaxed);
  raw.StoreControl(control::kInterruptMask, config.masked ? 1 : 0, std::memory_order_relaxed);
  std::vector<uint8_t> data(size, 0);
  const absl::Span<const uint8_t> bytes = input.From(kHeaderBytes);
  if (!bytes.empty()) std::memcpy(data.data(), bytes.data(), std::min<size_t>(bytes.size(), size));
  CVMBUS_FUZZ_CHECK(raw.WriteData(0, data.data(), size));

  ReadAll(config, Open(config));
  WriteAndVerify(config, input, raw);
}

}  // namespace
}  // namespace cvmbus::ring

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cvmbus::ring::Run(cvmbus::ring::Input(data, size));
  return 0;
}
