// What every device on the bus does the same way with its channel: keeps the GPADLs the server
// hands it (parsed once, on CreateGpadl) and, on open, builds the two rings from the ring
// GPADL the open request names, in the view the request allows.
//
// Ring layout (the VMBus rule): the GPADL is one range; its first `ring_offset` pages hold the
// guest -> host ring, the rest the host -> guest ring; each ring has a control page and at
// least one data page.
#ifndef CVMBUS_PARAVISOR_DEVICES_DEVICE_CHANNEL_H_
#define CVMBUS_PARAVISOR_DEVICES_DEVICE_CHANNEL_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "guestmem/guest_memory.h"
#include "guestmem/paged_range.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/ring_endpoint.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"

namespace cvmbus::paravisor {

// The GPADLs a device accepted, parsed.
class DeviceGpadls {
 public:
  // Parses and keeps it; false (the device's refusal) if the buffer is malformed.
  bool Accept(const GpadlRequest& request);
  void Remove(GpadlId id) { gpadls_.erase(id); }
  // nullptr if there is none with this id.
  const std::vector<guestmem::PagedRange>* Find(GpadlId id) const;
  size_t size() const { return gpadls_.size(); }

 private:
  std::map<GpadlId, std::vector<guestmem::PagedRange>> gpadls_;
};

// An open channel's rings and the memory its data (GPA-direct ranges, extra GPADLs) is reached
// through. Members are declared so that the endpoints, which may signal the guest, go first.
struct ChannelRings {
  std::shared_ptr<hw::Signal> guest_interrupt;
  guestmem::GuestMemory ring_memory;
  guestmem::GuestMemory data_memory;
  std::unique_ptr<hw::RingReader> reader;  // guest -> host
  std::unique_ptr<hw::RingWriter> writer;  // host -> guest
};

// One open channel's traffic as its rings counted it (for the inspect tree): guest -> host
// packets read, host -> guest packets written (bytes include descriptors and trailers), writes
// refused for a full ring, and the corruption that stopped either ring.
struct ChannelTraffic {
  Guid instance_id;
  uint16_t subchannel_index = 0;
  uint64_t packets_from_guest = 0;
  uint64_t bytes_from_guest = 0;
  uint64_t packets_to_guest = 0;
  uint64_t bytes_to_guest = 0;
  uint64_t full_refusals = 0;
  std::string error;  // Empty while both rings run.
};
ChannelTraffic TrafficOf(const ChannelRings& rings, const Guid& instance_id,
                         uint16_t subchannel_index);

// Builds the rings of `request`'s open on `loop`. `wake_fd` is the device's eventfd: the
// guest's doorbell and the endpoints' wake-up. Errors name `device` and what was wrong (no
// such GPADL, a bad split, a view that was never provided, no interrupt).
absl::StatusOr<ChannelRings> OpenChannelRings(std::string_view device, hw::EventLoop* loop,
                                              const OfferResources& resources,
                                              const DeviceGpadls& gpadls,
                                              const OpenRequest& request, int wake_fd);

// The channel requests of a device with one channel and no say over GPADLs or MODIFYCHANNEL:
// GPADLs are parsed into `gpadls` (each one accepted counted in *gpadls_accepted), MODIFYCHANNEL
// is answered success, and opens and closes go to the device.
struct ChannelRequestHandlers {
  std::function<std::optional<OpenResult>(const OpenRequest&)> open;
  std::function<void(Rpc<Unit, Unit> close)> close;
};

// Serves `requests` on `loop` until the server drops them (the offer was revoked, or the server
// went away) or *alive turns false. `requests`, `gpadls` and `gpadls_accepted` belong to the
// device and are touched only while *alive is true (the device sets it false when destroyed;
// the task may outlive it).
hw::Task ServeChannelRequests(hw::EventLoop* loop, Receiver<ChannelRequest>* requests,
                              DeviceGpadls* gpadls, uint64_t* gpadls_accepted,
                              std::shared_ptr<bool> alive, ChannelRequestHandlers handlers);

// Servicing, device side: a device that offered its channel again asks the server to restore
// it, with `open_result` (the device's interrupt) if the channel was saved open. When the
// server answers, the GPADLs it had accepted go into `gpadls` (each counted in
// *gpadls_accepted; one the device had not accepted yet comes again as a GPADL request), then
// `reopen` gets the saved open request if the channel was open, to bring its rings back from
// their control pages. A failed restore goes to `failed`. The send's error is returned; the
// rest runs on `loop` while *alive is true (as for ServeChannelRequests).
struct RestoreHandlers {
  std::function<void(const OpenRequest&)> reopen;
  std::function<void(const absl::Status&)> failed;
};
absl::Status AskServerToRestore(hw::EventLoop* loop, Sender<ChannelServerRequest>& to_server,
                                std::optional<OpenResult> open_result, DeviceGpadls* gpadls,
                                uint64_t* gpadls_accepted, std::shared_ptr<bool> alive,
                                RestoreHandlers handlers);

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_DEVICES_DEVICE_CHANNEL_H_
