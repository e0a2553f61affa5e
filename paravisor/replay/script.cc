#include "paravisor/replay/script.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "base/format.h"

namespace cvmbus::paravisor::replay {
namespace {

constexpr size_t kMaxSourceShown = 160;

bool IsSpace(char c) { return c == ' ' || c == '\t'; }

std::vector<std::string_view> Tokenize(std::string_view line) {
  std::vector<std::string_view> tokens;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && IsSpace(line[i])) ++i;
    const size_t start = i;
    while (i < line.size() && !IsSpace(line[i])) ++i;
    if (i > start) tokens.push_back(line.substr(start, i - start));
  }
  return tokens;
}

std::string ShownSource(std::string_view line) {
  while (!line.empty() && IsSpace(line.front())) line.remove_prefix(1);
  while (!line.empty() && IsSpace(line.back())) line.remove_suffix(1);
  std::string out;
  for (size_t i = 0; i < line.size() && i < kMaxSourceShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    out += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c))
                                   : fmt::format("\\x{:02x}", c);
  }
  if (line.size() > kMaxSourceShown) out += "...";
  return out;
}

// Parses lines into steps, tracking which names earlier expects and untils bind.
class Parser {
 public:
  Parser(std::string_view file, const std::vector<std::string>& bound)
      : file_(file), bound_(bound.begin(), bound.end()) {}

  absl::StatusOr<Script> Parse(std::string_view text) {
    Script script;
    script.file = std::string(file_);
    int line_number = 0;
    while (!text.empty()) {
      ++line_number;
      const size_t end = text.find('\n');
      std::string_view line = text.substr(0, end);
      text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      line_ = line_number;
      if (line.size() > kMaxLineBytes) {
        return Error(
            fmt::format("the line is {} bytes; a line is at most {}", line.size(), kMaxLineBytes));
      }
      const std::vector<std::string_view> tokens = Tokenize(line);
      if (tokens.empty() || tokens[0].front() == '#') continue;
      if (script.steps.size() == kMaxSteps) {
        return Error(fmt::format("more than {} steps", kMaxSteps));
      }
      absl::StatusOr<Step> step = ParseStep(tokens);
      if (!step.ok()) return step.status();
      step->line = line_number;
      step->source = ShownSource(line);
      script.steps.push_back(*std::move(step));
    }
    return script;
  }

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(fmt::format("{}:{}: {}", file_, line_, what));
  }

  absl::StatusOr<Step> ParseStep(const std::vector<std::string_view>& tokens) {
    for (size_t i = 1; i < tokens.size(); ++i) {
      if (tokens[i].front() == '#') {
        return Error(fmt::format("`{}`: a comment takes a whole line (start the line with #)",
                                 Printable(tokens[i])));
      }
    }
    const std::string_view keyword = tokens[0];
    const std::vector<std::string_view> args(tokens.begin() + 1, tokens.end());
    Step step;
    if (keyword == "post") {
      step.kind = Step::Kind::kPost;
      return ParsePost(args, std::move(step));
    }
    if (keyword == "signal") {
      step.kind = Step::Kind::kSignal;
      if (args.size() != 1) return Error("signal takes one connection id: signal CONN");
      absl::Status status = ParseConnection(args[0], &step.connection);
      if (!status.ok()) return status;
      return step;
    }
    if (keyword == "expect" || keyword == "until") {
      step.kind = keyword == "expect" ? Step::Kind::kExpect : Step::Kind::kUntil;
      if (args.empty()) return Error(fmt::format("{} needs BYTES to match", keyword));
      absl::StatusOr<Pattern> pattern = ParsePattern(args, PatternUse::kMatch);
      if (!pattern.ok()) return Error(fmt::format("{}: {}", keyword, pattern.status().message()));
      step.bytes = *std::move(pattern);
      for (const Token& token : step.bytes.tokens) {
        if (token.kind == Token::Kind::kVariable) bound_.insert(token.name);
      }
      return step;
    }
    if (keyword == "quiet") {
      step.kind = Step::Kind::kQuiet;
      const std::optional<uint64_t> millis =
          args.size() == 1 ? ParseUnsigned(args[0]) : std::nullopt;
      if (!millis.has_value() || *millis > kMaxQuietMillis) {
        return Error(fmt::format("quiet takes one number of milliseconds, 0 to {}: quiet MILLIS",
                                 kMaxQuietMillis));
      }
      step.millis = *millis;
      return step;
    }
    if (keyword == "event") {
      step.kind = Step::Kind::kEvent;
      const std::optional<uint64_t> relid =
          args.size() == 1 ? ParseUnsigned(args[0]) : std::nullopt;
      if (!relid.has_value() || *relid > kMaxRelid) {
        return Error(fmt::format("event takes one channel id (an event flag), 0 to {}: event RELID",
                                 kMaxRelid));
      }
      step.relid = static_cast<uint32_t>(*relid);
      return step;
    }
    return Error(fmt::format("unknown step `{}` (post, signal, expect, until, quiet or event)",
                             Printable(keyword)));
  }

  absl::StatusOr<Step> ParsePost(std::vector<std::string_view> args, Step step) {
    if (args.empty()) return Error("post needs a connection id and BYTES: post CONN BYTES...");
    absl::Status connection = ParseConnection(args[0], &step.connection);
    if (!connection.ok()) return connection;
    args.erase(args.begin());
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i] != "->") continue;
      if (i + 2 != args.size()) {
        return Error("`->` takes one HV_STATUS and ends the line: post CONN BYTES... -> STATUS");
      }
      const std::optional<uint64_t> status = ParseUnsigned(args[i + 1]);
      if (!status.has_value()) {
        return Error(
            fmt::format("`{}`: an HV_STATUS is decimal or 0x-hex", Printable(args[i + 1])));
      }
      step.status = *status;
      args.resize(i);
      break;
    }
    if (args.empty()) return Error("post needs BYTES after the connection id");
    absl::StatusOr<Pattern> pattern = ParsePattern(args, PatternUse::kPost);
    if (!pattern.ok()) return Error(fmt::format("post: {}", pattern.status().message()));
    for (const Token& token : pattern->tokens) {
      if (token.kind == Token::Kind::kVariable && !bound_.contains(token.name)) {
        return Error(fmt::format("post: `{}`: ${} is not bound by an earlier expect or until",
                                 token.text, token.name));
      }
    }
    step.bytes = *std::move(pattern);
    return step;
  }

  absl::Status ParseConnection(std::string_view text, Operand* out) {
    if (text.rfind('$', 0) == 0) {
      const std::string_view name = text.substr(1);
      if (!IsValidName(name)) {
        return Error(
            fmt::format("`{}`: a connection id is a number or $name (a name without a width)",
                        Printable(text)));
      }
      if (!bound_.contains(name)) {
        return Error(fmt::format("`{}`: ${} is not bound by an earlier expect or until",
                                 Printable(text), name));
      }
      out->name = std::string(name);
      return absl::OkStatus();
    }
    const std::optional<uint64_t> number = ParseUnsigned(text);
    if (!number.has_value() || *number > 0xffffffff) {
      return Error(fmt::format(
          "`{}`: a connection id is a 32-bit number (decimal or 0x-hex) or a bound $name",
          Printable(text)));
    }
    out->number = static_cast<uint32_t>(*number);
    return absl::OkStatus();
  }

  const std::string_view file_;
  int line_ = 0;
  std::set<std::string, std::less<>> bound_;
};

}  // namespace

std::string_view StepKindName(Step::Kind kind) {
  switch (kind) {
    case Step::Kind::kPost:
      return "post";
    case Step::Kind::kSignal:
      return "signal";
    case Step::Kind::kExpect:
      return "expect";
    case Step::Kind::kUntil:
      return "until";
    case Step::Kind::kQuiet:
      return "quiet";
    case Step::Kind::kEvent:
      return "event";
  }
  return "?";
}

absl::StatusOr<Script> ParseScript(std::string_view file, std::string_view text,
                                   const std::vector<std::string>& bound) {
  if (text.size() > kMaxScriptBytes) {
    return absl::InvalidArgumentError(
        fmt::format("{}: {} bytes; a script is at most {}", file, text.size(), kMaxScriptBytes));
  }
  return Parser(file, bound).Parse(text);
}

absl::StatusOr<Script> LoadScript(const std::string& path) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) {
    return absl::NotFoundError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(info.st_mode)) {
    return absl::NotFoundError(fmt::format("{}: not a regular file", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  std::string text(kMaxScriptBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) {
    return absl::NotFoundError(fmt::format("{}: cannot read: {}", path, std::strerror(errno)));
  }
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxScriptBytes) {
    return absl::InvalidArgumentError(
        fmt::format("{}: larger than {} bytes, the most a script may be", path, kMaxScriptBytes));
  }
  return ParseScript(path, text);
}

}  // namespace cvmbus::paravisor::replay
