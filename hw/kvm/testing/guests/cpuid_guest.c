/* CPUID as the guest sees it. Mailbox: [4*i + 0..3] = EAX, EBX, ECX, EDX of leaf 0x40000000 + i
 * for i in 0..6; [28] leaf 1 ECX; [29] how many of the 256 signature slots 0x40000000 +
 * 0x100 * k hold KVM's "KVMKVMKVM"; [30] how many hold "Microsoft Hv".
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;

uint32_t guest_main(void) {
  for (uint32_t i = 0; i <= 6; ++i) {
    const struct cpuid_result r = cpuid(0x40000000 + i, 0);
    mailbox[4 * i + 0] = r.eax;
    mailbox[4 * i + 1] = r.ebx;
    mailbox[4 * i + 2] = r.ecx;
    mailbox[4 * i + 3] = r.edx;
  }
  mailbox[28] = cpuid(1, 0).ecx;
  uint64_t kvm = 0, hyperv = 0;
  for (uint32_t k = 0; k < 256; ++k) {
    const struct cpuid_result r = cpuid(0x40000000 + 0x100 * k, 0);
    /* "KVMKVMKVM\0\0\0" and "Microsoft Hv" as EBX, ECX, EDX. */
    if (r.ebx == 0x4b4d564b && r.ecx == 0x564b4d56 && r.edx == 0x4d) ++kvm;
    if (r.ebx == 0x7263694d && r.ecx == 0x666f736f && r.edx == 0x76482074) ++hyperv;
  }
  mailbox[29] = kvm;
  mailbox[30] = hyperv;
  debug_puts("cpuid done\n");
  return TEST_EXIT_OK;
}
