// The tables a 64-bit long-mode vCPU needs before its first instruction, as bytes for guest
// memory: a GDT (with a 64-bit TSS) and identity-mapping page tables. Pure: no KVM here;
// KvmVm::StartVcpu(LongModeEntry) writes them and points the vCPU's registers at them.
//
// Layout at `tables_gpa` (4 KiB-aligned), one 4 KiB page each:
//   page 0      GDT at +0: null, kLongModeCodeSelector (64-bit code, DPL 0),
//               kLongModeDataSelector (flat read/write data), kLongModeTssSelector (a 16-byte
//               busy 64-bit TSS descriptor); the 104-byte TSS itself at +kTssOffset, all zero
//               but its I/O-map base (104: no I/O bitmap).
//   page 1      PML4: entry 0 -> the PDPT.
//   page 2      PDPT: entry i -> page directory i, one per GiB mapped.
//   pages 3...  page directories: 2 MiB pages (PS), present, writable, supervisor, write-back.
// GPA x maps to linear address x for every x below identity_map_bytes.
#ifndef CVMBUS_HW_KVM_LONG_MODE_H_
#define CVMBUS_HW_KVM_LONG_MODE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace cvmbus::hw::kvm {

inline constexpr uint16_t kLongModeCodeSelector = 0x08;
inline constexpr uint16_t kLongModeDataSelector = 0x10;
inline constexpr uint16_t kLongModeTssSelector = 0x18;
inline constexpr uint64_t kLongModeGdtLimit = 0x27;  // 5 descriptors of 8 bytes, minus 1.
inline constexpr uint64_t kLongModeTssOffset = 0x100;
inline constexpr uint64_t kLongModeTssLimit = 0x67;

// At least 4 GiB is mapped so that MMIO addresses below 4 GiB (an MMIO ioeventfd) are
// reachable; at most one PDPT (512 GiB).
inline constexpr uint64_t kMinIdentityMapBytes = uint64_t{4} << 30;
inline constexpr uint64_t kMaxIdentityMapBytes = uint64_t{512} << 30;

// How much to map for guest memory ending at `memory_end_gpa`: that, rounded up to 1 GiB, and
// at least kMinIdentityMapBytes (may exceed kMaxIdentityMapBytes: BuildLongModeTables refuses).
uint64_t IdentityMapBytesFor(uint64_t memory_end_gpa);

// The size of the tables for `identity_map_bytes` (a multiple of 1 GiB): 3 pages + 1 per GiB.
uint64_t LongModeTablesBytes(uint64_t identity_map_bytes);

struct LongModeTables {
  uint64_t gpa = 0;            // Where `bytes` go: the tables_gpa asked for.
  std::vector<uint8_t> bytes;  // LongModeTablesBytes(identity_map_bytes) of them.
  uint64_t cr3 = 0;            // The PML4's GPA.
  uint64_t gdt_base = 0;
  uint64_t tss_base = 0;
};

// kInvalidArgument if tables_gpa is not 4 KiB-aligned, identity_map_bytes is not a nonzero
// multiple of 1 GiB or exceeds kMaxIdentityMapBytes, or the tables would wrap the address space.
absl::StatusOr<LongModeTables> BuildLongModeTables(uint64_t tables_gpa,
                                                   uint64_t identity_map_bytes);

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_LONG_MODE_H_
