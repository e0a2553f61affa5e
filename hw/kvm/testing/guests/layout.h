/* The machine every test guest of //hw/kvm/testing/guests assumes; included by the guests (C)
 * and by the host side of the tests (C++), so the two agree.
 *
 *   [0, TEST_MEMORY_BYTES)        one guest memory region at GPA 0
 *   TEST_TABLES_GPA               LongModeEntry::tables_gpa (7 pages for the 4 GiB map)
 *   TEST_HYPERCALL_PAGE_GPA       where the guests enable the hypercall page
 *   TEST_HYPERCALL_INPUT_GPA      a hypercall's input page, and its output page after it
 *   TEST_MAILBOX_GPA              64-bit words: arguments from the host, results from the guest
 *   TEST_LOAD_GPA                 the programs' load_address (BUILD.bazel says it again)
 *   TEST_STACK_TOP_GPA            LongModeEntry::rsp
 */
#ifndef CVMBUS_HW_KVM_TESTING_GUESTS_LAYOUT_H_
#define CVMBUS_HW_KVM_TESTING_GUESTS_LAYOUT_H_

#define TEST_MEMORY_BYTES 0x400000
#define TEST_TABLES_GPA 0x1000
#define TEST_HYPERCALL_PAGE_GPA 0x10000
#define TEST_HYPERCALL_INPUT_GPA 0x11000
#define TEST_HYPERCALL_OUTPUT_GPA 0x12000
#define TEST_MAILBOX_GPA 0x20000
#define TEST_MAILBOX_WORDS 512
#define TEST_LOAD_GPA 0x100000
#define TEST_STACK_TOP_GPA 0x3ff000

/* The exit value of a guest whose checks all passed. */
#define TEST_EXIT_OK 0x600d
/* A guest's own check failed: this plus the check's number. */
#define TEST_EXIT_FAILED 0xbad00

/* The GUEST_OS_ID the guests write before they enable the hypercall page (Linux's format:
 * open source bit 63, OS type 0x100 Linux). */
#define TEST_GUEST_OS_ID 0x8100000000000001ull

#endif /* CVMBUS_HW_KVM_TESTING_GUESTS_LAYOUT_H_ */
