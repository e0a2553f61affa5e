// Parsing and encoding of VMBus channel control messages (the structs of messages.h).
//
// ParseMessage() takes one SynIC message payload that an untrusted peer wrote. It copies the
// bytes once into private memory, validates only the copy, and returns a ParsedMessage that
// owns everything it holds, so a peer that rewrites its buffer afterwards changes nothing.
// A malformed message gets a ProtocolError, never a crash.
//
//   absl::StatusOr<ParsedMessage> parsed = ParseMessage(payload);
//   if (!parsed.ok()) { ... GetProtocolError(parsed.status()) ... }
//   CVMBUS_RETURN_IF_ERROR(CheckAllowed(*parsed, Sender::kGuest, connection));
//   if (const OpenChannel* open = parsed->As<OpenChannel>()) { ... }
//
// The encoders produce the exact bytes a sender puts on the wire.
#ifndef CVMBUS_PARAVISOR_PROTOCOL_CODEC_H_
#define CVMBUS_PARAVISOR_PROTOCOL_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/protocol/messages.h"

namespace cvmbus::paravisor::protocol {

enum class ProtocolError {
  kTooShort,        // Fewer bytes than the 8-byte message header.
  kTooLong,         // More bytes than a SynIC message holds (240).
  kUnknownType,     // CHANNELMSG_INVALID (0) or a number past the last known type.
  kTruncated,       // Shorter than its type (or its requested version's layout) needs.
  kBadGpadlLayout,  // GPADL range_count 0; range_buflen not a multiple of 8 or too small for
                    // range_count; range words beyond the last range; fewer ranges than
                    // declared.
  kBadRange,        // A GPA range with byte_count 0, byte_offset >= 4096, or a page number
                    // that does not fit a GPA.
  kTooManyPages,    // A range needs more page numbers than range_buflen holds, or an encoder
                    // was given more words than its message can carry.
  kWrongDirection,  // A message type the sending side never sends.
  kNotNegotiated,   // Valid bytes, but the connection's version or features exclude it.
  kInvalidFlags,    // Flags that contradict each other.
};

std::string_view ProtocolErrorName(ProtocolError error);
absl::Status MakeProtocolError(ProtocolError error, std::string_view message);
std::optional<ProtocolError> GetProtocolError(const absl::Status& status);
inline bool IsProtocolError(const absl::Status& status, ProtocolError error) {
  return GetProtocolError(status) == error;
}

// One alternative per message type, in type-number order (index = type - 1).
using MessageBody =
    std::variant<OfferChannel, RescindChannelOffer, RequestOffers, AllOffersDelivered, OpenChannel,
                 OpenResult, CloseChannel, GpadlHeader, GpadlBody, GpadlCreated, GpadlTeardown,
                 GpadlTorndown, RelIdReleased, InitiateContact, VersionResponse, Unload,
                 UnloadResponse, OpenReservedChannel, CloseReservedChannel,
                 CloseReservedChannelResponse, TlConnectRequest, ModifyChannel, TlConnectResult,
                 ModifyChannelResponse, ModifyConnection, ModifyConnectionResponse, Pause,
                 PauseResponse, Resume>;
static_assert(std::variant_size_v<MessageBody> == kLastMessageType);

// A validated message, private to its owner.
struct ParsedMessage {
  MessageType type = MessageType::kInvalid;
  size_t wire_bytes = 0;  // The length received (bytes past the struct are ignored).
  // The optional tail (see messages.h) was present. Absent tails read as zero. For
  // INITIATE_CONTACT the requested version and flags decide, not the length alone.
  bool has_tail = false;
  MessageBody body;
  // GPADL_HEADER: the range words this message carries (at most range_buflen / 8; the ranges
  // they complete are validated, the rest continue in GPADL_BODY messages).
  // GPADL_BODY: every whole word after the fixed part; only the GPADL's remaining length says
  // how many of them count (senders may pad to 240 bytes).
  std::vector<uint64_t> words;

  template <typename T>
  const T* As() const {
    return std::get_if<T>(&body);
  }
};

// Parses one message. `untrusted_message` is read exactly once. Errors: kTooLong, kTooShort,
// kUnknownType, kTruncated; for GPADL_HEADER also kBadGpadlLayout, kBadRange, kTooManyPages.
[[nodiscard]] absl::StatusOr<ParsedMessage> ParseMessage(
    absl::Span<const uint8_t> untrusted_message);

// What the connection has agreed on; version 0 means not (yet) connected.
struct NegotiatedConnection {
  uint32_t version = 0;
  uint32_t feature_flags = 0;
};

// Whether `message`, sent by `sender`, is valid on `connection` (the gates of messages.h).
// Errors: kWrongDirection; kNotNegotiated (version too old, or none of the type's features, or
// an offer with confidential flags on a connection without 6.0 confidential channels);
// kInvalidFlags (an offer with confidential external memory but not a confidential ring, which
// Linux refuses); kTruncated (OPENCHANNEL without its tail once feature 0x1 or 0x2 was
// negotiated).
[[nodiscard]] absl::Status CheckAllowed(const ParsedMessage& message, Sender sender,
                                        const NegotiatedConnection& connection);

// Validates a complete GPADL range buffer (header and bodies joined) by guestmem's rules for
// range buffers (guestmem/paged_range.h, the one parser): exactly `range_count` ranges that
// use every word. Errors: kBadGpadlLayout, kBadRange, kTooManyPages.
[[nodiscard]] absl::Status ValidateGpaRanges(uint16_t range_count,
                                             absl::Span<const uint64_t> words);

// --- Encoders. Each writes the header's message type itself and zeroes its padding. ---
namespace internal {
std::vector<uint8_t> EncodeStruct(MessageType type, const void* message, size_t bytes);
}  // namespace internal

// Every message type without a tail or variable part.
template <typename T>
std::vector<uint8_t> Encode(const T& message) {
  static_assert(T::kBaseBytes == sizeof(T), "this message has a tail: use its Encode function");
  static_assert(!std::is_same_v<T, GpadlHeader> && !std::is_same_v<T, GpadlBody>,
                "GPADL messages carry words: use EncodeGpadl*");
  return internal::EncodeStruct(T::kType, &message, sizeof(T));
}

// 56 bytes if the requested version (6.0+) and flags ask for the client-id tail, else 40.
std::vector<uint8_t> EncodeInitiateContact(const InitiateContact& message);
// 20 bytes with supported_features (a 6.0+ answer), else 16.
std::vector<uint8_t> EncodeVersionResponse(const VersionResponse& message,
                                           bool with_supported_features);
// 156 bytes with the connection_id/event_flag/flags tail, else 148.
std::vector<uint8_t> EncodeOpenChannel(const OpenChannel& message, bool with_tail);
// 56 bytes with silo_id, else 40.
std::vector<uint8_t> EncodeTlConnectRequest(const TlConnectRequest& message, bool with_silo_id);

// One GPADL_HEADER carrying `words` (1..27), or one GPADL_BODY carrying `words` (1..28).
// The fixed fields are written as given. Errors: kTooManyPages, kTruncated (no words).
absl::StatusOr<std::vector<uint8_t>> EncodeGpadlHeader(const GpadlHeader& message,
                                                       absl::Span<const uint64_t> words);
absl::StatusOr<std::vector<uint8_t>> EncodeGpadlBody(const GpadlBody& message,
                                                     absl::Span<const uint64_t> words);

// A whole GPADL as Linux sends it: a header with the first 27 words, then bodies of 28 words
// (message_number 0). Errors: those of ValidateGpaRanges; kTooManyPages if the words exceed
// range_buflen's 16 bits.
absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeGpadl(
    uint32_t child_relid, uint32_t gpadl, uint16_t range_count,
    absl::Span<const uint64_t> range_words);

// Re-encodes a parsed message in its canonical form (its tail as parsed, no excess bytes).
absl::StatusOr<std::vector<uint8_t>> EncodeMessage(const ParsedMessage& message);

}  // namespace cvmbus::paravisor::protocol

#endif  // CVMBUS_PARAVISOR_PROTOCOL_CODEC_H_
