/* The guest runtime (see guest.h): start-up, the IDT and the interrupt dispatcher, the *_safe
 * MSR helpers, x2APIC, the hypercall page, debug output, and the string functions gcc may call.
 */
#include "hw/kvm/guest/runtime/guest.h"

/* From the linker script (guest.ld) and entry.S. */
extern char __bss_start[], __bss_end[];
extern const uint64_t isr_stubs[256];

/* An exception-table entry: a faulting instruction and where to resume. The *_safe helpers
 * add theirs to the section .guest_extable; the runtime's #GP handler looks them up. */
struct extable_entry {
  uint64_t fault_rip;
  uint64_t fixup_rip;
};
extern const struct extable_entry __extable_start[], __extable_end[];

uint64_t hv_hypercall_page;

/* 16-byte 64-bit interrupt gates. */
struct idt_entry {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attributes;
  uint16_t offset_middle;
  uint32_t offset_high;
  uint32_t reserved;
};
_Static_assert(sizeof(struct idt_entry) == 16, "an IDT entry is 16 bytes");

static struct idt_entry idt[256] __attribute__((aligned(16)));
static interrupt_handler handlers[256];
static volatile uint64_t gp_faults;

struct __attribute__((packed)) descriptor_pointer {
  uint16_t limit;
  uint64_t base;
};

/* --- Debug output and the exit port -------------------------------------------------------- */

void debug_putc(char c) { outb(GUEST_DEBUG_PORT, (uint8_t)c); }

void debug_puts(const char* text) {
  while (*text != '\0') debug_putc(*text++);
}

void debug_put_hex(uint64_t value) {
  char digits[16];
  int n = 0;
  do {
    const unsigned digit = (unsigned)(value & 0xf);
    digits[n++] = (char)(digit < 10 ? '0' + digit : 'a' + digit - 10);
    value >>= 4;
  } while (value != 0);
  debug_putc('0');
  debug_putc('x');
  while (n > 0) debug_putc(digits[--n]);
}

void debug_put_dec(uint64_t value) {
  char digits[20];
  int n = 0;
  do {
    digits[n++] = (char)('0' + value % 10);
    value /= 10;
  } while (value != 0);
  while (n > 0) debug_putc(digits[--n]);
}

void guest_exit(uint32_t code) {
  outl(GUEST_EXIT_PORT, code);
  for (;;) __asm__ volatile("cli; hlt");
}

/* --- Interrupts ------------------------------------------------------------------------------ */

void set_interrupt_handler(uint8_t vector, interrupt_handler handler) {
  handlers[vector] = handler;
}

uint64_t gp_fault_count(void) { return gp_faults; }

static void report_and_exit(const struct interrupt_frame* frame, const char* what,
                            uint32_t exit_base) {
  debug_puts("guest: ");
  debug_puts(what);
  debug_puts(" vector ");
  debug_put_dec(frame->vector);
  debug_puts(" error ");
  debug_put_hex(frame->error_code);
  debug_puts(" at rip ");
  debug_put_hex(frame->rip);
  debug_puts("\n");
  guest_exit(exit_base + (uint32_t)frame->vector);
}

/* The runtime's #GP handler: resumes at the fixup of a *_safe helper, else reports. */
static void general_protection(struct interrupt_frame* frame) {
  for (const struct extable_entry* e = __extable_start; e < __extable_end; ++e) {
    if (e->fault_rip == frame->rip) {
      gp_faults = gp_faults + 1;
      frame->rip = e->fixup_rip;
      return;
    }
  }
  report_and_exit(frame, "unhandled #GP", GUEST_EXIT_EXCEPTION);
}

/* Called by entry.S's common stub with the saved state. */
void interrupt_dispatch(struct interrupt_frame* frame);
void interrupt_dispatch(struct interrupt_frame* frame) {
  const interrupt_handler handler = handlers[frame->vector & 0xff];
  if (handler != NULL) {
    handler(frame);
    return;
  }
  if (frame->vector < 32) report_and_exit(frame, "unhandled exception", GUEST_EXIT_EXCEPTION);
  report_and_exit(frame, "unhandled interrupt", GUEST_EXIT_UNHANDLED_INTERRUPT);
}

static void idt_init(void) {
  for (int v = 0; v < 256; ++v) {
    const uint64_t address = isr_stubs[v];
    idt[v].offset_low = (uint16_t)address;
    idt[v].selector = GUEST_CODE_SELECTOR;
    idt[v].ist = 0;
    idt[v].type_attributes = 0x8e; /* Present, DPL 0, 64-bit interrupt gate (IF cleared). */
    idt[v].offset_middle = (uint16_t)(address >> 16);
    idt[v].offset_high = (uint32_t)(address >> 32);
    idt[v].reserved = 0;
  }
  handlers[13] = general_protection;
  const struct descriptor_pointer pointer = {.limit = sizeof(idt) - 1, .base = (uint64_t)idt};
  __asm__ volatile("lidt %0" : : "m"(pointer) : "memory");
}

/* --- MSRs ---------------------------------------------------------------------------------- */

/* Each helper registers its rdmsr/wrmsr in the exception table with the address right after
 * it as the fixup; the fault is detected by the #GP count. One vCPU: no races on it. */
bool rdmsr_safe(uint32_t index, uint64_t* value) {
  const uint64_t before = gp_faults;
  uint32_t low = 0, high = 0;
  __asm__ volatile(
      "1: rdmsr\n"
      "2:\n"
      ".pushsection .guest_extable, \"a\"\n"
      ".p2align 3\n"
      ".quad 1b, 2b\n"
      ".popsection\n"
      : "+a"(low), "+d"(high)
      : "c"(index)
      : "memory");
  if (gp_faults != before) {
    *value = 0;
    return false;
  }
  *value = ((uint64_t)high << 32) | low;
  return true;
}

bool wrmsr_safe(uint32_t index, uint64_t value) {
  const uint64_t before = gp_faults;
  __asm__ volatile(
      "1: wrmsr\n"
      "2:\n"
      ".pushsection .guest_extable, \"a\"\n"
      ".p2align 3\n"
      ".quad 1b, 2b\n"
      ".popsection\n"
      :
      : "c"(index), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
      : "memory");
  return gp_faults == before;
}

/* --- x2APIC and Hyper-V ------------------------------------------------------------------------
 */

void x2apic_enable(uint8_t spurious_vector) {
  /* xAPIC -> x2APIC is a legal transition (SDM 10.12.5); the reset state is xAPIC enabled. */
  const uint64_t base = rdmsr(MSR_IA32_APIC_BASE);
  wrmsr(MSR_IA32_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_X2APIC);
  wrmsr(MSR_X2APIC_TPR, 0);
  wrmsr(MSR_X2APIC_SVR, 0x100u | spurious_vector); /* Bit 8: APIC software enable. */
}

bool hv_enable_hypercall_page(uint64_t page_gpa, uint64_t guest_os_id) {
  if (!wrmsr_safe(HV_MSR_GUEST_OS_ID, guest_os_id)) return false;
  if (!wrmsr_safe(HV_MSR_HYPERCALL, page_gpa | HV_HYPERCALL_ENABLE)) return false;
  hv_hypercall_page = page_gpa;
  return true;
}

/* --- Start-up ----------------------------------------------------------------------------------
 */

__attribute__((noreturn)) void runtime_start(void);
void runtime_start(void) {
  for (char* p = __bss_start; p < __bss_end; ++p) *(volatile char*)p = 0;
  idt_init();
  guest_exit(guest_main());
}

/* --- String functions ------------------------------------------------------------------------ */
/* String instructions, as Linux's own memcpy/memset on ERMS CPUs: gcc may call these for struct
 * copies and zeroing. On this machine kind's KVM (the PVM backend) every instruction a guest
 * runs at CPL0 goes through KVM's instruction emulator, a few microseconds each, so a byte
 * loop costs that per byte while one rep-prefixed instruction is emulated in one go. */

void* memcpy(void* dest, const void* src, size_t n) {
  void* d = dest;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
  return dest;
}

void* memmove(void* dest, const void* src, size_t n) {
  if ((const unsigned char*)dest <= (const unsigned char*)src ||
      (const unsigned char*)dest >= (const unsigned char*)src + n) {
    return memcpy(dest, src, n);
  }
  /* Overlapping with dest above src: copy backwards, from the last byte (DF set, then clear:
   * the ABI requires DF clear at every call). */
  void* d = (unsigned char*)dest + n - 1;
  const void* s = (const unsigned char*)src + n - 1;
  __asm__ volatile("std; rep movsb; cld" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
  return dest;
}

void* memset(void* dest, int c, size_t n) {
  void* d = dest;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return dest;
}

int memcmp(const void* a, const void* b, size_t n) {
  if (n == 0) return 0;
  const unsigned char* x = a;
  const unsigned char* y = b;
  /* repe cmpsb stops after the first differing byte (or after n): both pointers are then one
   * past it. */
  __asm__ volatile("repe cmpsb" : "+S"(x), "+D"(y), "+c"(n) : : "memory", "cc");
  if (x[-1] == y[-1]) return 0;
  return x[-1] < y[-1] ? -1 : 1;
}
