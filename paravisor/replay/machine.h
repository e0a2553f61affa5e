// Machine: the machine a replay script runs on (shared/docs/replay-format.md, "The machine a
// script runs on"), fresh for every script:
//   - 64 MiB of guest memory at GPA 0, isolation none: every page shared, the untrusted view
//     only (no private memory in ServerOptions);
//   - the paravisor's SynIC (trusted) over that untrusted view, one VP (index 0);
//   - the VMBus server with default ServerOptions on its own hw::EventLoop thread, attached to
//     the SynIC as its synic::ServerPort, with the demo's echo devices offered in the demo's
//     order (paravisor/devices/demo_devices.h) before the guest says anything;
//   - the replay guest: a GuestSynic (the kernel's half of the SynIC) on a loop thread of its
//     own, with its SIMP, SIEFP, hypercall and input pages at 1 MiB (below it, memory is the
//     script's: rings, GPADL pages, monitor pages).
//
// The guest reaches the server only through the SynIC: PostMessage and SignalEvent are the
// hypercalls, and what the server sends arrives in the SINT 2 message slot (taken and EOM'd by
// GuestSynic as Linux does) and as SIEFP event flags.
//
// Threads: every member may be called from any thread; the waits block the caller.
#ifndef CVMBUS_PARAVISOR_REPLAY_MACHINE_H_
#define CVMBUS_PARAVISOR_REPLAY_MACHINE_H_

#include <bitset>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/uring/event_loop.h"
#include "paravisor/client/guest_synic.h"
#include "paravisor/devices/echo_device.h"
#include "paravisor/server/server.h"
#include "paravisor/synic/hv_abi.h"
#include "paravisor/synic/synic.h"

namespace cvmbus::paravisor::replay {

inline constexpr uint64_t kMachineMemoryBytes = uint64_t{64} << 20;
// The replay guest's own SynIC pages (page-aligned, at or above 1 MiB).
inline constexpr GuestSynicPages kReplayGuestPages{
    .simp = 0x100000, .siefp = 0x101000, .hypercall = 0x102000, .input = 0x103000};
// Server log lines kept between two TakeServerLog calls; later ones are counted, not kept.
inline constexpr size_t kMaxServerLogLines = 1000;
// Messages the guest took and nobody read yet; past this the guest stops taking more (its loop
// waits, so later messages wait in the SynIC, which has bounds of its own and then pushes back
// on the server): a script that never reads cannot grow memory without end.
inline constexpr size_t kMaxInboxMessages = 4096;

class Machine {
 public:
  static absl::StatusOr<std::unique_ptr<Machine>> Create();
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // HvPostMessage (message type 1) to `connection_id`; the HV_STATUS. The payload's size is
  // written as given, so a payload over 240 bytes reaches the hypercall as such.
  uint64_t PostMessage(uint32_t connection_id, absl::Span<const uint8_t> payload);
  // HvSignalEvent (fast), flag number 0; the HV_STATUS.
  uint64_t SignalEvent(uint32_t connection_id);

  // The next message the guest took from its SINT 2 slot, waiting up to `timeout`; nullopt if
  // none came.
  std::optional<std::vector<uint8_t>> NextMessage(std::chrono::milliseconds timeout);
  // Waits up to `timeout` for event flag `flag` of SINT 2 (the guest has cleared it in the
  // SIEFP); true if it was set since the last TakeEvent of that flag, which it consumes.
  bool TakeEvent(uint16_t flag, std::chrono::milliseconds timeout);

  // The server's log lines since the last call.
  std::vector<std::string> TakeServerLog();

  // The guest's view of its memory (all of it is shared here), for tests that play a driver.
  guestmem::GuestMemory guest_memory() const { return guestmem::GuestMemory::Untrusted(backing_); }
  // Runs `fn` on the server's loop thread and waits for it.
  void OnServer(std::function<void()> fn);
  VmbusServer& server() { return *server_; }

 private:
  Machine() = default;
  absl::Status StartServer();
  absl::Status StartGuest();
  void OnGuestMessage(std::vector<uint8_t> payload);
  void OnGuestEvent(uint16_t flag);
  void ServerLog(const std::string& line);

  std::shared_ptr<guestmem::MemoryBacking> backing_;
  std::shared_ptr<synic::Synic> synic_;

  // The server and its devices: created, used and destroyed on server_thread_.
  std::unique_ptr<hw::EventLoop> server_loop_;
  std::unique_ptr<VmbusServer> server_;
  std::unique_ptr<ParentBus> bus_;
  std::vector<std::unique_ptr<EchoDevice>> devices_;
  std::thread server_thread_;

  // The guest: its GuestSynic lives on guest_thread_.
  std::unique_ptr<hw::EventLoop> guest_loop_;
  std::unique_ptr<GuestSynic> guest_;
  std::thread guest_thread_;

  Mutex mu_;
  std::condition_variable_any changed_;  // inbox_ or events_ changed.
  std::deque<std::vector<uint8_t>> inbox_ ABSL_GUARDED_BY(mu_);
  std::bitset<synic::kEventFlagCount> events_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> log_ ABSL_GUARDED_BY(mu_);
  size_t log_dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // Releases a guest waiting for inbox room.
};

}  // namespace cvmbus::paravisor::replay

#endif  // CVMBUS_PARAVISOR_REPLAY_MACHINE_H_
