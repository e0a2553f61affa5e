/* The benchmark's guest (//hw/kvm:kvm_bench). Mailbox in: [0] a connection id, [1] N, [2] the
 * mode:
 *   0  round trips, waiting with STI; HLT (the vCPU sleeps in the kernel)
 *   1  round trips, spinning with interrupts enabled
 *   2  signals only: N fast HvSignalEvents back to back, no waiting
 *   3  N CPUIDs (one trap to the hypervisor each), for the cost of a bare exit to KVM
 * A round trip: fast HvSignalEvent of the id, then wait until the handler of
 * TEST_BENCH_VECTOR has run (it EOIs). Mailbox out: [8] signals that did not return 0, [9] the
 * TSC ticks the N operations took (RDTSC before and after the loop), [10] for round trips the
 * sum over them of the TSC ticks from just before the signal to the handler's first
 * instruction.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/tests.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;
static volatile uint64_t interrupts;
static volatile uint64_t last_interrupt_tsc;

static void on_interrupt(struct interrupt_frame* frame) {
  (void)frame;
  last_interrupt_tsc = rdtsc();
  interrupts = interrupts + 1;
  x2apic_eoi();
}

uint32_t guest_main(void) {
  const uint32_t id = (uint32_t)mailbox[0];
  const uint64_t n = mailbox[1];
  const uint64_t mode = mailbox[2];
  x2apic_enable(0xff);
  set_interrupt_handler(TEST_BENCH_VECTOR, on_interrupt);
  if (!hv_enable_hypercall_page(TEST_HYPERCALL_PAGE_GPA, TEST_GUEST_OS_ID)) {
    return TEST_EXIT_FAILED + 1;
  }
  uint64_t failures = 0;
  uint64_t doorbell_to_interrupt = 0;
  const uint64_t start = rdtsc();
  for (uint64_t i = 0; i < n; ++i) {
    if (mode == 3) {
      (void)cpuid(0, 0);
      continue;
    }
    const uint64_t signalled = rdtsc();
    if (hv_signal_event(id) != HV_STATUS_SUCCESS) ++failures;
    if (mode == 2) continue;
    if (mode == 1) {
      irq_enable();
      while (interrupts <= i) cpu_relax();
      irq_disable();
    } else {
      while (interrupts <= i) {
        sti_hlt();
        irq_disable();
      }
    }
    doorbell_to_interrupt += last_interrupt_tsc - signalled;
  }
  mailbox[9] = rdtsc() - start;
  mailbox[8] = failures;
  mailbox[10] = doorbell_to_interrupt;
  return TEST_EXIT_OK;
}
