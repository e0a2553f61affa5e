#include "paravisor/daemon/ring_inspect.h"

#include <fmt/format.h>

#include <array>
#include <cstring>

#include "ring/protocol.h"
#include "ring/tools/ring_dump.h"
#include "ring/tools/ring_image.h"

namespace cvmbus::paravisor::daemon {
namespace {

namespace control = ring::control;

Tree ControlSummary(const guestmem::GuestMemory& memory, absl::Span<const uint64_t> gpns) {
  Tree out;
  if (gpns.size() < 2) {
    out["error"] = fmt::format("{} pages: no data area", gpns.size());
    return out;
  }
  // One copy of the fields (offsets 0x00..0x43), read once.
  std::array<uint8_t, control::kFeatureBits + 4> copy{};
  if (absl::Status read = memory.Read(gpns[0] * control::kPageBytes, absl::MakeSpan(copy));
      !read.ok()) {
    out["error"] = read.ToString();
    return out;
  }
  const auto word = [&](uint32_t offset) {
    uint32_t value;
    std::memcpy(&value, copy.data() + offset, sizeof(value));
    return value;
  };
  const uint64_t data_bytes = uint64_t{gpns.size() - 1} * control::kPageBytes;
  const uint32_t write_index = word(control::kWriteIndex);
  const uint32_t read_index = word(control::kReadIndex);
  out["data_bytes"] = data_bytes;
  out["write_index"] = write_index;
  out["read_index"] = read_index;
  out["interrupt_mask"] = word(control::kInterruptMask);
  out["pending_send_size"] = word(control::kPendingSendSize);
  out["feature_bits"] = word(control::kFeatureBits);
  const bool valid = write_index < data_bytes && read_index < data_bytes && write_index % 8 == 0 &&
                     read_index % 8 == 0;
  if (valid) {
    const uint64_t used = (write_index + data_bytes - read_index) % data_bytes;
    out["used_bytes"] = used;
    out["free_bytes"] = data_bytes - used;
  } else {
    out["indices"] = "invalid";
  }
  return out;
}

}  // namespace

Tree RingSummary(const RingPages& rings) {
  Tree out;
  out["view"] = rings.confidential ? "private" : "untrusted";
  out["guest_to_host"] = ControlSummary(rings.memory, rings.guest_to_host);
  out["host_to_guest"] = ControlSummary(rings.memory, rings.host_to_guest);
  return out;
}

absl::StatusOr<std::string> RingDumpText(const RingPages& rings, uint32_t relid) {
  std::string text;
  for (const auto& [direction, gpns] : {std::pair{"guest_to_host", &rings.guest_to_host},
                                        std::pair{"host_to_guest", &rings.host_to_guest}}) {
    absl::StatusOr<ring::tools::RingImage> image = ring::tools::CopyImage(rings.memory, *gpns);
    if (!image.ok()) {
      return absl::Status(
          image.status().code(),
          fmt::format("ring {}/{}: {}", relid, direction, std::string(image.status().message())));
    }
    const ring::tools::RingDump dump =
        ring::tools::DumpRing(*image, fmt::format("{}/{}", relid, direction), 16);
    text += dump.text;
    if (!dump.corruption.ok()) {
      text += fmt::format("CORRUPT: {}\n", std::string(dump.corruption.message()));
    }
  }
  return text;
}

}  // namespace cvmbus::paravisor::daemon
