/* MSI interrupts through the x2APIC. Enables x2APIC (spurious vector 0xff), installs one
 * handler for TEST_MSI_VECTOR_A and _B that records the vector and EOIs, sets mailbox[0] = 1
 * (ready) and waits in STI; HLT until TEST_MSI_INTERRUPTS interrupts have run. Mailbox: [1] the
 * count so far, [2 + i] the vector of interrupt i. The two vectors share a priority class, so
 * without the EOI the second would never be delivered.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/tests.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;
static volatile uint64_t count;

static void on_interrupt(struct interrupt_frame* frame) {
  mailbox[2 + count] = frame->vector;
  count = count + 1;
  mailbox[1] = count;
  debug_puts("irq ");
  debug_put_hex(frame->vector);
  debug_puts("\n");
  x2apic_eoi();
}

uint32_t guest_main(void) {
  x2apic_enable(0xff);
  set_interrupt_handler(TEST_MSI_VECTOR_A, on_interrupt);
  set_interrupt_handler(TEST_MSI_VECTOR_B, on_interrupt);
  mailbox[0] = 1;
  debug_puts("ready\n");
  while (count < TEST_MSI_INTERRUPTS) {
    sti_hlt(); /* Returns after a handler ran, with IF = 1. */
    irq_disable();
  }
  return TEST_EXIT_OK;
}
