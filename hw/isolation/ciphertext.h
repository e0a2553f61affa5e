// Emulated memory-encryption output: the bytes a party without the guest's key sees where the
// guest's private data lives (a host reading an assigned SEV-SNP page, or a page just converted
// to shared, whose DRAM still holds the guest's ciphertext).
//
// A keyed mix (the SplitMix64 finalizer) of (key, GPA, assignment epoch, word index). It is an
// emulation aid, not cryptography: it only guarantees that the bytes do not depend on the
// page's plaintext, so no plaintext can leak through them. (Real ciphertext does depend on the
// plaintext; computing that would need a raw read of the private bytes, which guestmem does
// not offer to code outside it.)
#ifndef CVMBUS_HW_ISOLATION_CIPHERTEXT_H_
#define CVMBUS_HW_ISOLATION_CIPHERTEXT_H_

#include <cstdint>
#include <cstring>

#include "absl/types/span.h"

namespace cvmbus::hw::isolation::internal {

inline uint64_t MixWord(uint64_t x) {
  x += 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

// The ciphertext word at the 8-byte-aligned address `gpa8` of a page in assignment `epoch`.
inline uint64_t CiphertextWord(uint64_t key, uint64_t gpa8, uint64_t epoch) {
  return MixWord(key ^ MixWord(gpa8 ^ MixWord(epoch)));
}

// Fills `out` with the ciphertext of [gpa, gpa + out.size()); the range lies in one page.
inline void FillCiphertext(uint64_t key, uint64_t gpa, uint64_t epoch, absl::Span<uint8_t> out) {
  for (size_t i = 0; i < out.size();) {
    const uint64_t address = gpa + i;
    const uint64_t word = CiphertextWord(key, address & ~uint64_t{7}, epoch);
    uint8_t bytes[8];
    std::memcpy(bytes, &word, 8);
    for (uint64_t b = address & 7; b < 8 && i < out.size(); ++b, ++i) out[i] = bytes[b];
  }
}

}  // namespace cvmbus::hw::isolation::internal

#endif  // CVMBUS_HW_ISOLATION_CIPHERTEXT_H_
