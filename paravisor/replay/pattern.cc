#include "paravisor/replay/pattern.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace cvmbus::paravisor::replay {
namespace {

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::Status TokenError(std::string_view text, std::string_view why) {
  return absl::InvalidArgumentError(fmt::format("`{}`: {}", Printable(text), why));
}

// The width of "u8", "u16", "u32" or "u64" in bytes; 0 otherwise.
size_t WidthBytes(std::string_view type) {
  if (type == "u8") return 1;
  if (type == "u16") return 2;
  if (type == "u32") return 4;
  if (type == "u64") return 8;
  return 0;
}

bool Fits(uint64_t value, size_t width_bytes) {
  return width_bytes >= 8 || value < (uint64_t{1} << (8 * width_bytes));
}

void AppendLittleEndian(uint64_t value, size_t width_bytes, std::vector<uint8_t>* out) {
  for (size_t i = 0; i < width_bytes; ++i) out->push_back(static_cast<uint8_t>(value >> (8 * i)));
}

uint64_t ReadLittleEndian(absl::Span<const uint8_t> bytes) {
  uint64_t value = 0;
  for (size_t i = 0; i < bytes.size() && i < 8; ++i) value |= uint64_t{bytes[i]} << (8 * i);
  return value;
}

// `??*N` and `zero*N`: N from 1 to kMaxPatternBytes.
absl::StatusOr<size_t> ParseCount(std::string_view text, std::string_view count) {
  const std::optional<uint64_t> n = ParseUnsigned(count);
  if (!n.has_value() || *n < 1 || *n > kMaxPatternBytes) {
    return TokenError(text,
                      fmt::format("the count must be a number from 1 to {}", kMaxPatternBytes));
  }
  return static_cast<size_t>(*n);
}

// guid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in guid_t byte order.
absl::StatusOr<std::vector<uint8_t>> ParseGuid(std::string_view text, std::string_view guid) {
  constexpr std::string_view kForm = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
  bool well_formed = guid.size() == kForm.size();
  for (size_t i = 0; well_formed && i < guid.size(); ++i) {
    well_formed = kForm[i] == '-' ? guid[i] == '-' : HexDigit(guid[i]) >= 0;
  }
  if (!well_formed) {
    return TokenError(text, fmt::format("a GUID is written guid:{} (hex digits)", kForm));
  }
  std::vector<uint8_t> digits;  // The 16 bytes in the order written.
  for (size_t i = 0; i < guid.size(); i += 2) {
    if (guid[i] == '-') ++i;
    digits.push_back(static_cast<uint8_t>(HexDigit(guid[i]) << 4 | HexDigit(guid[i + 1])));
  }
  // data1 (4 bytes), data2 and data3 (2 each) little-endian; data4 (8 bytes) as written.
  return std::vector<uint8_t>{digits[3],  digits[2],  digits[1],  digits[0], digits[5],  digits[4],
                              digits[7],  digits[6],  digits[8],  digits[9], digits[10], digits[11],
                              digits[12], digits[13], digits[14], digits[15]};
}

std::string Range(size_t offset, size_t size) {
  return size == 1 ? fmt::format("offset {}", offset)
                   : fmt::format("offsets {}-{}", offset, offset + size - 1);
}

}  // namespace

std::optional<uint64_t> ParseUnsigned(std::string_view text) {
  if (text.empty()) return std::nullopt;
  uint64_t value = 0;
  if (text.size() > 2 && text[0] == '0' && text[1] == 'x') {
    for (char c : text.substr(2)) {
      const int digit = HexDigit(c);
      if (digit < 0 || (value >> 60) != 0) return std::nullopt;
      value = value << 4 | static_cast<uint64_t>(digit);
    }
    return value;
  }
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

std::string Printable(std::string_view text) {
  constexpr size_t kMaxShown = 48;
  std::string out;
  for (size_t i = 0; i < text.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (text.size() > kMaxShown) out += "...";
  return out;
}

absl::StatusOr<Token> ParseToken(std::string_view text, PatternUse use) {
  Token token;
  token.text = std::string(text);
  if (text.size() == 2 && HexDigit(text[0]) >= 0 && HexDigit(text[1]) >= 0) {
    token.size = 1;
    token.bytes = {static_cast<uint8_t>(HexDigit(text[0]) << 4 | HexDigit(text[1]))};
    return token;
  }
  if (text.rfind("??", 0) == 0) {
    if (use != PatternUse::kMatch) {
      return TokenError(text, "`??` matches received bytes: only in expect and until");
    }
    token.kind = Token::Kind::kAny;
    if (text == "??") {
      token.size = 1;
      return token;
    }
    if (text.size() < 3 || text[2] != '*') {
      return TokenError(text, "any bytes are written `??` or `??*N`");
    }
    absl::StatusOr<size_t> count = ParseCount(text, text.substr(3));
    if (!count.ok()) return count.status();
    token.size = *count;
    return token;
  }
  if (text.rfind("zero*", 0) == 0) {
    if (use != PatternUse::kPost) {
      return TokenError(text, "`zero*N` writes bytes: only in post (match zeros with u8:0 ...)");
    }
    absl::StatusOr<size_t> count = ParseCount(text, text.substr(5));
    if (!count.ok()) return count.status();
    token.size = *count;
    token.bytes.assign(*count, 0);
    return token;
  }
  if (text.rfind("guid:", 0) == 0) {
    absl::StatusOr<std::vector<uint8_t>> bytes = ParseGuid(text, text.substr(5));
    if (!bytes.ok()) return bytes.status();
    token.size = bytes->size();
    token.bytes = *std::move(bytes);
    return token;
  }
  if (text.rfind('$', 0) == 0) {
    const size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
      return TokenError(text, "a variable is written $name:u8, :u16, :u32 or :u64");
    }
    const std::string_view name = text.substr(1, colon - 1);
    if (!IsValidName(name)) {
      return TokenError(text, fmt::format("a name is a letter or _ then letters, digits or _, "
                                          "at most {} characters",
                                          kMaxNameLength));
    }
    token.size = WidthBytes(text.substr(colon + 1));
    if (token.size == 0) {
      return TokenError(text, "a variable's width is :u8, :u16, :u32 or :u64");
    }
    token.kind = Token::Kind::kVariable;
    token.name = std::string(name);
    return token;
  }
  const size_t colon = text.find(':');
  if (colon != std::string_view::npos && WidthBytes(text.substr(0, colon)) != 0) {
    const size_t width = WidthBytes(text.substr(0, colon));
    const std::optional<uint64_t> value = ParseUnsigned(text.substr(colon + 1));
    if (!value.has_value()) {
      return TokenError(text, "the value must be decimal or 0x-hex, at most 2^64 - 1");
    }
    if (!Fits(*value, width)) {
      return TokenError(text, fmt::format("{:#x} does not fit in {} bits", *value, 8 * width));
    }
    token.size = width;
    AppendLittleEndian(*value, width, &token.bytes);
    return token;
  }
  return TokenError(text,
                    "not a BYTES token (two hex digits, u8/u16/u32/u64:VALUE, guid:..., ??, "
                    "??*N, zero*N or $name:uN)");
}

absl::StatusOr<Pattern> ParsePattern(absl::Span<const std::string_view> tokens, PatternUse use) {
  Pattern pattern;
  for (std::string_view text : tokens) {
    absl::StatusOr<Token> token = ParseToken(text, use);
    if (!token.ok()) return token.status();
    pattern.size_bytes += token->size;
    if (pattern.size_bytes > kMaxPatternBytes) {
      return absl::InvalidArgumentError(
          fmt::format("the bytes run past {} at `{}`", kMaxPatternBytes, Printable(text)));
    }
    pattern.tokens.push_back(*std::move(token));
  }
  return pattern;
}

absl::StatusOr<std::vector<uint8_t>> Encode(const Pattern& pattern, const Bindings& bindings) {
  std::vector<uint8_t> out;
  out.reserve(pattern.size_bytes);
  for (const Token& token : pattern.tokens) {
    switch (token.kind) {
      case Token::Kind::kBytes:
        out.insert(out.end(), token.bytes.begin(), token.bytes.end());
        break;
      case Token::Kind::kVariable: {
        auto it = bindings.find(token.name);
        if (it == bindings.end()) {
          return absl::FailedPreconditionError(
              fmt::format("`{}`: ${} is not bound", token.text, token.name));
        }
        if (!Fits(it->second, token.size)) {
          return absl::FailedPreconditionError(
              fmt::format("`{}`: ${} is {:#x}, which does not fit in {} bits", token.text,
                          token.name, it->second, 8 * token.size));
        }
        AppendLittleEndian(it->second, token.size, &out);
        break;
      }
      case Token::Kind::kAny:
        return absl::FailedPreconditionError(
            fmt::format("`{}`: cannot be written", token.text));  // ParseToken refuses it.
    }
  }
  return out;
}

MatchResult Match(const Pattern& pattern, absl::Span<const uint8_t> message,
                  const Bindings& bound) {
  MatchResult result;
  size_t offset = 0;
  for (size_t i = 0; i < pattern.tokens.size(); ++i) {
    const Token& token = pattern.tokens[i];
    const std::string where =
        fmt::format("{}, `{}` (token {})", Range(offset, token.size), token.text, i + 1);
    if (message.size() < offset + token.size) {
      result.mismatch =
          fmt::format("the message is {} bytes; the pattern needs {}: {} is past its end",
                      message.size(), pattern.size_bytes, where);
      result.captured.clear();  // A failed match binds nothing.
      return result;
    }
    const absl::Span<const uint8_t> got = message.subspan(offset, token.size);
    switch (token.kind) {
      case Token::Kind::kAny:
        break;
      case Token::Kind::kBytes:
        if (!std::equal(got.begin(), got.end(), token.bytes.begin(), token.bytes.end())) {
          result.mismatch =
              fmt::format("{}: expected {}, got {}", where, HexBytes(token.bytes), HexBytes(got));
          result.captured.clear();
          return result;
        }
        break;
      case Token::Kind::kVariable: {
        const uint64_t value = ReadLittleEndian(got);
        std::optional<uint64_t> known;
        if (auto it = bound.find(token.name); it != bound.end()) known = it->second;
        if (auto it = result.captured.find(token.name); it != result.captured.end()) {
          known = it->second;
        }
        if (!known.has_value()) {
          result.captured[token.name] = value;
        } else if (*known != value) {
          result.mismatch = fmt::format("{}: ${} is {:#x}, got {:#x} ({})", where, token.name,
                                        *known, value, HexBytes(got));
          result.captured.clear();
          return result;
        }
        break;
      }
    }
    offset += token.size;
  }
  result.matched = true;
  return result;
}

std::string HexBytes(absl::Span<const uint8_t> bytes, size_t max_bytes) {
  std::string out;
  const size_t shown = std::min(bytes.size(), max_bytes);
  out.reserve(3 * shown + 16);
  for (size_t i = 0; i < shown; ++i) {
    if (i > 0) out.push_back(' ');
    out += fmt::format("{:02x}", bytes[i]);
  }
  if (shown < bytes.size()) out += fmt::format(" ... ({} bytes)", bytes.size());
  return out;
}

}  // namespace cvmbus::paravisor::replay
