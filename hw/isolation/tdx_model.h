// TdxModel: an emulated Intel TDX memory model over a guestmem::MemoryBacking.
//
// Every 4 KiB page is in one of three states:
//   kShared    mapped through the shared EPT: the host may read and write it;
//   kPending   private, added by the host (TDH.MEM.PAGE.AUG) but not yet accepted by the guest;
//   kAccepted  private and accepted (TDG.MEM.PAGE.ACCEPT): the guest's own memory.
// The GPA's shared bit (47 or 51, the guest's GPA width - 1) selects the mapping: an access with
// it set goes to the shared alias of the page, one with it clear to the private page (Intel TDX
// module spec, "GPA space"). The model starts with every page pending (unaccepted memory);
// AddLaunchPages stands for TDH.MEM.PAGE.ADD of the measured image.
//
// Guest operations: MapGpa (TDG.VP.VMCALL<MapGPA>, GHCI) converts a range, Accept
// (TDG.MEM.PAGE.ACCEPT, TDCALL leaf 6) accepts a pending page, GuestRead/GuestWrite access
// memory. Errors are typed (errors.h): TDCALL statuses (TDX_PAGE_ALREADY_ACCEPTED,
// TDX_PAGE_SIZE_MISMATCH, TDX_OPERAND_INVALID), MapGPA statuses (TDG.VP.VMCALL_ALIGN_ERROR,
// _INVALID_OPERAND), an EPT violation for an access with no mapping, and kTdxPendingAccess for
// a private access to a page that is not accepted.
//
// guestmem views follow the states: private read-write exactly on accepted pages, untrusted
// read-write exactly on shared pages, neither on pending pages. With guest_memfd the host cannot
// map private memory at all, so guestmem's kNotShared is the host's view of a private page. A
// conversion of a page a device has pinned fails with guestmem::ErrorKind::kPinned and changes
// nothing. Content: a page leaving the guest is zeroed before the host can see it, and ACCEPT
// zeroes the page it accepts (as the TDX module does).
//
// The emulated VMM adds private pages at 4 KiB, so a 2 MiB or 1 GiB ACCEPT fails with
// TDX_PAGE_SIZE_MISMATCH and the guest falls back to 4 KiB (as Linux and EDK2 do).
//
// Thread safety: all members may be called from any thread; state changes are serialized.
#ifndef CVMBUS_HW_ISOLATION_TDX_MODEL_H_
#define CVMBUS_HW_ISOLATION_TDX_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/isolation/tdx_defs.h"

namespace cvmbus::hw::isolation {

struct TdxOptions {
  unsigned shared_bit = 47;  // 47 (4-level EPT, GPAW 48) or 51 (5-level EPT, GPAW 52).
};

enum class TdxPageState : uint8_t { kShared, kPending, kAccepted };

class TdxModel {
 public:
  static absl::StatusOr<std::unique_ptr<TdxModel>> Create(
      std::shared_ptr<guestmem::MemoryBacking> backing, TdxOptions options = {});
  TdxModel(const TdxModel&) = delete;
  TdxModel& operator=(const TdxModel&) = delete;

  const std::shared_ptr<guestmem::MemoryBacking>& backing() const { return backing_; }
  uint64_t shared_bit_mask() const { return shared_mask_; }
  uint64_t PrivateAddress(uint64_t gpa) const { return gpa; }
  uint64_t SharedAddress(uint64_t gpa) const { return gpa | shared_mask_; }

  // TDH.MEM.PAGE.ADD (VMM, before the TD runs): pending pages become accepted with their
  // contents kept.
  [[nodiscard]] absl::Status AddLaunchPages(uint64_t gpa, uint64_t len);

  // TDG.VP.VMCALL<MapGPA>(gpa, size): shared bit set in `gpa` converts [gpa without it, +size)
  // to shared, clear converts it to private (pending: the guest must accept it). Pages already
  // in the requested kind are left alone. Errors carry kTdxVmcall and the R10 status.
  [[nodiscard]] absl::Status MapGpa(uint64_t gpa, uint64_t size);

  // TDG.MEM.PAGE.ACCEPT of the page at `gpa` (shared bit clear) at `level`.
  [[nodiscard]] absl::Status Accept(uint64_t gpa, tdx::PageLevel level);

  [[nodiscard]] absl::Status GuestRead(uint64_t guest_address, absl::Span<uint8_t> out) const;
  [[nodiscard]] absl::Status GuestWrite(uint64_t guest_address, absl::Span<const uint8_t> in) const;

  // The guest flows: MapGPA to shared; MapGPA to private then a 4 KiB ACCEPT of every page
  // (an already accepted page is an error: a double accept).
  [[nodiscard]] absl::Status ConvertToShared(uint64_t gpa, uint64_t len);
  [[nodiscard]] absl::Status ConvertToPrivate(uint64_t gpa, uint64_t len);

  absl::StatusOr<TdxPageState> PageState(uint64_t gpa) const;

 private:
  TdxModel(std::shared_ptr<guestmem::MemoryBacking> backing, TdxOptions options);

  bool Present(uint64_t page) const;
  absl::Status Check(uint64_t guest_address, uint64_t len, bool write, uint64_t* gpa,
                     bool* shared) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Moves `pages` to `state` through "no view" (zeroing them there if `zero`); a pinned page
  // fails it with nothing changed.
  absl::Status Transition(const char* operation, const std::vector<uint64_t>& pages,
                          TdxPageState state, bool zero) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetViews(const char* operation, uint64_t page, TdxPageState state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ZeroPage(uint64_t page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<guestmem::MemoryBacking> backing_;
  const uint64_t shared_mask_;
  const guestmem::GuestMemory private_view_;
  const guestmem::GuestMemory untrusted_view_;
  const uint64_t page_count_;

  mutable Mutex mu_;
  std::vector<TdxPageState> states_ ABSL_GUARDED_BY(mu_);  // Indexed by GPA / 4 KiB.
};

}  // namespace cvmbus::hw::isolation

#endif  // CVMBUS_HW_ISOLATION_TDX_MODEL_H_
