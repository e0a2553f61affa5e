/* The runtime of a freestanding long-mode guest program (see guest_program.bzl).
 *
 * A guest program is C (plus assembly if it wants) built with -ffreestanding -nostdlib
 * -mgeneral-regs-only, linked at a fixed address and loaded flat into guest memory by the
 * host. The KvmVm starts it in 64-bit long mode (StartVcpu(LongModeEntry)): identity-mapped
 * memory, CPL 0, cs = 0x08, ds = es = ss = 0x10, interrupts disabled, rsp = the entry's stack
 * top. The runtime's _start (entry.S) zeroes .bss, loads an IDT whose 256 vectors all reach
 * this runtime, calls guest_main() and writes its return value to the exit port.
 *
 * What the guest gets:
 *   - debug-port output (port 0xe9, KvmVm::debug_output()) and the exit port (0x501);
 *   - rdmsr/wrmsr, and rdmsr_safe/wrmsr_safe, which survive a #GP and report it;
 *   - per-vector interrupt handlers; an exception without a handler (and a #GP outside the
 *     *_safe helpers) is reported on the debug port and ends the program with
 *     GUEST_EXIT_EXCEPTION + vector;
 *   - x2APIC enable and EOI (in-kernel local APIC, MSRs 0x800-0x8ff);
 *   - Hyper-V: the hypercall page (hv_enable_hypercall_page) and hypercall/fast_hypercall
 *     through it, with Linux's register conventions.
 *
 * Limits on this machine kind (KVM with the PVM backend): KVM's instruction emulator stops the
 * guest on cmpxchg16b, xsave/xrstor, int3, clac/stac and popcnt, so the build uses general
 * registers only and this runtime never uses those instructions. One vCPU: nothing here is
 * made safe for two.
 *
 * This header is C (the guest) and also plain enough for a C++ host to include for the
 * constants; the inline functions are guest code only.
 */
#ifndef CVMBUS_HW_KVM_GUEST_RUNTIME_GUEST_H_
#define CVMBUS_HW_KVM_GUEST_RUNTIME_GUEST_H_

#include <stddef.h>
#include <stdint.h>

#define GUEST_DEBUG_PORT 0xe9
#define GUEST_EXIT_PORT 0x501
/* The exit value of a program stopped by an unhandled exception is this plus the vector. */
#define GUEST_EXIT_EXCEPTION 0xe000
/* The exit value when an interrupt arrives on a vector without a handler: this plus vector. */
#define GUEST_EXIT_UNHANDLED_INTERRUPT 0xf000

#define GUEST_CODE_SELECTOR 0x08 /* What the KvmVm's GDT holds (kvm_vm.h, LongModeEntry). */

/* Architectural MSRs the runtime uses. */
#define MSR_IA32_APIC_BASE 0x1b
#define APIC_BASE_ENABLE (1ull << 11)
#define APIC_BASE_X2APIC (1ull << 10)
#define MSR_X2APIC_ID 0x802
#define MSR_X2APIC_VERSION 0x803
#define MSR_X2APIC_TPR 0x808
#define MSR_X2APIC_EOI 0x80b
#define MSR_X2APIC_SVR 0x80f
#define MSR_EFER 0xc0000080

/* Hyper-V (TLFS; linux include/hyperv/hvgdk_mini.h). */
#define HV_MSR_GUEST_OS_ID 0x40000000
#define HV_MSR_HYPERCALL 0x40000001
#define HV_MSR_VP_INDEX 0x40000002
#define HV_HYPERCALL_ENABLE 1ull
#define HV_HYPERCALL_FAST_BIT (1ull << 16)
#define HV_HYPERCALL_REP_COUNT_SHIFT 32
#define HVCALL_POST_MESSAGE 0x005c
#define HVCALL_SIGNAL_EVENT 0x005d
#define HV_STATUS_SUCCESS 0
#define HV_STATUS_INVALID_HYPERCALL_CODE 2
#define HV_STATUS_INVALID_CONNECTION_ID 0x12

#ifndef __cplusplus

#include <stdbool.h>

/* --- The program's entry point, and the end of it --------------------------------------- */

/* Defined by the program. Called once with interrupts disabled and the IDT loaded; the value
 * it returns is written (4 bytes) to the exit port. */
uint32_t guest_main(void);

/* Writes `code` (4 bytes) to the exit port. The host's run ends there; if it does not, the
 * vCPU halts with interrupts disabled for good. */
__attribute__((noreturn)) void guest_exit(uint32_t code);

/* --- Port I/O and the debug port --------------------------------------------------------- */

static inline void outb(uint16_t port, uint8_t value) {
  __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}
static inline void outl(uint16_t port, uint32_t value) {
  __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}
static inline uint8_t inb(uint16_t port) {
  uint8_t value;
  __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
  return value;
}

void debug_putc(char c);
void debug_puts(const char* text);  /* No newline added. */
void debug_put_hex(uint64_t value); /* "0x" and lowercase hex digits, no padding. */
void debug_put_dec(uint64_t value);

/* --- Instructions ------------------------------------------------------------------------ */

static inline uint64_t rdtsc(void) {
  uint32_t low, high;
  __asm__ volatile("rdtsc" : "=a"(low), "=d"(high) : : "memory");
  return ((uint64_t)high << 32) | low;
}
static inline uint64_t rdmsr(uint32_t index) {
  uint32_t low, high;
  __asm__ volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(index) : "memory");
  return ((uint64_t)high << 32) | low;
}
static inline void wrmsr(uint32_t index, uint64_t value) {
  __asm__ volatile("wrmsr"
                   :
                   : "c"(index), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
                   : "memory");
}

/* Like rdmsr/wrmsr, but a #GP resumes after the instruction: true if the access succeeded,
 * false if it faulted (*value is then 0). */
bool rdmsr_safe(uint32_t index, uint64_t* value);
bool wrmsr_safe(uint32_t index, uint64_t value);

struct cpuid_result {
  uint32_t eax, ebx, ecx, edx;
};
static inline struct cpuid_result cpuid(uint32_t leaf, uint32_t subleaf) {
  struct cpuid_result r;
  __asm__ volatile("cpuid"
                   : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
                   : "a"(leaf), "c"(subleaf));
  return r;
}

static inline uint64_t read_cr0(void) {
  uint64_t v;
  __asm__ volatile("mov %%cr0, %0" : "=r"(v));
  return v;
}
static inline uint64_t read_cr3(void) {
  uint64_t v;
  __asm__ volatile("mov %%cr3, %0" : "=r"(v));
  return v;
}
static inline uint64_t read_cr4(void) {
  uint64_t v;
  __asm__ volatile("mov %%cr4, %0" : "=r"(v));
  return v;
}
static inline uint16_t read_cs(void) {
  uint16_t v;
  __asm__ volatile("mov %%cs, %0" : "=r"(v));
  return v;
}

static inline void irq_enable(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" : : : "memory"); }
/* STI; HLT: the STI shadow covers the HLT, so an interrupt that is already pending (or that
 * arrives in between) wakes the HLT instead of being taken before it. Returns with interrupts
 * enabled, after one interrupt's handler ran. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" : : : "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }

/* --- Interrupts and exceptions ----------------------------------------------------------- */

/* What the entry stubs save, lowest address first: the general registers, the vector, the
 * error code (0 where the CPU pushes none), then the CPU's own frame. A handler may change
 * any of it (rip to resume elsewhere); iretq restores it. */
struct interrupt_frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
  uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error_code;
  uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*interrupt_handler)(struct interrupt_frame* frame);

/* Sets the handler of `vector` (NULL: the default, which reports and exits). Vectors 0-31
 * are exceptions; a #GP handler replaces the runtime's, which serves the *_safe helpers. */
void set_interrupt_handler(uint8_t vector, interrupt_handler handler);

/* How many #GPs the runtime's handler has resumed from (the *_safe helpers). */
uint64_t gp_fault_count(void);

/* --- x2APIC ------------------------------------------------------------------------------ */

/* Switches the local APIC to x2APIC mode (MSR 0x1b: enable and EXTD), software-enables it
 * with `spurious_vector` (SVR 0x80f) and sets TPR 0, so every vector >= 16 is accepted. */
void x2apic_enable(uint8_t spurious_vector);
static inline void x2apic_eoi(void) { wrmsr(MSR_X2APIC_EOI, 0); }
static inline uint32_t x2apic_id(void) { return (uint32_t)rdmsr(MSR_X2APIC_ID); }

/* --- Hyper-V hypercalls ------------------------------------------------------------------ */

/* Writes GUEST_OS_ID (`guest_os_id`, which must be nonzero for a real Hyper-V to enable the
 * page) and then HYPERCALL = page_gpa | enable; the hypervisor fills the page. The page must
 * be identity-mapped guest memory (page_gpa 4 KiB-aligned). False if either write faulted. */
bool hv_enable_hypercall_page(uint64_t page_gpa, uint64_t guest_os_id);

/* The page's address once hv_enable_hypercall_page succeeded; 0 before. */
extern uint64_t hv_hypercall_page;

/* A hypercall through the page: control in RCX (call code bits 15:0, fast bit 16, rep count
 * bits 43:32), input and output GPAs in RDX and R8; returns RAX (HV status in bits 15:0, reps
 * completed in bits 43:32). The page may clobber RCX, RDX, R8-R11 (Linux's hv_do_hypercall
 * constraints). */
static inline uint64_t hypercall(uint64_t control, uint64_t input_gpa, uint64_t output_gpa) {
  uint64_t status;
  register uint64_t r8 __asm__("r8") = output_gpa;
  __asm__ volatile("call *%[page]"
                   : "=a"(status), "+c"(control), "+d"(input_gpa), "+r"(r8)
                   : [page] "m"(hv_hypercall_page)
                   : "cc", "memory", "r9", "r10", "r11");
  return status;
}

/* A fast hypercall with one 8-byte register parameter (RDX): the fast bit is ORed into
 * `control` (hv_do_fast_hypercall8). */
static inline uint64_t fast_hypercall(uint64_t control, uint64_t rdx) {
  uint64_t status;
  control |= HV_HYPERCALL_FAST_BIT;
  __asm__ volatile("call *%[page]"
                   : "=a"(status), "+c"(control), "+d"(rdx)
                   : [page] "m"(hv_hypercall_page)
                   : "cc", "memory", "r8", "r9", "r10", "r11");
  return status;
}

/* HvSignalEvent (fast): RDX = connection id, flag number 0. */
static inline uint64_t hv_signal_event(uint32_t connection_id) {
  return fast_hypercall(HVCALL_SIGNAL_EVENT, connection_id);
}

/* --- What gcc may call ------------------------------------------------------------------- */

void* memcpy(void* dest, const void* src, size_t n);
void* memmove(void* dest, const void* src, size_t n);
void* memset(void* dest, int c, size_t n);
int memcmp(const void* a, const void* b, size_t n);

#endif /* !__cplusplus */

#endif /* CVMBUS_HW_KVM_GUEST_RUNTIME_GUEST_H_ */
