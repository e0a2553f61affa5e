// The guest's side of IC version negotiation exactly as Linux computes it
// (drivers/hv/channel_mgmt.c vmbus_prep_negotiate_resp), and Linux's version lists
// (drivers/hv/hv_util.c), for tests: the device must end up with the versions a real Linux
// guest would pick.
#ifndef CVMBUS_PARAVISOR_TESTING_LINUX_NEGOTIATE_H_
#define CVMBUS_PARAVISOR_TESTING_LINUX_NEGOTIATE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "paravisor/devices/ic/ic_protocol.h"

namespace cvmbus::paravisor::ic::testing {

// hv_util.c, newest first (the order Linux searches in).
inline constexpr IcVersion kLinuxFrameworkVersions[] = {{3, 0}, {1, 0}};  // fw_versions
inline constexpr IcVersion kLinuxHeartbeatVersions[] = {{3, 0}, {1, 0}};  // hb_versions
inline constexpr IcVersion kLinuxShutdownVersions[] = {{3, 2}, {3, 1}, {3, 0}, {1, 0}};
inline constexpr IcVersion kLinuxTimeSyncVersions[] = {{4, 0}, {3, 0}, {1, 0}};  // ts_versions

struct LinuxNegotiation {
  bool found = false;  // The function's result.
  // *nego_fw_version and *nego_srv_version: set whatever the result (on a mismatch to the
  // counts, as Linux leaves them).
  IcVersion framework{};
  IcVersion message{};
};

// Rewrites the NEGOTIATE request in `buf` (Linux's receive buffer, `recvlen` bytes received;
// `buf` may be longer, as Linux's 16 KiB one is) into the answer, in place.
LinuxNegotiation PrepareNegotiateResponse(std::vector<uint8_t>& buf, uint32_t recvlen,
                                          absl::Span<const IcVersion> fw_versions,
                                          absl::Span<const IcVersion> srv_versions);

}  // namespace cvmbus::paravisor::ic::testing

#endif  // CVMBUS_PARAVISOR_TESTING_LINUX_NEGOTIATE_H_
