// A hostile peer's messages: one test per way a message can be malformed, each asserting the
// exact ProtocolError; then the version/feature gates, and GPADL splitting and reassembly.
#include "paravisor/protocol/codec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "paravisor/protocol/testing/le_bytes.h"

namespace cvmbus::paravisor::protocol {
namespace {

using testing::LeBytes;

std::optional<ProtocolError> ParseError(const std::vector<uint8_t>& bytes) {
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  if (parsed.ok()) return std::nullopt;
  EXPECT_TRUE(GetProtocolError(parsed.status()).has_value()) << parsed.status();
  return GetProtocolError(parsed.status());
}

// A GPADL_HEADER with the given fixed fields and range words.
std::vector<uint8_t> GpadlHeaderBytes(uint16_t range_buflen, uint16_t range_count,
                                      const std::vector<uint64_t>& words) {
  LeBytes bytes;
  bytes.U32(8).U32(0).U32(14).U32(0x77).U16(range_buflen).U16(range_count);
  for (uint64_t word : words) bytes.U64(word);
  return bytes.Take();
}

constexpr uint64_t Range(uint32_t byte_count, uint32_t byte_offset) {
  return (uint64_t{byte_offset} << 32) | byte_count;
}

TEST(MalformedTest, ShorterThanTheHeader) {
  EXPECT_EQ(ParseError({0x03, 0, 0, 0, 0, 0, 0}), ProtocolError::kTooShort);
  EXPECT_EQ(ParseError({}), ProtocolError::kTooShort);
}

TEST(MalformedTest, LongerThanASynicMessage) {
  std::vector<uint8_t> bytes(241, 0);
  bytes[0] = 0x03;
  EXPECT_EQ(ParseError(bytes), ProtocolError::kTooLong);
}

TEST(MalformedTest, UnknownType) {
  EXPECT_EQ(ParseError({30, 0, 0, 0, 0, 0, 0, 0}), ProtocolError::kUnknownType);
  EXPECT_EQ(ParseError({0, 0, 0, 0, 0, 0, 0, 0}), ProtocolError::kUnknownType);  // INVALID.
  EXPECT_EQ(ParseError({3, 0, 0, 1, 0, 0, 0, 0}), ProtocolError::kUnknownType);  // 0x01000003.
}

TEST(MalformedTest, ShorterThanItsTypeForEveryType) {
  for (uint32_t number = 1; number <= kLastMessageType; ++number) {
    const MessageInfo& info = *FindMessageInfo(static_cast<MessageType>(number));
    if (info.min_bytes == sizeof(MessageHeader)) continue;  // Header-only: cannot be short.
    std::vector<uint8_t> bytes(info.min_bytes - 1, 0);
    bytes[0] = static_cast<uint8_t>(number);
    EXPECT_EQ(ParseError(bytes), ProtocolError::kTruncated) << info.name;
  }
}

TEST(MalformedTest, InitiateContactCopperClientIdMissing) {
  // 6.0 with kFeatureClientId: the layout includes the client id, so 40 bytes is short.
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(14)
                                         .U32(0)
                                         .U32(0x00060000)
                                         .U32(0)
                                         .U8(2)
                                         .U8(0)
                                         .U16(0)
                                         .U32(0x08)
                                         .U64(0)
                                         .U64(0)
                                         .Take();
  EXPECT_EQ(ParseError(bytes), ProtocolError::kTruncated);
}

TEST(MalformedTest, GpadlRangeCountZero) {
  EXPECT_EQ(ParseError(GpadlHeaderBytes(16, 0, {Range(4096, 0), 0x1000})),
            ProtocolError::kBadGpadlLayout);
}

TEST(MalformedTest, GpadlRangeBuflenNotWords) {
  EXPECT_EQ(ParseError(GpadlHeaderBytes(20, 1, {Range(4096, 0), 0x1000})),
            ProtocolError::kBadGpadlLayout);
}

TEST(MalformedTest, GpadlRangeBuflenTooSmallForCount) {
  // Two ranges need at least four words.
  EXPECT_EQ(ParseError(GpadlHeaderBytes(24, 2, {Range(4096, 0), 0x1000, Range(4096, 0)})),
            ProtocolError::kBadGpadlLayout);
}

TEST(MalformedTest, GpadlWordsBeyondTheLastRange) {
  // range_buflen says 3 words, one range of one page uses 2.
  EXPECT_EQ(ParseError(GpadlHeaderBytes(24, 1, {Range(4096, 0), 0x1000, 0x1001})),
            ProtocolError::kBadGpadlLayout);
}

TEST(MalformedTest, GpadlFewerRangesThanDeclared) {
  // Four words hold two one-page ranges, but the first range uses all four.
  EXPECT_EQ(ParseError(GpadlHeaderBytes(32, 2, {Range(3 * 4096, 0), 1, 2, 3})),
            ProtocolError::kBadGpadlLayout);
}

TEST(MalformedTest, GpadlRangeEmpty) {
  EXPECT_EQ(ParseError(GpadlHeaderBytes(16, 1, {Range(0, 0), 0x1000})), ProtocolError::kBadRange);
}

TEST(MalformedTest, GpadlRangeOffsetPastThePage) {
  EXPECT_EQ(ParseError(GpadlHeaderBytes(16, 1, {Range(1, 4096), 0x1000})),
            ProtocolError::kBadRange);
}

TEST(MalformedTest, GpadlPageNumberOverflowsAGpa) {
  EXPECT_EQ(ParseError(GpadlHeaderBytes(16, 1, {Range(4096, 0), uint64_t{1} << 52})),
            ProtocolError::kBadRange);
}

TEST(MalformedTest, GpadlRangeNeedsMorePagesThanTheBuffer) {
  // 0x1000 bytes at offset 1 spans two pages; range_buflen has room for one.
  EXPECT_EQ(ParseError(GpadlHeaderBytes(16, 1, {Range(4096, 1), 0x1000})),
            ProtocolError::kTooManyPages);
  // A byte count near 4 GiB must not wrap the page count.
  EXPECT_EQ(ParseError(GpadlHeaderBytes(16, 1, {Range(0xffffffff, 0xfff), 0x1000})),
            ProtocolError::kTooManyPages);
}

TEST(MalformedTest, GpadlBodyWithoutWords) {
  EXPECT_EQ(ParseError(LeBytes().U32(9).U32(0).U32(0).U32(0x77).Take()), ProtocolError::kTruncated);
}

TEST(MalformedTest, EncodersRefuseWhatDoesNotFit) {
  const std::vector<uint64_t> words_28(28, 1);
  const std::vector<uint64_t> words_29(29, 1);
  EXPECT_TRUE(IsProtocolError(EncodeGpadlHeader(GpadlHeader{}, words_28).status(),
                              ProtocolError::kTooManyPages));
  EXPECT_TRUE(IsProtocolError(EncodeGpadlBody(GpadlBody{}, words_29).status(),
                              ProtocolError::kTooManyPages));
  EXPECT_TRUE(EncodeGpadlBody(GpadlBody{}, words_28).ok());
  EXPECT_TRUE(
      IsProtocolError(EncodeGpadlBody(GpadlBody{}, {}).status(), ProtocolError::kTruncated));
  // 8192 words do not fit range_buflen's 16 bits.
  std::vector<uint64_t> huge(8192, 1);
  huge[0] = Range(8191 * 4096, 0);
  EXPECT_TRUE(IsProtocolError(EncodeGpadl(1, 2, 1, huge).status(), ProtocolError::kTooManyPages));
}

TEST(ParseTest, ExcessBytesAreIgnored) {
  // UEFI pads to the full 240 bytes; Linux checks only a minimum length.
  std::vector<uint8_t> bytes = {0x07, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0};
  bytes.resize(kMaxMessageBytes, 0xee);
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->As<CloseChannel>()->child_relid, 14u);
  EXPECT_EQ(EncodeMessage(*parsed)->size(), 12u);
}

TEST(ParseTest, InitiateContactTailIgnoredBelowCopper) {
  // A 5.3 request padded to 56 bytes: the "client id" is not part of its layout.
  const std::vector<uint8_t> bytes = LeBytes()
                                         .U32(14)
                                         .U32(0)
                                         .U32(0x00050003)
                                         .U32(0)
                                         .U8(2)
                                         .U8(0)
                                         .U16(0)
                                         .U32(0x08)
                                         .U64(0)
                                         .U64(0)
                                         .Fill(0xaa, 16)
                                         .Take();
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->has_tail);
  EXPECT_EQ(parsed->As<InitiateContact>()->client_id, Guid{});
  EXPECT_EQ(parsed->As<InitiateContact>()->feature_flags(), 0u);
}

TEST(ParseTest, PartialGpadlHeaderContinuesInBodies) {
  // 30 pages: the header carries the range word and 26 page numbers (27 words, as Linux).
  std::vector<uint64_t> words = {Range(30 * 4096, 0)};
  for (uint64_t pfn = 0; pfn < 30; ++pfn) words.push_back(0x5000 + pfn);
  const std::vector<uint64_t> first(words.begin(), words.begin() + 27);
  std::vector<uint8_t> bytes = GpadlHeaderBytes(31 * 8, 1, first);
  ASSERT_EQ(bytes.size(), 236u);
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->words, first);
}

TEST(ParseTest, ReadsTheCallersBytesOnce) {
  std::vector<uint8_t> bytes = {0x07, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0};
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  ASSERT_TRUE(parsed.ok());
  bytes[8] = 0x55;  // The peer rewrites its buffer after the parse.
  EXPECT_EQ(parsed->As<CloseChannel>()->child_relid, 14u);
}

TEST(GpadlTest, SplitsAndReassemblesLikeLinux) {
  std::vector<uint64_t> words = {Range(60 * 4096, 0)};
  for (uint64_t pfn = 0; pfn < 60; ++pfn) words.push_back(0x9000 + pfn);
  absl::StatusOr<std::vector<std::vector<uint8_t>>> messages = EncodeGpadl(14, 0x77, 1, words);
  ASSERT_TRUE(messages.ok()) << messages.status();
  ASSERT_EQ(messages->size(), 3u);  // 27 + 28 + 6 words.
  EXPECT_EQ((*messages)[0].size(), 20u + 27 * 8);
  EXPECT_EQ((*messages)[1].size(), 16u + 28 * 8);
  EXPECT_EQ((*messages)[2].size(), 16u + 6 * 8);
  std::vector<uint64_t> joined;
  for (const std::vector<uint8_t>& bytes : *messages) {
    absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    joined.insert(joined.end(), parsed->words.begin(), parsed->words.end());
  }
  EXPECT_EQ(joined, words);
  EXPECT_TRUE(ValidateGpaRanges(1, joined).ok());
  joined.push_back(0);
  EXPECT_TRUE(IsProtocolError(ValidateGpaRanges(1, joined), ProtocolError::kBadGpadlLayout));
}

ParsedMessage Parsed(const std::vector<uint8_t>& bytes) {
  absl::StatusOr<ParsedMessage> parsed = ParseMessage(bytes);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *std::move(parsed) : ParsedMessage{};
}

TEST(GateTest, WrongDirection) {
  const ParsedMessage offer = Parsed(Encode(OfferChannel{}));
  const NegotiatedConnection win10{.version = kVersionWin10};
  EXPECT_TRUE(
      IsProtocolError(CheckAllowed(offer, Sender::kGuest, win10), ProtocolError::kWrongDirection));
  EXPECT_TRUE(CheckAllowed(offer, Sender::kHost, win10).ok());
}

TEST(GateTest, NotConnectedOnlyContact) {
  const NegotiatedConnection none;
  EXPECT_TRUE(IsProtocolError(CheckAllowed(Parsed(Encode(RequestOffers{})), Sender::kGuest, none),
                              ProtocolError::kNotNegotiated));
  const ParsedMessage contact =
      Parsed(EncodeInitiateContact(InitiateContact{.vmbus_version_requested = kVersionWin10}));
  EXPECT_TRUE(CheckAllowed(contact, Sender::kGuest, none).ok());
  EXPECT_TRUE(CheckAllowed(Parsed(Encode(CloseReservedChannel{})), Sender::kGuest, none).ok());
}

TEST(GateTest, VersionGates) {
  const ParsedMessage modify = Parsed(Encode(ModifyChannel{.child_relid = 1, .target_vp = 2}));
  EXPECT_TRUE(IsProtocolError(CheckAllowed(modify, Sender::kGuest, {.version = kVersionWin10}),
                              ProtocolError::kNotNegotiated));
  EXPECT_TRUE(CheckAllowed(modify, Sender::kGuest, {.version = kVersionWin10V4_1}).ok());
  const ParsedMessage response = Parsed(Encode(ModifyChannelResponse{}));
  EXPECT_TRUE(IsProtocolError(CheckAllowed(response, Sender::kHost, {.version = kVersionWin10V5_2}),
                              ProtocolError::kNotNegotiated));
  EXPECT_TRUE(CheckAllowed(response, Sender::kHost, {.version = kVersionWin10V5_3}).ok());
  const ParsedMessage unload_response = Parsed(Encode(UnloadResponse{}));
  EXPECT_TRUE(
      IsProtocolError(CheckAllowed(unload_response, Sender::kHost, {.version = kVersionWs2008}),
                      ProtocolError::kNotNegotiated));
}

TEST(GateTest, FeatureGates) {
  const ParsedMessage pause = Parsed(Encode(Pause{}));
  EXPECT_TRUE(IsProtocolError(
      CheckAllowed(pause, Sender::kGuest,
                   {.version = kVersionWin10V6_0, .feature_flags = kFeatureModifyConnection}),
      ProtocolError::kNotNegotiated));
  EXPECT_TRUE(CheckAllowed(pause, Sender::kGuest,
                           {.version = kVersionWin10V6_0, .feature_flags = kFeaturePauseResume})
                  .ok());
}

TEST(GateTest, ConfidentialOfferNeedsTheFeature) {
  const ParsedMessage offer = Parsed(Encode(OfferChannel{
      .channel_flags = kOfferConfidentialRingBuffer | kOfferConfidentialExternalMemory}));
  EXPECT_TRUE(IsProtocolError(
      CheckAllowed(offer, Sender::kHost, {.version = kVersionWin10V6_0, .feature_flags = 0}),
      ProtocolError::kNotNegotiated));
  EXPECT_TRUE(IsProtocolError(
      CheckAllowed(offer, Sender::kHost,
                   {.version = kVersionWin10V5_3, .feature_flags = kFeatureConfidentialChannels}),
      ProtocolError::kNotNegotiated));
  EXPECT_TRUE(
      CheckAllowed(offer, Sender::kHost,
                   {.version = kVersionWin10V6_0, .feature_flags = kFeatureConfidentialChannels})
          .ok());
}

TEST(GateTest, ConfidentialExternalMemoryWithoutRing) {
  const ParsedMessage offer =
      Parsed(Encode(OfferChannel{.channel_flags = kOfferConfidentialExternalMemory}));
  EXPECT_TRUE(IsProtocolError(
      CheckAllowed(offer, Sender::kHost,
                   {.version = kVersionWin10V6_0, .feature_flags = kFeatureConfidentialChannels}),
      ProtocolError::kInvalidFlags));
}

TEST(GateTest, OpenChannelTailRequiredByFeatures) {
  const ParsedMessage short_open = Parsed(EncodeOpenChannel(OpenChannel{}, false));
  const ParsedMessage long_open = Parsed(EncodeOpenChannel(OpenChannel{}, true));
  const NegotiatedConnection signal{.version = kVersionWin10V6_0,
                                    .feature_flags = kFeatureGuestSpecifiedSignalParameters};
  EXPECT_TRUE(
      IsProtocolError(CheckAllowed(short_open, Sender::kGuest, signal), ProtocolError::kTruncated));
  EXPECT_TRUE(CheckAllowed(long_open, Sender::kGuest, signal).ok());
  const NegotiatedConnection confidential{.version = kVersionWin10V6_0,
                                          .feature_flags = kFeatureConfidentialChannels};
  EXPECT_TRUE(CheckAllowed(short_open, Sender::kGuest, confidential).ok());
}

TEST(ErrorTest, KindsSurviveTheStatus) {
  const absl::Status status = MakeProtocolError(ProtocolError::kBadRange, "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetProtocolError(status), ProtocolError::kBadRange);
  EXPECT_EQ(GetProtocolError(absl::InvalidArgumentError("x")), std::nullopt);
  EXPECT_EQ(ProtocolErrorName(ProtocolError::kNotNegotiated), "not negotiated");
}

}  // namespace
}  // namespace cvmbus::paravisor::protocol
