// The text ringtool dump prints for one ring: the control page's fields, then every packet from
// read_index to write_index as the production IncomingRing parses it (nothing is committed),
// stopping at the first corruption.
#ifndef CVMBUS_RING_TOOLS_RING_DUMP_H_
#define CVMBUS_RING_TOOLS_RING_DUMP_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "ring/tools/ring_image.h"

namespace cvmbus::ring::tools {

struct RingDump {
  std::string text;         // Everything up to the corruption, if any.
  absl::Status corruption;  // kDataLoss with the one-line description; OK for a sound ring.
};

// `name` heads the dump ("ring <name>: ..."); payloads show their first `max_payload_bytes`.
RingDump DumpRing(const RingImage& image, std::string_view name, uint32_t max_payload_bytes);

}  // namespace cvmbus::ring::tools

#endif  // CVMBUS_RING_TOOLS_RING_DUMP_H_
