// The Hyper-V guest ABI the paravisor's SynIC presents: synthetic MSRs, the SIMP message slot,
// the SIEFP event flags, the hypercall input/status encoding, and the CPUID leaves that make a
// guest pick Hyper-V. Facts from the Hyper-V TLFS as Linux uses it (include/hyperv/hvgdk_mini.h,
// arch/x86/hyperv/hv_init.c, drivers/hv/hv.c); see shared/docs/linux-guest.md.
#ifndef CVMBUS_PARAVISOR_SYNIC_HV_ABI_H_
#define CVMBUS_PARAVISOR_SYNIC_HV_ABI_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace cvmbus::paravisor::synic {

// --- Synthetic MSRs ----------------------------------------------------------------------------
inline constexpr uint32_t kMsrGuestOsId = 0x40000000;
inline constexpr uint32_t kMsrHypercall = 0x40000001;
inline constexpr uint32_t kMsrVpIndex = 0x40000002;
inline constexpr uint32_t kMsrTimeRefCount = 0x40000020;
inline constexpr uint32_t kMsrVpAssistPage = 0x40000073;
inline constexpr uint32_t kMsrScontrol = 0x40000080;
inline constexpr uint32_t kMsrSversion = 0x40000081;
inline constexpr uint32_t kMsrSiefp = 0x40000082;
inline constexpr uint32_t kMsrSimp = 0x40000083;
inline constexpr uint32_t kMsrEom = 0x40000084;
inline constexpr uint32_t kMsrSint0 = 0x40000090;
inline constexpr uint32_t kMsrSint15 = 0x4000009f;

inline constexpr uint32_t kSintCount = 16;
inline constexpr uint64_t kSynicVersion = 1;  // SVERSION.

// HYPERCALL: bit 0 enable, bit 1 locked, bits 11:2 reserved, bits 63:12 the page's GPN.
inline constexpr uint64_t kHypercallEnable = 1;
inline constexpr uint64_t kHypercallLocked = 2;
// SIMP, SIEFP, VP_ASSIST_PAGE: bit 0 enable, bits 11:1 reserved, bits 63:12 the page's GPN.
inline constexpr uint64_t kPageEnable = 1;
inline constexpr uint64_t kPageGpaMask = ~uint64_t{0xfff};
// SCONTROL: bit 0 enable.
inline constexpr uint64_t kScontrolEnable = 1;
// SINTx: vector 7:0, masked 16, auto-EOI 17, polling/proxy 18; the rest reserved.
inline constexpr uint64_t kSintVectorMask = 0xff;
inline constexpr uint64_t kSintMasked = uint64_t{1} << 16;
inline constexpr uint64_t kSintAutoEoi = uint64_t{1} << 17;
inline constexpr uint64_t kSintProxy = uint64_t{1} << 18;
inline constexpr uint64_t kSintDefinedBits =
    kSintVectorMask | kSintMasked | kSintAutoEoi | kSintProxy;
// Vectors 0-15 are reserved: an unmasked SINT may not use them (TLFS; KVM refuses them too).
inline constexpr uint8_t kFirstValidVector = 16;

// --- The message page (SIMP): 16 slots of 256 bytes, one per SINT -------------------------------
inline constexpr size_t kMessageSlotBytes = 256;
inline constexpr size_t kMessagePayloadBytes = 240;  // HV_MESSAGE_PAYLOAD_BYTE_COUNT.
inline constexpr uint32_t kMessageTypeNone = 0;      // An empty slot.
inline constexpr uint32_t kMessageTypeVmbus = 1;     // VMBus channel messages (both ways).
// Message types with bit 31 set are the hypervisor's own (HVMSG_*): a guest may not post them.
inline constexpr uint32_t kMessageTypeHypervisorBit = 0x80000000;
inline constexpr uint8_t kMessageFlagPending = 1;  // message_flags bit 0: more are queued.

struct MessageSlotHeader {
  uint32_t message_type;  // Written last by the sender, cleared by the guest.
  uint8_t payload_size;
  uint8_t message_flags;
  uint16_t reserved;
  uint64_t sender;  // Port or partition id; 0 from this SynIC.
};
static_assert(sizeof(MessageSlotHeader) == 16);
static_assert(offsetof(MessageSlotHeader, payload_size) == 4);
static_assert(offsetof(MessageSlotHeader, message_flags) == 5);
static_assert(offsetof(MessageSlotHeader, sender) == 8);
static_assert(std::is_trivially_copyable_v<MessageSlotHeader>);
inline constexpr size_t kMessagePayloadOffset = sizeof(MessageSlotHeader);

// --- The event flags page (SIEFP): 16 blocks of 2048 flag bits, one per SINT --------------------
inline constexpr size_t kEventFlagsBlockBytes = 256;
inline constexpr uint32_t kEventFlagCount = kEventFlagsBlockBytes * 8;

// --- Hypercalls ---------------------------------------------------------------------------------
// RCX: call code 15:0, fast 16, variable header size 26:17, rep count 43:32, rep start 59:48.
inline constexpr uint16_t kCallPostMessage = 0x005c;
inline constexpr uint16_t kCallSignalEvent = 0x005d;
inline constexpr uint64_t kControlFast = uint64_t{1} << 16;
inline constexpr uint64_t kControlCodeMask = 0xffff;
// Everything but the call code and the fast bit: a simple (non-rep) call must leave it zero.
inline constexpr uint64_t kControlNonSimpleMask = ~(kControlCodeMask | kControlFast);

// HV_STATUS values.
inline constexpr uint64_t kStatusSuccess = 0x0;
inline constexpr uint64_t kStatusInvalidHypercallCode = 0x2;
inline constexpr uint64_t kStatusInvalidHypercallInput = 0x3;
inline constexpr uint64_t kStatusInvalidAlignment = 0x4;
inline constexpr uint64_t kStatusInvalidParameter = 0x5;
inline constexpr uint64_t kStatusAccessDenied = 0x6;
inline constexpr uint64_t kStatusInvalidConnectionId = 0x12;
inline constexpr uint64_t kStatusInsufficientBuffers = 0x13;

// HvPostMessage's input page (struct hv_input_post_message).
struct PostMessageInput {
  uint32_t connection_id;  // Bits 23:0; bits 31:24 reserved.
  uint32_t reserved;
  uint32_t message_type;
  uint32_t payload_size;
  uint8_t payload[kMessagePayloadBytes];
};
static_assert(sizeof(PostMessageInput) == 256);
static_assert(offsetof(PostMessageInput, payload) == 16);
static_assert(std::is_trivially_copyable_v<PostMessageInput>);

// HvSignalEvent's input (fast: RDX; slow: the first 8 bytes of the input page).
inline constexpr uint64_t kConnectionIdMask = 0xffffff;
inline constexpr int kFlagNumberShift = 32;  // Flag number: bits 47:32.
inline constexpr uint64_t kSignalEventReservedMask =
    ~(kConnectionIdMask | (uint64_t{0xffff} << kFlagNumberShift));

// --- CPUID (the leaves a Linux guest checks before it binds hv_vmbus) ----------------------------
inline constexpr uint32_t kCpuidVendorLeaf = 0x40000000;     // EAX max leaf, EBX..EDX vendor.
inline constexpr uint32_t kCpuidInterfaceLeaf = 0x40000001;  // EAX "Hv#1".
inline constexpr uint32_t kCpuidFeaturesLeaf = 0x40000003;
inline constexpr uint32_t kCpuidRecommendationsLeaf = 0x40000004;
inline constexpr uint32_t kCpuidMaxLeaf = 0x40000006;
inline constexpr uint32_t kHvInterfaceSignature = 0x31237648;  // "Hv#1" little-endian.
// 0x40000003 EAX (partition privileges): the reference counter, SynIC, hypercall MSRs, VP index.
inline constexpr uint32_t kPrivilegeTimeRefCount = 1u << 1;
inline constexpr uint32_t kPrivilegeSynic = 1u << 2;
inline constexpr uint32_t kPrivilegeHypercallMsrs = 1u << 5;
inline constexpr uint32_t kPrivilegeVpIndex = 1u << 6;
// 0x40000003 EBX: may post messages, may signal events.
inline constexpr uint32_t kPrivilegePostMessages = 1u << 4;
inline constexpr uint32_t kPrivilegeSignalEvents = 1u << 5;
// 0x40000004 EAX bit 9: use explicit EOI (do not rely on auto-EOI).
inline constexpr uint32_t kRecommendExplicitEoi = 1u << 9;

}  // namespace cvmbus::paravisor::synic

#endif  // CVMBUS_PARAVISOR_SYNIC_HV_ABI_H_
