#include "hw/kvm/hypercall_page.h"

#include <cstring>

namespace cvmbus::hw::kvm {
namespace {

// Offsets of the two port immediates in kStub.
constexpr size_t kSignalPortOffset = 0x18;
constexpr size_t kHypercallPortOffset = 0x25;

// clang-format off
constexpr uint8_t kStub[] = {
    // Fast HvSignalEvent with rep count 0 and flag number 0?
    0x48, 0x81, 0xf9, 0x5d, 0x00, 0x01, 0x00,  // 00 cmp $0x1005d, %rcx
    0x75, 0x18,                                // 07 jne 0x21
    0x48, 0x89, 0xd0,                          // 09 mov %rdx, %rax
    0x48, 0xc1, 0xe8, 0x20,                    // 0c shr $32, %rax
    0x75, 0x0f,                                // 10 jne 0x21      ; flag number or reserved set
    // Signal: OUT the connection id; R9 is the status (the VMM's on an exit).
    0x89, 0xd0,                                // 12 mov %edx, %eax
    0x45, 0x31, 0xc9,                          // 14 xor %r9d, %r9d
    0xba, 0x00, 0x00, 0x00, 0x00,              // 17 mov $signal_port, %edx
    0xef,                                      // 1c out %eax, (%dx)
    0x4c, 0x89, 0xc8,                          // 1d mov %r9, %rax
    0xc3,                                      // 20 ret
    // Hypercall: the VMM reads RCX, R10, R8 and sets RAX.
    0x49, 0x89, 0xd2,                          // 21 mov %rdx, %r10
    0xba, 0x00, 0x00, 0x00, 0x00,              // 24 mov $hypercall_port, %edx
    0xee,                                      // 29 out %al, (%dx)
    0xc3,                                      // 2a ret
};
// clang-format on

void PutPort(uint8_t* at, uint16_t port) {
  at[0] = static_cast<uint8_t>(port);
  at[1] = static_cast<uint8_t>(port >> 8);
}

}  // namespace

std::array<uint8_t, kHypercallPageBytes> HypercallPage(uint16_t hypercall_port,
                                                       uint16_t signal_port) {
  std::array<uint8_t, kHypercallPageBytes> page{};
  std::memcpy(page.data(), kStub, sizeof(kStub));
  for (size_t i = sizeof(kStub); i + 1 < page.size(); i += 2) {  // UD2 = 0f 0b.
    page[i] = 0x0f;
    page[i + 1] = 0x0b;
  }
  PutPort(page.data() + kSignalPortOffset, signal_port);
  PutPort(page.data() + kHypercallPortOffset, hypercall_port);
  return page;
}

size_t HypercallStubBytes() { return sizeof(kStub); }

}  // namespace cvmbus::hw::kvm
