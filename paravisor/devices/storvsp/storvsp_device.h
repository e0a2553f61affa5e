// StorvspDevice: the Hyper-V synthetic SCSI controller a Linux guest's storvsc binds to, with
// one disk (LUN 0 of path 0, target 0). It offers the SCSI class through ParentBus, runs the
// VSTOR initialization on the primary channel (VstorNegotiation), and serves EXECUTE_SRB
// packets on the primary and its subchannels: commands the disk answers itself complete at
// once, reads and writes go to the BlockBackend straight between it and the guest's buffer
// pages, in the view the open request allows (SrbExecutor). Every packet gets a completion
// with its transaction id, errors included; a request for another LUN or target gets
// SRB_STATUS_INVALID_LUN (INQUIRY there: peripheral qualifier 3), as Hyper-V answers for a
// missing disk.
//
// Subchannels (storvsp_protocol.md §3 step 8): QUERY_PROPERTIES offers `max_subchannels`;
// CREATE_SUB_CHANNELS(n) on the primary offers subchannels 1..n (same interface and instance,
// subchannel_index 1..n) through the same ParentBus. They carry only EXECUTE_SRB. When the
// primary closes, the subchannels are closed and revoked first (OpenVMM's order), and the
// primary's close is answered once they are gone and no I/O of any channel moves data.
//
// Servicing: Pause() stops every channel taking packets (what the guest sends meanwhile waits
// in its ring for the restored device); the I/O in flight goes on, and its completions are
// written. Once Quiesced(), Save() takes what only the device knows (the VSTOR state, the
// subchannels, completions that did not fit in their ring) and a new device, given that and
// the server's saved state, takes up each channel where it stopped (StartRestored). A
// servicing that fails before the device is dropped calls Resume(). Nothing is re-executed, so
// no request is done twice and no late I/O lands in a buffer the guest got back.
//
// Not yet: hot-plug (ENUMERATE_BUS).
//
// Threads: everything runs on `loop`'s thread; Start() must be called there too. The backend
// must outlive the device.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_STORVSP_DEVICE_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_STORVSP_DEVICE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/ring_endpoint.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"
#include "paravisor/devices/device_channel.h"
#include "paravisor/devices/storvsp/block_backend.h"
#include "paravisor/devices/storvsp/scsi_disk.h"
#include "paravisor/devices/storvsp/srb_executor.h"
#include "paravisor/devices/storvsp/storvsp_saved_state.pb.h"
#include "paravisor/devices/storvsp/vstor_negotiation.h"

namespace cvmbus::paravisor::storvsp {

// The SCSI controller class (Linux hyperv.h HV_SCSI_GUID).
inline constexpr Guid kScsiInterfaceId{
    0xba6163d9, 0x04a1, 0x4d29, {0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f}};

struct StorvspOptions {
  Guid instance_id;
  DiskOptions disk;  // disk.sectors and read_only must match the backend.
  // The confidential-external-memory offer flag: SRB buffers may then be private pages.
  bool allow_confidential_external_memory = false;
  // Subchannels the guest may create (Linux asks for min(CPUs - 1, this)); 0: none.
  uint16_t max_subchannels = 0;
};

struct StorvspStats {
  uint64_t packets = 0;      // Guest packets taken from the ring.
  uint64_t srbs = 0;         // EXECUTE_SRBs answered.
  uint64_t bad_packets = 0;  // Answered with an error for being malformed.
  uint64_t opens = 0;
  uint64_t closes = 0;
  uint64_t subchannels_offered = 0;
  uint64_t subchannels_revoked = 0;
  uint64_t gpadls = 0;      // GPADLs accepted (restored ones included).
  uint64_t restores = 0;    // Channels the server restored after servicing.
  uint16_t version = 0;     // The VSTOR version negotiated on the last open.
  absl::Status last_error;  // The last malformed packet's or failed open's reason.
};

class StorvspDevice {
 public:
  // Errors: disk options that ScsiDisk refuses, or that disagree with the backend's size or
  // read-only flag.
  static absl::StatusOr<std::unique_ptr<StorvspDevice>> Create(hw::EventLoop* loop, ParentBus* bus,
                                                               StorvspOptions options,
                                                               BlockBackend* backend);
  ~StorvspDevice();

  absl::Status Start();  // Offers the controller and serves its requests.
  const StorvspStats& stats() const { return stats_; }
  // Each open channel's ring traffic (the primary and its subchannels).
  std::vector<ChannelTraffic> traffic() const;

  // Servicing (see above; loop thread).
  void Pause();
  // Every serve task has stopped, no I/O is in flight and no close is still being answered.
  bool Quiesced() const;
  // kFailedPrecondition unless Quiesced().
  absl::StatusOr<saved::Storvsp> Save() const;
  void Resume();
  // Instead of Start() after servicing: offers the primary and the saved subchannels again and
  // asks the server to restore each (`was_open(i)`: the server's saved state has channel i
  // open), with the saved VSTOR state and pending completions. kInvalidArgument, naming the
  // field, for a state this device could not have saved (another instance, more subchannels
  // than it offers, an impossible VSTOR state, a completion for a channel that was not open or
  // larger than any completion); then nothing is offered.
  absl::Status StartRestored(const saved::Storvsp& state,
                             const std::function<bool(uint16_t index)>& was_open);

 private:
  struct OpenChannelState;
  struct ControllerChannel;
  StorvspDevice(hw::EventLoop* loop, ParentBus* bus, StorvspOptions options, ScsiDisk disk,
                BlockBackend* backend);
  // Offers channel `index` (0: the primary) and serves its requests.
  absl::Status OfferChannel(uint16_t index);
  absl::StatusOr<std::shared_ptr<ControllerChannel>> AddOffer(uint16_t index);
  // A new open of channel `index` (its wake-up eventfd made); null if that failed.
  std::shared_ptr<OpenChannelState> NewOpenState(uint16_t index);
  // Builds the open's rings, makes it the slot's open and starts serving it.
  absl::Status AttachRings(ControllerChannel& slot, std::shared_ptr<OpenChannelState> channel,
                           const OpenRequest& request);
  absl::Status CheckSavedState(const saved::Storvsp& state,
                               const std::function<bool(uint16_t index)>& was_open) const;
  hw::Task ServeRequests(std::shared_ptr<ControllerChannel> slot);
  hw::Task Serve(std::shared_ptr<OpenChannelState> channel);
  std::optional<OpenResult> Open(ControllerChannel& slot, const OpenRequest& request);
  void Close(ControllerChannel& slot, Rpc<Unit, Unit> rpc);
  // The primary closed: stop every subchannel, revoke them, and answer the primary's close
  // when all of that is done.
  hw::Task RetireSubchannels(std::shared_ptr<OpenChannelState> primary);
  void CreateSubchannels(uint16_t count);
  // One guest packet: answers it now or starts its I/O.
  void Handle(const std::shared_ptr<OpenChannelState>& channel, const ring::Packet& packet);
  void HandleSrb(const std::shared_ptr<OpenChannelState>& channel, const ring::Packet& packet,
                 const VstorRequest& request);
  // Queues a completion for `transaction_id` and writes what fits.
  void Complete(const std::shared_ptr<OpenChannelState>& channel, uint64_t transaction_id,
                std::vector<uint8_t> payload);
  void FlushCompletions(OpenChannelState& channel);
  // Whether the channel's serve task has stopped and none of its I/O moves data.
  static bool Drained(const OpenChannelState& channel);
  void MaybeFinishClose(const std::shared_ptr<OpenChannelState>& channel);

  hw::EventLoop* const loop_;
  ParentBus* const bus_;
  const StorvspOptions options_;
  const ScsiDisk disk_;
  BlockBackend* const backend_;
  SrbExecutor executor_;
  // [0] the primary, [i] subchannel i; shared with each slot's request task.
  std::vector<std::shared_ptr<ControllerChannel>> channels_;
  // The primary's open: its negotiation says whether subchannels may carry SRBs.
  std::shared_ptr<OpenChannelState> primary_open_;
  // Closed opens whose close may still be in progress (Quiesced() waits for them).
  std::vector<std::weak_ptr<OpenChannelState>> closing_;
  bool paused_ = false;
  StorvspStats stats_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_STORVSP_DEVICE_H_
