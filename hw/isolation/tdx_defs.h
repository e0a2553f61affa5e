// Intel TDX architectural numbers used by the TDX memory model.
//
// Sources (checked against public copies): Intel TDX Module ABI / "TDX Module Spec"
// (TDG.MEM.PAGE.ACCEPT, completion status codes) as mirrored in intel/tdx-module
// auto_gen/tdx_error_codes_defs.h, Linux arch/x86/coco/tdx and OpenVMM
// vm/x86/x86defs/src/tdx.rs; Intel TDX GHCI (TDG.VP.VMCALL<MapGPA> and its R10 status codes).
#ifndef CVMBUS_HW_ISOLATION_TDX_DEFS_H_
#define CVMBUS_HW_ISOLATION_TDX_DEFS_H_

#include <cstdint>

namespace cvmbus::hw::isolation::tdx {

// TDCALL leaf of TDG.MEM.PAGE.ACCEPT, and the TDG.VP.VMCALL sub-function of MapGPA.
inline constexpr uint64_t kTdcallMemPageAccept = 6;
inline constexpr uint64_t kVmcallMapGpa = 0x10001;

// The level operand of TDG.MEM.PAGE.ACCEPT (RCX bits 2:0).
enum class PageLevel : uint64_t { k4K = 0, k2M = 1, k1G = 2 };

inline constexpr uint64_t LevelBytes(PageLevel level) {
  return uint64_t{1} << (12 + 9 * static_cast<uint64_t>(level));
}

// TDCALL completion status in RAX: class and details in bits 63:32. Bit 63 set = error; a clear
// bit 63 with a non-zero code (TDX_PAGE_ALREADY_ACCEPTED) is a warning, still not success.
inline constexpr uint64_t kTdxSuccess = 0;
inline constexpr uint64_t kTdxOperandInvalid = 0xC000010000000000;
inline constexpr uint64_t kTdxPageAlreadyAccepted = 0x00000B0A00000000;
inline constexpr uint64_t kTdxPageSizeMismatch = 0xC0000B0B00000000;

// TDG.VP.VMCALL status in R10 (GHCI).
inline constexpr uint64_t kVmcallSuccess = 0;
inline constexpr uint64_t kVmcallRetry = 1;
inline constexpr uint64_t kVmcallInvalidOperand = 0x8000000000000000;
inline constexpr uint64_t kVmcallAlignError = 0x8000000000000002;

// Basic exit reason of an EPT violation, what a TD exit or a #VE reports for an access with no
// usable mapping.
inline constexpr uint64_t kExitReasonEptViolation = 48;

}  // namespace cvmbus::hw::isolation::tdx

#endif  // CVMBUS_HW_ISOLATION_TDX_DEFS_H_
