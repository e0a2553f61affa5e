// Tiny real-mode guest programs for KvmVm tests, as hand-assembled x86 machine code (the .cc
// gives the assembly of every instruction).
//
// Every program assumes the same machine: real mode, cs = ds = es = ss = 0, loaded at
// kCodeGpa and entered there with sp = kStackTopGpa (EntryFor), the KvmVm's default exit port
// (0x501) and debug port (0xe9), and guest memory of at least kGuestMemoryBytes from GPA 0
// (HighMemoryEcho also needs the page at kHighPageGpa). The programs trust their memory: they
// are test peers, not code that defends itself.
//
// On this machine kind (KVM with the PVM backend) real mode seems to run in KVM's instruction
// emulator: an IDT limit of 0 did not make INT3 fault (it vectored through IVT[3] anyway) and
// the zeros it ran into ended in KVM_EXIT_INTERNAL_ERROR "emulation failed". So the programs
// keep to plain integer instructions, use XCHG as the full barrier, and a triple fault cannot
// be provoked portably (KVM_EXIT_SHUTDOWN handling is untested).
#ifndef CVMBUS_HW_KVM_TESTING_GUEST_PROGRAMS_H_
#define CVMBUS_HW_KVM_TESTING_GUEST_PROGRAMS_H_

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "guestmem/guest_memory.h"
#include "hw/kvm/kvm_vm.h"

namespace cvmbus::hw::kvm::testing {

// --- The memory map -----------------------------------------------------------------------------
inline constexpr uint64_t kGuestMemoryBytes = 0x10000;  // One 64 KiB region at GPA 0.
inline constexpr uint16_t kCodeGpa = 0x1000;            // Programs live and start here.
inline constexpr uint16_t kStackTopGpa = 0x3000;        // Initial sp; the stack grows down.
inline constexpr uint64_t kResultGpa = 0x3000;          // VmbusRingClient's u32 result.

// The entry of every program: cs:ip = 0000:kCodeGpa, ds = ss = 0, sp = kStackTopGpa.
RealModeEntry EntryFor();

// Writes `program` at kCodeGpa through `memory` (any view with write access).
absl::Status LoadProgram(const guestmem::GuestMemory& memory, absl::Span<const uint8_t> program);

// --- VmbusRingClient: a VMBus ring client driven by the doorbell and an interrupt -------------
//
// Two VMBus rings (ring/protocol.h layout: a 4 KiB control page, then the data pages):
//   request ring  at kRequestRingGpa:  the guest writes, the host reads (IncomingRing);
//   response ring at kResponseRingGpa: the host writes (OutgoingRing), the guest reads.
// The guest:
//   1. programs the master 8259 PIC (ICW1..ICW4: vectors 0x20-0x27) and unmasks only IRQ 4;
//   2. points IVT vector 0x24 (IRQ 4) at its handler;
//   3. writes one in-band packet at its request ring's write index: type 0x6, data_offset8 2,
//      length8 3, flags 1 (completion requested), transaction id kRequestTransactionId, the
//      8-byte payload kRequestPayload, the trailer (start index << 32); then publishes the new
//      write index with XCHG (a store and a full barrier);
//   4. rings the doorbell (OUT to kDoorbellPort) iff the host's interrupt_mask is 0 and its
//      read index equals the write index before the packet (the VMBus signalling rule);
//   5. STI; HLT in a loop.
// The IRQ 4 handler sends the PIC an EOI and returns if the response ring is empty. Otherwise
// it checks the packet at its read index: a completion (type 0xb, data_offset8 2, length8 3,
// flags 0) for kRequestTransactionId whose trailer's start index is right. If so, it stores
// the sum of the payload's two u32 halves (mod 2^32) at kResultGpa, consumes the packet
// (publishes the new read index) and writes kExitOk to the exit port; if not, it writes
// kExitBadAnswer. Neither ring ever wraps mid-packet from a fresh start.
inline constexpr uint64_t kRequestRingGpa = 0x4000;
inline constexpr uint64_t kResponseRingGpa = 0x8000;
inline constexpr uint32_t kRingDataPages = 2;  // 8 KiB of data per ring.
inline constexpr uint16_t kDoorbellPort = 0x610;
inline constexpr uint32_t kIrqGsi = 4;  // PIC IRQ 4, vector 0x24.
inline constexpr uint64_t kRequestTransactionId = 0x0123456789abcdef;
inline constexpr std::array<uint8_t, 8> kRequestPayload = {'p', 'i', 'n', 'g', 1, 2, 3, 4};
inline constexpr uint8_t kExitOk = 1;
inline constexpr uint8_t kExitBadAnswer = 2;
absl::Span<const uint8_t> VmbusRingClient();

// --- Small programs for the run loop's exits ----------------------------------------------------

// Writes 'H' to the debug port, then CLI; HLT forever: a vCPU that only Stop can end.
absl::Span<const uint8_t> HaltForever();
// Writes 'S' to the debug port, then spins in JMP $ forever.
absl::Span<const uint8_t> SpinForever();
// Stores kHighMarker at kHighPageGpa, then writes the u32 it finds at kHighPageGpa + 4 to the
// exit port (4 bytes). Needs guest memory at kHighPageGpa (a second region).
inline constexpr uint64_t kHighPageGpa = 0x20000;
inline constexpr uint32_t kHighMarker = 0xc0de5afe;
absl::Span<const uint8_t> HighMemoryEcho();
// OUT to port kUnknownPort, which no one handles.
inline constexpr uint16_t kUnknownPort = 0x1234;
absl::Span<const uint8_t> OutToUnknownPort();
// Writes one byte to kMmioDoorbellGpa (outside guest memory), then writes 7 to the exit port.
inline constexpr uint64_t kMmioDoorbellGpa = 0xf0000;
absl::Span<const uint8_t> MmioDoorbell();

}  // namespace cvmbus::hw::kvm::testing

#endif  // CVMBUS_HW_KVM_TESTING_GUEST_PROGRAMS_H_
