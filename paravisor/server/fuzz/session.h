// Session: one server_fuzz input's world, built afresh for each input: an EventLoop (the
// fuzzer's thread runs it), a VmbusServer on an isolated VM (private memory, a trusted port, a
// private server monitor page: every feature grantable) behind a FuzzPort, the guest model,
// and five device slots of ScriptedDevices. Nothing outlives the session (its loop's teardown
// cancels the timers and destroys the tasks left), so no input sees another's leftovers; the
// guest memory is shared by all sessions and only the server's monitor page is ever touched,
// which each session zeroes.
//
// Steps drive the loop by hand until no posted work is left (RunToIdle: EventLoop::
// RunPostedWork), and never wait for the kernel: timers never fire. The server arms only the
// monitor scanner's (the guest sets no monitor bit, there is nothing to scan) and the restore
// hold's (ended within the servicing step by the devices coming back); so what the server does
// depends on the input alone.
//
// After each step CheckStep() checks what must hold at any idle moment (a violation traps,
// invariant.h): the channel and GPADL tables within their bounds and consistent (relids,
// keys, monitor ids, connection ids, ring GPADLs, per-channel counts), the SynIC event ports
// exactly those of the opening and open channels, and each device slot owning exactly the one
// live channel of its key. Settle() then answers every device request and reads every guest
// message, and checks that the guest got every answer it is owed (GuestModel::CheckSettled).
//
// Threads: the fuzzer's thread, which runs the loop.
#ifndef CVMBUS_PARAVISOR_SERVER_FUZZ_SESSION_H_
#define CVMBUS_PARAVISOR_SERVER_FUZZ_SESSION_H_

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "paravisor/bus/bus.h"
#include "paravisor/server/fuzz/fuzz_port.h"
#include "paravisor/server/fuzz/guest_model.h"
#include "paravisor/server/server.h"
#include "paravisor/server/testing/scripted_device.h"

namespace cvmbus::paravisor::fuzz {

// The server's monitor page, private to the paravisor; all other guest memory is shared.
inline constexpr uint64_t kServerMonitorPage = 0xf0000;
inline constexpr uint64_t kGuestMemoryBytes = 1 << 20;
inline constexpr size_t kSlots = 5;
inline constexpr size_t kHvSocketSlot = 4;

struct SessionOptions {
  bool small_limits = false;  // Bounds a short input can reach (ServerLimits).
};

class Session {
 public:
  explicit Session(SessionOptions options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // --- The guest ---
  // HvPostMessage; a post the port refuses is simply not taken.
  void Send(const std::vector<uint8_t>& bytes, uint32_t connection_id = 4);
  FuzzPort& port() { return port_; }
  GuestModel& model() { return model_; }
  // The next TL_CONNECT_REQUEST finds a listener (if the hvsocket slot is free).
  void SetListenerAccepts(bool accepts) { listener_accepts_ = accepts; }

  // --- The devices ---
  struct Slot {
    OfferParams params;
    testing::DeviceScript script;
    std::unique_ptr<testing::ScriptedDevice> device;
  };
  Slot& slot(size_t index) { return slots_[index]; }
  // Offers slot `index`'s channel (nothing if its device is there).
  void Offer(size_t index, testing::DeviceScript script);
  // Revokes the slot's offer with RevokeChannel (the device stays until the server lets go),
  // or drops the device's ends of the offer at once.
  void Revoke(size_t index, bool drop);

  // --- The server ---
  VmbusServer& server() { return *server_; }
  // Servicing: Save, the state through its bytes, a fresh server restored from them, the
  // devices offering again (RestoreChannel for the channels the state has). Nothing if the
  // server refuses to save now (a reset is waiting for devices).
  void SaveAndRestore();

  // Runs the loop until no posted work is left (the port's deliveries, the server's and the
  // devices' tasks woken by requests and replies).
  void RunToIdle();
  // After a step: drops devices the server let go of, then checks the invariants above.
  void CheckStep();
  // Every device answers everything (accepting or refusing opens and GPADLs), the guest
  // reads everything and resumes a pause; then the settled checks.
  void Settle(bool accept);

 private:
  void DropDeadDevices();
  void CheckStructure(const ServerSnapshot& snapshot);
  bool OnHvSocketConnect(const HvSocketConnect& connect);

  const std::unique_ptr<hw::EventLoop> loop_;  // Destroyed last: everything below uses it.
  GuestModel model_;
  FuzzPort port_;
  ServerOptions options_;
  std::unique_ptr<VmbusServer> server_;
  std::unique_ptr<ParentBus> bus_;
  std::array<Slot, kSlots> slots_;
  uint64_t log_lines_ = 0;
  bool listener_accepts_ = false;
};

}  // namespace cvmbus::paravisor::fuzz

#endif  // CVMBUS_PARAVISOR_SERVER_FUZZ_SESSION_H_
