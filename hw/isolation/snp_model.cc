#include "hw/isolation/snp_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <utility>

#include "base/format.h"
#include "base/mutex.h"
#include "base/status_macros.h"
#include "guestmem/errors.h"
#include "hw/isolation/ciphertext.h"
#include "hw/isolation/errors.h"

namespace cvmbus::hw::isolation {
namespace {

using guestmem::Access;
using guestmem::ErrorKind;
using snp::PageSize;
using snp::PvalidateResult;
namespace fault = snp::fault;

constexpr uint64_t kPageShift = 12;
constexpr uint64_t k2MPageShift = 21;

uint64_t RandomKey() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device() ^ 0x5eed;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SnpModel>> SnpModel::Create(
    std::shared_ptr<guestmem::MemoryBacking> backing, SnpOptions options) {
  if (backing == nullptr) {
    return guestmem::MakeError(ErrorKind::kInvalidArgument, "snp: no memory backing");
  }
  const uint64_t limit = backing->limit_bytes();
  if (options.vtom != 0) {
    if (options.vtom % snp::kPage2MBytes != 0 || options.vtom < limit ||
        options.vtom > ~uint64_t{0} - limit) {
      return guestmem::MakeError(
          ErrorKind::kInvalidArgument,
          fmt::format("snp '{}': vTOM {:#x} must be 2 MiB-aligned and at least the memory "
                      "limit {:#x}",
                      backing->name(), options.vtom, limit));
    }
  } else if (options.c_bit_position >= 63 || (limit - 1) >> options.c_bit_position != 0) {
    return guestmem::MakeError(
        ErrorKind::kInvalidArgument,
        fmt::format("snp '{}': C-bit {} must be below 63 and above every GPA (limit {:#x})",
                    backing->name(), options.c_bit_position, limit));
  }
  if (options.ciphertext_key == 0) options.ciphertext_key = RandomKey();
  std::unique_ptr<SnpModel> model(new SnpModel(std::move(backing), options));
  for (const guestmem::RegionMapping& region : model->backing_->regions()) {
    CVMBUS_RETURN_IF_ERROR(model->backing_->SetAccess(region.gpa, region.size_bytes, Access::kNone,
                                                      Access::kReadWrite));
  }
  return model;
}

SnpModel::SnpModel(std::shared_ptr<guestmem::MemoryBacking> backing, SnpOptions options)
    : backing_(std::move(backing)),
      options_(options),
      private_view_(guestmem::GuestMemory::Private(backing_)),
      untrusted_view_(guestmem::GuestMemory::Untrusted(backing_)),
      page_count_(backing_->limit_bytes() >> kPageShift),
      pages_(page_count_),
      nested_size_((backing_->limit_bytes() + snp::kPage2MBytes - 1) >> k2MPageShift,
                   PageSize::k4K) {}

uint64_t SnpModel::PrivateAddress(uint64_t gpa) const {
  return vtom_mode() ? gpa : gpa | uint64_t{1} << options_.c_bit_position;
}

uint64_t SnpModel::SharedAddress(uint64_t gpa) const {
  return vtom_mode() ? gpa + options_.vtom : gpa;
}

bool SnpModel::Present(uint64_t page) const {
  return page < page_count_ &&
         backing_->GetAccess(guestmem::View::kPrivate, page << kPageShift).ok();
}

uint64_t SnpModel::Governing(uint64_t page) const {
  const uint64_t head = page & ~(snp::kPagesPer2M - 1);
  const RmpEntry& entry = pages_[head].entry;
  return entry.assigned && entry.page_size == PageSize::k2M ? head : page;
}

absl::Status SnpModel::CheckRange(const char* operation, uint64_t gpa, uint64_t len) const {
  const auto error = [&](ErrorKind kind, std::string_view why) {
    return guestmem::MakeError(kind, fmt::format("snp '{}': {} [{:#x}, +{:#x}): {}",
                                                 backing_->name(), operation, gpa, len, why));
  };
  if (len == 0 || ((gpa | len) & guestmem::kPageMask) != 0) {
    return error(ErrorKind::kInvalidArgument, "not a non-empty 4 KiB-aligned range");
  }
  if (gpa + len < gpa || gpa + len > backing_->limit_bytes()) {
    return error(ErrorKind::kOutOfRange, "past the end of guest memory");
  }
  for (uint64_t page = gpa >> kPageShift; page < (gpa + len) >> kPageShift; ++page) {
    if (!Present(page)) {
      return error(ErrorKind::kOutOfRange, fmt::format("page {:#x} is a hole", page << 12));
    }
  }
  return absl::OkStatus();
}

SnpModel::Decoded SnpModel::DecodeGuest(uint64_t guest_address) const {
  if (vtom_mode()) {
    const bool below_vtom = guest_address < options_.vtom;
    return {below_vtom ? guest_address : guest_address - options_.vtom, below_vtom};
  }
  const uint64_t c_bit = uint64_t{1} << options_.c_bit_position;
  return {guest_address & ~c_bit, (guest_address & c_bit) != 0};
}

uint64_t SnpModel::HostGpa(uint64_t address) const {
  return vtom_mode() && address >= options_.vtom ? address - options_.vtom : address;
}

absl::Status SnpModel::GuestCheck(uint64_t gpa, uint64_t len, bool encrypted, bool write) const {
  if (len == 0) return absl::OkStatus();
  const uint64_t write_bit = write ? fault::kWrite : 0;
  const auto npf = [&](uint64_t code, uint64_t page_gpa, std::string_view why) {
    return MakeIsolationError(
        absl::StatusCode::kPermissionDenied, {IsolationErrorKind::kNestedPageFault, code},
        fmt::format("snp '{}': #NPF {:#x} on guest {} C={} [{:#x}, +{:#x}): page {:#x} {}",
                    backing_->name(), code, write ? "write" : "read", encrypted ? 1 : 0, gpa, len,
                    page_gpa, why));
  };
  if (gpa + len < gpa || gpa + len > backing_->limit_bytes()) {
    return npf(fault::kFinal | write_bit, gpa, "has no nested mapping");
  }
  for (uint64_t page = gpa >> kPageShift; page <= (gpa + len - 1) >> kPageShift; ++page) {
    const uint64_t page_gpa = page << kPageShift;
    if (!Present(page)) return npf(fault::kFinal | write_bit, page_gpa, "has no nested mapping");
    const uint64_t governing = Governing(page);
    const RmpEntry& entry = pages_[governing].entry;
    const uint64_t base = fault::kFinal | fault::kPresent | fault::kRmp | write_bit;
    if (!encrypted) {
      // A C=0 access is checked like a host access: the page must be hypervisor-owned.
      if (entry.assigned) return npf(base, page_gpa, "is assigned to the guest");
      continue;
    }
    if (!entry.assigned || entry.immutable || entry.guest_gpa != governing << kPageShift) {
      return npf(
          base | fault::kEnc, page_gpa,
          entry.assigned ? "is immutable or assigned at another GPA" : "is hypervisor-owned");
    }
    if (entry.page_size == PageSize::k2M && nested_size_[page >> 9] == PageSize::k4K) {
      return npf(base | fault::kEnc | fault::kSizeMismatch, page_gpa,
                 "has a 2 MiB RMP entry but a 4 KiB nested mapping");
    }
    if (!entry.validated) {
      return MakeIsolationError(
          absl::StatusCode::kPermissionDenied,
          {IsolationErrorKind::kVmmCommunication, snp::kVcPageNotValidated},
          fmt::format("snp '{}': #VC {:#x} (page not validated) on guest {} [{:#x}, +{:#x}): "
                      "page {:#x}",
                      backing_->name(), snp::kVcPageNotValidated, write ? "write" : "read", gpa,
                      len, page_gpa));
    }
  }
  return absl::OkStatus();
}

absl::Status SnpModel::GuestRead(uint64_t guest_address, absl::Span<uint8_t> out) const {
  const Decoded decoded = DecodeGuest(guest_address);
  MutexLock lock(&mu_);
  CVMBUS_RETURN_IF_ERROR(GuestCheck(decoded.gpa, out.size(), decoded.encrypted, false));
  return (decoded.encrypted ? private_view_ : untrusted_view_).Read(decoded.gpa, out);
}

absl::Status SnpModel::GuestWrite(uint64_t guest_address, absl::Span<const uint8_t> in) const {
  const Decoded decoded = DecodeGuest(guest_address);
  MutexLock lock(&mu_);
  CVMBUS_RETURN_IF_ERROR(GuestCheck(decoded.gpa, in.size(), decoded.encrypted, true));
  return (decoded.encrypted ? private_view_ : untrusted_view_).Write(decoded.gpa, in);
}

absl::Status SnpModel::HostRead(uint64_t gpa, absl::Span<uint8_t> out) const {
  const uint64_t host_gpa = HostGpa(gpa);
  if (out.empty() || host_gpa + out.size() < host_gpa ||
      host_gpa + out.size() > page_count_ << 12) {
    return untrusted_view_.Read(host_gpa, out);  // The precise range error, or nothing to do.
  }
  MutexLock lock(&mu_);
  size_t done = 0;
  while (done < out.size()) {
    const uint64_t at = host_gpa + done;
    const size_t chunk =
        std::min<uint64_t>(out.size() - done, guestmem::kPageSize - (at & guestmem::kPageMask));
    const absl::Span<uint8_t> piece = out.subspan(done, chunk);
    const uint64_t page = at >> kPageShift;
    if (Present(page) && pages_[Governing(page)].entry.assigned) {
      // Reads are not RMP-checked; without the guest's key the host sees ciphertext.
      internal::FillCiphertext(options_.ciphertext_key, at, pages_[Governing(page)].epoch, piece);
    } else {
      CVMBUS_RETURN_IF_ERROR(untrusted_view_.Read(at, piece));
    }
    done += chunk;
  }
  return absl::OkStatus();
}

absl::Status SnpModel::HostWrite(uint64_t gpa, absl::Span<const uint8_t> in) const {
  const uint64_t host_gpa = HostGpa(gpa);
  MutexLock lock(&mu_);
  if (!in.empty() && host_gpa + in.size() > host_gpa) {
    const uint64_t last = std::min((host_gpa + in.size() - 1) >> kPageShift, page_count_ - 1);
    for (uint64_t page = host_gpa >> kPageShift; page <= last; ++page) {
      if (!Present(page) || !pages_[Governing(page)].entry.assigned) continue;
      const uint64_t code = fault::kPresent | fault::kWrite | fault::kRmp;
      return MakeIsolationError(
          absl::StatusCode::kPermissionDenied, {IsolationErrorKind::kRmpPageFault, code},
          fmt::format("snp '{}': RMP #PF {:#x} on host write [{:#x}, +{:#x}): page {:#x} is "
                      "assigned to the guest",
                      backing_->name(), code, gpa, in.size(), page << kPageShift));
    }
  }
  return untrusted_view_.Write(host_gpa, in);
}

absl::StatusOr<PvalidateResult> SnpModel::Pvalidate(uint64_t gpa, PageSize size, bool validate) {
  if (static_cast<uint32_t>(size) > 1 || (gpa & (PageBytes(size) - 1)) != 0) {
    return PvalidateResult::kFailInput;
  }
  MutexLock lock(&mu_);
  const uint64_t page = gpa >> kPageShift;
  const auto npf = [&](uint64_t code, std::string_view why) {
    return MakeIsolationError(
        absl::StatusCode::kPermissionDenied, {IsolationErrorKind::kNestedPageFault, code},
        fmt::format("snp '{}': #NPF {:#x} on PVALIDATE({:#x}, {}, {}): {}", backing_->name(), code,
                    gpa, PageBytes(size) >> 10, validate ? 1 : 0, why));
  };
  if (!Present(page)) return npf(fault::kFinal, "no nested mapping");
  // A 2 MiB PVALIDATE consults the entry of its 2 MiB-aligned page; a 4 KiB one the entry
  // that governs its page, which may be a 2 MiB entry.
  const uint64_t governing = size == PageSize::k4K ? Governing(page) : page;
  Page& record = pages_[governing];
  const uint64_t base = fault::kFinal | fault::kPresent | fault::kRmp;
  if (!record.entry.assigned || record.entry.immutable ||
      record.entry.guest_gpa != governing << kPageShift) {
    return npf(base, "the page is not assigned to the guest at this GPA, or is immutable");
  }
  if (record.entry.page_size == PageSize::k2M && size == PageSize::k4K) {
    return npf(base | fault::kSizeMismatch, "4 KiB PVALIDATE of a 2 MiB RMP entry");
  }
  if (record.entry.page_size == PageSize::k4K && size == PageSize::k2M) {
    return PvalidateResult::kFailSizeMismatch;
  }
  if (record.entry.validated == validate) {
    return MakeIsolationError(
        absl::StatusCode::kFailedPrecondition, {IsolationErrorKind::kPvalidateNoUpdate, 0},
        fmt::format("snp '{}': PVALIDATE({:#x}, {}, {}) made no update (rFLAGS.CF = 1): the "
                    "page is already {}",
                    backing_->name(), gpa, PageBytes(size) >> 10, validate ? 1 : 0,
                    validate ? "validated" : "not validated"));
  }
  const uint64_t range_gpa = governing << kPageShift;
  const uint64_t range_len = PageBytes(record.entry.page_size);
  if (validate) {
    record.entry.validated = true;
    if (absl::Status status = SetViews("PVALIDATE", range_gpa, range_len, SnpPageState::kValidated);
        !status.ok()) {
      record.entry.validated = false;
      return status;
    }
  } else {
    CVMBUS_RETURN_IF_ERROR(SetViews("PVALIDATE", range_gpa, range_len, SnpPageState::kAssigned));
    record.entry.validated = false;
  }
  return PvalidateResult::kSuccess;
}

absl::Status SnpModel::LaunchUpdate(uint64_t gpa, uint64_t len) {
  CVMBUS_RETURN_IF_ERROR(CheckRange("launch update", gpa, len));
  MutexLock lock(&mu_);
  for (uint64_t page = gpa >> kPageShift; page < (gpa + len) >> kPageShift; ++page) {
    const RmpEntry& entry = pages_[Governing(page)].entry;
    if (entry.assigned || entry.immutable) {
      return guestmem::MakeError(
          ErrorKind::kInvalidArgument,
          fmt::format("snp '{}': launch update [{:#x}, +{:#x}): page {:#x} is not hypervisor-owned",
                      backing_->name(), gpa, len, page << kPageShift));
    }
  }
  // Through "no view" so that no host store in flight lands after the guest can read.
  CVMBUS_RETURN_IF_ERROR(SetViews("launch update", gpa, len, SnpPageState::kAssigned));
  for (uint64_t page = gpa >> kPageShift; page < (gpa + len) >> kPageShift; ++page) {
    pages_[page].entry = {true, true, false, PageSize::k4K, page << kPageShift};
    ++pages_[page].epoch;
  }
  return SetViews("launch update", gpa, len, SnpPageState::kValidated);
}

absl::Status SnpModel::SetViews(const char* operation, uint64_t gpa, uint64_t len,
                                SnpPageState state) {
  Access private_access = Access::kNone;
  Access untrusted_access = Access::kNone;
  if (state == SnpPageState::kValidated) private_access = Access::kReadWrite;
  if (state == SnpPageState::kHypervisorOwned) untrusted_access = Access::kReadWrite;
  absl::Status status = backing_->SetAccess(gpa, len, private_access, untrusted_access);
  if (status.ok()) return status;
  const std::optional<ErrorKind> kind = guestmem::GetErrorKind(status);
  const std::string message = fmt::format("snp '{}': {} [{:#x}, +{:#x}) left the RMP unchanged: {}",
                                          backing_->name(), operation, gpa, len, status.message());
  return kind.has_value() ? guestmem::MakeError(*kind, message)
                          : absl::Status(status.code(), message);
}

absl::Status SnpModel::Zero(uint64_t gpa, uint64_t len) {
  return backing_->RewriteUnviewed(
      gpa, len, [](absl::Span<uint8_t> bytes) { std::memset(bytes.data(), 0, bytes.size()); });
}

absl::Status SnpModel::Encrypt(uint64_t gpa, uint64_t len) {
  for (uint64_t page = gpa >> kPageShift; page < (gpa + len) >> kPageShift; ++page) {
    const uint64_t epoch = pages_[Governing(page)].epoch;
    CVMBUS_RETURN_IF_ERROR(backing_->RewriteUnviewed(
        page << kPageShift, guestmem::kPageSize, [&](absl::Span<uint8_t> bytes) {
          internal::FillCiphertext(options_.ciphertext_key, page << kPageShift, epoch, bytes);
        }));
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::hw::isolation
