/* Constants one test guest and its host test share, beyond layout.h's memory map. */
#ifndef CVMBUS_HW_KVM_TESTING_GUESTS_TESTS_H_
#define CVMBUS_HW_KVM_TESTING_GUESTS_TESTS_H_

/* hypercall_guest: the word it writes at the input page before HvPostMessage; the mailbox[16]
 * value that makes it use a hypercall page the host wrote instead of enabling one. */
#define TEST_POST_MESSAGE_WORD 0x0123456789abcdefull
#define TEST_PAGE_PRESET 0x9a9e

/* signal_guest: a hypercall code of the test's own (not Hyper-V's) asking the host to unbind
 * the connection id in RDX. */
#define TEST_CALL_UNBIND 0x7001

/* msi_guest: the vectors the host sends, in this order. */
#define TEST_MSI_VECTOR_A 0x41
#define TEST_MSI_VECTOR_B 0x40
#define TEST_MSI_INTERRUPTS 3 /* A, B, A. */

/* bench_guest: its interrupt vector. */
#define TEST_BENCH_VECTOR 0x50

#endif /* CVMBUS_HW_KVM_TESTING_GUESTS_TESTS_H_ */
