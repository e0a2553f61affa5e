// What cvmbusd shows of a live channel's rings: a summary of each control page for the inspect
// tree, and ringtool's full dump for "ring RELID". Both read a copy: the control page (or the
// whole ring) is read once from guest memory through the channel's view, then only the copy is
// looked at, so a guest rewriting its ring meanwhile changes nothing but what it shows.
#ifndef CVMBUS_PARAVISOR_DAEMON_RING_INSPECT_H_
#define CVMBUS_PARAVISOR_DAEMON_RING_INSPECT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "paravisor/daemon/inspect_tree.h"
#include "paravisor/server/server_snapshot.h"

namespace cvmbus::paravisor::daemon {

// {"guest_to_host": {...}, "host_to_guest": {...}, "view": "private"|"untrusted"}; each ring's
// write_index, read_index, interrupt_mask, pending_send_size, feature_bits, data_bytes, and
// used_bytes/free_bytes when both indices are valid (else "indices": "invalid").
Tree RingSummary(const RingPages& rings);
// Both rings as ringtool dump prints them, headed "ring <relid>/<direction>"; a corruption ends
// that ring's part with "CORRUPT: <description>".
absl::StatusOr<std::string> RingDumpText(const RingPages& rings, uint32_t relid);

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_RING_INSPECT_H_
