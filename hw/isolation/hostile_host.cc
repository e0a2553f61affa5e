#include "hw/isolation/hostile_host.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <utility>

#include "base/format.h"

namespace cvmbus::hw::isolation {
namespace {

uint64_t PickSeed(uint64_t requested) {
  if (requested != 0) return requested;
  std::random_device device;
  const uint64_t seed = (uint64_t{device()} << 32) | device();
  return seed == 0 ? 1 : seed;
}

}  // namespace

HostileHost::HostileHost(guestmem::GuestMemory untrusted, HostileHostOptions options)
    : untrusted_(std::move(untrusted)),
      options_(std::move(options)),
      seed_(PickSeed(options_.seed)) {}

HostileHost::~HostileHost() { Stop(); }

absl::Status HostileHost::Validate() const {
  if (!untrusted_.has_backing() || untrusted_.view() != guestmem::View::kUntrusted) {
    return absl::InvalidArgumentError("hostile host: needs an untrusted-view guest memory");
  }
  if (options_.random_ranges.empty() && options_.word_attacks.empty() && options_.flips.empty()) {
    return absl::InvalidArgumentError("hostile host: no targets");
  }
  if (options_.max_random_bytes == 0) {
    return absl::InvalidArgumentError("hostile host: max_random_bytes is 0");
  }
  for (const GpaRange& range : options_.random_ranges) {
    if (range.len == 0 || range.gpa + range.len < range.gpa) {
      return absl::InvalidArgumentError(
          fmt::format("hostile host: bad range [{:#x}, +{:#x})", range.gpa, range.len));
    }
  }
  for (const WordAttack& attack : options_.word_attacks) {
    const bool bad_value =
        attack.kind == WordAttack::Kind::kOutOfRange
            ? attack.bound == 0
            : attack.alignment < 2 || (attack.alignment & (attack.alignment - 1)) != 0;
    if (attack.gpa % 4 != 0 || bad_value) {
      return absl::InvalidArgumentError(
          fmt::format("hostile host: bad word attack at {:#x}", attack.gpa));
    }
  }
  for (const FlipTarget& flip : options_.flips) {
    if (flip.gpa % 4 != 0) {
      return absl::InvalidArgumentError(
          fmt::format("hostile host: flip target {:#x} is not 4-byte aligned", flip.gpa));
    }
  }
  return absl::OkStatus();
}

absl::Status HostileHost::Start() {
  if (thread_.joinable() || finished()) {
    return absl::FailedPreconditionError("hostile host: already started");
  }
  if (absl::Status status = Validate(); !status.ok()) return status;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

HostileHostReport HostileHost::Stop() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
  return HostileHostReport{writes(), refused(), seed_};
}

void HostileHost::Run() {
  std::mt19937_64 rng(seed_);
  const absl::Time deadline = options_.max_duration == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + options_.max_duration;
  const size_t range_count = options_.random_ranges.size();
  const size_t word_count = options_.word_attacks.size();
  const size_t targets = range_count + word_count + options_.flips.size();
  std::vector<bool> flipped(options_.flips.size(), false);
  std::vector<uint8_t> bytes(options_.max_random_bytes);
  for (uint64_t attempts = 0; !stop_.load(std::memory_order_relaxed); ++attempts) {
    if (options_.max_writes != 0 && attempts >= options_.max_writes) break;
    if (absl::Now() >= deadline) break;
    const size_t pick = static_cast<size_t>(rng() % targets);
    absl::Status status;
    if (pick < range_count) {
      const GpaRange& range = options_.random_ranges[pick];
      const uint64_t offset = rng() % range.len;
      const uint64_t len = 1 + rng() % std::min<uint64_t>(bytes.size(), range.len - offset);
      for (uint64_t i = 0; i < len; ++i) bytes[i] = static_cast<uint8_t>(rng());
      status = untrusted_.Write(range.gpa + offset, absl::Span<const uint8_t>(bytes.data(), len));
    } else if (pick < range_count + word_count) {
      const WordAttack& attack = options_.word_attacks[pick - range_count];
      const uint32_t random = static_cast<uint32_t>(rng());
      uint32_t value;
      if (attack.kind == WordAttack::Kind::kOutOfRange) {
        const uint64_t span = (uint64_t{1} << 32) - attack.bound;
        value = static_cast<uint32_t>(attack.bound + random % span);
      } else {
        const uint32_t low = 1 + static_cast<uint32_t>(rng() % (attack.alignment - 1));
        value = (random & ~(attack.alignment - 1)) | low;
      }
      status = untrusted_.WritePlain<uint32_t>(attack.gpa, value);
    } else {
      const size_t index = pick - range_count - word_count;
      const FlipTarget& flip = options_.flips[index];
      flipped[index] = !flipped[index];
      status = untrusted_.WritePlain<uint32_t>(flip.gpa, flipped[index] ? flip.second : flip.first);
    }
    (status.ok() ? writes_ : refused_).fetch_add(1, std::memory_order_relaxed);
  }
  finished_.store(true, std::memory_order_release);
}

}  // namespace cvmbus::hw::isolation
