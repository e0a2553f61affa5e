// SnpModel, part two: the host's RMP management (RMPUPDATE, PSMASH), its side of the GHCB
// page-state-change protocol, and the guest's conversion flows built on them.
#include <fmt/format.h>

#include <string>
#include <vector>

#include "base/format.h"
#include "base/mutex.h"
#include "base/status_macros.h"
#include "guestmem/errors.h"
#include "hw/isolation/errors.h"
#include "hw/isolation/snp_model.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::ErrorKind;
using snp::PageSize;
using snp::PscOperation;
using snp::PvalidateResult;
using snp::RmpUpdateResult;

constexpr uint64_t kPageShift = 12;

}  // namespace

absl::StatusOr<RmpUpdateResult> SnpModel::RmpUpdate(uint64_t gpa, const RmpUpdateInput& input) {
  MutexLock lock(&mu_);
  return RmpUpdateLocked(gpa, input);
}

absl::StatusOr<RmpUpdateResult> SnpModel::RmpUpdateLocked(uint64_t gpa,
                                                          const RmpUpdateInput& input) {
  if (static_cast<uint32_t>(input.page_size) > 1) return RmpUpdateResult::kFailInput;
  const bool huge = input.page_size == PageSize::k2M;
  const uint64_t len = PageBytes(input.page_size);
  if ((gpa & (len - 1)) != 0 || gpa >= backing_->limit_bytes() ||
      len > backing_->limit_bytes() - gpa) {
    return RmpUpdateResult::kFailInput;
  }
  const uint64_t first = gpa >> kPageShift;
  const uint64_t count = len >> kPageShift;
  for (uint64_t page = first; page < first + count; ++page) {
    if (!Present(page)) return RmpUpdateResult::kFailInput;
  }
  if (!input.assigned && input.immutable) return RmpUpdateResult::kFailPermission;
  const RmpEntry old = pages_[Governing(first)].entry;
  const bool old_huge = old.assigned && old.page_size == PageSize::k2M;
  for (uint64_t page = first; page < first + count; ++page) {
    if (pages_[page].entry.immutable) return RmpUpdateResult::kFailPermission;
  }
  if (old.immutable) return RmpUpdateResult::kFailPermission;
  // A 4 KiB update inside a 2 MiB entry (PSMASH it first), or a 2 MiB update over assigned
  // 4 KiB entries.
  if (!huge && old_huge) return RmpUpdateResult::kFailOverlap;
  if (huge && !old_huge) {
    for (uint64_t page = first; page < first + count; ++page) {
      if (pages_[page].entry.assigned) return RmpUpdateResult::kFailOverlap;
    }
  }
  const bool was_assigned = old.assigned;
  if (input.assigned) {
    // No view may reach the page while it changes hands; a validated page loses validation.
    CVMBUS_RETURN_IF_ERROR(SetViews("RMPUPDATE", gpa, len, SnpPageState::kAssigned));
    // A page new to the guest is scrubbed: once validated it reads as zeros.
    if (!was_assigned) CVMBUS_RETURN_IF_ERROR(Zero(gpa, len));
    const uint64_t epoch = pages_[first].epoch + (was_assigned ? 0 : 1);
    for (uint64_t page = first; page < first + count; ++page) {
      pages_[page].entry = RmpEntry{};
      pages_[page].epoch = epoch;
    }
    pages_[first].entry = {true, false, input.immutable, input.page_size, input.guest_gpa};
    return RmpUpdateResult::kSuccess;
  }
  if (!was_assigned) return RmpUpdateResult::kSuccess;  // Already hypervisor-owned.
  // Leaving the guest: revoke the private view, then leave only ciphertext behind.
  CVMBUS_RETURN_IF_ERROR(SetViews("RMPUPDATE", gpa, len, SnpPageState::kAssigned));
  CVMBUS_RETURN_IF_ERROR(Encrypt(gpa, len));
  for (uint64_t page = first; page < first + count; ++page) pages_[page].entry = RmpEntry{};
  CVMBUS_RETURN_IF_ERROR(SetViews("RMPUPDATE", gpa, len, SnpPageState::kHypervisorOwned));
  return RmpUpdateResult::kSuccess;
}

void SnpModel::Psmash(uint64_t head) {
  const Page record = pages_[head];
  for (uint64_t i = 0; i < snp::kPagesPer2M; ++i) {
    RmpEntry& entry = pages_[head + i].entry;
    entry = record.entry;
    entry.page_size = PageSize::k4K;
    entry.guest_gpa = record.entry.guest_gpa + (i << kPageShift);
    pages_[head + i].epoch = record.epoch;
  }
  // The host remaps the region with 4 KiB nested pages, as KVM zaps it after a PSMASH.
  nested_size_[head / snp::kPagesPer2M] = PageSize::k4K;
}

absl::Status SnpModel::PageStateChange(uint64_t gpa, PageSize size, PscOperation operation) {
  MutexLock lock(&mu_);
  return PscLocked(gpa, size, operation);
}

absl::Status SnpModel::PscLocked(uint64_t gpa, PageSize size, PscOperation operation) {
  const bool to_shared = operation == PscOperation::kShared;
  const uint64_t len = PageBytes(size);
  const auto fail = [&](uint32_t code, absl::StatusCode status_code, std::string_view why) {
    return MakeIsolationError(
        status_code, {IsolationErrorKind::kPageStateChange, code},
        fmt::format("snp '{}': page state change to {} [{:#x}, +{:#x}) refused (GHCB error "
                    "{:#x}): {}",
                    backing_->name(), to_shared ? "shared" : "private", gpa, len, code, why));
  };
  if (static_cast<uint32_t>(size) > 1 ||
      (operation != PscOperation::kPrivate && operation != PscOperation::kShared) ||
      (gpa & (len - 1)) != 0 || gpa >= backing_->limit_bytes() ||
      len > backing_->limit_bytes() - gpa) {
    return fail(snp::kPscErrorBadRequest, absl::StatusCode::kInvalidArgument,
                "bad operation, size or address");
  }
  const uint64_t first = gpa >> kPageShift;
  const uint64_t count = len >> kPageShift;
  for (uint64_t page = first; page < first + count; ++page) {
    if (!Present(page)) {
      return fail(snp::kPscErrorBadRequest, absl::StatusCode::kOutOfRange,
                  fmt::format("page {:#x} is not guest memory", page << kPageShift));
    }
    if (pages_[Governing(page)].entry.immutable) {
      return fail(snp::kPscErrorRmpUpdate | static_cast<uint32_t>(RmpUpdateResult::kFailPermission),
                  absl::StatusCode::kFailedPrecondition,
                  fmt::format("page {:#x} is immutable", page << kPageShift));
    }
  }
  const auto update = [&](uint64_t at, const RmpUpdateInput& input) -> absl::Status {
    CVMBUS_ASSIGN_OR_RETURN(const RmpUpdateResult result, RmpUpdateLocked(at, input));
    if (result == RmpUpdateResult::kSuccess) return absl::OkStatus();
    return fail(snp::kPscErrorRmpUpdate | static_cast<uint32_t>(result),
                absl::StatusCode::kFailedPrecondition,
                fmt::format("RMPUPDATE of {:#x} failed with {}", at, static_cast<int>(result)));
  };
  const uint64_t head = first & ~(snp::kPagesPer2M - 1);
  const bool in_huge = pages_[head].entry.assigned && pages_[head].entry.page_size == PageSize::k2M;

  if (to_shared) {
    // GHCB 2.3.1 / Linux __set_pages_state: the guest rescinds validation before it asks.
    for (uint64_t page = first; page < first + count; ++page) {
      const RmpEntry& entry = pages_[Governing(page)].entry;
      if (entry.assigned && entry.validated) {
        return fail(snp::kPscErrorStillValidated, absl::StatusCode::kFailedPrecondition,
                    fmt::format("page {:#x} is still validated: PVALIDATE it to 0 first",
                                page << kPageShift));
      }
    }
    if (size == PageSize::k2M && in_huge) {
      return update(gpa, {false, PageSize::k2M, 0, false});
    }
    if (in_huge) Psmash(head);
    for (uint64_t page = first; page < first + count; ++page) {
      if (pages_[page].entry.assigned) {
        CVMBUS_RETURN_IF_ERROR(update(page << kPageShift, {false, PageSize::k4K, 0, false}));
      }
    }
    return absl::OkStatus();
  }

  if (size == PageSize::k4K) {
    if (in_huge) Psmash(head);  // The page stays assigned, under its own 4 KiB entry now.
    const RmpEntry& entry = pages_[first].entry;
    if (entry.assigned && entry.guest_gpa == gpa) return absl::OkStatus();
    return update(gpa, {true, PageSize::k4K, gpa, false});
  }
  if (in_huge && pages_[head].entry.guest_gpa == gpa) return absl::OkStatus();
  std::vector<uint64_t> unassigned;
  for (uint64_t page = first; page < first + count; ++page) {
    if (!pages_[page].entry.assigned) unassigned.push_back(page);
  }
  if (in_huge || unassigned.size() == count) {
    CVMBUS_RETURN_IF_ERROR(update(gpa, {true, PageSize::k2M, gpa, false}));
    nested_size_[gpa >> 21] = PageSize::k2M;  // The host maps what it assigned as 2 MiB.
    return absl::OkStatus();
  }
  // Mixed 4 KiB entries: assign the rest one by one, all or nothing. Revoking the untrusted
  // view of every page first is the step that can fail (a pinned page); undo it on failure.
  for (size_t i = 0; i < unassigned.size(); ++i) {
    absl::Status status = SetViews("page state change", unassigned[i] << kPageShift,
                                   guestmem::kPageSize, SnpPageState::kAssigned);
    if (status.ok()) continue;
    for (size_t j = 0; j < i; ++j) {
      // Cannot fail: no view has access, so nothing can be pinned.
      (void)SetViews("page state change", unassigned[j] << kPageShift, guestmem::kPageSize,
                     SnpPageState::kHypervisorOwned);
    }
    return status;
  }
  for (uint64_t page : unassigned) {
    CVMBUS_RETURN_IF_ERROR(update(page << kPageShift, {true, PageSize::k4K, page << 12, false}));
  }
  return absl::OkStatus();
}

uint64_t SnpModel::HandleGhcbMsr(uint64_t ghcb_msr) {
  const uint64_t operation = snp::PscRequestOperation(ghcb_msr);
  const uint64_t gfn = snp::PscRequestGfn(ghcb_msr);
  // Bits 63:56 of the request are reserved.
  if ((ghcb_msr & snp::kGhcbInfoMask) != snp::kGhcbMsrPscRequest || (ghcb_msr >> 56) != 0 ||
      (operation != static_cast<uint64_t>(PscOperation::kPrivate) &&
       operation != static_cast<uint64_t>(PscOperation::kShared)) ||
      gfn >= page_count_) {
    return snp::EncodePscResponse(snp::kPscErrorBadRequest);
  }
  const absl::Status status =
      PageStateChange(gfn << kPageShift, PageSize::k4K, static_cast<PscOperation>(operation));
  if (status.ok()) return snp::EncodePscResponse(0);
  if (const auto error = GetIsolationError(status);
      error.has_value() && error->kind == IsolationErrorKind::kPageStateChange) {
    return snp::EncodePscResponse(static_cast<uint32_t>(error->code));
  }
  if (guestmem::IsError(status, ErrorKind::kPinned)) {
    return snp::EncodePscResponse(snp::kPscErrorPinned);
  }
  return snp::EncodePscResponse(snp::kPscErrorBadRequest);
}

absl::Status SnpModel::SetNestedPageSize(uint64_t gpa, PageSize size) {
  if (gpa >= backing_->limit_bytes() || static_cast<uint32_t>(size) > 1) {
    return guestmem::MakeError(
        ErrorKind::kInvalidArgument,
        fmt::format("snp '{}': nested page size for {:#x}: bad address or size", backing_->name(),
                    gpa));
  }
  MutexLock lock(&mu_);
  nested_size_[gpa >> 21] = size;
  return absl::OkStatus();
}

absl::Status SnpModel::ConvertToShared(uint64_t gpa, uint64_t len) {
  CVMBUS_RETURN_IF_ERROR(CheckRange("convert to shared", gpa, len));
  for (uint64_t at = gpa; at < gpa + len; at += guestmem::kPageSize) {
    absl::StatusOr<PvalidateResult> result = Pvalidate(at, PageSize::k4K, false);
    const auto error = GetIsolationError(result.status());
    if (error.has_value() && error->kind == IsolationErrorKind::kNestedPageFault &&
        (error->code & snp::fault::kSizeMismatch) != 0) {
      // The page sits in a 2 MiB RMP entry: a 4 KiB private PSC makes the host PSMASH it (as
      // KVM does on this #NPF), then the guest retries.
      CVMBUS_RETURN_IF_ERROR(PageStateChange(at, PageSize::k4K, PscOperation::kPrivate));
      result = Pvalidate(at, PageSize::k4K, false);
    }
    if (!result.ok()) return result.status();
    if (*result != PvalidateResult::kSuccess) {
      return absl::FailedPreconditionError(
          fmt::format("snp '{}': convert to shared {:#x}: PVALIDATE returned {}", backing_->name(),
                      at, static_cast<int>(*result)));
    }
    CVMBUS_RETURN_IF_ERROR(PageStateChange(at, PageSize::k4K, PscOperation::kShared));
  }
  return absl::OkStatus();
}

absl::Status SnpModel::ConvertToPrivate(uint64_t gpa, uint64_t len) {
  CVMBUS_RETURN_IF_ERROR(CheckRange("convert to private", gpa, len));
  for (uint64_t at = gpa; at < gpa + len; at += guestmem::kPageSize) {
    CVMBUS_RETURN_IF_ERROR(PageStateChange(at, PageSize::k4K, PscOperation::kPrivate));
    CVMBUS_ASSIGN_OR_RETURN(const PvalidateResult result, Pvalidate(at, PageSize::k4K, true));
    if (result != PvalidateResult::kSuccess) {
      return absl::FailedPreconditionError(
          fmt::format("snp '{}': convert to private {:#x}: PVALIDATE returned {}", backing_->name(),
                      at, static_cast<int>(result)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RmpEntry> SnpModel::ReadRmp(uint64_t gpa) const {
  if (!Present(gpa >> kPageShift)) {
    return guestmem::MakeError(
        ErrorKind::kOutOfRange,
        fmt::format("snp '{}': RMP entry of {:#x}: not guest memory", backing_->name(), gpa));
  }
  MutexLock lock(&mu_);
  return pages_[Governing(gpa >> kPageShift)].entry;
}

absl::StatusOr<SnpPageState> SnpModel::PageState(uint64_t gpa) const {
  CVMBUS_ASSIGN_OR_RETURN(const RmpEntry entry, ReadRmp(gpa));
  if (!entry.assigned) return SnpPageState::kHypervisorOwned;
  return entry.validated ? SnpPageState::kValidated : SnpPageState::kAssigned;
}

}  // namespace cvmbus::hw::isolation
