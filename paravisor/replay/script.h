// A replay script (.vmr, shared/docs/replay-format.md) parsed into typed steps, each with its
// line number. One line is one step:
//
//   post CONN BYTES... [-> STATUS]   HvPostMessage; the HV_STATUS must be STATUS (default 0)
//   signal CONN                      HvSignalEvent (fast); must succeed
//   expect BYTES...                  the next SINT 2 message matches BYTES as a prefix (2 s)
//   until BYTES...                   messages are discarded until one matches (2 s)
//   quiet MILLIS                     no message arrives within MILLIS ms
//   event RELID                      the server sets event flag RELID (2 s)
//
// Blank lines and lines whose first token starts with `#` are ignored; tokens are separated by
// spaces (or tabs). CONN is decimal, 0x-hex or a `$name` bound by an earlier expect or until.
//
// Scripts are untrusted input: sizes are bounded (below), and every malformed line is an
// InvalidArgument error "FILE:LINE: what is wrong", never a crash. Names are checked here too:
// a `$name` a post writes (or a CONN names) must be bound by an earlier expect or until.
#ifndef CVMBUS_PARAVISOR_REPLAY_SCRIPT_H_
#define CVMBUS_PARAVISOR_REPLAY_SCRIPT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "paravisor/replay/pattern.h"

namespace cvmbus::paravisor::replay {

inline constexpr size_t kMaxScriptBytes = size_t{1} << 20;
inline constexpr size_t kMaxLineBytes = 4096;
inline constexpr size_t kMaxSteps = 10000;
inline constexpr uint64_t kMaxQuietMillis = 60000;
inline constexpr uint32_t kMaxRelid = 2047;  // The last SIEFP flag of a SINT (2048 flags).

// A connection id as written: a number, or a variable bound at run time.
struct Operand {
  std::optional<uint32_t> number;
  std::string name;  // Without the `$`; set when `number` is not.
};

struct Step {
  enum class Kind { kPost, kSignal, kExpect, kUntil, kQuiet, kEvent };
  Kind kind = Kind::kPost;
  int line = 0;         // 1-based.
  std::string source;   // The line as written (trimmed, printable, shortened if long).
  Operand connection;   // kPost, kSignal.
  Pattern bytes;        // kPost (PatternUse::kPost), kExpect and kUntil (kMatch).
  uint64_t status = 0;  // kPost: the HV_STATUS the hypercall must return.
  uint64_t millis = 0;  // kQuiet.
  uint32_t relid = 0;   // kEvent.
};

struct Script {
  std::string file;  // As given to ParseScript; prefixes every message.
  std::vector<Step> steps;
};

std::string_view StepKindName(Step::Kind kind);

// Parses a whole script. `file` names it in errors. `bound` names variables bound before the
// script starts (for a test that runs a script in parts on one Runner); a script file has none.
absl::StatusOr<Script> ParseScript(std::string_view file, std::string_view text,
                                   const std::vector<std::string>& bound = {});

// Reads `path` (at most kMaxScriptBytes) and parses it. kNotFound if it cannot be read,
// kInvalidArgument if it is too large or malformed.
absl::StatusOr<Script> LoadScript(const std::string& path);

}  // namespace cvmbus::paravisor::replay

#endif  // CVMBUS_PARAVISOR_REPLAY_SCRIPT_H_
