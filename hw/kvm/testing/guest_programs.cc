#include "hw/kvm/testing/guest_programs.h"

// The programs are 16-bit real-mode code, loaded at kCodeGpa (0x1000) with cs = ds = es = 0.
// Each line is one instruction: its offset from kCodeGpa, its bytes, its assembly (Intel
// syntax); a jump shows its target offset (its rel8 byte counts from the end of the jump).

namespace cvmbus::hw::kvm::testing {
namespace {

// clang-format off
constexpr uint8_t kVmbusRingClient[] = {
    // --- 1. The master PIC: ICW1..ICW4, then unmask IRQ 4 alone.
    0xb0, 0x11,              // 00 mov al, 0x11          ; ICW1: edge, cascade, ICW4 follows
    0xe6, 0x20,              // 02 out 0x20, al
    0xb0, 0x20,              // 04 mov al, 0x20          ; ICW2: IRQ 0-7 -> vectors 0x20-0x27
    0xe6, 0x21,              // 06 out 0x21, al
    0xb0, 0x04,              // 08 mov al, 0x04          ; ICW3: the slave sits on IRQ 2
    0xe6, 0x21,              // 0a out 0x21, al
    0xb0, 0x01,              // 0c mov al, 0x01          ; ICW4: 8086 mode, normal EOI
    0xe6, 0x21,              // 0e out 0x21, al
    0xb0, 0xef,              // 10 mov al, 0xef          ; OCW1: mask all but IRQ 4
    0xe6, 0x21,              // 12 out 0x21, al
    // --- 2. IVT[0x24] = 0000:handler (0x1092).
    0xc7, 0x06, 0x90, 0x00, 0x92, 0x10,  // 14 mov word [0x0090], 0x1092   ; vector 0x24 offset
    0xc7, 0x06, 0x92, 0x00, 0x00, 0x00,  // 1a mov word [0x0092], 0x0000   ; vector 0x24 segment
    // --- 3. One in-band packet at data[write_index] of the request ring (data at 0x5000):
    // the descriptor (type 6, data_offset8 2; length8 3, flags 1; the transaction id), the
    // payload ("ping" 1 2 3 4), the trailer (start index << 32).
    0x8b, 0x1e, 0x00, 0x40,  // 20 mov bx, [0x4000]      ; bx = our write_index (start)
    0x66, 0xc7, 0x87, 0x00, 0x50, 0x06, 0x00, 0x02, 0x00,  // 24 mov dword [bx+0x5000], 0x00020006
    0x66, 0xc7, 0x87, 0x04, 0x50, 0x03, 0x00, 0x01, 0x00,  // 2d mov dword [bx+0x5004], 0x00010003
    0x66, 0xc7, 0x87, 0x08, 0x50, 0xef, 0xcd, 0xab, 0x89,  // 36 mov dword [bx+0x5008], 0x89abcdef
    0x66, 0xc7, 0x87, 0x0c, 0x50, 0x67, 0x45, 0x23, 0x01,  // 3f mov dword [bx+0x500c], 0x01234567
    0x66, 0xc7, 0x87, 0x10, 0x50, 0x70, 0x69, 0x6e, 0x67,  // 48 mov dword [bx+0x5010], 0x676e6970
    0x66, 0xc7, 0x87, 0x14, 0x50, 0x01, 0x02, 0x03, 0x04,  // 51 mov dword [bx+0x5014], 0x04030201
    0x66, 0xc7, 0x87, 0x18, 0x50, 0x00, 0x00, 0x00, 0x00,  // 5a mov dword [bx+0x5018], 0
    0x89, 0x9f, 0x1c, 0x50,  // 63 mov [bx+0x501c], bx   ; trailer bits 32-47: the start index
    0xc7, 0x87, 0x1e, 0x50, 0x00, 0x00,  // 67 mov word [bx+0x501e], 0 ; trailer bits 48-63
    0x8d, 0x47, 0x20,        // 6d lea ax, [bx+0x20]     ; new index = start + 24 + 8-byte trailer
    0x3d, 0x00, 0x20,        // 70 cmp ax, 0x2000        ; past the 8 KiB data area?
    0x72, 0x03,              // 73 jb 0x78
    0x2d, 0x00, 0x20,        // 75 sub ax, 0x2000        ; wrap
    0x87, 0x06, 0x00, 0x40,  // 78 xchg [0x4000], ax     ; publish write_index + full barrier
    // --- 4. Signal iff interrupt_mask == 0 and read_index == the old write index.
    0x66, 0x83, 0x3e, 0x08, 0x40, 0x00,  // 7c cmp dword [0x4008], 0  ; the host's interrupt_mask
    0x75, 0x0a,              // 82 jne 0x8e
    0x3b, 0x1e, 0x04, 0x40,  // 84 cmp bx, [0x4004]      ; the host's read_index
    0x75, 0x04,              // 88 jne 0x8e
    0xba, 0x10, 0x06,        // 8a mov dx, 0x610         ; kDoorbellPort
    0xee,                    // 8d out dx, al            ; the doorbell (an ioeventfd)
    // --- 5. Wait for the interrupt.
    0xfb,                    // 8e sti                   ; its 1-instruction shadow covers HLT
    0xf4,                    // 8f hlt
    0xeb, 0xfd,              // 90 jmp 0x8f
    // --- The IRQ 4 handler (0x1092). The idle loop holds no live registers: none are saved.
    0xb0, 0x20,              // 92 mov al, 0x20
    0xe6, 0x20,              // 94 out 0x20, al          ; EOI to the master PIC
    0x8b, 0x1e, 0x04, 0x80,  // 96 mov bx, [0x8004]      ; bx = our read_index on the response ring
    0x3b, 0x1e, 0x00, 0x80,  // 9a cmp bx, [0x8000]      ; == host's write_index: empty
    0x74, 0x53,              // 9e je 0xf3               ; spurious: just return
    // Checks: a completion (type 0xb, data_offset8 2; length8 3, flags 0) for our transaction
    // id, whose trailer bits 32-47 hold its start index.
    0xb0, 0x02,              // a0 mov al, 2             ; kExitBadAnswer unless all pass
    0x66, 0x81, 0xbf, 0x00, 0x90, 0x0b, 0x00, 0x02, 0x00,  // a2 cmp dword [bx+0x9000], 0x0002000b
    0x75, 0x42,              // ab jne 0xef
    0x66, 0x83, 0xbf, 0x04, 0x90, 0x03,  // ad cmp dword [bx+0x9004], 3
    0x75, 0x3a,              // b3 jne 0xef
    0x66, 0x81, 0xbf, 0x08, 0x90, 0xef, 0xcd, 0xab, 0x89,  // b5 cmp dword [bx+0x9008], 0x89abcdef
    0x75, 0x2f,              // be jne 0xef
    0x66, 0x81, 0xbf, 0x0c, 0x90, 0x67, 0x45, 0x23, 0x01,  // c0 cmp dword [bx+0x900c], 0x01234567
    0x75, 0x24,              // c9 jne 0xef
    0x39, 0x9f, 0x1c, 0x90,  // cb cmp [bx+0x901c], bx   ; trailer bits 32-47 == start index
    0x75, 0x1e,              // cf jne 0xef
    0x66, 0x8b, 0x87, 0x10, 0x90,  // d1 mov eax, [bx+0x9010] ; payload, low u32
    0x66, 0x03, 0x87, 0x14, 0x90,  // d6 add eax, [bx+0x9014] ; + payload, high u32
    0x66, 0xa3, 0x00, 0x30,  // db mov [0x3000], eax     ; the result word (kResultGpa)
    0x8d, 0x47, 0x20,        // df lea ax, [bx+0x20]     ; consume: read_index += 32
    0x3d, 0x00, 0x20,        // e2 cmp ax, 0x2000
    0x72, 0x03,              // e5 jb 0xea
    0x2d, 0x00, 0x20,        // e7 sub ax, 0x2000        ; wrap
    0xa3, 0x04, 0x80,        // ea mov [0x8004], ax      ; publish read_index (stores stay ordered)
    0xb0, 0x01,              // ed mov al, 1             ; kExitOk
    0xba, 0x01, 0x05,        // ef mov dx, 0x501         ; the exit port
    0xee,                    // f2 out dx, al
    0xcf,                    // f3 iret
};

constexpr uint8_t kHaltForever[] = {
    0xba, 0xe9, 0x00,  // 00 mov dx, 0xe9        ; the debug port
    0xb0, 0x48,        // 03 mov al, 'H'
    0xee,              // 05 out dx, al
    0xfa,              // 06 cli
    0xf4,              // 07 hlt                 ; with IF = 0 (and no NMI) nothing wakes it
    0xeb, 0xfd,        // 08 jmp 0x07
};

constexpr uint8_t kSpinForever[] = {
    0xba, 0xe9, 0x00,  // 00 mov dx, 0xe9
    0xb0, 0x53,        // 03 mov al, 'S'
    0xee,              // 05 out dx, al
    0xeb, 0xfe,        // 06 jmp 0x06
};

constexpr uint8_t kHighMemoryEcho[] = {
    0xb8, 0x00, 0x20,  // 00 mov ax, 0x2000      ; es base = 0x20000 (kHighPageGpa)
    0x8e, 0xc0,        // 03 mov es, ax
    0x26, 0x66, 0xc7, 0x06, 0x00, 0x00, 0xfe, 0x5a, 0xde, 0xc0,  // 05 mov dword es:[0], 0xc0de5afe
    0x26, 0x66, 0xa1, 0x04, 0x00,  // 0f mov eax, es:[4]
    0xba, 0x01, 0x05,  // 14 mov dx, 0x501
    0x66, 0xef,        // 17 out dx, eax
};

constexpr uint8_t kOutToUnknownPort[] = {
    0xba, 0x34, 0x12,  // 00 mov dx, 0x1234
    0xee,              // 03 out dx, al
};

constexpr uint8_t kMmioDoorbell[] = {
    0xb8, 0x00, 0xf0,  // 00 mov ax, 0xf000      ; es base = 0xf0000 (kMmioDoorbellGpa)
    0x8e, 0xc0,        // 03 mov es, ax
    0x26, 0xc6, 0x06, 0x00, 0x00, 0x01,  // 05 mov byte es:[0], 1
    0xba, 0x01, 0x05,  // 0b mov dx, 0x501
    0xb0, 0x07,        // 0e mov al, 7
    0xee,              // 10 out dx, al
};
// clang-format on

}  // namespace

RealModeEntry EntryFor() {
  return RealModeEntry{.cs = 0, .ip = kCodeGpa, .ds = 0, .sp = kStackTopGpa};
}

absl::Status LoadProgram(const guestmem::GuestMemory& memory, absl::Span<const uint8_t> program) {
  return memory.Write(kCodeGpa, program);
}

absl::Span<const uint8_t> VmbusRingClient() { return kVmbusRingClient; }
absl::Span<const uint8_t> HaltForever() { return kHaltForever; }
absl::Span<const uint8_t> SpinForever() { return kSpinForever; }
absl::Span<const uint8_t> HighMemoryEcho() { return kHighMemoryEcho; }
absl::Span<const uint8_t> OutToUnknownPort() { return kOutToUnknownPort; }
absl::Span<const uint8_t> MmioDoorbell() { return kMmioDoorbell; }

}  // namespace cvmbus::hw::kvm::testing
