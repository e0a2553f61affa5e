#include "paravisor/replay/pattern.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/testing/status_testing.h"
#include "paravisor/protocol/testing/le_bytes.h"

namespace cvmbus::paravisor::replay {
namespace {

using protocol::testing::LeBytes;

std::vector<uint8_t> EncodeText(std::vector<std::string_view> tokens,
                                const Bindings& bindings = {}) {
  absl::StatusOr<Pattern> pattern = ParsePattern(tokens, PatternUse::kPost);
  EXPECT_OK(pattern.status());
  if (!pattern.ok()) return {};
  absl::StatusOr<std::vector<uint8_t>> bytes = Encode(*pattern, bindings);
  EXPECT_OK(bytes.status());
  return bytes.ok() ? *bytes : std::vector<uint8_t>{};
}

Pattern MatchPattern(std::vector<std::string_view> tokens) {
  absl::StatusOr<Pattern> pattern = ParsePattern(tokens, PatternUse::kMatch);
  EXPECT_OK(pattern.status());
  return pattern.ok() ? *pattern : Pattern{};
}

// The error ParseToken gives, or "" if it accepted the token.
std::string TokenError(std::string_view text, PatternUse use = PatternUse::kMatch) {
  absl::StatusOr<Token> token = ParseToken(text, use);
  if (token.ok()) return "";
  EXPECT_TRUE(absl::IsInvalidArgument(token.status())) << token.status();
  return std::string(token.status().message());
}

// --- Values -----------------------------------------------------------------------------------

TEST(ParseUnsignedTest, DecimalAndHex) {
  EXPECT_EQ(ParseUnsigned("0"), 0u);
  EXPECT_EQ(ParseUnsigned("4"), 4u);
  EXPECT_EQ(ParseUnsigned("00012"), 12u);
  EXPECT_EQ(ParseUnsigned("0x50003"), 0x50003u);
  EXPECT_EQ(ParseUnsigned("0xE1e10"), 0xe1e10u);
  EXPECT_EQ(ParseUnsigned("18446744073709551615"), 0xffffffffffffffffu);
  EXPECT_EQ(ParseUnsigned("0xffffffffffffffff"), 0xffffffffffffffffu);
  EXPECT_EQ(ParseUnsigned("0x0000000000000000001"), 1u);  // Leading zeros are not overflow.
}

TEST(ParseUnsignedTest, RejectsEverythingElse) {
  for (std::string_view text : {"", "-1", "+1", "0x", "0X10", "1x", "12a", "0x12g", " 1", "1 ",
                                "18446744073709551616", "0x10000000000000000", "1e3", "0b101"}) {
    EXPECT_EQ(ParseUnsigned(text), std::nullopt) << text;
  }
}

TEST(IsValidNameTest, LettersDigitsUnderscore) {
  EXPECT_TRUE(IsValidName("conn"));
  EXPECT_TRUE(IsValidName("_x9"));
  EXPECT_TRUE(IsValidName(std::string(kMaxNameLength, 'a')));
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName("9x"));
  EXPECT_FALSE(IsValidName("a-b"));
  EXPECT_FALSE(IsValidName(std::string(kMaxNameLength + 1, 'a')));
}

// --- Token kinds: known-answer bytes -----------------------------------------------------------

TEST(PatternEncodeTest, HexBytes) {
  EXPECT_EQ(EncodeText({"0f", "a0", "00", "FF"}), (std::vector<uint8_t>{0x0f, 0xa0, 0x00, 0xff}));
}

TEST(PatternEncodeTest, U8) {
  EXPECT_EQ(EncodeText({"u8:2", "u8:0xff"}), LeBytes().U8(2).U8(0xff).Take());
}

TEST(PatternEncodeTest, U16) {
  EXPECT_EQ(EncodeText({"u16:536"}), (std::vector<uint8_t>{0x18, 0x02}));
}

TEST(PatternEncodeTest, U32) {
  EXPECT_EQ(EncodeText({"u32:14", "u32:0x50003"}),
            (std::vector<uint8_t>{0x0e, 0, 0, 0, 0x03, 0x00, 0x05, 0x00}));
}

TEST(PatternEncodeTest, U64) {
  EXPECT_EQ(EncodeText({"u64:0x10000"}), LeBytes().U64(0x10000).Take());
  EXPECT_EQ(EncodeText({"u64:18446744073709551615"}), std::vector<uint8_t>(8, 0xff));
}

TEST(PatternEncodeTest, GuidInGuidTOrder) {
  // hyperv.h's HV_NIC_GUID f8615163-df3e-46c5-913f-f2d2f965ed0e as guid_t bytes.
  EXPECT_EQ(EncodeText({"guid:f8615163-df3e-46c5-913f-f2d2f965ed0e"}),
            (std::vector<uint8_t>{0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2,
                                  0xd2, 0xf9, 0x65, 0xed, 0x0e}));
  EXPECT_EQ(EncodeText({"guid:00000001-0000-0000-0000-000000000000"}),
            LeBytes().U32(1).Fill(0, 12).Take());
}

TEST(PatternEncodeTest, ZeroN) {
  EXPECT_EQ(EncodeText({"u8:1", "zero*120", "u8:2"}), LeBytes().U8(1).Fill(0, 120).U8(2).Take());
}

TEST(PatternEncodeTest, VariableWritesItsValue) {
  EXPECT_EQ(EncodeText({"$conn:u32", "$b:u8", "$w:u16", "$q:u64"},
                       {{"conn", 1}, {"b", 0x7f}, {"w", 0x1234}, {"q", 0x10001}}),
            LeBytes().U32(1).U8(0x7f).U16(0x1234).U64(0x10001).Take());
}

TEST(PatternEncodeTest, TheExampleInitiateContact) {
  // replay-format.md's example: Linux 6.1 asking for 5.3 (struct vmbus_channel_initiate_contact).
  EXPECT_EQ(EncodeText({"u32:14", "u32:0", "u32:0x50003", "u32:0", "u8:2", "u8:0", "00", "00",
                        "u32:0", "u64:0x10000", "u64:0x11000"}),
            LeBytes()
                .U32(14)
                .U32(0)
                .U32(0x50003)
                .U32(0)
                .U8(2)
                .U8(0)
                .U16(0)
                .U32(0)
                .U64(0x10000)
                .U64(0x11000)
                .Take());
}

TEST(PatternEncodeTest, VariableUnboundOrTooWide) {
  absl::StatusOr<Pattern> pattern = ParsePattern({"$x:u8"}, PatternUse::kPost);
  ASSERT_OK(pattern.status());
  absl::StatusOr<std::vector<uint8_t>> unbound = Encode(*pattern, {});
  EXPECT_TRUE(absl::IsFailedPrecondition(unbound.status()));
  EXPECT_EQ(unbound.status().message(), "`$x:u8`: $x is not bound");
  absl::StatusOr<std::vector<uint8_t>> wide = Encode(*pattern, {{"x", 0x100}});
  EXPECT_EQ(wide.status().message(), "`$x:u8`: $x is 0x100, which does not fit in 8 bits");
}

// --- Matching ---------------------------------------------------------------------------------

TEST(PatternMatchTest, PrefixMatchesLongerMessage) {
  const std::vector<uint8_t> message = LeBytes().U32(15).U32(0).U8(1).U8(0).U16(0).U32(1).Take();
  MatchResult result = Match(MatchPattern({"u32:15", "u32:0", "u8:1"}), message, {});
  EXPECT_TRUE(result.matched) << result.mismatch;
  EXPECT_TRUE(result.captured.empty());
}

TEST(PatternMatchTest, ShorterMessageFails) {
  const std::vector<uint8_t> message = LeBytes().U32(4).U32(0).Take();
  MatchResult result = Match(MatchPattern({"u32:4", "u32:0", "u32:7"}), message, {});
  EXPECT_FALSE(result.matched);
  EXPECT_EQ(result.mismatch,
            "the message is 8 bytes; the pattern needs 12: offsets 8-11, `u32:7` (token 3) is "
            "past its end");
}

TEST(PatternMatchTest, LiteralDiffers) {
  const std::vector<uint8_t> message = LeBytes().U32(15).U32(0).U8(0).Take();
  MatchResult result = Match(MatchPattern({"u32:15", "u32:0", "u8:1"}), message, {});
  EXPECT_FALSE(result.matched);
  EXPECT_EQ(result.mismatch, "offset 8, `u8:1` (token 3): expected 01, got 00");
}

TEST(PatternMatchTest, AnyByteAndAnyN) {
  const std::vector<uint8_t> message = LeBytes().U8(1).U8(0xaa).U32(0xdeadbeef).U8(2).Take();
  EXPECT_TRUE(Match(MatchPattern({"01", "??", "??*4", "02"}), message, {}).matched);
  EXPECT_FALSE(Match(MatchPattern({"01", "??*5", "03"}), message, {}).matched);
}

TEST(PatternMatchTest, GuidMatches) {
  const std::vector<uint8_t> message = LeBytes().U32(1).Fill(0, 12).Take();
  EXPECT_TRUE(
      Match(MatchPattern({"guid:00000001-0000-0000-0000-000000000000"}), message, {}).matched);
  MatchResult result =
      Match(MatchPattern({"guid:00000002-0000-0000-0000-000000000000"}), message, {});
  EXPECT_EQ(result.mismatch,
            "offsets 0-15, `guid:00000002-0000-0000-0000-000000000000` (token 1): expected 02 00 "
            "00 00 00 00 00 00 00 00 00 00 00 00 00 00, got 01 00 00 00 00 00 00 00 00 00 00 00 "
            "00 00 00 00");
}

TEST(PatternMatchTest, CaptureEachWidth) {
  const std::vector<uint8_t> message =
      LeBytes().U8(0x12).U16(0x3456).U32(0x789abcde).U64(0x0102030405060708).Take();
  MatchResult result = Match(MatchPattern({"$a:u8", "$b:u16", "$c:u32", "$d:u64"}), message, {});
  ASSERT_TRUE(result.matched) << result.mismatch;
  EXPECT_EQ(result.captured,
            (Bindings{{"a", 0x12}, {"b", 0x3456}, {"c", 0x789abcde}, {"d", 0x0102030405060708}}));
}

TEST(PatternMatchTest, BoundVariableMustEqual) {
  const std::vector<uint8_t> message = LeBytes().U32(4).Take();
  EXPECT_TRUE(Match(MatchPattern({"$conn:u32"}), message, {{"conn", 4}}).matched);
  MatchResult result = Match(MatchPattern({"$conn:u32"}), message, {{"conn", 1}});
  EXPECT_FALSE(result.matched);
  EXPECT_EQ(result.mismatch,
            "offsets 0-3, `$conn:u32` (token 1): $conn is 0x1, got 0x4 (04 00 00 00)");
  EXPECT_TRUE(result.captured.empty());
}

TEST(PatternMatchTest, SecondUseInOnePatternMustEqualTheFirst) {
  EXPECT_TRUE(Match(MatchPattern({"$x:u8", "$x:u8"}), LeBytes().U8(5).U8(5).Take(), {}).matched);
  MatchResult result = Match(MatchPattern({"$x:u8", "$x:u8"}), LeBytes().U8(5).U8(6).Take(), {});
  EXPECT_FALSE(result.matched);
  EXPECT_TRUE(result.mismatch.find("$x is 0x5, got 0x6") != std::string::npos) << result.mismatch;
}

TEST(PatternMatchTest, FailedMatchBindsNothing) {
  MatchResult result = Match(MatchPattern({"$x:u8", "u8:9"}), LeBytes().U8(5).U8(6).Take(), {});
  EXPECT_FALSE(result.matched);
  EXPECT_TRUE(result.captured.empty());
}

// --- Malformed tokens: one test each ----------------------------------------------------------

TEST(PatternTokenErrorTest, UnknownToken) {
  EXPECT_EQ(TokenError("0x14"),
            "`0x14`: not a BYTES token (two hex digits, u8/u16/u32/u64:VALUE, guid:..., ??, ??*N, "
            "zero*N or $name:uN)");
  EXPECT_NE(TokenError("f"), "");
  EXPECT_NE(TokenError("abc"), "");
  EXPECT_NE(TokenError("u7:1"), "");
  EXPECT_NE(TokenError("g0"), "");
}

TEST(PatternTokenErrorTest, BadValue) {
  EXPECT_EQ(TokenError("u32:x"), "`u32:x`: the value must be decimal or 0x-hex, at most 2^64 - 1");
  EXPECT_NE(TokenError("u32:"), "");
  EXPECT_NE(TokenError("u64:18446744073709551616"), "");
}

TEST(PatternTokenErrorTest, ValueTooWide) {
  EXPECT_EQ(TokenError("u8:256"), "`u8:256`: 0x100 does not fit in 8 bits");
  EXPECT_EQ(TokenError("u16:0x10000"), "`u16:0x10000`: 0x10000 does not fit in 16 bits");
  EXPECT_EQ(TokenError("u32:4294967296"), "`u32:4294967296`: 0x100000000 does not fit in 32 bits");
  EXPECT_EQ(TokenError("u32:4294967295"), "");
}

TEST(PatternTokenErrorTest, BadGuid) {
  const std::string why =
      ": a GUID is written guid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)";
  EXPECT_EQ(TokenError("guid:1234"), "`guid:1234`" + why);
  EXPECT_NE(TokenError("guid:{f8615163-df3e-46c5-913f-f2d2f965ed0e}"), "");
  EXPECT_NE(TokenError("guid:f8615163-df3e-46c5-913f-f2d2f965ed0g"), "");
  EXPECT_NE(TokenError("guid:f8615163df3e-46c5-913f-f2d2f965ed0e0"), "");
}

TEST(PatternTokenErrorTest, AnyInPost) {
  EXPECT_EQ(TokenError("??", PatternUse::kPost),
            "`??`: `??` matches received bytes: only in expect and until");
  EXPECT_NE(TokenError("??*4", PatternUse::kPost), "");
}

TEST(PatternTokenErrorTest, ZeroInMatch) {
  EXPECT_EQ(TokenError("zero*4", PatternUse::kMatch),
            "`zero*4`: `zero*N` writes bytes: only in post (match zeros with u8:0 ...)");
}

TEST(PatternTokenErrorTest, BadCount) {
  EXPECT_EQ(TokenError("??*0"), "`??*0`: the count must be a number from 1 to 4096");
  EXPECT_NE(TokenError("??*4097"), "");
  EXPECT_NE(TokenError("??*"), "");
  EXPECT_NE(TokenError("zero*0", PatternUse::kPost), "");
  EXPECT_NE(TokenError("zero*-1", PatternUse::kPost), "");
  EXPECT_EQ(TokenError("???"), "`???`: any bytes are written `??` or `??*N`");
}

TEST(PatternTokenErrorTest, BadVariable) {
  EXPECT_EQ(TokenError("$conn"), "`$conn`: a variable is written $name:u8, :u16, :u32 or :u64");
  EXPECT_EQ(TokenError("$conn:u24"), "`$conn:u24`: a variable's width is :u8, :u16, :u32 or :u64");
  EXPECT_EQ(TokenError("$9x:u32"),
            "`$9x:u32`: a name is a letter or _ then letters, digits or _, at most 64 characters");
  EXPECT_NE(TokenError("$:u32"), "");
  EXPECT_NE(TokenError("$a-b:u32"), "");
}

TEST(PatternTokenErrorTest, UntrustedTextIsPrintedSafely) {
  const std::string text = std::string("u32:\x1b[2J") + std::string(100, 'A');
  const std::string error = TokenError(text);
  EXPECT_EQ(error.find('\x1b'), std::string::npos);
  EXPECT_NE(error.find("\\x1b"), std::string::npos);
  EXPECT_LT(error.size(), 200u);
}

TEST(PatternParseTest, TooManyBytes) {
  absl::StatusOr<Pattern> pattern = ParsePattern({"zero*4096", "00"}, PatternUse::kPost);
  EXPECT_TRUE(absl::IsInvalidArgument(pattern.status()));
  EXPECT_EQ(pattern.status().message(), "the bytes run past 4096 at `00`");
  EXPECT_OK(ParsePattern({"zero*4000", "zero*96"}, PatternUse::kPost).status());
}

TEST(HexBytesTest, Shortens) {
  EXPECT_EQ(HexBytes(std::vector<uint8_t>{1, 2, 0xab}), "01 02 ab");
  EXPECT_EQ(HexBytes(std::vector<uint8_t>{1, 2, 3}, 2), "01 02 ... (3 bytes)");
  EXPECT_EQ(HexBytes({}), "");
}

}  // namespace
}  // namespace cvmbus::paravisor::replay
