// The raw long-mode doorbell round trip on a KVM vCPU, the baseline every VMBus round trip is
// compared with: the guest (//hw/kvm/testing/guests:bench_guest) rings a bound connection id
// with a fast HvSignalEvent through the hypercall page (an ioeventfd: no exit to user space), a
// host thread wakes on that eventfd and writes an MSI irqfd, the guest's handler runs (EOI
// through the x2APIC MSR), then the next signal. Also the parts: a bound signal alone, an
// unbound signal (a user-space exit each) and a bare CPUID (an exit that stays in KVM).
// Used by //hw/kvm:kvm_bench and //tests/kvm_vmbus:kvm_vmbus_bench (which runs it beside the
// VMBus round trip, in the same run and placement).
#ifndef CVMBUS_HW_KVM_TESTING_RAW_ROUND_TRIP_H_
#define CVMBUS_HW_KVM_TESTING_RAW_ROUND_TRIP_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "hw/kvm/kvm_vm.h"

namespace cvmbus::hw::kvm {

// What one run measures (bench_guest.c's mailbox[2]).
enum class RawMode { kRoundTripHlt = 0, kRoundTripSpin = 1, kSignalOnly = 2, kCpuid = 3 };

struct RawResult {
  uint64_t operations = 0;
  double guest_ns = 0;  // Per operation, by the guest's TSC over its whole loop.
  // Round trips: from just before the guest's HvSignalEvent to the first instruction of its
  // interrupt handler, by its TSC (the host's whole turn, without the guest's own loop).
  double doorbell_to_interrupt_ns = 0;
  double median_ns = 0;  // Round trips only: per round trip as the host saw the doorbells.
  double p99_ns = 0;
  ExitCounts exits;  // Over the guest's loop (from the first doorbell for round trips).
};

// TSC ticks per nanosecond: the guest's TSC runs at the host's rate (PVM runs the guest on the
// same CPU, no TSC scaling); calibrated against steady_clock over 50 ms.
double TscPerNs();

// One VM, one run of bench_guest. `bound`: the guest's id has an eventfd (else every signal
// falls back to user space, where the handler answers 0). `host_spins`: the host thread spins
// on a non-blocking eventfd instead of a blocking read(2). The calling thread is pinned to cpu0
// (the vCPU thread inherits it), the host thread to cpu1.
absl::StatusOr<RawResult> RunRawBench(RawMode mode, uint64_t iterations, bool bound,
                                      bool host_spins, double tsc_per_ns);

}  // namespace cvmbus::hw::kvm

#endif  // CVMBUS_HW_KVM_TESTING_RAW_ROUND_TRIP_H_
