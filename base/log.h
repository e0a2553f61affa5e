// One logging facility for cvmbus: levels, one process-wide sink, and rate limits on every
// line a guest or a host can make us write.
//
//   static log::RateLimit limit{.burst = 20, .per = absl::Seconds(1)};
//   log::Logger server_log("vmbus server", &limit);
//   server_log.Warning(fmt::format("channel {}: bad OPENCHANNEL", relid));
//
// A Logger names its component and may carry a RateLimit shared by all its lines: `burst`
// lines pass at once, then one more per `per` on average (a token bucket); a line refused is
// counted, and the next line that passes is preceded by one "suppressed N lines" line, so the
// log says how much it left out. Without a limit every line passes (use that only for lines
// we make ourselves: start-up, shutdown).
//
// The sink defaults to stderr, one line per record:
//   2026-12-03T09:01:02.123456Z W vmbus server: channel 7: bad OPENCHANNEL
// The minimum level (SetMinLevel, default kInfo) is checked before a line is formatted or
// counted against its limit. Lines below it cost one atomic load.
//
// Threads: all of it is thread-safe. A sink is called with the facility's lock held, one
// record at a time, so lines never interleave; a sink must not log.
#ifndef CVMBUS_BASE_LOG_H_
#define CVMBUS_BASE_LOG_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/mutex.h"

namespace cvmbus::log {

enum class Level : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning", "error" (what --log_level takes), and back.
std::string_view LevelName(Level level);
std::optional<Level> ParseLevel(std::string_view name);

struct Record {
  absl::Time time;
  Level level;
  std::string_view component;
  std::string_view message;
};
using Sink = std::function<void(const Record&)>;

// Process-wide settings. SetSink(nullptr) restores stderr.
void SetMinLevel(Level level);
Level MinLevel();
void SetSink(Sink sink);
// The line the stderr sink writes for `record` (without the newline).
std::string FormatRecord(const Record& record);

// A token bucket: `burst` lines at once, refilled at one line per `per`. Thread-safe; shared
// by the Loggers (and call sites) it limits.
class RateLimit {
 public:
  RateLimit(uint32_t burst, absl::Duration per) : burst_(burst), per_(per), tokens_(burst) {}
  RateLimit(const RateLimit&) = delete;
  RateLimit& operator=(const RateLimit&) = delete;

  // True if a line may pass at `now`. When it may and lines were refused since the last one
  // that passed, *suppressed is set to how many (and reset); otherwise *suppressed is 0.
  bool Admit(absl::Time now, uint64_t* suppressed);
  // Lines refused over this limit's life.
  uint64_t total_suppressed() const;

 private:
  const uint32_t burst_;
  const absl::Duration per_;
  mutable Mutex mu_;
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t pending_suppressed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t total_suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

class Logger {
 public:
  // `limit` (may be null: no limit) must outlive the Logger.
  explicit Logger(std::string component, RateLimit* limit = nullptr)
      : component_(std::move(component)), limit_(limit) {}

  bool Enabled(Level level) const { return level >= MinLevel(); }
  // Writes `message` at `level` unless the level is off or the limit refuses it. Returns
  // whether it was written.
  bool Write(Level level, std::string_view message) const;
  bool Debug(std::string_view message) const { return Write(Level::kDebug, message); }
  bool Info(std::string_view message) const { return Write(Level::kInfo, message); }
  bool Warning(std::string_view message) const { return Write(Level::kWarning, message); }
  bool Error(std::string_view message) const { return Write(Level::kError, message); }

  const std::string& component() const { return component_; }

 private:
  std::string component_;
  RateLimit* limit_;
};

}  // namespace cvmbus::log

#endif  // CVMBUS_BASE_LOG_H_
