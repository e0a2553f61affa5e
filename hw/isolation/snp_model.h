// SnpModel: an emulated AMD SEV-SNP memory model over a guestmem::MemoryBacking.
//
// It keeps an RMP entry per 4 KiB page (assigned, validated, page size 4K/2M, guest GPA,
// immutable; a 2 MiB entry lives in the entry of its 2 MiB-aligned page, as in hardware) and
// applies the rules of AMD APM vol. 2 section 15.36 to three parties:
//   - the guest: PVALIDATE, and loads/stores with C = 1 (private) or C = 0 (shared);
//   - the host: RMPUPDATE, PSMASH, its nested-page-table page size, loads/stores, and its side
//     of the GHCB page-state-change protocol (GHCB spec section 2.3.1);
//   - devices and ordinary code, which use guestmem directly.
// Faults come back as typed errors (errors.h): host write to an assigned page -> RMP #PF; guest
// C=1 access to an assigned, unvalidated page -> #VC 0x404; guest C=1 access to a page that is
// not assigned to it (hypervisor-owned, immutable, other GPA) or whose 2 MiB RMP entry the host
// maps with 4 KiB nested pages -> #NPF (RMP | ENC [| SIZEM]); guest C=0 access to an assigned
// page -> #NPF (RMP).
//
// guestmem's per-page view state follows the RMP, so that guestmem accesses through the wrong
// view fail too: the private view has read-write exactly on assigned+validated pages, the
// untrusted view exactly on hypervisor-owned pages, neither on assigned+unvalidated pages. The
// RMP never changes unless the view change succeeded: a page a device has pinned cannot be
// converted (guestmem::ErrorKind::kPinned, with this model's context).
//
// Content: a page the host assigns is zeroed while no view can reach it, so the guest reads
// zeros once it has validated it. A page that leaves the guest (unassigned) is rewritten with
// emulated ciphertext (ciphertext.h) first, and a host read of an assigned page returns that
// ciphertext: private plaintext is never visible to the host.
//
// Addresses. Guest accesses take the address the guest's page tables produce: in C-bit mode the
// C-bit (bit `c_bit_position`) selects private; in vTOM mode addresses below vTOM are private
// and GPA + vTOM is the shared alias of GPA (APM 15.36, "Virtual Top-of-Memory"). Host
// accesses take a GPA or, in vTOM mode, GPA + vTOM. PrivateAddress/SharedAddress build both.
// System physical addresses equal GPAs: the emulated host maps guest memory 1:1.
//
// Not modelled: ASIDs (one guest), VMPLs and RMPADJUST, the host's own 2 MiB mappings.
// Cost: 32 bytes of RMP state per 4 KiB page of the GPA space [0, limit_bytes()).
//
// Thread safety: all members may be called from any thread. One mutex orders RMP changes;
// accesses share it, state changes take it exclusively (and may wait for guestmem accesses in
// flight, see access_gate.h).
#ifndef CVMBUS_HW_ISOLATION_SNP_MODEL_H_
#define CVMBUS_HW_ISOLATION_SNP_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/isolation/snp_defs.h"

namespace cvmbus::hw::isolation {

struct SnpOptions {
  // 0 selects C-bit mode. Otherwise vTOM mode: a multiple of 2 MiB, at least the backing's
  // limit_bytes(), and vtom + limit_bytes() must not wrap.
  uint64_t vtom = 0;
  // C-bit mode: the C-bit's position (CPUID Fn8000_001F EBX[5:0]; 51 on EPYC). Must lie above
  // every GPA of the backing and below 63.
  unsigned c_bit_position = 51;
  // Key of the emulated ciphertext; 0 picks one at random.
  uint64_t ciphertext_key = 0;
};

// One RMP entry as RMPREAD would report it.
struct RmpEntry {
  bool assigned = false;
  bool validated = false;
  bool immutable = false;
  snp::PageSize page_size = snp::PageSize::k4K;
  uint64_t guest_gpa = 0;  // The GPA the page is assigned at; meaningful when assigned.
};

// What RMPUPDATE writes. The validated bit is always cleared (APM: any change of an RMP entry
// from outside the guest leaves it unvalidated).
struct RmpUpdateInput {
  bool assigned = false;
  snp::PageSize page_size = snp::PageSize::k4K;
  uint64_t guest_gpa = 0;
  bool immutable = false;  // What the SNP firmware sets for pages it owns.
};

enum class SnpPageState { kHypervisorOwned, kAssigned, kValidated };

class SnpModel {
 public:
  // Puts every page of `backing` in the hypervisor-owned (shared) state.
  static absl::StatusOr<std::unique_ptr<SnpModel>> Create(
      std::shared_ptr<guestmem::MemoryBacking> backing, SnpOptions options = {});
  SnpModel(const SnpModel&) = delete;
  SnpModel& operator=(const SnpModel&) = delete;

  const std::shared_ptr<guestmem::MemoryBacking>& backing() const { return backing_; }
  bool vtom_mode() const { return options_.vtom != 0; }
  uint64_t PrivateAddress(uint64_t gpa) const;  // The guest's C=1 address of `gpa`.
  uint64_t SharedAddress(uint64_t gpa) const;   // The guest's C=0 (or vTOM alias) address.

  // --- Firmware ---------------------------------------------------------------------------
  // SNP_LAUNCH_UPDATE: makes hypervisor-owned pages assigned and validated (4 KiB entries),
  // keeping their contents (the measured launch image).
  [[nodiscard]] absl::Status LaunchUpdate(uint64_t gpa, uint64_t len);

  // --- Guest ------------------------------------------------------------------------------
  // PVALIDATE of the page at `gpa` (the instruction takes a virtual address; the model's guest
  // maps 1:1). Returns the EAX status; "no update" (CF = 1) is the error kPvalidateNoUpdate,
  // and RMP violations are #NPF errors. Rescinding a page a device has pinned fails (kPinned).
  [[nodiscard]] absl::StatusOr<snp::PvalidateResult> Pvalidate(uint64_t gpa, snp::PageSize size,
                                                               bool validate);

  // Loads and stores through the guest's address space (see "Addresses").
  [[nodiscard]] absl::Status GuestRead(uint64_t guest_address, absl::Span<uint8_t> out) const;
  [[nodiscard]] absl::Status GuestWrite(uint64_t guest_address, absl::Span<const uint8_t> in) const;

  // The whole guest flow, one 4 KiB page at a time (Linux's __set_pages_state): to shared,
  // PVALIDATE(0) then a PSC request; to private, a PSC request then PVALIDATE(1). Stops at the
  // first failing page; earlier pages stay converted.
  [[nodiscard]] absl::Status ConvertToShared(uint64_t gpa, uint64_t len);
  [[nodiscard]] absl::Status ConvertToPrivate(uint64_t gpa, uint64_t len);

  // --- Host -------------------------------------------------------------------------------
  // The host's handling of a GHCB MSR protocol request (raw MSR value in, raw MSR value out).
  // A PSC request (0x014) gets a PSC response (0x015) whose bits 63:32 hold 0 or an error
  // (snp::kPscError*); any other request gets a PSC response with kPscErrorBadRequest.
  uint64_t HandleGhcbMsr(uint64_t ghcb_msr);

  // The host's side of one page-state change. To private: PSMASH a covering 2 MiB entry if the
  // request is for 4 KiB, then RMPUPDATE the hypervisor-owned pages to assigned (already
  // assigned pages are left as they are, validated or not). To shared: refused while any page
  // is validated (the guest must rescind first), else PSMASH as above and RMPUPDATE to
  // hypervisor-owned. A 2 MiB request uses one 2 MiB entry when all 512 pages allow it and
  // maps it with a 2 MiB nested page. Errors carry kPageStateChange and the GHCB error code;
  // pinned pages give kPinned; nothing changes on error.
  [[nodiscard]] absl::Status PageStateChange(uint64_t gpa, snp::PageSize size,
                                             snp::PscOperation operation);

  // RMPUPDATE of the entry at `gpa` (2 MiB-aligned for a 2 MiB update). As in hardware the host
  // may unassign a validated page; the guest then faults on it.
  [[nodiscard]] absl::StatusOr<snp::RmpUpdateResult> RmpUpdate(uint64_t gpa,
                                                               const RmpUpdateInput& input);

  // The page size of the host's nested mapping of the 2 MiB region holding `gpa` (4 KiB at
  // first; a 2 MiB page-state change sets 2 MiB, a PSMASH sets 4 KiB).
  [[nodiscard]] absl::Status SetNestedPageSize(uint64_t gpa, snp::PageSize size);

  // Host loads and stores. A write to an assigned page is an RMP #PF; a read of an assigned
  // page returns its ciphertext.
  [[nodiscard]] absl::Status HostRead(uint64_t gpa, absl::Span<uint8_t> out) const;
  [[nodiscard]] absl::Status HostWrite(uint64_t gpa, absl::Span<const uint8_t> in) const;

  // --- Inspection -------------------------------------------------------------------------
  // The entry that governs the page holding `gpa` (a 2 MiB entry for its 4 KiB pages).
  absl::StatusOr<RmpEntry> ReadRmp(uint64_t gpa) const;
  absl::StatusOr<SnpPageState> PageState(uint64_t gpa) const;

 private:
  struct Page {
    RmpEntry entry;
    uint64_t epoch = 0;  // Bumped at each assignment: keys the emulated ciphertext.
  };
  struct Decoded {
    uint64_t gpa;
    bool encrypted;  // C = 1, or below vTOM.
  };

  SnpModel(std::shared_ptr<guestmem::MemoryBacking> backing, SnpOptions options);

  absl::Status CheckRange(const char* operation, uint64_t gpa, uint64_t len) const;
  bool Present(uint64_t page) const;
  uint64_t Governing(uint64_t page) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status GuestCheck(uint64_t gpa, uint64_t len, bool encrypted, bool write) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  Decoded DecodeGuest(uint64_t guest_address) const;
  uint64_t HostGpa(uint64_t address) const;

  absl::StatusOr<snp::RmpUpdateResult> RmpUpdateLocked(uint64_t gpa, const RmpUpdateInput& input)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Psmash(uint64_t head_page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PscLocked(uint64_t gpa, snp::PageSize size, snp::PscOperation operation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetViews(const char* operation, uint64_t gpa, uint64_t len, SnpPageState state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Zero(uint64_t gpa, uint64_t len) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Encrypt(uint64_t gpa, uint64_t len) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<guestmem::MemoryBacking> backing_;
  const SnpOptions options_;
  const guestmem::GuestMemory private_view_;
  const guestmem::GuestMemory untrusted_view_;
  const uint64_t page_count_;

  mutable Mutex mu_;
  std::vector<Page> pages_ ABSL_GUARDED_BY(mu_);                 // Indexed by GPA / 4 KiB.
  std::vector<snp::PageSize> nested_size_ ABSL_GUARDED_BY(mu_);  // Indexed by GPA / 2 MiB.
};

}  // namespace cvmbus::hw::isolation

#endif  // CVMBUS_HW_ISOLATION_SNP_MODEL_H_
