#include "guestmem/memory_backing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "guestmem/access_gate.h"
#include "guestmem/errors.h"

namespace cvmbus::guestmem {
namespace {

absl::Status SystemError(const std::string& name, std::string_view what, int error) {
  return MakeError(ErrorKind::kSystem,
                   fmt::format("guestmem '{}': {}: {}", name, what, std::strerror(error)));
}

absl::Status ValidateLayout(const MemoryOptions& options) {
  if (options.regions.empty()) {
    return MakeError(ErrorKind::kInvalidArgument,
                     fmt::format("guestmem '{}': the layout has no regions", options.name));
  }
  uint64_t previous_end = 0;
  for (size_t i = 0; i < options.regions.size(); ++i) {
    const GuestRegion& region = options.regions[i];
    const auto bad = [&](std::string_view why) {
      return MakeError(ErrorKind::kInvalidArgument,
                       fmt::format("guestmem '{}': region {} [{:#x}, +{:#x}): {}", options.name, i,
                                   region.gpa, region.size_bytes, why));
    };
    if (region.size_bytes == 0) return bad("is empty");
    if ((region.gpa | region.size_bytes) & kPageMask) return bad("is not 4 KiB aligned");
    if (region.gpa > kMaxGuestPhysicalBytes ||
        region.size_bytes > kMaxGuestPhysicalBytes - region.gpa) {
      return bad(fmt::format("ends past the {:#x}-byte GPA limit", kMaxGuestPhysicalBytes));
    }
    if (i > 0 && region.gpa < previous_end) return bad("overlaps or precedes the previous one");
    previous_end = region.gpa + region.size_bytes;
  }
  if (options.type == BackingType::kFile && options.file_path.empty()) {
    return MakeError(ErrorKind::kInvalidArgument,
                     fmt::format("guestmem '{}': a file backing needs file_path", options.name));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<MemoryBacking>> MemoryBacking::Create(MemoryOptions options) {
  if (absl::Status status = ValidateLayout(options); !status.ok()) return status;
  std::shared_ptr<MemoryBacking> backing(new MemoryBacking());
  if (absl::Status status = backing->Map(options); !status.ok()) return status;
  return backing;
}

absl::Status MemoryBacking::Map(const MemoryOptions& options) {
  name_ = options.name;
  type_ = options.type;
  limit_ = options.regions.back().gpa + options.regions.back().size_bytes;

  void* reservation =
      mmap(nullptr, limit_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reservation == MAP_FAILED) {
    return SystemError(name_, fmt::format("reserving {:#x} bytes", limit_), errno);
  }
  base_ = static_cast<uint8_t*>(reservation);

  void* states = mmap(nullptr, limit_ >> kPageShift, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (states == MAP_FAILED) return SystemError(name_, "allocating the page-state table", errno);
  states_ = static_cast<uint8_t*>(states);

  uint64_t total_bytes = 0;
  for (const GuestRegion& region : options.regions) total_bytes += region.size_bytes;
  if (type_ == BackingType::kMemfd) {
    fd_ = memfd_create(name_.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd_ < 0) return SystemError(name_, "memfd_create", errno);
  } else if (type_ == BackingType::kFile) {
    fd_ = open(options.file_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) return SystemError(name_, fmt::format("opening '{}'", options.file_path), errno);
  }
  if (fd_ >= 0) {
    struct stat file_stat;
    if (fstat(fd_, &file_stat) != 0) return SystemError(name_, "fstat", errno);
    if (static_cast<uint64_t>(file_stat.st_size) < total_bytes &&
        ftruncate(fd_, static_cast<off_t>(total_bytes)) != 0) {
      return SystemError(name_, fmt::format("sizing the backing to {:#x} bytes", total_bytes),
                         errno);
    }
  }
  if (type_ == BackingType::kMemfd) {
    // Whoever holds the fd (a KVM VM, another process) cannot shrink it under our mappings,
    // which would turn every access past the new end into SIGBUS, nor add seals that would.
    if (fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      return SystemError(name_, "sealing the memfd's size", errno);
    }
  }

  uint64_t fd_offset = 0;
  for (const GuestRegion& region : options.regions) {
    void* want = base_ + region.gpa;
    void* got = fd_ >= 0 ? mmap(want, region.size_bytes, PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_FIXED, fd_, static_cast<off_t>(fd_offset))
                         : mmap(want, region.size_bytes, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (got == MAP_FAILED) {
      return SystemError(name_, fmt::format("mapping region at {:#x}", region.gpa), errno);
    }
    regions_.push_back(
        RegionMapping{region.gpa, region.size_bytes, got, fd_, fd_ >= 0 ? fd_offset : 0});
    fd_offset += region.size_bytes;
    const uint8_t initial = page_state::Encode(Access::kReadWrite, Access::kReadWrite);
    std::memset(states_ + (region.gpa >> kPageShift), initial, region.size_bytes >> kPageShift);
  }
  return absl::OkStatus();
}

MemoryBacking::~MemoryBacking() {
  if (base_ != nullptr) munmap(base_, limit_);
  if (states_ != nullptr) munmap(states_, limit_ >> kPageShift);
  if (fd_ >= 0) close(fd_);
}

absl::Status MemoryBacking::Describe(View view, bool write, uint64_t gpa, uint64_t len,
                                     const char* operation) const {
  const auto error = [&](ErrorKind kind, std::string_view detail) {
    return MakeError(kind, fmt::format("guestmem '{}' {} view: {} [{:#x}, +{:#x}): {}", name_,
                                       ViewName(view), operation, gpa, len, detail));
  };
  if (gpa + len < gpa) return error(ErrorKind::kOverflow, "the range wraps past 2^64");
  if (gpa + len > limit_) {
    return error(ErrorKind::kOutOfRange,
                 fmt::format("past the end of guest memory at {:#x}", limit_));
  }
  const uint8_t required = page_state::RequiredBits(view, write);
  for (uint64_t page = gpa >> kPageShift; page <= (gpa + len - 1) >> kPageShift; ++page) {
    const uint8_t state = LoadState(page);
    if ((state & required) == required) continue;
    const uint64_t page_gpa = page << kPageShift;
    if ((state & page_state::kPresent) == 0) {
      return error(ErrorKind::kOutOfRange, fmt::format("page {:#x} is a hole", page_gpa));
    }
    (view == View::kPrivate ? refused_private_ : refused_untrusted_)
        .fetch_add(1, std::memory_order_relaxed);
    const Access access = page_state::AccessOf(state, view);
    if (access == Access::kNone) {
      return view == View::kPrivate
                 ? error(ErrorKind::kNotPrivate, fmt::format("page {:#x} is not private", page_gpa))
                 : error(ErrorKind::kNotShared, fmt::format("page {:#x} is not shared", page_gpa));
    }
    return error(ErrorKind::kReadOnly, fmt::format("page {:#x} is read-only", page_gpa));
  }
  // The state changed between Check and Describe; report the race as the state it had.
  return error(view == View::kPrivate ? ErrorKind::kNotPrivate : ErrorKind::kNotShared,
               "the page's access changed during the access");
}

MemoryBacking::Stats MemoryBacking::stats() const {
  return Stats{.refused_private = refused_private_.load(std::memory_order_relaxed),
               .refused_untrusted = refused_untrusted_.load(std::memory_order_relaxed),
               .page_state_changes = page_state_changes_.load(std::memory_order_relaxed)};
}

absl::Status MemoryBacking::SetStates(uint64_t gpa, uint64_t len,
                                      absl::FunctionRef<uint8_t(uint8_t)> next,
                                      const char* operation) {
  const auto error = [&](ErrorKind kind, std::string_view detail) {
    return MakeError(kind, fmt::format("guestmem '{}': {} [{:#x}, +{:#x}): {}", name_, operation,
                                       gpa, len, detail));
  };
  if ((gpa | len) & kPageMask) return error(ErrorKind::kInvalidArgument, "not 4 KiB aligned");
  if (gpa + len < gpa) return error(ErrorKind::kOverflow, "the range wraps past 2^64");
  if (gpa + len > limit_) return error(ErrorKind::kOutOfRange, "past the end of guest memory");
  const uint64_t first = gpa >> kPageShift;
  const uint64_t count = len >> kPageShift;
  {
    MutexLock lock(&control_mu_);
    for (uint64_t page = first; page < first + count; ++page) {
      if ((LoadState(page) & page_state::kPresent) == 0) {
        return error(ErrorKind::kOutOfRange,
                     fmt::format("page {:#x} is a hole", page << kPageShift));
      }
      if (pin_counts_.contains(page)) {
        return error(ErrorKind::kPinned,
                     fmt::format("page {:#x} is pinned by a device", page << kPageShift));
      }
    }
    uint64_t changed = 0;
    for (uint64_t page = first; page < first + count; ++page) {
      const uint8_t before = LoadState(page);
      const uint8_t after = next(before) | page_state::kPresent;
      std::atomic_ref<uint8_t>(states_[page]).store(after, std::memory_order_seq_cst);
      changed += before != after ? 1 : 0;
    }
    page_state_changes_.fetch_add(changed, std::memory_order_relaxed);
  }
  // Accesses that checked the old states may still be copying; let them finish.
  if (absl::Status waited = WaitForAccessesInFlight(); !waited.ok()) {
    return error(ErrorKind::kSystem, std::string(waited.message()));
  }
  return absl::OkStatus();
}

absl::Status MemoryBacking::SetAccess(View view, uint64_t gpa, uint64_t len, Access access) {
  const unsigned shift = page_state::ViewShift(view);
  return SetStates(
      gpa, len,
      [&](uint8_t state) {
        return static_cast<uint8_t>((state & ~(3u << shift)) |
                                    (static_cast<uint8_t>(access) << shift));
      },
      "set access");
}

absl::Status MemoryBacking::SetAccess(uint64_t gpa, uint64_t len, Access private_access,
                                      Access untrusted_access) {
  return SetStates(
      gpa, len, [&](uint8_t) { return page_state::Encode(private_access, untrusted_access); },
      "set access");
}

absl::StatusOr<Access> MemoryBacking::GetAccess(View view, uint64_t gpa) const {
  if (gpa >= limit_ || (LoadState(gpa >> kPageShift) & page_state::kPresent) == 0) {
    return MakeError(ErrorKind::kOutOfRange,
                     fmt::format("guestmem '{}': get access {:#x}: no such page", name_, gpa));
  }
  return page_state::AccessOf(LoadState(gpa >> kPageShift), view);
}

absl::Status MemoryBacking::RewriteUnviewed(uint64_t gpa, uint64_t len,
                                            absl::FunctionRef<void(absl::Span<uint8_t>)> fn) {
  const auto error = [&](ErrorKind kind, std::string_view detail) {
    return MakeError(
        kind, fmt::format("guestmem '{}': rewrite [{:#x}, +{:#x}): {}", name_, gpa, len, detail));
  };
  if (gpa + len < gpa) return error(ErrorKind::kOverflow, "the range wraps past 2^64");
  if (gpa + len > limit_) return error(ErrorKind::kOutOfRange, "past the end of guest memory");
  if (len == 0) return absl::OkStatus();
  const uint8_t unviewed = page_state::Encode(Access::kNone, Access::kNone);
  // Held across the check and `fn`: state changes take it too, so no page can become viewed
  // (and accessed) between the check and the rewrite.
  MutexLock lock(&control_mu_);
  for (uint64_t page = gpa >> kPageShift; page <= (gpa + len - 1) >> kPageShift; ++page) {
    const uint8_t state = LoadState(page);
    if ((state & page_state::kPresent) == 0) {
      return error(ErrorKind::kOutOfRange, fmt::format("page {:#x} is a hole", page << 12));
    }
    if (state != unviewed) {
      return error(ErrorKind::kInvalidArgument,
                   fmt::format("page {:#x} is still accessible through a view", page << 12));
    }
  }
  fn(absl::Span<uint8_t>(host(gpa), len));
  return absl::OkStatus();
}

absl::Status MemoryBacking::Pin(View view, Access access, absl::Span<const uint64_t> gpns) {
  const uint8_t required = page_state::RequiredBits(view, access == Access::kReadWrite);
  MutexLock lock(&control_mu_);
  for (size_t i = 0; i < gpns.size(); ++i) {
    const uint64_t gpn = gpns[i];
    if (gpn >= (limit_ >> kPageShift)) {
      return MakeError(ErrorKind::kOutOfRange,
                       fmt::format("guestmem '{}' {} view: pin page {:#x} (index {}): past the "
                                   "end of guest memory",
                                   name_, ViewName(view), gpn, i));
    }
    if ((LoadState(gpn) & required) != required) {
      return Describe(view, access == Access::kReadWrite, gpn << kPageShift, kPageSize, "pin");
    }
  }
  for (uint64_t gpn : gpns) ++pin_counts_[gpn];
  return absl::OkStatus();
}

void MemoryBacking::Unpin(absl::Span<const uint64_t> gpns) {
  MutexLock lock(&control_mu_);
  for (uint64_t gpn : gpns) {
    auto it = pin_counts_.find(gpn);
    if (it == pin_counts_.end()) continue;  // Unreachable: PinnedPages pins before it unpins.
    if (--it->second == 0) pin_counts_.erase(it);
  }
}

}  // namespace cvmbus::guestmem
