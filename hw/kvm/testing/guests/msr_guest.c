/* MSR exits. In order:
 *   1. rdmsr VP_INDEX (0x40000002)            -> mailbox[0] = the value, [1] = ok
 *   2. wrmsr GUEST_OS_ID = TEST_GUEST_OS_ID   -> [2] = ok
 *   3. wrmsr 0x40000099 = 0x1234 (the host's handler refuses it: #GP) -> [3] = ok
 *   4. rdmsr 0x40000098 (refused: #GP)        -> [4] = ok
 *   5. rdmsr 0x12345678 (no one's MSR: #GP without the handler) -> [5] = ok
 *   6. x2APIC: enable it, read its ID (0x802) and version (0x803) -> [6] id, [7] version; these
 *      MSRs are KVM's and never reach the handler
 *   [8] = the runtime's #GP count (3 expected).
 * ok is 1 for an access that succeeded, 0 for one that faulted.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;

uint32_t guest_main(void) {
  uint64_t value = 0;
  mailbox[1] = rdmsr_safe(HV_MSR_VP_INDEX, &value);
  mailbox[0] = value;
  mailbox[2] = wrmsr_safe(HV_MSR_GUEST_OS_ID, TEST_GUEST_OS_ID);
  mailbox[3] = wrmsr_safe(0x40000099, 0x1234);
  mailbox[4] = rdmsr_safe(0x40000098, &value);
  mailbox[5] = rdmsr_safe(0x12345678, &value);
  x2apic_enable(0xff);
  mailbox[6] = x2apic_id();
  mailbox[7] = rdmsr(MSR_X2APIC_VERSION);
  mailbox[8] = gp_fault_count();
  debug_puts("msr done\n");
  return TEST_EXIT_OK;
}
