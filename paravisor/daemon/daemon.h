// cvmbusd's body: the emulated confidential VM (paravisor/vm), the VMBus server on its loop,
// the devices the configuration names, the guest side, and the control socket that serves the
// inspect tree, all started from checked Settings and stopped in order.
//
//   absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(settings, on_shutdown);
//   ... SIGTERM, or cvmbusctl shutdown (which calls on_shutdown) ...
//   (*daemon)->Stop();
//
// Stop: the guest side stops its traffic; the devices go in reverse order of their offers
// (hvsocket relay, integration components, disks, echo channels), each dropping its offers so
// that the server revokes them, subchannels before their primary, and the guest is sent the
// rescinds; then the control socket closes and the loop stops.
//
// Servicing (Service), while the guest keeps running: the hvsocket relay's connections end (a
// host socket cannot be saved: the host end sees EOF, the guest a rescind); the disks pause and
// their I/O drains (at most kDrainTimeout, else the servicing is called off and they resume);
// then on the loop thread in one step the server and every device are saved, dropped, and
// restored from the state's bytes, and the relay listens again. The guest's channels stay
// open and nothing it sent or was sent is lost or repeated: echo channels and disks take up
// their rings where they stopped (a disk also its VSTOR state, subchannels and completions that
// did not fit in a ring), an IC negotiates again. The echo channels' and disks' counters in
// the tree count from the daemon's start, across servicings (except `gpadls`: those the
// device holds now); the other devices' start again from zero.
//
// Control requests (control_server.h): "inspect [PATH]" (the tree as JSON, or the subtree at
// PATH), "ring RELID" (both rings of an open channel as ringtool dumps them), "unstick RELID"
// (signal both directions once), "save FILE" (the server's saved state, serialized, to a new
// file at the absolute path FILE: for debugging; nothing restores from a file yet), "service"
// (calls on_service; the caller then calls Service),
// "shutdown" (calls on_shutdown; the caller then calls Stop).
//
// Threads: Start, Inspect and Stop from one controlling thread (never the loop's).
#ifndef CVMBUS_PARAVISOR_DAEMON_DAEMON_H_
#define CVMBUS_PARAVISOR_DAEMON_DAEMON_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hw/storage/file_backing.h"
#include "paravisor/daemon/config.h"
#include "paravisor/daemon/control_server.h"
#include "paravisor/daemon/in_process_guest.h"
#include "paravisor/daemon/inspect_tree.h"
#include "paravisor/daemon/kvm_guest_side.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/devices/hvsocket/hvsocket_relay.h"
#include "paravisor/devices/ic/heartbeat_ic.h"
#include "paravisor/devices/ic/shutdown_ic.h"
#include "paravisor/devices/ic/timesync_ic.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/server/saved_state.pb.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor::daemon {

class Daemon {
 public:
  // Builds everything or nothing: on any failure what was started is stopped again and the
  // error names the part. `on_shutdown` runs on the loop thread for a "shutdown" request.
  struct Callbacks {
    std::function<void()> on_shutdown;  // A "shutdown" request (loop thread).
    std::function<void()> on_service;   // A "service" request (loop thread).
  };
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const Settings& settings,
                                                       Callbacks callbacks = {});
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // The whole inspect tree (built on the loop thread).
  Tree Inspect();
  // The ordered stop (see above). Idempotent.
  void Stop();
  // Servicing (see above). Errors name the device that could not drain or be restored.
  absl::Status Service();
  static constexpr std::chrono::milliseconds kDrainTimeout{5000};
  // Asks the guest, through the shutdown IC, to power off, reboot or hibernate; `done` gets the
  // guest's status on the loop thread. kFailedPrecondition without a shutdown IC.
  absl::Status RequestGuestShutdown(const ic::ShutdownRequest& request, ic::ShutdownIc::Done done);

  vm::VirtualMachine& vm() { return *vm_; }

 private:
  struct Disk {
    std::string path;
    std::unique_ptr<storvsp::FileBlockBackend> backend;
    std::unique_ptr<storvsp::StorvspDevice> device;
  };

  explicit Daemon(Settings settings) : settings_(std::move(settings)) {}
  // On the loop thread.
  absl::Status StartDevices();
  void StopDevices();
  Tree BuildTree() const;
  // Every device's open channels' ring traffic (loop thread).
  std::vector<ChannelTraffic> DeviceTraffic() const;
  absl::StatusOr<std::string> HandleRequest(const std::vector<std::string>& words);
  // The echo channels' offers (the demo set of demo_devices.h), none for 0 channels.
  std::vector<OfferParams> EchoOffers() const;
  // The echo channels and the ICs: offered afresh (`state` null) or restored from `state` after
  // servicing. Returns the first failure, naming the device (loop thread).
  absl::Status StartSavableDevices(const saved::Server* state,
                                   const std::vector<saved::Storvsp>& disk_states);
  absl::Status StartEchoDevices(const saved::Server* state);
  // New devices over the disks' backends, offered afresh or restored.
  absl::Status RestartDisks(const saved::Server* state,
                            const std::vector<saved::Storvsp>& disk_states);
  absl::StatusOr<std::unique_ptr<storvsp::StorvspDevice>> NewDiskDevice(size_t index,
                                                                        const Disk& disk);
  absl::Status StartRelay();  // If configured (loop thread).
  // Servicing's steps: from the controlling thread, then on the loop.
  absl::Status PauseDisksAndDrain();
  absl::Status ServiceOnLoop(std::chrono::steady_clock::time_point start);
  absl::Status StartIcs(const saved::Server* state);
  // "save FILE" (loop thread).
  absl::StatusOr<std::string> SaveTo(const std::string& path);

  const Settings settings_;
  Callbacks callbacks_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  // Loop-thread state.
  std::vector<std::unique_ptr<EchoDevice>> echo_;
  std::vector<Disk> disks_;
  std::unique_ptr<ic::HeartbeatIc> heartbeat_;
  std::unique_ptr<ic::ShutdownIc> shutdown_;
  std::unique_ptr<ic::TimeSyncIc> timesync_;
  std::unique_ptr<hvsocket::HvSocketRelay> relay_;
  std::unique_ptr<ControlServer> control_;
  struct ServicingStats {
    uint64_t done = 0;
    uint64_t failed = 0;
    std::string last_error;
    double last_microseconds = 0;
    uint64_t last_state_bytes = 0;
    uint64_t connections_reset = 0;  // hvsocket connections servicing ended.
  } servicing_;
  // The counters of devices that earlier servicings replaced (loop thread), added to the
  // current devices' in the tree; CarryCounters adds the devices' before they are dropped.
  struct CarriedCounters {
    std::vector<EchoStats> echo;
    std::vector<storvsp::StorvspStats> disks;
  } carried_;
  void CarryCounters();
  // The guest side (its own thread, or the vCPU's).
  std::unique_ptr<InProcessGuest> guest_;
  std::unique_ptr<KvmGuestSide> kvm_guest_;
  bool stopped_ = false;
  // Last, so destroyed first: its loop thread, which reads the members above (the relay for
  // a guest's connect), has stopped before they go.
  std::unique_ptr<vm::VirtualMachine> vm_;
};

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_DAEMON_H_
