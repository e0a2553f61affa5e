#include "base/log.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>

namespace cvmbus::log {
namespace {

std::atomic<int> min_level{static_cast<int>(Level::kInfo)};

struct SinkSlot {
  Mutex mu;
  Sink sink ABSL_GUARDED_BY(mu);
};

SinkSlot& Slot() {
  static SinkSlot* slot = new SinkSlot();  // Never destroyed: threads may log at exit.
  return *slot;
}

char LevelLetter(Level level) {
  switch (level) {
    case Level::kDebug:
      return 'D';
    case Level::kInfo:
      return 'I';
    case Level::kWarning:
      return 'W';
    case Level::kError:
      return 'E';
  }
  return '?';
}

void Emit(const Record& record) {
  SinkSlot& slot = Slot();
  MutexLock lock(&slot.mu);
  if (slot.sink) {
    slot.sink(record);
    return;
  }
  const std::string line = FormatRecord(record) + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

std::string_view LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarning:
      return "warning";
    case Level::kError:
      return "error";
  }
  return "unknown";
}

std::optional<Level> ParseLevel(std::string_view name) {
  for (Level level : {Level::kDebug, Level::kInfo, Level::kWarning, Level::kError}) {
    if (name == LevelName(level)) return level;
  }
  return std::nullopt;
}

void SetMinLevel(Level level) { min_level.store(static_cast<int>(level)); }
Level MinLevel() { return static_cast<Level>(min_level.load(std::memory_order_relaxed)); }

void SetSink(Sink sink) {
  SinkSlot& slot = Slot();
  MutexLock lock(&slot.mu);
  slot.sink = std::move(sink);
}

std::string FormatRecord(const Record& record) {
  return fmt::format("{} {} {}: {}",
                     absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", record.time, absl::UTCTimeZone()),
                     LevelLetter(record.level), record.component, record.message);
}

bool RateLimit::Admit(absl::Time now, uint64_t* suppressed) {
  MutexLock lock(&mu_);
  *suppressed = 0;
  if (last_ != absl::InfinitePast() && now > last_ && per_ > absl::ZeroDuration()) {
    tokens_ = std::min<double>(burst_, tokens_ + absl::FDivDuration(now - last_, per_));
  }
  if (now > last_) last_ = now;
  if (tokens_ < 1.0) {
    ++pending_suppressed_;
    ++total_suppressed_;
    return false;
  }
  tokens_ -= 1.0;
  *suppressed = pending_suppressed_;
  pending_suppressed_ = 0;
  return true;
}

uint64_t RateLimit::total_suppressed() const {
  MutexLock lock(&mu_);
  return total_suppressed_;
}

bool Logger::Write(Level level, std::string_view message) const {
  if (!Enabled(level)) return false;
  const absl::Time now = absl::Now();
  uint64_t suppressed = 0;
  if (limit_ != nullptr && !limit_->Admit(now, &suppressed)) return false;
  if (suppressed > 0) {
    const std::string note =
        fmt::format("suppressed {} line{} (rate limit)", suppressed, suppressed == 1 ? "" : "s");
    Emit(Record{.time = now, .level = Level::kWarning, .component = component_, .message = note});
  }
  Emit(Record{.time = now, .level = level, .component = component_, .message = message});
  return true;
}

}  // namespace cvmbus::log
