#include "hw/kvm/hyperv.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <utility>

namespace cvmbus::hw::kvm {
namespace {

// Four ASCII bytes as the little-endian register CPUID returns them in.
constexpr uint32_t Ascii(const char (&text)[5]) {
  return uint32_t{static_cast<uint8_t>(text[0])} | uint32_t{static_cast<uint8_t>(text[1])} << 8 |
         uint32_t{static_cast<uint8_t>(text[2])} << 16 |
         uint32_t{static_cast<uint8_t>(text[3])} << 24;
}

constexpr uint32_t kLeaf1X2apic = 1u << 21;      // ECX
constexpr uint32_t kLeaf1Hypervisor = 1u << 31;  // ECX
constexpr uint32_t kLeaf1ApicIdMask = 0xffu << 24;

}  // namespace

std::vector<CpuidLeaf> HypervCpuidLeaves(const HypervCpuidFeatures& features) {
  constexpr uint32_t kMaxLeaf = 0x40000006;
  return {
      // "Microsoft Hv": EBX, ECX, EDX.
      CpuidLeaf{.function = 0x40000000,
                .eax = kMaxLeaf,
                .ebx = Ascii("Micr"),
                .ecx = Ascii("osof"),
                .edx = Ascii("t Hv")},
      CpuidLeaf{.function = 0x40000001, .eax = Ascii("Hv#1")},
      // Build 1, version 10.0 (what Linux prints; it decides nothing on it).
      CpuidLeaf{.function = 0x40000002, .eax = 1, .ebx = (10u << 16) | 0},
      CpuidLeaf{.function = 0x40000003,
                .eax = features.privileges_low,
                .ebx = features.privileges_high,
                .edx = features.features_edx},
      // EBX 0xffffffff: never notify on spinlock retries.
      CpuidLeaf{.function = 0x40000004, .eax = features.recommendations, .ebx = 0xffffffff},
      CpuidLeaf{.function = 0x40000005, .eax = features.max_vps},
      CpuidLeaf{.function = 0x40000006},
  };
}

absl::StatusOr<std::vector<CpuidLeaf>> MergeCpuid(const std::vector<CpuidLeaf>& supported,
                                                  const std::vector<CpuidLeaf>& extra) {
  std::set<uint32_t> replaced;
  std::set<std::pair<uint32_t, uint32_t>> seen;
  for (const CpuidLeaf& leaf : extra) {
    const bool again = replaced.count(leaf.function) != 0;
    if (again && !leaf.indexed) {
      return absl::InvalidArgumentError(fmt::format(
          "cpuid: function {:#x} is given twice and without a subleaf index", leaf.function));
    }
    const uint32_t index = leaf.indexed ? leaf.index : 0;
    if (!seen.insert({leaf.function, index}).second) {
      return absl::InvalidArgumentError(
          fmt::format("cpuid: function {:#x} index {} is given twice", leaf.function, index));
    }
    replaced.insert(leaf.function);
  }
  std::vector<CpuidLeaf> merged;
  for (const CpuidLeaf& leaf : supported) {
    if (leaf.function >= kHypervisorCpuidFirst && leaf.function <= kHypervisorCpuidLast) continue;
    if (replaced.count(leaf.function) != 0) continue;
    merged.push_back(leaf);
  }
  merged.insert(merged.end(), extra.begin(), extra.end());
  for (CpuidLeaf& leaf : merged) {
    if (leaf.function != 1) continue;
    leaf.ecx |= kLeaf1X2apic | kLeaf1Hypervisor;
    leaf.ebx &= ~kLeaf1ApicIdMask;  // vCPU 0.
  }
  return merged;
}

}  // namespace cvmbus::hw::kvm
