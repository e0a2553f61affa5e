// The demo's device set: what `cvmbus_demo` offers and what every `vmbus_replay` script runs
// against (shared/docs/replay-format.md, "The machine a script runs on"). One place, so a
// script's expected offer bytes and the demo cannot drift apart.
//
//   - `count` echo devices (EchoDevice) of one interface, kDemoInterfaceId;
//   - device i (0-based) has instance id {data1 = i + 1, the rest zero}, so the server's
//     stable offer order (interface, then instance) is the creation order;
//   - all of them allow confidential external memory (meaningful only with private memory);
//   - the last of two or more is monitored: MNF with a 50 us interrupt latency.
#ifndef CVMBUS_PARAVISOR_DEVICES_DEMO_DEVICES_H_
#define CVMBUS_PARAVISOR_DEVICES_DEMO_DEVICES_H_

#include <chrono>
#include <vector>

#include "paravisor/bus/bus.h"
#include "paravisor/bus/guid.h"

namespace cvmbus::paravisor {

// 6a1e6c0e-7b2d-4c4e-9f3a-0c5e1d2b3a40.
inline constexpr Guid kDemoInterfaceId{
    0x6a1e6c0e, 0x7b2d, 0x4c4e, {0x9f, 0x3a, 0x0c, 0x5e, 0x1d, 0x2b, 0x3a, 0x40}};
inline constexpr char kDemoInterfaceName[] = "cvmbus-echo";
inline constexpr int kDemoDeviceCount = 4;      // The demo's default (--channels).
inline constexpr int kDemoMaxDeviceCount = 64;  // The demo's --channels limit.
inline constexpr std::chrono::nanoseconds kDemoMonitorLatency = std::chrono::microseconds(50);

// The instance id of demo device `index` (0-based).
constexpr Guid DemoInstanceId(int index) {
  Guid id;
  id.data1 = static_cast<uint32_t>(index + 1);
  return id;
}

// The offers of the demo's `count` devices (1..kDemoMaxDeviceCount; clamped), in the order the
// demo creates them.
std::vector<OfferParams> DemoDeviceParams(int count = kDemoDeviceCount);

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEVICES_DEMO_DEVICES_H_
