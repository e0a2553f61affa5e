/* Long mode boots: checks the state the KvmVm promised (CPL 0 in the 64-bit code segment,
 * CR0/CR4/EFER, identity-mapped memory beyond the image), takes an exception through its own
 * IDT (#UD from UD2, whose handler steps over it and returns with iretq), and reports on the
 * debug port. Mailbox: [0] CR0, [1] CR4, [2] EFER, [3] CS, [4] #UD count, [5] CR3.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;
static volatile uint64_t ud_count;

static void invalid_opcode(struct interrupt_frame* frame) {
  ud_count = ud_count + 1;
  frame->rip += 2; /* UD2 is 0f 0b. */
}

uint32_t guest_main(void) {
  debug_puts("hello from long mode\n");
  const uint64_t cr0 = read_cr0();
  const uint64_t cr4 = read_cr4();
  const uint64_t efer = rdmsr(MSR_EFER);
  mailbox[0] = cr0;
  mailbox[1] = cr4;
  mailbox[2] = efer;
  mailbox[3] = read_cs();
  mailbox[5] = read_cr3();
  if ((cr0 & 0x80000001u) != 0x80000001u) return TEST_EXIT_FAILED + 1; /* PG, PE */
  if ((cr4 & (1u << 5)) == 0) return TEST_EXIT_FAILED + 2;             /* PAE */
  if ((efer & 0x500) != 0x500) return TEST_EXIT_FAILED + 3;            /* LME, LMA */
  if (read_cs() != GUEST_CODE_SELECTOR) return TEST_EXIT_FAILED + 4;

  /* Memory far from the image, through the identity map: the word below the stack's page. */
  volatile uint64_t* const far = (volatile uint64_t*)(TEST_MEMORY_BYTES - 8);
  *far = 0x1122334455667788ull;
  if (*far != 0x1122334455667788ull) return TEST_EXIT_FAILED + 5;

  set_interrupt_handler(6, invalid_opcode);
  __asm__ volatile("ud2" ::: "memory");
  __asm__ volatile("ud2" ::: "memory");
  mailbox[4] = ud_count;
  if (ud_count != 2) return TEST_EXIT_FAILED + 6;

  debug_puts("cr0 ");
  debug_put_hex(cr0);
  debug_puts(" cr4 ");
  debug_put_hex(cr4);
  debug_puts(" efer ");
  debug_put_hex(efer);
  debug_puts("\n");
  return TEST_EXIT_OK;
}
