// BYTES: the byte patterns of replay scripts (shared/docs/replay-format.md, "BYTES"). A pattern
// is a list of tokens, each standing for a fixed number of bytes:
//
//   0f  a0            one byte each (two hex digits)
//   u8:V  u16:V  u32:V  u64:V
//                     a little-endian integer; V decimal or 0x-hex, and it must fit
//   guid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
//                     16 bytes in guid_t order (the first three fields little-endian)
//   ??  ??*N          any byte, any N bytes                      (expect and until only)
//   zero*N            N zero bytes                               (post only)
//   $name:u32         (also :u8 :u16 :u64) matching: captures that many bytes little-endian
//                     into `name`, or, when `name` is bound, must equal it; post: writes the
//                     bound value, which must fit
//
// `post` encodes a pattern into a payload; `expect` and `until` match one against a received
// message as a prefix (a longer message still matches, a shorter one does not).
//
// Script text is untrusted input: every token is bounded (kMaxPatternBytes in all), every
// error names the token, and nothing here can crash on any input.
#ifndef CVMBUS_PARAVISOR_REPLAY_PATTERN_H_
#define CVMBUS_PARAVISOR_REPLAY_PATTERN_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace cvmbus::paravisor::replay {

// The most bytes one pattern may stand for. A SynIC message is at most 240 bytes; a post may
// go past that on purpose (the hypercall's answer to a bad payload size is worth testing).
inline constexpr size_t kMaxPatternBytes = 4096;
// Names of captures: [A-Za-z_][A-Za-z0-9_]*, at most this long.
inline constexpr size_t kMaxNameLength = 64;

// Where a pattern is used.
enum class PatternUse {
  kPost,   // Encoded into a payload.
  kMatch,  // Matched against a received message (expect, until).
};

// Values bound by captures, by name (without the `$`).
using Bindings = std::map<std::string, uint64_t, std::less<>>;

struct Token {
  enum class Kind {
    kBytes,     // Literal bytes: `0f`, `uN:V`, `guid:...`, `zero*N`.
    kAny,       // `??`, `??*N`.
    kVariable,  // `$name:uN`.
  };
  Kind kind = Kind::kBytes;
  std::string text;            // As written, for messages.
  size_t size = 0;             // The bytes this token stands for (>= 1).
  std::vector<uint8_t> bytes;  // kBytes: exactly `size` bytes.
  std::string name;            // kVariable.
};

struct Pattern {
  std::vector<Token> tokens;
  size_t size_bytes = 0;  // The sum of the tokens' sizes.
};

// A VALUE: decimal digits or 0x followed by hex digits, at most 2^64 - 1; nullopt otherwise.
std::optional<uint64_t> ParseUnsigned(std::string_view text);

// True for a valid capture name (without the `$`).
bool IsValidName(std::string_view name);

// `text` made safe to print: at most 48 characters, non-printable bytes as \xNN.
std::string Printable(std::string_view text);

// One token. kInvalidArgument, naming the token, for anything malformed or not allowed in
// `use`.
absl::StatusOr<Token> ParseToken(std::string_view text, PatternUse use);

// A whole pattern; kInvalidArgument for the first bad token, or past kMaxPatternBytes.
absl::StatusOr<Pattern> ParsePattern(absl::Span<const std::string_view> tokens, PatternUse use);

// The payload a post pattern stands for. kFailedPrecondition for a `$name` that is unbound or
// whose value does not fit its width.
absl::StatusOr<std::vector<uint8_t>> Encode(const Pattern& pattern, const Bindings& bindings);

struct MatchResult {
  bool matched = false;
  Bindings captured;     // matched: the names this match bound (not already in `bound`).
  std::string mismatch;  // !matched: where and how the message differs.
};

// Matches `message` against `pattern` as a prefix. A `$name` already in `bound` (or captured
// earlier in the same pattern) must equal its value; otherwise it is captured.
MatchResult Match(const Pattern& pattern, absl::Span<const uint8_t> message, const Bindings& bound);

// "0f 00 00 00 ..." (at most `max_bytes` bytes, then "... (N bytes)").
std::string HexBytes(absl::Span<const uint8_t> bytes, size_t max_bytes = 256);

}  // namespace cvmbus::paravisor::replay

#endif  // CVMBUS_PARAVISOR_REPLAY_PATTERN_H_
