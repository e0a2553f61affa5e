// SEV-SNP architectural numbers and the GHCB MSR page-state-change encoding.
//
// Sources (checked against public copies, see the comment at each group):
//   AMD64 APM vol. 2 section 15.36 "Secure Nested Paging (SEV-SNP)" and vol. 3 (PVALIDATE,
//   RMPUPDATE); GHCB specification (AMD pub. 56421) section 2.3.1 "GHCB MSR Protocol", "SNP
//   Page State Change"; Linux arch/x86/include/asm/{sev.h,sev-common.h,kvm_host.h}.
#ifndef CVMBUS_HW_ISOLATION_SNP_DEFS_H_
#define CVMBUS_HW_ISOLATION_SNP_DEFS_H_

#include <cstdint>

namespace cvmbus::hw::isolation::snp {

inline constexpr uint64_t kPage4KBytes = uint64_t{1} << 12;
inline constexpr uint64_t kPage2MBytes = uint64_t{1} << 21;
inline constexpr uint64_t kPagesPer2M = kPage2MBytes / kPage4KBytes;

// The page-size operand of PVALIDATE (rCX) and the RMP entry's page-size field.
enum class PageSize : uint32_t { k4K = 0, k2M = 1 };

inline constexpr uint64_t PageBytes(PageSize size) {
  return size == PageSize::k2M ? kPage2MBytes : kPage4KBytes;
}

// PVALIDATE status in EAX (APM vol. 3 "PVALIDATE"; Linux asm/sev.h; MSVC __pvalidate docs).
// rFLAGS.CF = 1 with EAX = 0 means "no update": the validated bit already had the requested
// value. The model reports that as an error (IsolationErrorKind::kPvalidateNoUpdate), never as
// a value.
enum class PvalidateResult : uint32_t { kSuccess = 0, kFailInput = 1, kFailSizeMismatch = 6 };

// RMPUPDATE status in EAX (Linux include/linux/sev.h, "Return code of RMPUPDATE").
enum class RmpUpdateResult : uint32_t {
  kSuccess = 0,
  kFailInput = 1,
  kFailPermission = 2,  // The entry is immutable.
  kFailInUse = 3,
  kFailOverlap = 4,  // A 2 MiB update overlaps assigned 4 KiB entries, or the reverse.
};

// #VC error code for a C=1 access to an assigned page that is not validated (APM vol. 2
// 15.36, #VC error codes; Linux KVM selftests SVM_EXIT_NOT_VALIDATED).
inline constexpr uint64_t kVcPageNotValidated = 0x404;

// Error-code bits of a nested page fault (#NPF, EXITINFO1) and of a host #PF raised by an RMP
// check (APM vol. 2 15.36, RMP checks; Linux PFERR_GUEST_{RMP,FINAL,ENC,SIZEM}_BIT = 31, 32, 34,
// 35).
namespace fault {
inline constexpr uint64_t kPresent = uint64_t{1} << 0;  // The translation exists.
inline constexpr uint64_t kWrite = uint64_t{1} << 1;
inline constexpr uint64_t kRmp = uint64_t{1} << 31;           // An RMP check failed.
inline constexpr uint64_t kFinal = uint64_t{1} << 32;         // On the final GPA, not a table walk.
inline constexpr uint64_t kEnc = uint64_t{1} << 34;           // The access was encrypted (C = 1).
inline constexpr uint64_t kSizeMismatch = uint64_t{1} << 35;  // RMP vs. access page size.
}  // namespace fault

// GHCB MSR protocol (GHCB spec 2.3.1): GHCBInfo in bits 11:0, GHCBData in bits 63:12.
inline constexpr uint64_t kGhcbInfoMask = 0xfff;
inline constexpr uint64_t kGhcbMsrPscRequest = 0x014;
inline constexpr uint64_t kGhcbMsrPscResponse = 0x015;

// SNP Page State Change request: GFN in bits 51:12, operation in bits 55:52.
enum class PscOperation : uint8_t { kPrivate = 1, kShared = 2 };
inline constexpr unsigned kPscGfnShift = 12;
inline constexpr uint64_t kPscGfnMask = (uint64_t{1} << 40) - 1;  // 40 bits: 51:12.
inline constexpr unsigned kPscOperationShift = 52;
inline constexpr uint64_t kPscOperationMask = 0xf;
inline constexpr unsigned kPscErrorShift = 32;  // Response: error code in bits 63:32.

inline constexpr uint64_t EncodePscRequest(uint64_t gfn, PscOperation operation) {
  return (static_cast<uint64_t>(operation) & kPscOperationMask) << kPscOperationShift |
         (gfn & kPscGfnMask) << kPscGfnShift | kGhcbMsrPscRequest;
}
inline constexpr uint64_t PscRequestGfn(uint64_t msr) {
  return (msr >> kPscGfnShift) & kPscGfnMask;
}
inline constexpr uint64_t PscRequestOperation(uint64_t msr) {
  return (msr >> kPscOperationShift) & kPscOperationMask;
}
inline constexpr uint64_t EncodePscResponse(uint32_t error) {
  return uint64_t{error} << kPscErrorShift | kGhcbMsrPscResponse;
}
inline constexpr uint32_t PscResponseError(uint64_t msr) {
  return static_cast<uint32_t>(msr >> kPscErrorShift);
}

// Known answers, worked out with the layout of Linux's GHCB_MSR_PSC_REQ_GFN / _RESP_VAL.
static_assert(EncodePscRequest(0x12345, PscOperation::kShared) == 0x0020000012345014);
static_assert(EncodePscRequest(0xff'ffff'ffff, PscOperation::kPrivate) == 0x001ffffffffff014);
static_assert(PscRequestGfn(0x0020000012345014) == 0x12345);
static_assert(PscRequestOperation(0x0020000012345014) == 2);
static_assert(EncodePscResponse(7) == 0x0000000700000015);

// Non-zero PSC error codes are the hypervisor's to define (GHCB spec 2.3.1); these are the
// emulated host's. An RMPUPDATE failure is reported as kPscErrorRmpUpdate | its status.
inline constexpr uint32_t kPscErrorBadRequest = 0x100;      // Not a PSC, bad operation, no GFN.
inline constexpr uint32_t kPscErrorStillValidated = 0x101;  // Shared while still validated.
inline constexpr uint32_t kPscErrorPinned = 0x102;          // A device has pinned the page.
inline constexpr uint32_t kPscErrorRmpUpdate = 0x200;       // | RmpUpdateResult.

}  // namespace cvmbus::hw::isolation::snp

#endif  // CVMBUS_HW_ISOLATION_SNP_DEFS_H_
