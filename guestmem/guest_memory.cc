#include "guestmem/guest_memory.h"

#include <fmt/format.h>

#include <atomic>

#include "absl/base/optimization.h"
#include "guestmem/access_gate.h"
#include "guestmem/errors.h"
#include "guestmem/racy_copy.h"

namespace cvmbus::guestmem {
namespace {

template <typename Word>
Word UntornLoad(const uint8_t* host) {
  return std::atomic_ref<Word>(*reinterpret_cast<Word*>(const_cast<uint8_t*>(host)))
      .load(std::memory_order_relaxed);
}

template <typename Word>
void UntornStore(uint8_t* host, const void* in) {
  Word word;
  std::memcpy(&word, in, sizeof(Word));
  std::atomic_ref<Word>(*reinterpret_cast<Word*>(host)).store(word, std::memory_order_relaxed);
}

}  // namespace

absl::Status GuestMemory::NoBacking(const char* operation, uint64_t gpa, uint64_t len) const {
  return MakeError(ErrorKind::kOutOfRange,
                   fmt::format("guestmem (none) {} view: {} [{:#x}, +{:#x}): no memory",
                               ViewName(view_), operation, gpa, len));
}

absl::Status GuestMemory::Fill(uint64_t gpa, uint64_t len, uint8_t value) const {
  if (len == 0) return absl::OkStatus();
  if (!backing_) return NoBacking("fill", gpa, len);
  AccessScope scope;
  if (ABSL_PREDICT_FALSE(!backing_->Permits(view_, true, gpa, len))) {
    return backing_->Describe(view_, true, gpa, len, "fill");
  }
  internal::RacyFill(backing_->host(gpa), value, len);
  return absl::OkStatus();
}

absl::Status GuestMemory::ReadUntorn(uint64_t gpa, size_t size, void* out) const {
  const bool untorn = (size == 1 || size == 2 || size == 4 || size == 8) && (gpa % size) == 0;
  if (!untorn) return Read(gpa, absl::Span<uint8_t>(static_cast<uint8_t*>(out), size));
  if (!backing_) return NoBacking("read", gpa, size);
  AccessScope scope;
  if (ABSL_PREDICT_FALSE(!backing_->Permits(view_, false, gpa, size))) {
    return backing_->Describe(view_, false, gpa, size, "read");
  }
  const uint8_t* host = backing_->host(gpa);
  switch (size) {
    case 1: {
      const uint8_t v = UntornLoad<uint8_t>(host);
      std::memcpy(out, &v, 1);
      break;
    }
    case 2: {
      const uint16_t v = UntornLoad<uint16_t>(host);
      std::memcpy(out, &v, 2);
      break;
    }
    case 4: {
      const uint32_t v = UntornLoad<uint32_t>(host);
      std::memcpy(out, &v, 4);
      break;
    }
    default: {
      const uint64_t v = UntornLoad<uint64_t>(host);
      std::memcpy(out, &v, 8);
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status GuestMemory::WriteUntorn(uint64_t gpa, size_t size, const void* in) const {
  const bool untorn = (size == 1 || size == 2 || size == 4 || size == 8) && (gpa % size) == 0;
  if (!untorn) return Write(gpa, absl::Span<const uint8_t>(static_cast<const uint8_t*>(in), size));
  if (!backing_) return NoBacking("write", gpa, size);
  AccessScope scope;
  if (ABSL_PREDICT_FALSE(!backing_->Permits(view_, true, gpa, size))) {
    return backing_->Describe(view_, true, gpa, size, "write");
  }
  uint8_t* host = backing_->host(gpa);
  switch (size) {
    case 1:
      UntornStore<uint8_t>(host, in);
      break;
    case 2:
      UntornStore<uint16_t>(host, in);
      break;
    case 4:
      UntornStore<uint32_t>(host, in);
      break;
    default:
      UntornStore<uint64_t>(host, in);
      break;
  }
  return absl::OkStatus();
}

template <typename Word, typename Op>
absl::StatusOr<Word> GuestMemory::AtomicRmw(uint64_t gpa, const char* operation, Op op) const {
  if (!backing_) return NoBacking(operation, gpa, sizeof(Word));
  if (gpa % sizeof(Word) != 0) {
    return MakeError(ErrorKind::kMisaligned,
                     fmt::format("guestmem '{}' {} view: {} at {:#x}: not {}-byte aligned",
                                 backing_->name(), ViewName(view_), operation, gpa, sizeof(Word)));
  }
  AccessScope scope;
  if (ABSL_PREDICT_FALSE(!backing_->Permits(view_, true, gpa, sizeof(Word)))) {
    return backing_->Describe(view_, true, gpa, sizeof(Word), operation);
  }
  // seq_cst: these words are ring control words and event flags shared with another party;
  // callers build store-then-check handshakes on them.
  return op(std::atomic_ref<Word>(*reinterpret_cast<Word*>(backing_->host(gpa))));
}

absl::StatusOr<uint32_t> GuestMemory::CompareExchange32(uint64_t gpa, uint32_t expected,
                                                        uint32_t desired) const {
  return AtomicRmw<uint32_t>(gpa, "compare-exchange", [&](std::atomic_ref<uint32_t> word) {
    uint32_t seen = expected;
    word.compare_exchange_strong(seen, desired, std::memory_order_seq_cst);
    return seen;
  });
}

absl::StatusOr<uint64_t> GuestMemory::CompareExchange64(uint64_t gpa, uint64_t expected,
                                                        uint64_t desired) const {
  return AtomicRmw<uint64_t>(gpa, "compare-exchange", [&](std::atomic_ref<uint64_t> word) {
    uint64_t seen = expected;
    word.compare_exchange_strong(seen, desired, std::memory_order_seq_cst);
    return seen;
  });
}

absl::StatusOr<uint32_t> GuestMemory::FetchOr32(uint64_t gpa, uint32_t bits) const {
  return AtomicRmw<uint32_t>(gpa, "fetch-or", [&](std::atomic_ref<uint32_t> word) {
    return word.fetch_or(bits, std::memory_order_seq_cst);
  });
}

absl::StatusOr<uint64_t> GuestMemory::FetchOr64(uint64_t gpa, uint64_t bits) const {
  return AtomicRmw<uint64_t>(gpa, "fetch-or", [&](std::atomic_ref<uint64_t> word) {
    return word.fetch_or(bits, std::memory_order_seq_cst);
  });
}

absl::Status GuestMemory::ReadRange(const PagedRange& range, uint64_t offset,
                                    absl::Span<uint8_t> out) const {
  uint8_t* cursor = out.data();
  return range.ForEachChunk(offset, out.size(), [&](GpaChunk chunk) {
    absl::Status status = Read(chunk.gpa, absl::Span<uint8_t>(cursor, chunk.len));
    cursor += chunk.len;
    return status;
  });
}

absl::Status GuestMemory::WriteRange(const PagedRange& range, uint64_t offset,
                                     absl::Span<const uint8_t> in) const {
  const uint8_t* cursor = in.data();
  return range.ForEachChunk(offset, in.size(), [&](GpaChunk chunk) {
    absl::Status status = Write(chunk.gpa, absl::Span<const uint8_t>(cursor, chunk.len));
    cursor += chunk.len;
    return status;
  });
}

absl::StatusOr<PinnedPages> GuestMemory::Pin(absl::Span<const uint64_t> gpns, Access access) const {
  if (!backing_) return NoBacking("pin", gpns.empty() ? 0 : gpns[0] << kPageShift, 0);
  if (access == Access::kNone) {
    return MakeError(ErrorKind::kInvalidArgument,
                     fmt::format("guestmem '{}' {} view: pin: access must be read or read-write",
                                 backing_->name(), ViewName(view_)));
  }
  if (absl::Status status = backing_->Pin(view_, access, gpns); !status.ok()) return status;
  return PinnedPages(backing_, view_, access, std::vector<uint64_t>(gpns.begin(), gpns.end()));
}

// --- PinnedPages -------------------------------------------------------------------------------

PinnedPages::PinnedPages(PinnedPages&& other) noexcept
    : backing_(std::move(other.backing_)),
      view_(other.view_),
      access_(other.access_),
      gpns_(std::move(other.gpns_)) {
  other.backing_ = nullptr;
}

PinnedPages& PinnedPages::operator=(PinnedPages&& other) noexcept {
  if (this != &other) {
    if (backing_) backing_->Unpin(gpns_);
    backing_ = std::move(other.backing_);
    other.backing_ = nullptr;
    view_ = other.view_;
    access_ = other.access_;
    gpns_ = std::move(other.gpns_);
  }
  return *this;
}

PinnedPages::~PinnedPages() {
  if (backing_) backing_->Unpin(gpns_);
}

absl::Status PinnedPages::CheckSpan(const char* operation, uint64_t offset, uint64_t len,
                                    bool write) const {
  const char* name = backing_ ? backing_->name().c_str() : "(moved)";
  if (!backing_ || offset + len < offset || offset + len > size_bytes()) {
    return MakeError(offset + len < offset ? ErrorKind::kOverflow : ErrorKind::kOutOfRange,
                     fmt::format("guestmem '{}' {} view: pinned {} [{:#x}, +{:#x}): past the {} "
                                 "pinned bytes",
                                 name, ViewName(view_), operation, offset, len, size_bytes()));
  }
  if (write && access_ != Access::kReadWrite) {
    return MakeError(ErrorKind::kReadOnly,
                     fmt::format("guestmem '{}' {} view: pinned write [{:#x}, +{:#x}): pinned "
                                 "read-only",
                                 name, ViewName(view_), offset, len));
  }
  return absl::OkStatus();
}

size_t PinnedPages::ContiguousBytes(uint64_t position, size_t wanted) const {
  size_t page = position >> kPageShift;
  size_t bytes = kPageSize - (position & kPageMask);
  while (bytes < wanted && page + 1 < gpns_.size() && gpns_[page + 1] == gpns_[page] + 1) {
    ++page;
    bytes += kPageSize;
  }
  return std::min(bytes, wanted);
}

template <typename Fn>
void PinnedPages::ForEachPiece(uint64_t offset, size_t len, Fn&& fn) const {
  size_t done = 0;
  while (done < len) {
    const uint64_t position = offset + done;
    const size_t chunk = ContiguousBytes(position, len - done);
    fn(page_host_address(position >> kPageShift) + (position & kPageMask), done, chunk);
    done += chunk;
  }
}

absl::Status PinnedPages::Read(uint64_t offset, absl::Span<uint8_t> out) const {
  if (absl::Status status = CheckSpan("read", offset, out.size(), false); !status.ok()) {
    return status;
  }
  ForEachPiece(offset, out.size(), [&](const uint8_t* host, size_t at, size_t chunk) {
    internal::RacyCopy(out.data() + at, host, chunk);
  });
  return absl::OkStatus();
}

absl::Status PinnedPages::Write(uint64_t offset, absl::Span<const uint8_t> in) const {
  if (absl::Status status = CheckSpan("write", offset, in.size(), true); !status.ok()) {
    return status;
  }
  ForEachPiece(offset, in.size(), [&](uint8_t* host, size_t at, size_t chunk) {
    internal::RacyStore(host, in.data() + at, chunk);
  });
  return absl::OkStatus();
}

absl::StatusOr<std::vector<iovec>> PinnedPages::IoVecs(uint64_t offset, uint64_t len,
                                                       bool device_writes) const {
  if (absl::Status status = CheckSpan("I/O", offset, len, device_writes); !status.ok()) {
    return status;
  }
  std::vector<iovec> iovecs;
  ForEachPiece(offset, len, [&](uint8_t* host, size_t, size_t chunk) {
    iovecs.push_back(iovec{host, chunk});
  });
  return iovecs;
}

absl::StatusOr<absl::Span<uint8_t>> PinnedPages::PrivateSpan() const {
  const char* name = backing_ ? backing_->name().c_str() : "(moved)";
  if (view_ != View::kPrivate) {
    return MakeError(ErrorKind::kNotPrivate,
                     fmt::format("guestmem '{}' untrusted view: direct spans exist only for the "
                                 "private view",
                                 name));
  }
  if (!backing_ || gpns_.empty()) {
    return MakeError(ErrorKind::kInvalidArgument,
                     fmt::format("guestmem '{}': no pinned pages", name));
  }
  for (size_t i = 1; i < gpns_.size(); ++i) {
    if (gpns_[i] != gpns_[0] + i) {
      return MakeError(
          ErrorKind::kInvalidArgument,
          fmt::format("guestmem '{}' private view: pinned page {} ({:#x}) does not "
                      "follow page {} ({:#x})",
                      name, i, gpns_[i] << kPageShift, i - 1, gpns_[i - 1] << kPageShift));
    }
  }
  return absl::Span<uint8_t>(page_host_address(0), size_bytes());
}

}  // namespace cvmbus::guestmem
