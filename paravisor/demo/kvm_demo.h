// The demo with --kvm: cvmbusd's body with a real KVM vCPU as its guest (guest.side GUEST_KVM)
// on an emulated SEV-SNP VM. The vCPU runs the freestanding VMBus guest: CPUID, SynIC MSRs,
// HvPostMessage, HvSignalEvent and interrupts as a guest kernel uses them; it negotiates 6.0
// with confidential channels and runs byte-checked echo round trips with its rings in
// launch-validated private memory, while the paravisor services itself in place twice.
#ifndef CVMBUS_PARAVISOR_DEMO_KVM_DEMO_H_
#define CVMBUS_PARAVISOR_DEMO_KVM_DEMO_H_

#include <cstdint>

namespace cvmbus::paravisor {

// Prints what it shows; 0 when the guest finished cleanly, 1 otherwise, 3 if there is no KVM.
int RunKvmDemo(uint32_t round_trips);

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEMO_KVM_DEMO_H_
