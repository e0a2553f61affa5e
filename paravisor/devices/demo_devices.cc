#include "paravisor/devices/demo_devices.h"

#include <algorithm>

namespace cvmbus::paravisor {

std::vector<OfferParams> DemoDeviceParams(int count) {
  count = std::clamp(count, 1, kDemoMaxDeviceCount);
  std::vector<OfferParams> devices;
  devices.reserve(count);
  for (int i = 0; i < count; ++i) {
    OfferParams params;
    params.interface_name = kDemoInterfaceName;
    params.interface_id = kDemoInterfaceId;
    params.instance_id = DemoInstanceId(i);
    params.allow_confidential_external_memory = true;
    if (count >= 2 && i == count - 1) params.mnf_interrupt_latency = kDemoMonitorLatency;
    devices.push_back(std::move(params));
  }
  return devices;
}

}  // namespace cvmbus::paravisor
