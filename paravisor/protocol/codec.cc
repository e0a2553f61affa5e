#include "paravisor/protocol/codec.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <utility>

#include "base/format.h"
#include "base/status_macros.h"
#include "base/typed_error.h"
#include "guestmem/paged_range.h"

namespace cvmbus::paravisor::protocol {
namespace {

constexpr char kProtocolErrorUrl[] = "cvmbus.dev/paravisor.protocol.ProtocolError";

// The private copy every parse reads from; bytes past the message stay zero.
using MessageCopy = std::array<uint8_t, kMaxMessageBytes>;

std::string VersionText(uint32_t version) {
  return fmt::format("{}.{}", VersionMajor(version), VersionMinor(version));
}

// Loads T from the copy. A tail that did not arrive whole stays zero.
template <typename T>
void LoadStruct(const MessageCopy& copy, size_t wire_bytes, ParsedMessage* out) {
  T message;
  std::memset(&message, 0, sizeof(T));
  const bool whole = wire_bytes >= sizeof(T);
  std::memcpy(&message, copy.data(), whole ? sizeof(T) : T::kBaseBytes);
  out->has_tail = whole && sizeof(T) > T::kBaseBytes;
  out->body = message;
}

using Loader = void (*)(const MessageCopy&, size_t, ParsedMessage*);

template <size_t... kIndex>
constexpr std::array<Loader, sizeof...(kIndex)> MakeLoaders(std::index_sequence<kIndex...>) {
  static_assert(((static_cast<size_t>(std::variant_alternative_t<kIndex, MessageBody>::kType) ==
                  kIndex + 1) &&
                 ...),
                "MessageBody alternatives must be in message type order");
  return {&LoadStruct<std::variant_alternative_t<kIndex, MessageBody>>...};
}
constexpr auto kLoaders = MakeLoaders(std::make_index_sequence<std::variant_size_v<MessageBody>>());

std::vector<uint64_t> LoadWords(const MessageCopy& copy, size_t offset, size_t count) {
  std::vector<uint64_t> words(count);
  if (count != 0) std::memcpy(words.data(), copy.data() + offset, count * sizeof(uint64_t));
  return words;
}

// guestmem's rules for GPA range buffers (the one parser), as this protocol's errors: the
// buffer's shape is kBadGpadlLayout, a range's content kBadRange, a range longer than the
// buffer kTooManyPages. `context` names the message.
absl::Status CheckGpaRanges(std::string_view context, uint16_t range_count,
                            absl::Span<const uint64_t> words, size_t total_words) {
  const std::optional<guestmem::GpaRangeFault> fault =
      guestmem::CheckGpaRanges(words, total_words, range_count);
  if (!fault.has_value()) return absl::OkStatus();
  ProtocolError error = ProtocolError::kBadGpadlLayout;
  switch (fault->kind) {
    case guestmem::GpaRangeFault::kEmptyRange:
    case guestmem::GpaRangeFault::kBadOffset:
    case guestmem::GpaRangeFault::kPageOverflow:
      error = ProtocolError::kBadRange;
      break;
    case guestmem::GpaRangeFault::kMissingPages:
      error = ProtocolError::kTooManyPages;
      break;
    case guestmem::GpaRangeFault::kNoRanges:
    case guestmem::GpaRangeFault::kMissingRanges:
    case guestmem::GpaRangeFault::kTrailingWords:
      break;
  }
  return MakeProtocolError(error, fmt::format("{}: {}", context, fault->detail));
}

absl::Status ParseGpadlHeaderWords(const MessageCopy& copy, size_t wire_bytes, ParsedMessage* out) {
  const GpadlHeader& header = std::get<GpadlHeader>(out->body);
  const std::string context =
      fmt::format("GPADL_HEADER relid {} gpadl {:#x}", header.child_relid, header.gpadl);
  if (header.range_count == 0 || header.range_buflen % 8 != 0 ||
      header.range_buflen < 16u * header.range_count) {
    // Each range needs its header word and at least one page number.
    return MakeProtocolError(ProtocolError::kBadGpadlLayout,
                             fmt::format("{}: range_count {} range_buflen {}", context,
                                         header.range_count, header.range_buflen));
  }
  const size_t total_words = header.range_buflen / 8;
  const size_t carried = std::min((wire_bytes - sizeof(GpadlHeader)) / 8, total_words);
  out->words = LoadWords(copy, sizeof(GpadlHeader), carried);
  return CheckGpaRanges(context, header.range_count, out->words, total_words);
}

absl::StatusOr<std::vector<uint8_t>> EncodeWithWords(MessageType type, const void* fixed,
                                                     size_t fixed_bytes,
                                                     absl::Span<const uint64_t> words,
                                                     size_t max_words) {
  if (words.empty()) {
    return MakeProtocolError(ProtocolError::kTruncated,
                             fmt::format("encode {}: no words", MessageTypeName(type)));
  }
  if (words.size() > max_words) {
    return MakeProtocolError(ProtocolError::kTooManyPages,
                             fmt::format("encode {}: {} words, at most {} fit",
                                         MessageTypeName(type), words.size(), max_words));
  }
  std::vector<uint8_t> bytes = internal::EncodeStruct(type, fixed, fixed_bytes);
  bytes.resize(fixed_bytes + words.size() * sizeof(uint64_t));
  std::memcpy(bytes.data() + fixed_bytes, words.data(), words.size() * sizeof(uint64_t));
  return bytes;
}

}  // namespace

std::string_view ProtocolErrorName(ProtocolError error) {
  switch (error) {
    case ProtocolError::kTooShort:
      return "too short";
    case ProtocolError::kTooLong:
      return "too long";
    case ProtocolError::kUnknownType:
      return "unknown type";
    case ProtocolError::kTruncated:
      return "truncated";
    case ProtocolError::kBadGpadlLayout:
      return "bad GPADL layout";
    case ProtocolError::kBadRange:
      return "bad range";
    case ProtocolError::kTooManyPages:
      return "too many pages";
    case ProtocolError::kWrongDirection:
      return "wrong direction";
    case ProtocolError::kNotNegotiated:
      return "not negotiated";
    case ProtocolError::kInvalidFlags:
      return "invalid flags";
  }
  return "unknown";
}

absl::Status MakeProtocolError(ProtocolError error, std::string_view message) {
  const absl::StatusCode code =
      error == ProtocolError::kWrongDirection || error == ProtocolError::kNotNegotiated
          ? absl::StatusCode::kFailedPrecondition
          : absl::StatusCode::kInvalidArgument;
  return MakeTypedError(kProtocolErrorUrl, error, code, message);
}

std::optional<ProtocolError> GetProtocolError(const absl::Status& status) {
  return GetTypedError(kProtocolErrorUrl, status, ProtocolError::kInvalidFlags);
}

absl::StatusOr<ParsedMessage> ParseMessage(absl::Span<const uint8_t> untrusted_message) {
  const size_t wire_bytes = untrusted_message.size();
  if (wire_bytes > kMaxMessageBytes) {
    return MakeProtocolError(ProtocolError::kTooLong, fmt::format("parse: {} bytes, at most {}",
                                                                  wire_bytes, kMaxMessageBytes));
  }
  if (wire_bytes < sizeof(MessageHeader)) {
    return MakeProtocolError(ProtocolError::kTooShort,
                             fmt::format("parse: {} bytes, shorter than the header", wire_bytes));
  }
  // The only read of the caller's bytes.
  MessageCopy copy{};
  std::memcpy(copy.data(), untrusted_message.data(), wire_bytes);

  MessageHeader header;
  std::memcpy(&header, copy.data(), sizeof(header));
  const MessageInfo* info = FindMessageInfo(header.message_type);
  if (info == nullptr) {
    return MakeProtocolError(
        ProtocolError::kUnknownType,
        fmt::format("parse: message type {}", static_cast<uint32_t>(header.message_type)));
  }
  if (wire_bytes < info->min_bytes) {
    return MakeProtocolError(
        ProtocolError::kTruncated,
        fmt::format("parse {}: {} bytes, needs {}", info->name, wire_bytes, info->min_bytes));
  }

  ParsedMessage out;
  out.type = info->type;
  out.wire_bytes = wire_bytes;
  kLoaders[static_cast<size_t>(info->type) - 1](copy, wire_bytes, &out);

  switch (info->type) {
    case MessageType::kInitiateContact: {
      // The requested version decides the layout: the client-id tail belongs to the message
      // only from 6.0 with kFeatureClientId, and then it must be there.
      InitiateContact& contact = std::get<InitiateContact>(out.body);
      if (!contact.carries_client_id()) {
        contact.client_id = Guid{};
        out.has_tail = false;
      } else if (!out.has_tail) {
        return MakeProtocolError(
            ProtocolError::kTruncated,
            fmt::format("parse INITIATE_CONTACT: version {} with client id needs {} bytes, got {}",
                        VersionText(contact.vmbus_version_requested), sizeof(InitiateContact),
                        wire_bytes));
      }
      break;
    }
    case MessageType::kVersionResponse: {
      // Three lengths: the copy is zero past the message, so loading the whole struct keeps
      // what arrived. The monitor pages come exactly with their feature bit.
      VersionResponse& response = std::get<VersionResponse>(out.body);
      std::memcpy(&response, copy.data(), sizeof(response));
      out.has_tail = wire_bytes >= VersionResponse::kWithFeaturesBytes;
      if (!out.has_tail) response.supported_features = 0;
      if (response.has_server_monitor_pages() && wire_bytes < sizeof(VersionResponse)) {
        return MakeProtocolError(
            ProtocolError::kTruncated,
            fmt::format("parse VERSION_RESPONSE: server-specified monitor pages need {} bytes, "
                        "got {}",
                        sizeof(VersionResponse), wire_bytes));
      }
      if (!response.has_server_monitor_pages()) {
        response.padding2 = 0;
        response.parent_to_child_monitor_page = 0;
        response.child_to_parent_monitor_page = 0;
      }
      break;
    }
    case MessageType::kGpadlHeader:
      CVMBUS_RETURN_IF_ERROR(ParseGpadlHeaderWords(copy, wire_bytes, &out));
      break;
    case MessageType::kGpadlBody:
      out.words = LoadWords(copy, sizeof(GpadlBody), (wire_bytes - sizeof(GpadlBody)) / 8);
      break;
    default:
      break;
  }
  return out;
}

absl::Status CheckAllowed(const ParsedMessage& message, Sender sender,
                          const NegotiatedConnection& connection) {
  const MessageInfo* info = FindMessageInfo(message.type);
  if (info == nullptr) {
    return MakeProtocolError(
        ProtocolError::kUnknownType,
        fmt::format("check: message type {}", static_cast<uint32_t>(message.type)));
  }
  if (info->sender != sender) {
    return MakeProtocolError(ProtocolError::kWrongDirection,
                             fmt::format("check {}: sent by the {}, which never sends it",
                                         info->name, sender == Sender::kGuest ? "guest" : "host"));
  }
  if (info->min_version != 0 && connection.version < info->min_version) {
    return MakeProtocolError(
        ProtocolError::kNotNegotiated,
        fmt::format("check {}: needs version {}, connection is at {}", info->name,
                    VersionText(info->min_version),
                    connection.version == 0 ? "none" : VersionText(connection.version)));
  }
  if (info->required_features != 0 && (connection.feature_flags & info->required_features) == 0) {
    return MakeProtocolError(
        ProtocolError::kNotNegotiated,
        fmt::format("check {}: needs feature {:#x}, negotiated {:#x}", info->name,
                    info->required_features, connection.feature_flags));
  }
  if (const OfferChannel* offer = message.As<OfferChannel>()) {
    // Linux vmbus_onoffer(): confidential offers need 6.0 and a confidential connection, and
    // external memory can be confidential only if the ring is.
    const uint16_t flags = offer->channel_flags;
    const uint16_t confidential = kOfferConfidentialRingBuffer | kOfferConfidentialExternalMemory;
    if ((flags & kOfferConfidentialExternalMemory) != 0 &&
        (flags & kOfferConfidentialRingBuffer) == 0) {
      return MakeProtocolError(
          ProtocolError::kInvalidFlags,
          fmt::format("check OFFERCHANNEL relid {}: flags {:#x}: confidential external memory "
                      "without a confidential ring",
                      offer->child_relid, flags));
    }
    if ((flags & confidential) != 0 &&
        (connection.version < kVersionWin10V6_0 ||
         (connection.feature_flags & kFeatureConfidentialChannels) == 0)) {
      return MakeProtocolError(
          ProtocolError::kNotNegotiated,
          fmt::format("check OFFERCHANNEL relid {}: flags {:#x} need confidential channels, "
                      "negotiated {:#x} at {}",
                      offer->child_relid, flags, connection.feature_flags,
                      VersionText(connection.version)));
    }
  }
  constexpr uint32_t kOpenTailFeatures =
      kFeatureGuestSpecifiedSignalParameters | kFeatureChannelInterruptRedirection;
  if (message.type == MessageType::kOpenChannel && connection.version >= kVersionWin10V6_0 &&
      (connection.feature_flags & kOpenTailFeatures) != 0 && !message.has_tail) {
    return MakeProtocolError(
        ProtocolError::kTruncated,
        fmt::format("check OPENCHANNEL relid {}: features {:#x} need {} bytes, got {}",
                    std::get<OpenChannel>(message.body).child_relid, connection.feature_flags,
                    sizeof(OpenChannel), message.wire_bytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateGpaRanges(uint16_t range_count, absl::Span<const uint64_t> words) {
  return CheckGpaRanges("GPADL ranges", range_count, words, words.size());
}

std::vector<uint8_t> internal::EncodeStruct(MessageType type, const void* message, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  std::memcpy(out.data(), message, bytes);
  const MessageHeader header{.message_type = type, .padding = 0};
  std::memcpy(out.data(), &header, sizeof(header));
  return out;
}

std::vector<uint8_t> EncodeInitiateContact(const InitiateContact& message) {
  return internal::EncodeStruct(
      InitiateContact::kType, &message,
      message.carries_client_id() ? sizeof(InitiateContact) : InitiateContact::kBaseBytes);
}

std::vector<uint8_t> EncodeVersionResponse(const VersionResponse& message,
                                           bool with_supported_features) {
  const size_t bytes = !with_supported_features             ? VersionResponse::kBaseBytes
                       : message.has_server_monitor_pages() ? sizeof(message)
                                                            : VersionResponse::kWithFeaturesBytes;
  return internal::EncodeStruct(VersionResponse::kType, &message, bytes);
}

std::vector<uint8_t> EncodeOpenChannel(const OpenChannel& message, bool with_tail) {
  return internal::EncodeStruct(OpenChannel::kType, &message,
                                with_tail ? sizeof(message) : OpenChannel::kBaseBytes);
}

std::vector<uint8_t> EncodeTlConnectRequest(const TlConnectRequest& message, bool with_silo_id) {
  return internal::EncodeStruct(TlConnectRequest::kType, &message,
                                with_silo_id ? sizeof(message) : TlConnectRequest::kBaseBytes);
}

absl::StatusOr<std::vector<uint8_t>> EncodeGpadlHeader(const GpadlHeader& message,
                                                       absl::Span<const uint64_t> words) {
  return EncodeWithWords(GpadlHeader::kType, &message, sizeof(message), words,
                         kGpadlHeaderMaxWords);
}

absl::StatusOr<std::vector<uint8_t>> EncodeGpadlBody(const GpadlBody& message,
                                                     absl::Span<const uint64_t> words) {
  return EncodeWithWords(GpadlBody::kType, &message, sizeof(message), words, kGpadlBodyMaxWords);
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeGpadl(
    uint32_t child_relid, uint32_t gpadl, uint16_t range_count,
    absl::Span<const uint64_t> range_words) {
  if (range_words.size() * 8 > UINT16_MAX) {
    return MakeProtocolError(
        ProtocolError::kTooManyPages,
        fmt::format("encode GPADL {:#x}: {} words exceed range_buflen", gpadl, range_words.size()));
  }
  CVMBUS_RETURN_IF_ERROR(ValidateGpaRanges(range_count, range_words));
  std::vector<std::vector<uint8_t>> messages;
  const GpadlHeader header{.child_relid = child_relid,
                           .gpadl = gpadl,
                           .range_buflen = static_cast<uint16_t>(range_words.size() * 8),
                           .range_count = range_count};
  const size_t first = std::min(range_words.size(), kGpadlHeaderMaxWords);
  CVMBUS_ASSIGN_OR_RETURN(std::vector<uint8_t> header_bytes,
                          EncodeGpadlHeader(header, range_words.subspan(0, first)));
  messages.push_back(std::move(header_bytes));
  const GpadlBody body{.message_number = 0, .gpadl = gpadl};
  for (size_t next = first; next < range_words.size(); next += kGpadlBodyMaxWords) {
    CVMBUS_ASSIGN_OR_RETURN(std::vector<uint8_t> body_bytes,
                            EncodeGpadlBody(body, range_words.subspan(next, kGpadlBodyMaxWords)));
    messages.push_back(std::move(body_bytes));
  }
  return messages;
}

absl::StatusOr<std::vector<uint8_t>> EncodeMessage(const ParsedMessage& message) {
  return std::visit(
      [&message](const auto& body) -> absl::StatusOr<std::vector<uint8_t>> {
        using T = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<T, GpadlHeader>) {
          return EncodeGpadlHeader(body, message.words);
        } else if constexpr (std::is_same_v<T, GpadlBody>) {
          return EncodeGpadlBody(body, message.words);
        } else if constexpr (std::is_same_v<T, InitiateContact>) {
          return EncodeInitiateContact(body);
        } else if constexpr (std::is_same_v<T, VersionResponse>) {
          return EncodeVersionResponse(body, message.has_tail);
        } else if constexpr (std::is_same_v<T, OpenChannel>) {
          return EncodeOpenChannel(body, message.has_tail);
        } else if constexpr (std::is_same_v<T, TlConnectRequest>) {
          return EncodeTlConnectRequest(body, message.has_tail);
        } else {
          return Encode(body);
        }
      },
      message.body);
}

}  // namespace cvmbus::paravisor::protocol
