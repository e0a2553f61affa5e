/* Fast HvSignalEvent. Mailbox in: [0] a bound connection id, [1] an unbound one, [2] N.
 *   1. enable the hypercall page                           -> fail 1
 *   2. N signals of the bound id, each must return 0        -> [8] = how many did not
 *   3. one signal of the unbound id                         -> [9] = RAX
 *   4. hypercall(TEST_CALL_UNBIND, bound id): the host unbinds it -> [10] = RAX
 *   5. one signal of the formerly bound id                  -> [11] = RAX
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/tests.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;

uint32_t guest_main(void) {
  const uint32_t bound = (uint32_t)mailbox[0];
  const uint32_t unbound = (uint32_t)mailbox[1];
  const uint64_t n = mailbox[2];
  if (!hv_enable_hypercall_page(TEST_HYPERCALL_PAGE_GPA, TEST_GUEST_OS_ID)) {
    return TEST_EXIT_FAILED + 1;
  }
  uint64_t failures = 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (hv_signal_event(bound) != HV_STATUS_SUCCESS) ++failures;
  }
  mailbox[8] = failures;
  mailbox[9] = hv_signal_event(unbound);
  mailbox[10] = hypercall(TEST_CALL_UNBIND, bound, 0);
  mailbox[11] = hv_signal_event(bound);
  debug_puts("signal done\n");
  return TEST_EXIT_OK;
}
