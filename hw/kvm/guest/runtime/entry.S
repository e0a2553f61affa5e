/* The entry point and the interrupt entry stubs of a guest program (see guest.h).
 *
 * _start runs first (the linker script puts .text.entry at the load address): the VMM has set
 * rsp to the stack top, interrupts are disabled. It aligns the stack, calls runtime_start (C),
 * which never returns.
 *
 * Interrupt stubs: one per vector, each 16-byte aligned in .text; the table isr_stubs holds
 * their addresses for the IDT. A stub pushes a zero error code where the CPU pushes none, then
 * the vector, and jumps to the common path, which saves the general registers (struct
 * interrupt_frame in guest.h), calls interrupt_dispatch(frame) and returns with iretq. The
 * 64-bit CPU aligns rsp to 16 before it pushes its frame; 7 + 15 pushes keep that alignment
 * for the call. No SSE state is saved: the build uses general registers only.
 */

  .section .text.entry, "ax"
  .code64
  .globl _start
_start:
  and $-16, %rsp
  xor %ebp, %ebp
  call runtime_start
1:
  cli
  hlt
  jmp 1b

  .text

/* Vectors whose exceptions push an error code: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14,
 * #AC 17, #CP 21, #VC 29, #SX 30. */

  .altmacro
  .macro isr_stub vector
  .p2align 4
isr_stub_\vector:
  .if !((\vector == 8) || ((\vector >= 10) && (\vector <= 14)) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30))
  pushq $0
  .endif
  pushq $\vector
  jmp isr_common
  .endm

  .set vector, 0
  .rept 256
  isr_stub %vector
  .set vector, vector + 1
  .endr

isr_common:
  push %rax
  push %rbx
  push %rcx
  push %rdx
  push %rsi
  push %rdi
  push %rbp
  push %r8
  push %r9
  push %r10
  push %r11
  push %r12
  push %r13
  push %r14
  push %r15
  mov %rsp, %rdi
  cld
  call interrupt_dispatch
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %r11
  pop %r10
  pop %r9
  pop %r8
  pop %rbp
  pop %rdi
  pop %rsi
  pop %rdx
  pop %rcx
  pop %rbx
  pop %rax
  add $16, %rsp /* The vector and the error code. */
  iretq

  .section .rodata
  .p2align 3
  .globl isr_stubs
isr_stubs:
  .macro isr_address vector
  .quad isr_stub_\vector
  .endm
  .set vector, 0
  .rept 256
  isr_address %vector
  .set vector, vector + 1
  .endr

  .section .note.GNU-stack, "", @progbits
