/* Slow hypercalls through the hypercall page. In order:
 *   1. enable the page at TEST_HYPERCALL_PAGE_GPA (GUEST_OS_ID, then HYPERCALL) -> fail 1;
 *      or, if mailbox[16] is TEST_PAGE_PRESET, just use the page the host wrote there
 *   2. write TEST_POST_MESSAGE_WORD at the input page, then hypercall(HvPostMessage, input
 *      page, output page) -> mailbox[0] = RAX, [1] = the output page's first word
 *   3. fast HvSignalEvent with flag number 3 (RDX = 3 << 32 | 0x42): not the kernel's path,
 *      the hypercall port -> [2] = RAX
 *   4. fast HvSignalEvent with rep count 1: also the hypercall port -> [3] = RAX
 *   5. clobber_check through both paths: [4] (slow) and [5] (signal, an unbound id, so an
 *      exit) = 0 if the page preserved every register it must.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/tests.h"

uint64_t clobber_check(uint64_t control, uint64_t rdx, uint64_t r8);

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;

uint32_t guest_main(void) {
  if (mailbox[16] == TEST_PAGE_PRESET) {
    hv_hypercall_page = TEST_HYPERCALL_PAGE_GPA;
  } else if (!hv_enable_hypercall_page(TEST_HYPERCALL_PAGE_GPA, TEST_GUEST_OS_ID)) {
    return TEST_EXIT_FAILED + 1;
  }
  volatile uint64_t* const input = (volatile uint64_t*)TEST_HYPERCALL_INPUT_GPA;
  volatile uint64_t* const output = (volatile uint64_t*)TEST_HYPERCALL_OUTPUT_GPA;
  input[0] = TEST_POST_MESSAGE_WORD;
  mailbox[0] = hypercall(HVCALL_POST_MESSAGE, TEST_HYPERCALL_INPUT_GPA, TEST_HYPERCALL_OUTPUT_GPA);
  mailbox[1] = output[0];
  mailbox[2] = fast_hypercall(HVCALL_SIGNAL_EVENT, (3ull << 32) | 0x42);
  mailbox[3] = fast_hypercall(HVCALL_SIGNAL_EVENT | (1ull << HV_HYPERCALL_REP_COUNT_SHIFT), 0x42);
  mailbox[4] =
      clobber_check(HVCALL_POST_MESSAGE, TEST_HYPERCALL_INPUT_GPA, TEST_HYPERCALL_OUTPUT_GPA);
  mailbox[5] = clobber_check(HVCALL_SIGNAL_EVENT | HV_HYPERCALL_FAST_BIT, 0x43, 0);
  debug_puts("hypercall done\n");
  return TEST_EXIT_OK;
}
