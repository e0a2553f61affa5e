// Questions a device asks of the server's saved state when it is restored after servicing.
#ifndef CVMBUS_PARAVISOR_SERVER_SAVED_QUERIES_H_
#define CVMBUS_PARAVISOR_SERVER_SAVED_QUERIES_H_

#include <cstdint>

#include "paravisor/bus/guid.h"
#include "paravisor/server/saved_state.pb.h"

namespace cvmbus::paravisor {

// Whether the offer (interface, instance, subchannel index) was saved open or closing: its
// device had the channel open, so it restores it with an OpenResult.
bool SavedChannelOpen(const saved::Server& state, const Guid& interface_id, const Guid& instance_id,
                      uint16_t subchannel_index);

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_SAVED_QUERIES_H_
