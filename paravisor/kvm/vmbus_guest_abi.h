/* The contract between the VMBus guest program (vmbus_guest.c, freestanding C in a KVM vCPU)
 * and its host (the daemon's KVM guest side, the test and the benchmark): the guest's memory map
 * and the config/result blocks.
 *
 * Plain C so that both the guest and the C++ host include it. Every GPA is identity-mapped in
 * the guest. The host fills the config block before the vCPU starts; the guest fills the
 * result block and ends with an exit code (kVmbusGuestOk or a kVmbusGuestFail* step).
 */
#ifndef CVMBUS_PARAVISOR_KVM_VMBUS_GUEST_ABI_H_
#define CVMBUS_PARAVISOR_KVM_VMBUS_GUEST_ABI_H_

#include <stdint.h>

/* The image is linked at 1 MiB (guest_program's default); the VMM's page tables and GDT at
 * 0x1000 (LongModeEntry::tables_gpa), the stack below 0x80000. */
#define VMBUS_GUEST_STACK_TOP 0x80000ull
#define VMBUS_GUEST_SIMP 0x200000ull
#define VMBUS_GUEST_SIEFP 0x201000ull
#define VMBUS_GUEST_HYPERCALL_PAGE 0x202000ull
#define VMBUS_GUEST_INPUT_PAGE 0x203000ull
#define VMBUS_GUEST_CONFIG 0x204000ull
#define VMBUS_GUEST_RESULT 0x205000ull
/* The ring GPADL: the guest -> host ring (control page + data pages), then host -> guest. */
#define VMBUS_GUEST_RINGS 0x300000ull
#define VMBUS_GUEST_RING_PAGES 4 /* Per direction, control page included. */
/* The pages the guest hands the SynIC (SIMP, SIEFP, hypercall, input) and the device (the
 * rings): private on a confidential VM. */
#define VMBUS_GUEST_SYNIC_PAGES_BYTES (4 * 4096ull)
#define VMBUS_GUEST_RINGS_BYTES (2 * VMBUS_GUEST_RING_PAGES * 4096ull)

#define VMBUS_GUEST_VECTOR 0xf3              /* HYPERVISOR_CALLBACK_VECTOR, SINT 2. */
#define VMBUS_GUEST_CONFIG_MAGIC 0x564d4247u /* "GBMV" */

struct vmbus_guest_config {
  uint32_t magic;
  uint32_t version;              /* VMBus version to ask for, e.g. 0x50003 (5.3), 0x60000 (6.0). */
  uint32_t features;             /* 6.0 feature flags (0x10: confidential channels). */
  uint32_t require_confidential; /* Nonzero: the echo offer must carry offer flag 0x2. */
  uint32_t warmup;               /* Untimed round trips first. */
  uint32_t iterations;           /* Timed round trips. */
  uint32_t payload_bytes;        /* Per request, at most 1024. */
  uint32_t reserved;
  uint8_t interface_id[16]; /* The echo device's interface GUID, wire byte order. */
};

struct vmbus_guest_result {
  uint32_t version;  /* As negotiated. */
  uint32_t features; /* As granted. */
  uint32_t relid;
  uint32_t connection_id; /* The channel's, from its offer. */
  uint16_t offer_flags;
  uint16_t reserved;
  uint32_t offers;          /* How many offers arrived. */
  uint64_t round_trips;     /* Completed and checked. */
  uint64_t timed_ref_start; /* TIME_REF_COUNT (100 ns) around the timed round trips. */
  uint64_t timed_ref_end;
  uint64_t signals;    /* HvSignalEvent calls made for the channel. */
  uint64_t interrupts; /* SINT 2 interrupts taken. */
  /* Over the timed round trips that rang the doorbell: the sum of TSC ticks from just before
   * HvSignalEvent to the first instruction of the interrupt handler (the host's whole turn:
   * doorbell, SynIC, server, device, ring, interrupt), and how many there were. */
  uint64_t doorbell_to_interrupt_tsc;
  uint64_t doorbell_to_interrupt_count;
  uint32_t failed_step;     /* Which step failed, 0 if none. */
  uint32_t failed_value;    /* What it saw. */
  uint64_t signals_refused; /* HvSignalEvent calls that did not return success (ignored). */
};

/* Exit codes. */
#define VMBUS_GUEST_OK 0
#define VMBUS_GUEST_FAIL_CONFIG 1
#define VMBUS_GUEST_FAIL_CPUID 2
#define VMBUS_GUEST_FAIL_SYNIC 3
#define VMBUS_GUEST_FAIL_POST 4
#define VMBUS_GUEST_FAIL_VERSION 5
#define VMBUS_GUEST_FAIL_OFFER 6
#define VMBUS_GUEST_FAIL_GPADL 7
#define VMBUS_GUEST_FAIL_OPEN 8
#define VMBUS_GUEST_FAIL_RING 9
#define VMBUS_GUEST_FAIL_ECHO 10
#define VMBUS_GUEST_FAIL_SIGNAL 11 /* Unused: a refused signal is counted, as Linux ignores it. */
#define VMBUS_GUEST_FAIL_TEARDOWN 12
#define VMBUS_GUEST_FAIL_UNLOAD 13

#endif /* CVMBUS_PARAVISOR_KVM_VMBUS_GUEST_ABI_H_ */
