// The Hyper-V monitor page (struct hv_monitor_page, 4096 bytes): the monitored notification
// facility (MNF). A guest signals a channel whose offer has monitor_allocated by setting bit
// `id % 32` of the `pending` word of trigger group `id / 32` in the child -> parent page (a
// locked bit-set, no hypercall); the other side scans the pending words about every latency
// period and signals each set bit's connection, as the hypervisor does for Hyper-V.
//
// Layout (Linux hv_monitor_page; OpenVMM HvMonitorPage): trigger_state u32 at 0 (bits 0-3 enable
// the groups); trigger group g at 8 + 8g (pending u32, armed u32); next_checktime s32[4][32]
// at 0x40; latency u16[4][32] at 0x240, in 100 ns units; parameter[4][32] at 0x440, 8 bytes
// each (connection id u32, flag number u16, reserved u16).
#ifndef CVMBUS_PARAVISOR_PROTOCOL_MONITOR_PAGE_H_
#define CVMBUS_PARAVISOR_PROTOCOL_MONITOR_PAGE_H_

#include <cstdint>

namespace cvmbus::paravisor::protocol::monitor {

inline constexpr uint32_t kMaxMonitorIds = 128;
inline constexpr uint32_t kGroups = 4;
inline constexpr uint32_t kIdsPerGroup = 32;
// Sent in an offer without a monitor id (with monitor_allocated 0): Linux computes a group and
// bit from it regardless, so it must not name a real id.
inline constexpr uint8_t kNoMonitorId = 0xff;

inline constexpr uint64_t kTriggerState = 0x000;
constexpr uint64_t PendingOffset(uint32_t group) { return 0x008 + 8 * uint64_t{group}; }
constexpr uint64_t LatencyOffset(uint32_t id) { return 0x240 + 2 * uint64_t{id}; }
constexpr uint64_t ParameterOffset(uint32_t id) { return 0x440 + 8 * uint64_t{id}; }
// Bytes the layout defines (the rest of the page is reserved).
inline constexpr uint64_t kUsedBytes = 0x840;

static_assert(PendingOffset(3) == 0x20);
static_assert(LatencyOffset(127) == 0x33e);
static_assert(ParameterOffset(127) == 0x838);

}  // namespace cvmbus::paravisor::protocol::monitor

#endif  // CVMBUS_PARAVISOR_PROTOCOL_MONITOR_PAGE_H_
