// What the server can say about itself at one instant, for an inspect tree: plain values,
// copied on the loop thread, safe to hand to any thread afterwards.
#ifndef CVMBUS_PARAVISOR_SERVER_SERVER_SNAPSHOT_H_
#define CVMBUS_PARAVISOR_SERVER_SERVER_SNAPSHOT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "guestmem/guest_memory.h"
#include "paravisor/bus/bus.h"

namespace cvmbus::paravisor {

struct ChannelSnapshot {
  uint32_t relid = 0;
  std::string state;  // internal::StateName: "released", "closed", "opening", "open", ...
  std::string interface_name;
  Guid interface_id;
  Guid instance_id;
  uint16_t subchannel_index = 0;
  bool hvsocket = false;
  uint16_t offer_flags = 0;  // As offered, before masking by the connection's features.
  std::optional<uint8_t> monitor_id;
  bool device_attached = true;
  // Of the open (or the open being made or closed).
  std::optional<OpenData> open;
  size_t gpadls = 0;
  size_t pending_modifies = 0;
  // Host -> guest interrupts the devices raised on the current open (opening or open).
  uint64_t interrupts_to_guest = 0;
};

struct GpadlSnapshot {
  uint32_t id = 0;
  uint32_t relid = 0;
  std::string state;  // internal::GpadlStateName.
  uint16_t ranges = 0;
  uint64_t pages = 0;  // Page-number words received so far.
};

struct ServerSnapshot {
  bool connected = false;
  uint32_t version = 0;  // 0: not connected.
  uint32_t feature_flags = 0;
  uint64_t connection_epoch = 0;
  bool paused = false;
  std::optional<uint64_t> monitor_scans;
  std::optional<uint64_t> monitor_signals;
  uint64_t messages_handled = 0;
  uint64_t guest_errors = 0;
  uint64_t stale_replies = 0;
  uint64_t internal_errors = 0;
  uint64_t log_lines_suppressed = 0;
  std::vector<ChannelSnapshot> channels;  // By relid.
  std::vector<GpadlSnapshot> gpadls;      // By id.
};

// Where an open channel's two rings lie, and the view its device reaches them through (the
// private one for a confidential ring): what a ring dump reads.
struct RingPages {
  std::vector<uint64_t> guest_to_host;  // Control page first, then the data pages.
  std::vector<uint64_t> host_to_guest;
  guestmem::GuestMemory memory;
  bool confidential = false;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_SERVER_SNAPSHOT_H_
