/* uint64_t clobber_check(uint64_t control, uint64_t rdx, uint64_t r8)
 *
 * Calls the hypercall page with RCX = control, RDX = rdx, R8 = r8 and a known pattern in every
 * register the page must preserve (all but RAX, RCX, RDX, R8-R11: Linux's hv_do_hypercall
 * constraints): RBX, RBP, RSI, RDI, R12-R15. Returns the OR of (register ^ pattern) over them:
 * 0 if the page preserved them all.
 */
  .text
  .globl clobber_check
clobber_check:
  push %rbx
  push %rbp
  push %r12
  push %r13
  push %r14
  push %r15
  mov %rdi, %rcx
  mov %rdx, %r8
  mov %rsi, %rdx
  movabs $0x1111111111111111, %rbx
  movabs $0x2222222222222222, %rbp
  movabs $0x3333333333333333, %rsi
  movabs $0x4444444444444444, %rdi
  movabs $0x5555555555555555, %r12
  movabs $0x6666666666666666, %r13
  movabs $0x7777777777777777, %r14
  movabs $0x8888888888888888, %r15
  call *hv_hypercall_page(%rip)
  movabs $0x1111111111111111, %r11
  xor %r11, %rbx
  mov %rbx, %r10
  movabs $0x2222222222222222, %r11
  xor %r11, %rbp
  or %rbp, %r10
  movabs $0x3333333333333333, %r11
  xor %r11, %rsi
  or %rsi, %r10
  movabs $0x4444444444444444, %r11
  xor %r11, %rdi
  or %rdi, %r10
  movabs $0x5555555555555555, %r11
  xor %r11, %r12
  or %r12, %r10
  movabs $0x6666666666666666, %r11
  xor %r11, %r13
  or %r13, %r10
  movabs $0x7777777777777777, %r11
  xor %r11, %r14
  or %r14, %r10
  movabs $0x8888888888888888, %r11
  xor %r11, %r15
  or %r15, %r10
  mov %r10, %rax
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %rbp
  pop %rbx
  ret

  .section .note.GNU-stack, "", @progbits
