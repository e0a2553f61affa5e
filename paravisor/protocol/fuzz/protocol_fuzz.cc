// libFuzzer target for the VMBus control protocol a guest (or a host) feeds the server: one
// SynIC message payload at a time through ParseMessage and CheckAllowed, and GPADLs assembled
// from a GPADL_HEADER and its GPADL_BODY messages as the server assembles them, through
// ValidateGpaRanges and guestmem's range parser.
//
// Input: byte 0 picks the connection (version index, modulo the known versions), byte 1 its
// feature flags; then messages, each a length byte (0..255: lengths past 240 test the limit)
// and that many bytes.
//
// Besides ASan/UBSan findings, every accepted message is checked against what the parser
// promises, and a violation aborts:
//   - an accepted message re-encodes (EncodeMessage) to bytes that parse to the same type and
//     re-encode identically (the canonical form is a fixed point), no longer than the input
//     unless only zero tail bytes were added;
//   - a GPADL_HEADER's words are at most range_buflen / 8 and fit the message;
//   - a GPADL that ValidateGpaRanges accepts parses with ParseGpaRanges into exactly
//     range_count ranges whose offsets are < 4096 and counts > 0, and EncodeGpadl turns it
//     back into messages that parse and reassemble to the same words.
//
//   paravisor/protocol/fuzz/build_fuzzer.sh /tmp/protocol_fuzz && /tmp/protocol_fuzz CORPUS
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

#include "guestmem/paged_range.h"
#include "paravisor/protocol/codec.h"

namespace cvmbus::paravisor::protocol {
namespace {

void Check(bool holds) {
  if (!holds) std::abort();
}

// Words of a GPADL being put together, as the server does: the header's words, then each
// body's words up to the declared length.
struct Assembly {
  GpadlHeader header;
  size_t total_words = 0;
  std::vector<uint64_t> words;
};

void CheckCanonical(const ParsedMessage& parsed) {
  absl::StatusOr<std::vector<uint8_t>> encoded = EncodeMessage(parsed);
  if (!encoded.ok()) return;  // Messages the codec only parses (none yet) may refuse.
  Check(encoded->size() <= 240);
  absl::StatusOr<ParsedMessage> again = ParseMessage(*encoded);
  Check(again.ok());
  Check(again->type == parsed.type);
  Check(again->has_tail == parsed.has_tail);
  absl::StatusOr<std::vector<uint8_t>> twice = EncodeMessage(*again);
  Check(twice.ok() && *twice == *encoded);
}

void CheckWholeGpadl(const Assembly& assembly) {
  const absl::Status valid = ValidateGpaRanges(assembly.header.range_count, assembly.words);
  if (!valid.ok()) return;
  absl::StatusOr<std::vector<guestmem::PagedRange>> ranges =
      guestmem::ParseGpaRanges(assembly.words, assembly.header.range_count);
  Check(ranges.ok());
  Check(ranges->size() == assembly.header.range_count);
  size_t words = 0;
  for (const guestmem::PagedRange& range : *ranges) {
    Check(range.byte_offset() < 4096 && range.byte_count() > 0);
    Check(!range.gpns().empty());
    words += 1 + range.gpns().size();
  }
  Check(words == assembly.words.size());
  absl::StatusOr<std::vector<std::vector<uint8_t>>> messages =
      EncodeGpadl(assembly.header.child_relid, assembly.header.gpadl, assembly.header.range_count,
                  assembly.words);
  Check(messages.ok() && !messages->empty());
  std::vector<uint64_t> reassembled;
  for (size_t i = 0; i < messages->size(); ++i) {
    absl::StatusOr<ParsedMessage> parsed = ParseMessage((*messages)[i]);
    Check(parsed.ok());
    Check(parsed->type == (i == 0 ? MessageType::kGpadlHeader : MessageType::kGpadlBody));
    const size_t room = assembly.words.size() - reassembled.size();
    const size_t take = std::min(room, parsed->words.size());
    reassembled.insert(reassembled.end(), parsed->words.begin(), parsed->words.begin() + take);
  }
  Check(reassembled == assembly.words);
}

void OnGpadlMessage(const ParsedMessage& parsed, std::optional<Assembly>* assembly) {
  if (const GpadlHeader* header = parsed.As<GpadlHeader>()) {
    const size_t total_words = header->range_buflen / 8;
    Check(parsed.words.size() <= total_words);
    Check(parsed.words.size() <= (240 - GpadlHeader::kBaseBytes) / 8);
    *assembly = Assembly{.header = *header, .total_words = total_words, .words = parsed.words};
  } else if (const GpadlBody* body = parsed.As<GpadlBody>()) {
    if (!assembly->has_value() || (*assembly)->header.gpadl != body->gpadl) return;
    Assembly& open = **assembly;
    const size_t take = std::min(open.total_words - open.words.size(), parsed.words.size());
    open.words.insert(open.words.end(), parsed.words.begin(), parsed.words.begin() + take);
  } else {
    return;
  }
  if ((*assembly)->words.size() == (*assembly)->total_words) {
    CheckWholeGpadl(**assembly);
    assembly->reset();
  }
}

}  // namespace
}  // namespace cvmbus::paravisor::protocol

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cvmbus::paravisor::protocol;
  if (size < 2) return 0;
  constexpr size_t kVersions = sizeof(kKnownVersions) / sizeof(kKnownVersions[0]);
  const NegotiatedConnection connection{.version = kKnownVersions[data[0] % kVersions],
                                        .feature_flags = data[1]};
  const NegotiatedConnection unconnected{};
  std::optional<Assembly> assembly;
  size_t at = 2;
  while (at < size) {
    const size_t length = std::min<size_t>(data[at], size - at - 1);
    const absl::Span<const uint8_t> message(data + at + 1, length);
    at += 1 + length;
    absl::StatusOr<ParsedMessage> parsed = ParseMessage(message);
    if (!parsed.ok()) {
      Check(GetProtocolError(parsed.status()).has_value());  // Every refusal is typed.
      continue;
    }
    Check(parsed->wire_bytes == message.size() && message.size() <= 240);
    for (const Sender sender : {Sender::kGuest, Sender::kHost}) {
      for (const NegotiatedConnection& on : {connection, unconnected}) {
        const absl::Status allowed = CheckAllowed(*parsed, sender, on);
        Check(allowed.ok() || GetProtocolError(allowed).has_value());
      }
    }
    CheckCanonical(*parsed);
    OnGpadlMessage(*parsed, &assembly);
  }
  return 0;
}
