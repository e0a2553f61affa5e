#include "paravisor/server/saved_queries.h"

#include <cstring>

#include "paravisor/server/saved_codes.h"

namespace cvmbus::paravisor {

bool SavedChannelOpen(const saved::Server& state, const Guid& interface_id, const Guid& instance_id,
                      uint16_t subchannel_index) {
  for (const saved::Channel& channel : state.channels()) {
    if (channel.instance_id().size() == sizeof(Guid) &&
        channel.interface_id().size() == sizeof(Guid) &&
        std::memcmp(channel.instance_id().data(), &instance_id, sizeof(Guid)) == 0 &&
        std::memcmp(channel.interface_id().data(), &interface_id, sizeof(Guid)) == 0 &&
        channel.subchannel_index() == subchannel_index) {
      return channel.state() == kSavedOpen || channel.state() == kSavedClosing;
    }
  }
  return false;
}

}  // namespace cvmbus::paravisor
