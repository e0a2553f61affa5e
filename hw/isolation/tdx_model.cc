#include "hw/isolation/tdx_model.h"

#include <fmt/format.h>

#include <cstring>
#include <string>
#include <utility>

#include "base/format.h"
#include "base/mutex.h"
#include "base/status_macros.h"
#include "guestmem/errors.h"
#include "hw/isolation/errors.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::Access;
using guestmem::ErrorKind;
using tdx::PageLevel;

constexpr uint64_t kPageShift = 12;

const char* StateName(TdxPageState state) {
  switch (state) {
    case TdxPageState::kShared:
      return "shared";
    case TdxPageState::kPending:
      return "pending";
    case TdxPageState::kAccepted:
      return "accepted";
  }
  return "invalid";
}

}  // namespace

absl::StatusOr<std::unique_ptr<TdxModel>> TdxModel::Create(
    std::shared_ptr<guestmem::MemoryBacking> backing, TdxOptions options) {
  if (backing == nullptr) {
    return guestmem::MakeError(ErrorKind::kInvalidArgument, "tdx: no memory backing");
  }
  if ((options.shared_bit != 47 && options.shared_bit != 51) ||
      (backing->limit_bytes() - 1) >> options.shared_bit != 0) {
    return guestmem::MakeError(
        ErrorKind::kInvalidArgument,
        fmt::format("tdx '{}': shared bit {} must be 47 or 51 and above every GPA", backing->name(),
                    options.shared_bit));
  }
  std::unique_ptr<TdxModel> model(new TdxModel(std::move(backing), options));
  for (const guestmem::RegionMapping& region : model->backing_->regions()) {
    CVMBUS_RETURN_IF_ERROR(
        model->backing_->SetAccess(region.gpa, region.size_bytes, Access::kNone, Access::kNone));
  }
  return model;
}

TdxModel::TdxModel(std::shared_ptr<guestmem::MemoryBacking> backing, TdxOptions options)
    : backing_(std::move(backing)),
      shared_mask_(uint64_t{1} << options.shared_bit),
      private_view_(guestmem::GuestMemory::Private(backing_)),
      untrusted_view_(guestmem::GuestMemory::Untrusted(backing_)),
      page_count_(backing_->limit_bytes() >> kPageShift),
      states_(page_count_, TdxPageState::kPending) {}

bool TdxModel::Present(uint64_t page) const {
  return page < page_count_ &&
         backing_->GetAccess(guestmem::View::kPrivate, page << kPageShift).ok();
}

absl::Status TdxModel::Check(uint64_t guest_address, uint64_t len, bool write, uint64_t* gpa,
                             bool* shared) const {
  *shared = (guest_address & shared_mask_) != 0;
  *gpa = guest_address & ~shared_mask_;
  const auto violation = [&](IsolationErrorKind kind, uint64_t page_gpa, std::string_view why) {
    return MakeIsolationError(
        absl::StatusCode::kPermissionDenied, {kind, tdx::kExitReasonEptViolation},
        fmt::format("tdx '{}': {} on guest {} {} [{:#x}, +{:#x}): page {:#x} {}", backing_->name(),
                    IsolationErrorKindName(kind), write ? "write" : "read",
                    *shared ? "shared" : "private", *gpa, len, page_gpa, why));
  };
  if (len == 0) return absl::OkStatus();
  if ((guest_address & ~((shared_mask_ << 1) - 1)) != 0 || *gpa + len < *gpa ||
      *gpa + len > backing_->limit_bytes()) {
    return violation(IsolationErrorKind::kTdxEptViolation, *gpa, "is not mapped");
  }
  for (uint64_t page = *gpa >> kPageShift; page <= (*gpa + len - 1) >> kPageShift; ++page) {
    const uint64_t page_gpa = page << kPageShift;
    if (!Present(page)) {
      return violation(IsolationErrorKind::kTdxEptViolation, page_gpa, "is not mapped");
    }
    const TdxPageState state = states_[page];
    if (*shared && state != TdxPageState::kShared) {
      return violation(IsolationErrorKind::kTdxEptViolation, page_gpa,
                       "is private: its shared alias is not mapped");
    }
    if (!*shared && state == TdxPageState::kShared) {
      return violation(IsolationErrorKind::kTdxEptViolation, page_gpa,
                       "is shared: it has no private page");
    }
    if (!*shared && state == TdxPageState::kPending) {
      return violation(IsolationErrorKind::kTdxPendingAccess, page_gpa,
                       "is pending: the guest has not accepted it");
    }
  }
  return absl::OkStatus();
}

absl::Status TdxModel::GuestRead(uint64_t guest_address, absl::Span<uint8_t> out) const {
  uint64_t gpa;
  bool shared;
  MutexLock lock(&mu_);
  CVMBUS_RETURN_IF_ERROR(Check(guest_address, out.size(), false, &gpa, &shared));
  return (shared ? untrusted_view_ : private_view_).Read(gpa, out);
}

absl::Status TdxModel::GuestWrite(uint64_t guest_address, absl::Span<const uint8_t> in) const {
  uint64_t gpa;
  bool shared;
  MutexLock lock(&mu_);
  CVMBUS_RETURN_IF_ERROR(Check(guest_address, in.size(), true, &gpa, &shared));
  return (shared ? untrusted_view_ : private_view_).Write(gpa, in);
}

absl::Status TdxModel::SetViews(const char* operation, uint64_t page, TdxPageState state) {
  const Access private_access =
      state == TdxPageState::kAccepted ? Access::kReadWrite : Access::kNone;
  const Access untrusted_access =
      state == TdxPageState::kShared ? Access::kReadWrite : Access::kNone;
  const uint64_t gpa = page << kPageShift;
  absl::Status status =
      backing_->SetAccess(gpa, guestmem::kPageSize, private_access, untrusted_access);
  if (status.ok()) return status;
  const std::string message =
      fmt::format("tdx '{}': {} of page {:#x} left it {}: {}", backing_->name(), operation, gpa,
                  StateName(states_[page]), status.message());
  const std::optional<ErrorKind> kind = guestmem::GetErrorKind(status);
  return kind.has_value() ? guestmem::MakeError(*kind, message)
                          : absl::Status(status.code(), message);
}

absl::Status TdxModel::ZeroPage(uint64_t page) {
  return backing_->RewriteUnviewed(
      page << kPageShift, guestmem::kPageSize,
      [](absl::Span<uint8_t> bytes) { std::memset(bytes.data(), 0, bytes.size()); });
}

absl::Status TdxModel::Transition(const char* operation, const std::vector<uint64_t>& pages,
                                  TdxPageState state, bool zero) {
  // First take every page out of both views (the step a pinned page makes fail), undoing the
  // pages already done on failure: they had no view during the undo, so it cannot fail.
  for (size_t i = 0; i < pages.size(); ++i) {
    absl::Status status = SetViews(operation, pages[i], TdxPageState::kPending);
    if (status.ok()) continue;
    for (size_t j = 0; j < i; ++j) (void)SetViews(operation, pages[j], states_[pages[j]]);
    return status;
  }
  for (uint64_t page : pages) {
    if (zero) CVMBUS_RETURN_IF_ERROR(ZeroPage(page));
    states_[page] = state;
  }
  if (state == TdxPageState::kPending) return absl::OkStatus();
  for (uint64_t page : pages) CVMBUS_RETURN_IF_ERROR(SetViews(operation, page, state));
  return absl::OkStatus();
}

absl::Status TdxModel::AddLaunchPages(uint64_t gpa, uint64_t len) {
  std::vector<uint64_t> pages;
  MutexLock lock(&mu_);
  for (uint64_t at = gpa; len != 0 && at - gpa < len; at += guestmem::kPageSize) {
    const uint64_t page = at >> kPageShift;
    if (((gpa | len) & guestmem::kPageMask) != 0 || !Present(page) ||
        states_[page] != TdxPageState::kPending) {
      return guestmem::MakeError(
          ErrorKind::kInvalidArgument,
          fmt::format("tdx '{}': add launch pages [{:#x}, +{:#x}): page {:#x} is not an aligned "
                      "pending page",
                      backing_->name(), gpa, len, at));
    }
    pages.push_back(page);
  }
  return Transition("TDH.MEM.PAGE.ADD", pages, TdxPageState::kAccepted, /*zero=*/false);
}

absl::Status TdxModel::MapGpa(uint64_t gpa, uint64_t size) {
  const auto fail = [&](uint64_t code, absl::StatusCode status_code, std::string_view why) {
    return MakeIsolationError(status_code, {IsolationErrorKind::kTdxVmcall, code},
                              fmt::format("tdx '{}': MapGPA({:#x}, {:#x}) returned R10 = {:#x}: {}",
                                          backing_->name(), gpa, size, code, why));
  };
  if (((gpa | size) & guestmem::kPageMask) != 0) {
    return fail(tdx::kVmcallAlignError, absl::StatusCode::kInvalidArgument, "not 4 KiB aligned");
  }
  const bool to_shared = (gpa & shared_mask_) != 0;
  const uint64_t base = gpa & ~shared_mask_;
  if ((gpa & ~((shared_mask_ << 1) - 1)) != 0 || size == 0 || base + size < base ||
      base + size > backing_->limit_bytes()) {
    return fail(tdx::kVmcallInvalidOperand, absl::StatusCode::kInvalidArgument,
                "not a range of guest memory");
  }
  std::vector<uint64_t> pages;
  MutexLock lock(&mu_);
  for (uint64_t page = base >> kPageShift; page < (base + size) >> kPageShift; ++page) {
    if (!Present(page)) {
      return fail(tdx::kVmcallInvalidOperand, absl::StatusCode::kInvalidArgument,
                  fmt::format("page {:#x} is not guest memory", page << kPageShift));
    }
    if ((states_[page] == TdxPageState::kShared) != to_shared) pages.push_back(page);
  }
  // To shared: the private contents go (zeroed before the host sees the page). To private: the
  // VMM adds a pending page; ACCEPT zeroes it.
  return Transition("MapGPA", pages, to_shared ? TdxPageState::kShared : TdxPageState::kPending,
                    /*zero=*/to_shared);
}

absl::Status TdxModel::Accept(uint64_t gpa, PageLevel level) {
  const auto fail = [&](IsolationErrorKind kind, uint64_t code, absl::StatusCode status_code,
                        std::string_view why) {
    return MakeIsolationError(
        status_code, {kind, code},
        fmt::format("tdx '{}': TDG.MEM.PAGE.ACCEPT({:#x}, level {}) failed ({:#018x}): {}",
                    backing_->name(), gpa, static_cast<uint64_t>(level), code, why));
  };
  const uint64_t level_value = static_cast<uint64_t>(level);
  if (level_value > 2 || (gpa & shared_mask_) != 0 || (gpa >> 52) != 0 ||
      (gpa & (tdx::LevelBytes(level) - 1)) != 0) {
    return fail(IsolationErrorKind::kTdxStatus, tdx::kTdxOperandInvalid,
                absl::StatusCode::kInvalidArgument, "bad level, alignment or shared GPA");
  }
  MutexLock lock(&mu_);
  const uint64_t page = gpa >> kPageShift;
  if (!Present(page) || states_[page] == TdxPageState::kShared) {
    return fail(IsolationErrorKind::kTdxEptViolation, tdx::kExitReasonEptViolation,
                absl::StatusCode::kFailedPrecondition,
                "no private page is mapped there (MapGPA it to private first)");
  }
  if (level != PageLevel::k4K) {
    return fail(IsolationErrorKind::kTdxStatus, tdx::kTdxPageSizeMismatch,
                absl::StatusCode::kFailedPrecondition, "the VMM mapped the range with 4 KiB pages");
  }
  if (states_[page] == TdxPageState::kAccepted) {
    return fail(IsolationErrorKind::kTdxStatus, tdx::kTdxPageAlreadyAccepted,
                absl::StatusCode::kAlreadyExists, "the page is already accepted");
  }
  return Transition("TDG.MEM.PAGE.ACCEPT", {page}, TdxPageState::kAccepted, /*zero=*/true);
}

absl::Status TdxModel::ConvertToShared(uint64_t gpa, uint64_t len) {
  return MapGpa(gpa | shared_mask_, len);
}

absl::Status TdxModel::ConvertToPrivate(uint64_t gpa, uint64_t len) {
  CVMBUS_RETURN_IF_ERROR(MapGpa(gpa, len));
  for (uint64_t at = gpa; at < gpa + len; at += guestmem::kPageSize) {
    CVMBUS_RETURN_IF_ERROR(Accept(at, PageLevel::k4K));
  }
  return absl::OkStatus();
}

absl::StatusOr<TdxPageState> TdxModel::PageState(uint64_t gpa) const {
  if (!Present(gpa >> kPageShift)) {
    return guestmem::MakeError(
        ErrorKind::kOutOfRange,
        fmt::format("tdx '{}': state of {:#x}: not guest memory", backing_->name(), gpa));
  }
  MutexLock lock(&mu_);
  return states_[gpa >> kPageShift];
}

}  // namespace cvmbus::hw::isolation
