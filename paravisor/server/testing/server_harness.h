// ServerHarness: a VmbusServer on its own loop thread behind a FakePort, with the test as the
// guest (raw protocol messages) and ScriptedDevices on the server's loop. For tests that need
// ServerOptions of their own (limits, the re-signal after open), exact VPs and SINTs, or
// deterministic control over every message.
#ifndef CVMBUS_PARAVISOR_SERVER_TESTING_SERVER_HARNESS_H_
#define CVMBUS_PARAVISOR_SERVER_TESTING_SERVER_HARNESS_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "guestmem/memory_backing.h"
#include "hw/uring/event_loop.h"
#include "paravisor/server/server.h"
#include "paravisor/server/testing/fake_port.h"
#include "paravisor/server/testing/scripted_device.h"

namespace cvmbus::paravisor::testing {

class ServerHarness {
 public:
  // `options.untrusted_memory` (and `log`) are filled in by the harness: 16 MiB of memory.
  static absl::StatusOr<std::unique_ptr<ServerHarness>> Create(ServerOptions options = {},
                                                               bool trusted_port = true);
  ~ServerHarness();

  void OnServer(const std::function<void()>& fn);
  VmbusServer& server() { return *server_; }
  FakePort& port() { return port_; }
  hw::EventLoop* loop() { return loop_.get(); }
  ScriptedDevice* AddDevice(OfferParams params, DeviceScript script = {});
  // After Restart: a device that offers again and restores its channel (open or not).
  ScriptedDevice* AddRestoredDevice(OfferParams params, bool open, DeviceScript script = {});
  // Destroys every device (on the server's loop).
  void DropDevices();
  std::vector<std::string> TakeLog();
  // Servicing: saves the server's state and destroys the server (devices stay; drop them
  // next), then Restart starts a new one restored from `state`.
  absl::StatusOr<saved::Server> SaveAndStop();
  absl::Status Restart(const saved::Server& state);

  // --- The guest's side, raw ---
  absl::Status Send(const std::vector<uint8_t>& bytes, uint32_t connection_id = 4) {
    return port_.Post(connection_id, bytes);
  }
  // INITIATE_CONTACT (messages to `vp`/`sint`) and the VERSION_RESPONSE.
  absl::StatusOr<protocol::VersionResponse> Connect(uint32_t version = protocol::kVersionWin10V6_0,
                                                    uint32_t features = 0, uint32_t vp = 0,
                                                    uint8_t sint = protocol::kMessageSint);
  // REQUESTOFFERS; the offers up to ALLOFFERS_DELIVERED.
  absl::StatusOr<std::vector<protocol::OfferChannel>> RequestOffers();
  // One-range GPADL over `pages` pages from `first_gpn`; sends it and returns the status of
  // its GPADL_CREATED.
  absl::StatusOr<uint32_t> CreateGpadl(uint32_t relid, uint32_t gpadl_id, uint32_t pages,
                                       uint64_t first_gpn = 0x100);
  absl::Status SendGpadl(uint32_t relid, uint32_t gpadl_id, uint32_t pages,
                         uint64_t first_gpn = 0x100);
  absl::Status SendOpen(uint32_t relid, uint32_t gpadl_id, uint32_t target_vp = 0,
                        uint32_t open_id = 0);
  absl::StatusOr<uint32_t> Open(uint32_t relid, uint32_t gpadl_id, uint32_t target_vp = 0);
  absl::Status SendTeardown(uint32_t relid, uint32_t gpadl_id);
  absl::Status SendClose(uint32_t relid);
  absl::Status SendModify(uint32_t relid, uint32_t target_vp);
  absl::Status SendRelease(uint32_t relid);
  // Polls `condition` on the server's loop until it holds or `timeout` passes.
  bool WaitUntil(const std::function<bool()>& condition,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

 private:
  ServerHarness(bool trusted_port) : port_(trusted_port) {}
  std::shared_ptr<guestmem::MemoryBacking> backing_;
  FakePort port_;
  std::unique_ptr<hw::EventLoop> loop_;
  std::thread thread_;
  ServerOptions options_;
  std::unique_ptr<VmbusServer> server_;
  std::unique_ptr<ParentBus> bus_;
  std::vector<std::unique_ptr<ScriptedDevice>> devices_;
  Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
};

OfferParams TestOffer(uint32_t interface, uint32_t instance, uint16_t subchannel = 0);

}  // namespace cvmbus::paravisor::testing

#endif  // CVMBUS_PARAVISOR_SERVER_TESTING_SERVER_HARNESS_H_
