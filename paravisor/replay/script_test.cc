#include "paravisor/replay/script.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "base/testing/status_testing.h"

namespace cvmbus::paravisor::replay {
namespace {

// The error ParseScript gives for `text` (as t.vmr), or "" if it parsed.
std::string Error(std::string_view text) {
  absl::StatusOr<Script> script = ParseScript("t.vmr", text);
  if (script.ok()) return "";
  EXPECT_TRUE(absl::IsInvalidArgument(script.status())) << script.status();
  return std::string(script.status().message());
}

Step OnlyStep(std::string_view text) {
  absl::StatusOr<Script> script = ParseScript("t.vmr", text);
  EXPECT_OK(script.status());
  if (!script.ok() || script->steps.size() != 1) {
    ADD_FAILURE() << "expected one step";
    return Step{};
  }
  return script->steps[0];
}

// --- Step kinds --------------------------------------------------------------------------------

TEST(ScriptTest, BlankLinesAndCommentsAreIgnored) {
  absl::StatusOr<Script> script =
      ParseScript("t.vmr", "\n# a comment\n   # indented\n\t\n#post x\n\r\n");
  ASSERT_OK(script.status());
  EXPECT_TRUE(script->steps.empty());
  EXPECT_EQ(script->file, "t.vmr");
}

TEST(ScriptTest, Post) {
  const Step step = OnlyStep("# header\n\npost 4 u32:14 u32:0\n");
  EXPECT_EQ(step.kind, Step::Kind::kPost);
  EXPECT_EQ(step.line, 3);
  EXPECT_EQ(step.source, "post 4 u32:14 u32:0");
  EXPECT_EQ(step.connection.number, 4u);
  EXPECT_EQ(step.status, 0u);  // Success unless `->` says otherwise.
  ASSERT_EQ(step.bytes.tokens.size(), 2u);
  EXPECT_EQ(step.bytes.size_bytes, 8u);
}

TEST(ScriptTest, PostWithStatus) {
  const Step step = OnlyStep("post 0x5 u32:14 -> 0x12");
  EXPECT_EQ(step.connection.number, 5u);
  EXPECT_EQ(step.status, 0x12u);
  EXPECT_EQ(step.bytes.size_bytes, 4u);
  EXPECT_EQ(OnlyStep("post 4 zero*241 -> 5").status, 5u);
}

TEST(ScriptTest, PostToABoundConnection) {
  absl::StatusOr<Script> script =
      ParseScript("t.vmr", "expect u32:15 ??*4 $conn:u32\npost $conn u32:3 u32:0\n");
  ASSERT_OK(script.status());
  ASSERT_EQ(script->steps.size(), 2u);
  EXPECT_EQ(script->steps[1].connection.number, std::nullopt);
  EXPECT_EQ(script->steps[1].connection.name, "conn");
}

TEST(ScriptTest, PostWritesABoundVariable) {
  absl::StatusOr<Script> script =
      ParseScript("t.vmr", "until u32:1 ??*180 $relid:u32\npost 1 u32:7 u32:0 $relid:u32\n");
  ASSERT_OK(script.status());
  EXPECT_EQ(script->steps[1].bytes.tokens[2].kind, Token::Kind::kVariable);
}

TEST(ScriptTest, NamesBoundBeforeTheScript) {
  absl::StatusOr<Script> script = ParseScript("part.vmr", "post $conn u32:3 u32:0\n", {"conn"});
  ASSERT_OK(script.status());
  EXPECT_EQ(script->steps[0].connection.name, "conn");
}

TEST(ScriptTest, Signal) {
  const Step step = OnlyStep("signal 0x10001");
  EXPECT_EQ(step.kind, Step::Kind::kSignal);
  EXPECT_EQ(step.connection.number, 0x10001u);
}

TEST(ScriptTest, Expect) {
  const Step step = OnlyStep("expect u32:15 u32:0 u8:1 ?? ??*2 $conn:u32");
  EXPECT_EQ(step.kind, Step::Kind::kExpect);
  EXPECT_EQ(step.bytes.size_bytes, 16u);
  EXPECT_EQ(step.bytes.tokens[5].name, "conn");
}

TEST(ScriptTest, Until) {
  const Step step = OnlyStep("until u32:4");
  EXPECT_EQ(step.kind, Step::Kind::kUntil);
  EXPECT_EQ(step.bytes.size_bytes, 4u);
}

TEST(ScriptTest, Quiet) {
  const Step step = OnlyStep("quiet 200");
  EXPECT_EQ(step.kind, Step::Kind::kQuiet);
  EXPECT_EQ(step.millis, 200u);
  EXPECT_EQ(OnlyStep("quiet 0").millis, 0u);
  EXPECT_EQ(OnlyStep("quiet 60000").millis, 60000u);
}

TEST(ScriptTest, Event) {
  const Step step = OnlyStep("event 1");
  EXPECT_EQ(step.kind, Step::Kind::kEvent);
  EXPECT_EQ(step.relid, 1u);
  EXPECT_EQ(OnlyStep("event 0x7ff").relid, 2047u);
}

TEST(ScriptTest, TabsSeparateTokensAndCrLfEndsLines) {
  absl::StatusOr<Script> script = ParseScript("t.vmr", "post\t4  u32:3\r\nquiet 5\r\n");
  ASSERT_OK(script.status());
  ASSERT_EQ(script->steps.size(), 2u);
  EXPECT_EQ(script->steps[0].bytes.size_bytes, 4u);
  EXPECT_EQ(script->steps[1].line, 2);
}

TEST(ScriptTest, LongSourceIsShortenedForPrinting) {
  std::string line = "post 4";
  for (int i = 0; i < 100; ++i) line += " u8:0";
  const Step step = OnlyStep(line);
  EXPECT_EQ(step.bytes.size_bytes, 100u);
  EXPECT_LT(step.source.size(), 200u);
}

// --- Malformed scripts: one test per error -----------------------------------------------------

TEST(ScriptErrorTest, UnknownStep) {
  EXPECT_EQ(Error("\npsot 4 u32:1\n"),
            "t.vmr:2: unknown step `psot` (post, signal, expect, until, quiet or event)");
}

TEST(ScriptErrorTest, CommentAfterTokens) {
  EXPECT_EQ(Error("post 4 u32:3 # REQUESTOFFERS"),
            "t.vmr:1: `#`: a comment takes a whole line (start the line with #)");
}

TEST(ScriptErrorTest, LineTooLong) {
  EXPECT_EQ(Error("quiet 1\n" + std::string(kMaxLineBytes + 1, ' ')),
            "t.vmr:2: the line is 4097 bytes; a line is at most 4096");
}

TEST(ScriptErrorTest, TooManySteps) {
  std::string text;
  for (size_t i = 0; i <= kMaxSteps; ++i) text += "quiet 0\n";
  EXPECT_EQ(Error(text), "t.vmr:10001: more than 10000 steps");
}

TEST(ScriptErrorTest, ScriptTooLarge) {
  absl::StatusOr<Script> script = ParseScript("big.vmr", std::string(kMaxScriptBytes + 1, '\n'));
  EXPECT_TRUE(absl::IsInvalidArgument(script.status()));
  EXPECT_EQ(script.status().message(), "big.vmr: 1048577 bytes; a script is at most 1048576");
}

TEST(ScriptErrorTest, PostWithoutConnection) {
  EXPECT_EQ(Error("post"), "t.vmr:1: post needs a connection id and BYTES: post CONN BYTES...");
}

TEST(ScriptErrorTest, PostWithoutBytes) {
  EXPECT_EQ(Error("post 4"), "t.vmr:1: post needs BYTES after the connection id");
  EXPECT_EQ(Error("post 4 -> 0x12"), "t.vmr:1: post needs BYTES after the connection id");
}

TEST(ScriptErrorTest, BadConnectionId) {
  const std::string why =
      ": a connection id is a 32-bit number (decimal or 0x-hex) or a bound $name";
  EXPECT_EQ(Error("post four u32:1"), "t.vmr:1: `four`" + why);
  EXPECT_EQ(Error("post 0x100000000 u32:1"), "t.vmr:1: `0x100000000`" + why);
  EXPECT_EQ(Error("signal -1"), "t.vmr:1: `-1`" + why);
}

TEST(ScriptErrorTest, ConnectionVariableWithWidth) {
  EXPECT_EQ(Error("expect $conn:u32\npost $conn:u32 u32:3"),
            "t.vmr:2: `$conn:u32`: a connection id is a number or $name (a name without a width)");
}

TEST(ScriptErrorTest, UnboundConnection) {
  EXPECT_EQ(Error("post $conn u32:3"),
            "t.vmr:1: `$conn`: $conn is not bound by an earlier expect or until");
  // Bound later does not count.
  EXPECT_EQ(Error("signal $c\nexpect $c:u32"),
            "t.vmr:1: `$c`: $c is not bound by an earlier expect or until");
}

TEST(ScriptErrorTest, UnboundVariableInPost) {
  EXPECT_EQ(Error("post 4 u32:7 u32:0 $relid:u32"),
            "t.vmr:1: post: `$relid:u32`: $relid is not bound by an earlier expect or until");
}

TEST(ScriptErrorTest, ArrowNotLast) {
  const std::string why =
      "t.vmr:1: `->` takes one HV_STATUS and ends the line: post CONN BYTES... -> STATUS";
  EXPECT_EQ(Error("post 4 u32:1 -> 0x12 u32:2"), why);
  EXPECT_EQ(Error("post 4 u32:1 ->"), why);
}

TEST(ScriptErrorTest, BadStatus) {
  EXPECT_EQ(Error("post 4 u32:1 -> success"),
            "t.vmr:1: `success`: an HV_STATUS is decimal or 0x-hex");
}

TEST(ScriptErrorTest, ArrowOutsidePost) {
  EXPECT_EQ(Error("signal 4 -> 0x12"), "t.vmr:1: signal takes one connection id: signal CONN");
  EXPECT_NE(Error("expect u32:1 -> 0"), "");
}

TEST(ScriptErrorTest, BadBytesInPost) {
  EXPECT_EQ(Error("post 4 u32:14 ??"),
            "t.vmr:1: post: `??`: `??` matches received bytes: only in expect and until");
  EXPECT_EQ(Error("post 4 u8:300"), "t.vmr:1: post: `u8:300`: 0x12c does not fit in 8 bits");
}

TEST(ScriptErrorTest, BadBytesInExpect) {
  EXPECT_EQ(Error("expect zero*4"),
            "t.vmr:1: expect: `zero*4`: `zero*N` writes bytes: only in post (match zeros with "
            "u8:0 ...)");
  EXPECT_EQ(Error("until u32:4 junk"),
            "t.vmr:1: until: `junk`: not a BYTES token (two hex digits, u8/u16/u32/u64:VALUE, "
            "guid:..., ??, ??*N, zero*N or $name:uN)");
}

TEST(ScriptErrorTest, PatternTooLong) {
  EXPECT_EQ(Error("post 4 zero*4096 u8:1"), "t.vmr:1: post: the bytes run past 4096 at `u8:1`");
}

TEST(ScriptErrorTest, ExpectWithoutBytes) {
  EXPECT_EQ(Error("expect"), "t.vmr:1: expect needs BYTES to match");
  EXPECT_EQ(Error("until "), "t.vmr:1: until needs BYTES to match");
}

TEST(ScriptErrorTest, SignalArguments) {
  EXPECT_EQ(Error("signal"), "t.vmr:1: signal takes one connection id: signal CONN");
  EXPECT_EQ(Error("signal 1 2"), "t.vmr:1: signal takes one connection id: signal CONN");
}

TEST(ScriptErrorTest, BadQuiet) {
  const std::string why =
      "t.vmr:1: quiet takes one number of milliseconds, 0 to 60000: quiet MILLIS";
  EXPECT_EQ(Error("quiet"), why);
  EXPECT_EQ(Error("quiet 1s"), why);
  EXPECT_EQ(Error("quiet 60001"), why);
  EXPECT_EQ(Error("quiet 1 2"), why);
}

TEST(ScriptErrorTest, BadEvent) {
  const std::string why =
      "t.vmr:1: event takes one channel id (an event flag), 0 to 2047: event RELID";
  EXPECT_EQ(Error("event"), why);
  EXPECT_EQ(Error("event 2048"), why);
  EXPECT_EQ(Error("event $relid"), why);
}

TEST(ScriptErrorTest, BinaryGarbageIsAnErrorNotACrash) {
  constexpr char kGarbage[] = "post \x01\xff\x00 u32:1";
  const std::string garbage(kGarbage, sizeof(kGarbage) - 1);
  EXPECT_EQ(Error(garbage),
            "t.vmr:1: `\\x01\\xff\\x00`: a connection id is a 32-bit number "
            "(decimal or 0x-hex) or a bound $name");
}

TEST(ScriptErrorTest, FirstErrorIsReported) {
  EXPECT_EQ(Error("quiet 1\nbogus\nalso bogus"),
            "t.vmr:2: unknown step `bogus` (post, signal, expect, until, quiet or event)");
}

// --- Files -------------------------------------------------------------------------------------

TEST(LoadScriptTest, ReadsAFile) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/load.vmr";
  {
    std::ofstream out(path);
    out << "# ok\npost 4 u32:3 u32:0\nuntil u32:4\n";
  }
  absl::StatusOr<Script> script = LoadScript(path);
  ASSERT_OK(script.status());
  EXPECT_EQ(script->file, path);
  EXPECT_EQ(script->steps.size(), 2u);
}

TEST(LoadScriptTest, MissingFile) {
  absl::StatusOr<Script> script = LoadScript("/nonexistent/x.vmr");
  EXPECT_TRUE(absl::IsNotFound(script.status()));
  EXPECT_EQ(script.status().message(),
            "/nonexistent/x.vmr: cannot open: No such file or directory");
}

TEST(LoadScriptTest, Directory) {
  absl::StatusOr<Script> script = LoadScript(getenv("TEST_TMPDIR"));
  EXPECT_TRUE(absl::IsNotFound(script.status()));
}

TEST(LoadScriptTest, TooLarge) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/big.vmr";
  {
    std::ofstream out(path);
    out << std::string(kMaxScriptBytes + 10, '#');
  }
  absl::StatusOr<Script> script = LoadScript(path);
  EXPECT_TRUE(absl::IsInvalidArgument(script.status()));
  EXPECT_EQ(script.status().message(),
            path + ": larger than 1048576 bytes, the most a script may be");
}

TEST(LoadScriptTest, MalformedFileNamesFileAndLine) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/bad.vmr";
  {
    std::ofstream out(path);
    out << "post 4 u32:3\n\nexpect u32:\n";
  }
  absl::StatusOr<Script> script = LoadScript(path);
  EXPECT_EQ(script.status().message(),
            path + ":3: expect: `u32:`: the value must be decimal or 0x-hex, at most 2^64 - 1");
}

}  // namespace
}  // namespace cvmbus::paravisor::replay
