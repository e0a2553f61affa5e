#include "hw/kvm/long_mode.h"

#include <fmt/format.h>

#include <cstring>

namespace cvmbus::hw::kvm {
namespace {

constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t k2MiB = uint64_t{1} << 21;

// Page-table entry bits (SDM Vol. 3A 4.5).
constexpr uint64_t kPresent = 1 << 0;
constexpr uint64_t kWritable = 1 << 1;
constexpr uint64_t kLargePage = 1 << 7;  // PS in a page-directory entry: a 2 MiB page.

// Segment descriptors (SDM Vol. 3A 3.4.5). Accessed bits preset: the CPU never writes them.
constexpr uint64_t kCode64Descriptor = 0x00af9b000000ffff;  // L, G, P, DPL 0, execute/read.
constexpr uint64_t kDataDescriptor = 0x00cf93000000ffff;    // D/B, G, P, DPL 0, read/write.
constexpr uint64_t kTssBusyType = 0xb;
constexpr uint16_t kTssIoMapBase = 104;  // = the TSS size: no I/O permission bitmap.

void Put64(std::vector<uint8_t>& bytes, uint64_t offset, uint64_t value) {
  std::memcpy(bytes.data() + offset, &value, sizeof(value));
}

}  // namespace

uint64_t IdentityMapBytesFor(uint64_t memory_end_gpa) {
  const uint64_t rounded = (memory_end_gpa + kGiB - 1) / kGiB * kGiB;
  return rounded < kMinIdentityMapBytes ? kMinIdentityMapBytes : rounded;
}

uint64_t LongModeTablesBytes(uint64_t identity_map_bytes) {
  return (3 + identity_map_bytes / kGiB) * kPageBytes;
}

absl::StatusOr<LongModeTables> BuildLongModeTables(uint64_t tables_gpa,
                                                   uint64_t identity_map_bytes) {
  if (tables_gpa % kPageBytes != 0) {
    return absl::InvalidArgumentError(
        fmt::format("long-mode tables at gpa {:#x}: not 4 KiB-aligned", tables_gpa));
  }
  if (identity_map_bytes == 0 || identity_map_bytes % kGiB != 0 ||
      identity_map_bytes > kMaxIdentityMapBytes) {
    return absl::InvalidArgumentError(
        fmt::format("long-mode identity map of {:#x} bytes: not a multiple of 1 GiB in "
                    "[1 GiB, 512 GiB]",
                    identity_map_bytes));
  }
  const uint64_t size = LongModeTablesBytes(identity_map_bytes);
  if (tables_gpa + size < tables_gpa) {
    return absl::InvalidArgumentError(fmt::format(
        "long-mode tables at gpa {:#x} (+{:#x}) wrap the address space", tables_gpa, size));
  }
  LongModeTables tables;
  tables.gpa = tables_gpa;
  tables.bytes.assign(size, 0);
  tables.gdt_base = tables_gpa;
  tables.tss_base = tables_gpa + kLongModeTssOffset;
  const uint64_t pml4 = tables_gpa + 1 * kPageBytes;
  const uint64_t pdpt = tables_gpa + 2 * kPageBytes;
  tables.cr3 = pml4;

  // The GDT.
  Put64(tables.bytes, kLongModeCodeSelector, kCode64Descriptor);
  Put64(tables.bytes, kLongModeDataSelector, kDataDescriptor);
  const uint64_t tss = tables.tss_base;
  const uint64_t tss_low = (kLongModeTssLimit & 0xffff) | (tss & 0xffffff) << 16 |
                           kTssBusyType << 40 | uint64_t{1} << 47 /* P */ |
                           ((kLongModeTssLimit >> 16) & 0xf) << 48 | ((tss >> 24) & 0xff) << 56;
  Put64(tables.bytes, kLongModeTssSelector, tss_low);
  Put64(tables.bytes, kLongModeTssSelector + 8, tss >> 32);
  std::memcpy(tables.bytes.data() + kLongModeTssOffset + 0x66, &kTssIoMapBase,
              sizeof(kTssIoMapBase));

  // The page tables.
  Put64(tables.bytes, 1 * kPageBytes, pdpt | kPresent | kWritable);
  const uint64_t gibs = identity_map_bytes / kGiB;
  for (uint64_t gib = 0; gib < gibs; ++gib) {
    const uint64_t pd_offset = (3 + gib) * kPageBytes;
    Put64(tables.bytes, 2 * kPageBytes + gib * 8, (tables_gpa + pd_offset) | kPresent | kWritable);
    for (uint64_t i = 0; i < 512; ++i) {
      Put64(tables.bytes, pd_offset + i * 8,
            (gib * kGiB + i * k2MiB) | kPresent | kWritable | kLargePage);
    }
  }
  return tables;
}

}  // namespace cvmbus::hw::kvm
