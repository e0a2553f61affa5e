// MemoryBacking: the guest's physical memory, mapped GPA-linearly into one reserved virtual
// range, with per-page access state for the private and untrusted views.
//
// The whole GPA space [0, limit) is reserved PROT_NONE up front; each region of the layout is
// then mapped at its GPA inside the reservation. Holes stay unmapped and are marked absent in
// the page-state table, so an access to a hole or past the end is an error, never a SIGSEGV.
//
// Backings:
//   kAnonymous  private anonymous memory; cheapest, visible to this process only.
//   kMemfd      a memfd, MAP_SHARED: another process or a KVM guest can map the same pages
//               (fd() and regions() say where); also what a ring's double mapping needs.
//               Its size is sealed (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL): a holder of
//               the fd cannot truncate it under our mappings.
//   kFile       a file on disk, MAP_SHARED, created or grown to fit the layout. A file cannot
//               be sealed: whoever may write it can truncate it and make accesses fault, so
//               it must be the operator's own (its permissions are the protection).
//
// Access state: each 4 KiB page has, per view, an Access (none / read / read-write). A new
// backing grants read-write to both views (no isolation). Isolation models (hw/snp, hw/tdx)
// drive SetAccess; every access through a view checks it. SetAccess returns only after every
// access that might have seen the old state has finished (see access_gate.h), and refuses pages
// a device has pinned.
//
// Thread safety: all const members and SetAccess may be called from any thread.
#ifndef CVMBUS_GUESTMEM_MEMORY_BACKING_H_
#define CVMBUS_GUESTMEM_MEMORY_BACKING_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "guestmem/page_state.h"

namespace cvmbus::guestmem {

enum class BackingType { kAnonymous, kMemfd, kFile };

// A range of guest physical memory that exists. gpa and size_bytes are multiples of 4 KiB.
struct GuestRegion {
  uint64_t gpa = 0;
  uint64_t size_bytes = 0;
};

struct MemoryOptions {
  std::string name = "guest";        // Names this memory in every error message.
  std::vector<GuestRegion> regions;  // Sorted by gpa, non-overlapping, non-empty.
  BackingType type = BackingType::kMemfd;
  std::string file_path;  // kFile only.
};

// Where a region lives in this process and in its file, for code that hands guest memory to
// the kernel (a KVM memory slot, another process). host_address stays valid for the backing's
// lifetime. fd is -1 for anonymous backings.
struct RegionMapping {
  uint64_t gpa;
  uint64_t size_bytes;
  void* host_address;
  int fd;
  uint64_t fd_offset;
};

// Largest GPA space one backing may reserve: 2^46 bytes (64 TiB), the page-state table for it
// is 16 GiB of virtual, lazily touched memory.
inline constexpr uint64_t kMaxGuestPhysicalBytes = uint64_t{1} << 46;

class MemoryBacking {
 public:
  // Validates the layout (kInvalidArgument naming the bad region) and maps it.
  static absl::StatusOr<std::shared_ptr<MemoryBacking>> Create(MemoryOptions options);
  ~MemoryBacking();
  MemoryBacking(const MemoryBacking&) = delete;
  MemoryBacking& operator=(const MemoryBacking&) = delete;

  const std::string& name() const { return name_; }
  BackingType type() const { return type_; }
  uint64_t limit_bytes() const { return limit_; }  // One past the highest GPA of any region.
  int fd() const { return fd_; }
  const std::vector<RegionMapping>& regions() const { return regions_; }

  // Sets `view`'s access to every page of [gpa, gpa + len), or both views' at once. Fails
  // without changing anything if a page is absent (kOutOfRange), pinned (kPinned), or the range
  // is not page-aligned (kInvalidArgument). On success, no access that saw the old state is
  // still running.
  absl::Status SetAccess(View view, uint64_t gpa, uint64_t len, Access access);
  absl::Status SetAccess(uint64_t gpa, uint64_t len, Access private_access,
                         Access untrusted_access);

  // The current access of `view` to the page holding `gpa`.
  absl::StatusOr<Access> GetAccess(View view, uint64_t gpa) const;

  // What the isolation rules did: accesses a view refused (the page was not that view's, or
  // read-only), and pages whose access state changed (conversions, validations).
  struct Stats {
    uint64_t refused_private = 0;
    uint64_t refused_untrusted = 0;
    uint64_t page_state_changes = 0;
  };
  Stats stats() const;

  // Gives `fn` the bytes of [gpa, gpa + len) with no view in between, for an isolation model
  // that scrubs or scrambles pages it is converting. Both views must have no access to every
  // page of the range (kInvalidArgument otherwise), which guarantees no accessor races `fn`;
  // state changes (SetAccess) wait until `fn` returns. `fn` must not call back into this
  // backing's control operations (SetAccess, Pin, RewriteUnviewed).
  absl::Status RewriteUnviewed(uint64_t gpa, uint64_t len,
                               absl::FunctionRef<void(absl::Span<uint8_t>)> fn);

 private:
  friend class GuestMemory;
  friend class PinnedPages;

  MemoryBacking() = default;
  absl::Status Map(const MemoryOptions& options);

  // True if `view` may read (or write) all of [gpa, gpa + len), len > 0. The caller holds an
  // AccessScope. Inline: this is the per-access hot path.
  bool Permits(View view, bool write, uint64_t gpa, uint64_t len) const {
    const uint64_t end = gpa + len;
    if (end < gpa || end > limit_) return false;
    const uint8_t required = page_state::RequiredBits(view, write);
    for (uint64_t page = gpa >> kPageShift, last = (end - 1) >> kPageShift; page <= last; ++page) {
      if ((LoadState(page) & required) != required) return false;
    }
    return true;
  }
  // The precise error for an access Permits refused, naming `operation`.
  absl::Status Describe(View view, bool write, uint64_t gpa, uint64_t len,
                        const char* operation) const;
  uint8_t* host(uint64_t gpa) const { return base_ + gpa; }
  absl::Status SetStates(uint64_t gpa, uint64_t len, absl::FunctionRef<uint8_t(uint8_t)> next,
                         const char* operation);

  // Pins each gpn for `view` with at least `access`; all or nothing.
  absl::Status Pin(View view, Access access, absl::Span<const uint64_t> gpns);
  void Unpin(absl::Span<const uint64_t> gpns);

  std::string name_;
  // Counted on the error path (Describe) and under control_mu_ (SetStates): never per access.
  mutable std::atomic<uint64_t> refused_private_{0};
  mutable std::atomic<uint64_t> refused_untrusted_{0};
  std::atomic<uint64_t> page_state_changes_{0};
  BackingType type_ = BackingType::kAnonymous;
  uint8_t* base_ = nullptr;  // The reservation: base_ + gpa is the host address of gpa.
  uint64_t limit_ = 0;
  int fd_ = -1;
  std::vector<RegionMapping> regions_;
  // One state byte per page of [0, limit_), see page_state.h; a lazily zeroed anonymous
  // mapping (zero = absent). Accessed only through std::atomic_ref: stored with seq_cst by
  // SetStates, loaded with seq_cst by Check (the AccessGate handshake).
  uint8_t* states_ = nullptr;
  uint8_t LoadState(uint64_t page) const {
    return std::atomic_ref<uint8_t>(states_[page]).load(std::memory_order_seq_cst);
  }

  // Serializes state changes with pinning: a page's state cannot change while it is pinned.
  mutable Mutex control_mu_;
  absl::flat_hash_map<uint64_t, uint32_t> pin_counts_ ABSL_GUARDED_BY(control_mu_);
};

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_MEMORY_BACKING_H_
