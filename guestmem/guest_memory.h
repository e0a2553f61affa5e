// GuestMemory: a cheap-to-copy handle on one view (private or untrusted) of a MemoryBacking.
//
// Every access is bounds- and overflow-checked and checked against the view's per-page access
// state; failures are typed (errors.h) and name the memory, the view, the operation and the
// GPA range. Zero-length accesses succeed and touch nothing.
//
// Trust: bytes read through any view may be changing under us (the guest, or for the untrusted
// view also the host, can write them concurrently). All accessors copy; callers validate the
// copy and never re-read a field. Only the private view hands out direct spans, and only over
// pinned pages (PinnedPages::PrivateSpan).
//
// Atomicity: ReadPlain/WritePlain of a naturally aligned 1, 2, 4 or 8-byte value is one untorn
// access; larger or unaligned values are copied bytewise with no atomicity. The read-modify-
// write operations need natural alignment (kMisaligned otherwise).
//
// Thread safety: all members are const and may be called concurrently from any thread. The
// handle keeps its backing alive.
#ifndef CVMBUS_GUESTMEM_GUEST_MEMORY_H_
#define CVMBUS_GUESTMEM_GUEST_MEMORY_H_

#include <sys/uio.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "guestmem/access_gate.h"
#include "guestmem/memory_backing.h"
#include "guestmem/page_state.h"
#include "guestmem/paged_range.h"
#include "guestmem/racy_copy.h"

namespace cvmbus::guestmem {

class PinnedPages;

class GuestMemory {
 public:
  // An empty handle: every access fails with kOutOfRange.
  GuestMemory() = default;
  GuestMemory(std::shared_ptr<MemoryBacking> backing, View view)
      : backing_(std::move(backing)), view_(view) {}

  static GuestMemory Private(std::shared_ptr<MemoryBacking> backing) {
    return GuestMemory(std::move(backing), View::kPrivate);
  }
  static GuestMemory Untrusted(std::shared_ptr<MemoryBacking> backing) {
    return GuestMemory(std::move(backing), View::kUntrusted);
  }

  bool has_backing() const { return backing_ != nullptr; }
  View view() const { return view_; }
  const std::shared_ptr<MemoryBacking>& backing() const { return backing_; }

  [[nodiscard]] absl::Status Read(uint64_t gpa, absl::Span<uint8_t> out) const;
  [[nodiscard]] absl::Status Write(uint64_t gpa, absl::Span<const uint8_t> in) const;
  [[nodiscard]] absl::Status Fill(uint64_t gpa, uint64_t len, uint8_t value) const;
  [[nodiscard]] absl::Status Zero(uint64_t gpa, uint64_t len) const { return Fill(gpa, len, 0); }

  template <typename T>
  [[nodiscard]] absl::StatusOr<T> ReadPlain(uint64_t gpa) const;
  template <typename T>
  [[nodiscard]] absl::Status WritePlain(uint64_t gpa, const T& value) const;

  // Atomically: if *gpa == expected, store desired. Returns the value seen before (the swap
  // happened iff it equals `expected`).
  [[nodiscard]] absl::StatusOr<uint32_t> CompareExchange32(uint64_t gpa, uint32_t expected,
                                                           uint32_t desired) const;
  [[nodiscard]] absl::StatusOr<uint64_t> CompareExchange64(uint64_t gpa, uint64_t expected,
                                                           uint64_t desired) const;
  // Atomically ORs `bits` in; returns the previous value.
  [[nodiscard]] absl::StatusOr<uint32_t> FetchOr32(uint64_t gpa, uint32_t bits) const;
  [[nodiscard]] absl::StatusOr<uint64_t> FetchOr64(uint64_t gpa, uint64_t bits) const;

  // Scatter/gather over a paged range: bytes [offset, offset + out.size()) of `range`.
  [[nodiscard]] absl::Status ReadRange(const PagedRange& range, uint64_t offset,
                                       absl::Span<uint8_t> out) const;
  [[nodiscard]] absl::Status WriteRange(const PagedRange& range, uint64_t offset,
                                        absl::Span<const uint8_t> in) const;

  // Pins whole pages for this view with at least `access` (kRead or kReadWrite): while pinned,
  // their access state cannot change (conversions fail with kPinned), so a device can keep
  // using them (a ring, a locked buffer). Fails if any page lacks the access.
  [[nodiscard]] absl::StatusOr<PinnedPages> Pin(absl::Span<const uint64_t> gpns,
                                                Access access) const;

 private:
  absl::Status NoBacking(const char* operation, uint64_t gpa, uint64_t len) const;
  absl::Status ReadUntorn(uint64_t gpa, size_t size, void* out) const;
  absl::Status WriteUntorn(uint64_t gpa, size_t size, const void* in) const;
  template <typename Word, typename Op>
  absl::StatusOr<Word> AtomicRmw(uint64_t gpa, const char* operation, Op op) const;

  std::shared_ptr<MemoryBacking> backing_;
  View view_ = View::kUntrusted;
};

// Pages of one view pinned for a device's use; unpinned when destroyed. Offsets count bytes
// from the start of the first page, across the pages in order (a ring GPADL's layout).
// Accesses need no per-access state check: pinning fixed the state. Move-only; keeps the
// backing alive. Thread safety: const members may be called concurrently.
class PinnedPages {
 public:
  PinnedPages(PinnedPages&& other) noexcept;
  PinnedPages& operator=(PinnedPages&& other) noexcept;
  ~PinnedPages();

  View view() const { return view_; }
  Access access() const { return access_; }
  size_t page_count() const { return gpns_.size(); }
  uint64_t size_bytes() const { return uint64_t{gpns_.size()} << kPageShift; }
  absl::Span<const uint64_t> gpns() const { return gpns_; }

  [[nodiscard]] absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) const;
  [[nodiscard]] absl::Status Write(uint64_t offset, absl::Span<const uint8_t> in) const;

  // Direct bytes, for the private view only (kNotPrivate otherwise) and only when the pinned
  // pages are GPA-contiguous (kInvalidArgument otherwise). Valid while this object lives.
  [[nodiscard]] absl::StatusOr<absl::Span<uint8_t>> PrivateSpan() const;

  // Host memory of bytes [offset, offset + len) as iovecs, one per GPA-contiguous piece, for
  // I/O a device runs straight between a backing and guest pages (io_uring readv/writev).
  // `device_writes`: the I/O stores into the pages (a disk read), which needs kReadWrite.
  // Valid while this object lives: the pages cannot change state meanwhile. Errors as Read
  // and Write.
  [[nodiscard]] absl::StatusOr<std::vector<iovec>> IoVecs(uint64_t offset, uint64_t len,
                                                          bool device_writes) const;

  // The host address of pinned page `index`, for guestmem-internal fast paths (a ring mapping).
  uint8_t* page_host_address(size_t index) const {
    return backing_->host(gpns_[index] << kPageShift);
  }
  const std::shared_ptr<MemoryBacking>& backing() const { return backing_; }

 private:
  friend class GuestMemory;
  PinnedPages(std::shared_ptr<MemoryBacking> backing, View view, Access access,
              std::vector<uint64_t> gpns)
      : backing_(std::move(backing)), view_(view), access_(access), gpns_(std::move(gpns)) {}
  absl::Status CheckSpan(const char* operation, uint64_t offset, uint64_t len, bool write) const;
  // Bytes from `position` to copy in one piece: up to `wanted`, across GPA-contiguous pages.
  size_t ContiguousBytes(uint64_t position, size_t wanted) const;
  // Calls fn(host_address, offset_in_copy, bytes) for each contiguous piece of [offset, +len).
  template <typename Fn>
  void ForEachPiece(uint64_t offset, size_t len, Fn&& fn) const;

  std::shared_ptr<MemoryBacking> backing_;  // Null once moved from.
  View view_;
  Access access_;
  std::vector<uint64_t> gpns_;
};

// ---------------------------------------------------------------------------------------------

// Read and Write are inline: their fixed cost decides small-copy throughput.
inline absl::Status GuestMemory::Read(uint64_t gpa, absl::Span<uint8_t> out) const {
  if (out.empty()) return absl::OkStatus();
  if (ABSL_PREDICT_FALSE(backing_ == nullptr)) return NoBacking("read", gpa, out.size());
  AccessScope scope;
  if (ABSL_PREDICT_FALSE(!backing_->Permits(view_, false, gpa, out.size()))) {
    return backing_->Describe(view_, false, gpa, out.size(), "read");
  }
  internal::RacyCopy(out.data(), backing_->host(gpa), out.size());
  return absl::OkStatus();
}

inline absl::Status GuestMemory::Write(uint64_t gpa, absl::Span<const uint8_t> in) const {
  if (in.empty()) return absl::OkStatus();
  if (ABSL_PREDICT_FALSE(backing_ == nullptr)) return NoBacking("write", gpa, in.size());
  AccessScope scope;
  if (ABSL_PREDICT_FALSE(!backing_->Permits(view_, true, gpa, in.size()))) {
    return backing_->Describe(view_, true, gpa, in.size(), "write");
  }
  internal::RacyStore(backing_->host(gpa), in.data(), in.size());
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<T> GuestMemory::ReadPlain(uint64_t gpa) const {
  static_assert(std::is_trivially_copyable_v<T>, "ReadPlain needs a trivially copyable type");
  T value;
  if (absl::Status status = ReadUntorn(gpa, sizeof(T), &value); !status.ok()) return status;
  return value;
}

template <typename T>
absl::Status GuestMemory::WritePlain(uint64_t gpa, const T& value) const {
  static_assert(std::is_trivially_copyable_v<T>, "WritePlain needs a trivially copyable type");
  return WriteUntorn(gpa, sizeof(T), &value);
}

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_GUEST_MEMORY_H_
