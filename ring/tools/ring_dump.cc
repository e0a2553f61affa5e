#include "ring/tools/ring_dump.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <optional>
#include <string>

#include "base/format.h"
#include "guestmem/ring_memory.h"
#include "ring/errors.h"
#include "ring/packet.h"
#include "ring/protocol.h"
#include "ring/ring.h"

namespace cvmbus::ring::tools {
namespace {

std::string_view Message(const absl::Status& status) {
  return std::string_view(status.message().data(), status.message().size());
}

std::string TypeName(uint16_t type) {
  switch (static_cast<PacketType>(type)) {
    case PacketType::kDataInBand:
      return "in-band";
    case PacketType::kDataUsingTransferPages:
      return "transfer-pages";
    case PacketType::kDataUsingGpaDirect:
      return "gpa-direct";
    case PacketType::kCompletion:
      return "completion";
  }
  return "unknown";
}

// "name|name|unknown 0x.." for the set bits of `bits`; "none" when zero.
std::string BitNames(uint32_t bits, uint32_t known_bit, std::string_view known_name) {
  if (bits == 0) return "none";
  std::string names;
  if ((bits & known_bit) != 0) names = known_name;
  if ((bits & ~known_bit) != 0) {
    names += fmt::format("{}unknown {:#x}", names.empty() ? "" : "|", bits & ~known_bit);
  }
  return names;
}

void PrintDescriptor(std::string& out, uint32_t offset, const PacketDescriptor& descriptor,
                     std::string_view note) {
  fmt::format_to(
      std::back_inserter(out),
      "packet at {:#x}{}: type {:#x} ({}), data_offset8 {}, length8 {}, flags {:#x} ({}), "
      "transaction_id {:#x}\n",
      offset, note, descriptor.type, TypeName(descriptor.type), descriptor.data_offset8,
      descriptor.length8, descriptor.flags,
      BitNames(descriptor.flags, kFlagCompletionRequested, "completion-requested"),
      descriptor.transaction_id);
}

void PrintTrailer(std::string& out, uint32_t offset, uint64_t found) {
  const uint64_t expected = TrailerFor(offset);
  fmt::format_to(std::back_inserter(out), "  trailer {:#x}: {}\n", found,
                 found == expected ? "ok" : fmt::format("BAD, expected {:#x}", expected));
}

void PrintBody(std::string& out, const Packet& packet, uint32_t max_payload_bytes) {
  constexpr size_t kMaxListed = 32;  // Page numbers per GPA range, transfer-page ranges.
  if (packet.type == PacketType::kDataUsingGpaDirect) {
    fmt::format_to(std::back_inserter(out), "  gpa ranges: {}\n", packet.gpa_ranges.size());
    for (size_t i = 0; i < packet.gpa_ranges.size(); ++i) {
      const GpaRange& range = packet.gpa_ranges[i];
      std::string pages;
      for (size_t p = 0; p < range.gpns.size() && p < kMaxListed; ++p) {
        pages += fmt::format(" {:#x}", range.gpns[p]);
      }
      if (range.gpns.size() > kMaxListed) {
        pages += fmt::format(" ... ({} more)", range.gpns.size() - kMaxListed);
      }
      fmt::format_to(std::back_inserter(out),
                     "    [{}] byte_count {:#x}, byte_offset {:#x}, {} pages:{}\n", i,
                     range.byte_count, range.byte_offset, range.gpns.size(), pages);
    }
  }
  if (packet.type == PacketType::kDataUsingTransferPages) {
    fmt::format_to(
        std::back_inserter(out), "  transfer pages: set {:#x}, sender_owns {}, ranges {}\n",
        packet.transfer_page_set_id, packet.sender_owns_set ? 1 : 0, packet.transfer_ranges.size());
    for (size_t i = 0; i < packet.transfer_ranges.size() && i < kMaxListed; ++i) {
      fmt::format_to(std::back_inserter(out), "    [{}] byte_count {:#x}, byte_offset {:#x}\n", i,
                     packet.transfer_ranges[i].byte_count, packet.transfer_ranges[i].byte_offset);
    }
    if (packet.transfer_ranges.size() > kMaxListed) {
      fmt::format_to(std::back_inserter(out), "    ... ({} more)\n",
                     packet.transfer_ranges.size() - kMaxListed);
    }
  }
  std::string hex;
  const size_t shown = std::min<size_t>(packet.payload.size(), max_payload_bytes);
  for (size_t i = 0; i < shown; ++i) hex += fmt::format(" {:02x}", packet.payload[i]);
  if (shown < packet.payload.size()) hex += " ...";
  fmt::format_to(std::back_inserter(out), "  payload {} bytes:{}\n", packet.payload.size(), hex);
}

// The one-line description of a ring error: where, which kind, and the parser's own words.
std::string DescribeError(const absl::Status& status, uint32_t offset) {
  const std::optional<RingError> kind = GetRingError(status);
  const std::string kind_name(kind.has_value() ? RingErrorName(*kind) : "error");
  std::string_view detail = Message(status);
  const std::string packet_prefix = fmt::format("incoming ring at {:#x}: ", offset);
  if (detail.starts_with(packet_prefix)) {
    detail.remove_prefix(packet_prefix.size());
    return fmt::format("packet at {:#x}: {}: {}", offset, kind_name, detail);
  }
  constexpr std::string_view kControlPrefix = "incoming ring: ";
  if (detail.starts_with(kControlPrefix)) detail.remove_prefix(kControlPrefix.size());
  return fmt::format("control page: {}: {}", kind_name, detail);
}

}  // namespace

RingDump DumpRing(const RingImage& image, std::string_view name, uint32_t max_payload_bytes) {
  RingDump dump;
  std::string& out = dump.text;
  const auto fail = [&](std::string message) {
    dump.corruption = absl::DataLossError(std::move(message));
    return dump;
  };
  // Two ends over the same copy: `raw` for the fields Packet does not carry (lengths, trailer).
  absl::StatusOr<guestmem::RingMemory> raw = image.Open();
  absl::StatusOr<guestmem::RingMemory> reader_memory = image.Open();
  if (!raw.ok()) return fail(std::string(Message(raw.status())));
  if (!reader_memory.ok()) return fail(std::string(Message(reader_memory.status())));

  const uint32_t size = raw->data_size();
  const auto load = [&](uint32_t word) {
    return raw->LoadControl(word, std::memory_order_acquire);
  };
  const uint32_t read_index = load(control::kReadIndex);
  const uint32_t features = load(control::kFeatureBits);
  fmt::format_to(
      std::back_inserter(out),
      "ring {}: data area {:#x} bytes ({} pages)\n  write_index     {:#x}\n  read_index      "
      "{:#x}\n"
      "  interrupt_mask  {:#x}\n  pending_send_sz {:#x}\n  feature_bits    {:#x} ({})\n",
      name, size, size / control::kPageBytes, load(control::kWriteIndex), read_index,
      load(control::kInterruptMask), load(control::kPendingSendSize), features,
      BitNames(features, control::kFeaturePendingSendSize, "pending_send_sz"));

  absl::StatusOr<IncomingRing> ring = IncomingRing::Create(*std::move(reader_memory));
  if (!ring.ok()) return fail(DescribeError(ring.status(), read_index));
  PacketBuffer buffer;
  uint32_t offset = read_index;
  uint64_t packets = 0;
  uint64_t bytes = 0;
  for (;;) {
    // Read copies and validates the packet at `offset` exactly as the paravisor would; nothing
    // is committed, and the image is a private copy anyway.
    const absl::StatusOr<bool> got = ring->Read(&buffer);
    PacketDescriptor descriptor;
    raw->ReadData(offset, &descriptor, sizeof(descriptor));
    uint64_t trailer = 0;
    raw->ReadData((offset + uint32_t{descriptor.length8} * 8) % size, &trailer, sizeof(trailer));
    if (!got.ok()) {
      const std::optional<RingError> kind = GetRingError(got.status());
      if (kind != RingError::kIndexOutOfRange && kind != RingError::kIndexUnaligned) {
        PrintDescriptor(out, offset, descriptor, " (rejected)");
        if (kind == RingError::kBadTrailer || kind == RingError::kBadRanges) {
          PrintTrailer(out, offset, trailer);
        }
      }
      return fail(DescribeError(got.status(), offset));
    }
    if (!*got) break;
    PrintDescriptor(out, offset, descriptor, "");
    PrintTrailer(out, offset, trailer);
    PrintBody(out, buffer.packet(), max_payload_bytes);
    const uint32_t total = uint32_t{descriptor.length8} * 8 + kTrailerBytes;
    offset = (offset + total) % size;
    ++packets;
    bytes += total;
  }
  fmt::format_to(std::back_inserter(out), "{} packets, {:#x} bytes\n", packets, bytes);
  return dump;
}

}  // namespace cvmbus::ring::tools
