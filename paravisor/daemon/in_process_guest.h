// The daemon's in-process guest (guest.side GUEST_CLIENT): a VMBus client on its own thread
// that reaches the server only through the paravisor's SynIC, as a guest's vmbus driver does.
// It negotiates the newest version the server grants (trying 6.0 first and going down the way
// Linux's vmbus_connect does), with confidential channels on an SNP VM, takes the offers, opens
// every echo channel with its rings in private memory (SNP) and keeps `packets_per_second`
// request/answer round trips running on each. Like Linux it ignores HvSignalEvent's status (a
// doorbell the paravisor refuses, as while it is being serviced, is lost, not an error): the
// paravisor must make up for it, and the answer's transaction id is checked every time.
//
// Threads: Start and Stop from one controlling thread; stats() from any.
#ifndef CVMBUS_PARAVISOR_DAEMON_IN_PROCESS_GUEST_H_
#define CVMBUS_PARAVISOR_DAEMON_IN_PROCESS_GUEST_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "base/mutex.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor::daemon {

struct InProcessGuestOptions {
  bool confidential = true;  // Ask for confidential channels; rings in private pages.
  uint32_t packets_per_second = 0;
  uint32_t max_version = 0;  // The first version tried (protocol::kVersion...).
};

struct InProcessGuestStats {
  std::string state = "starting";  // starting, running, failed, stopped.
  uint32_t version = 0;
  uint32_t features = 0;
  uint32_t channels_open = 0;
  uint64_t round_trips = 0;
  std::string last_error;
};

class InProcessGuest {
 public:
  InProcessGuest(vm::VirtualMachine* vm, InProcessGuestOptions options)
      : vm_(vm), options_(options) {}
  ~InProcessGuest() { Stop(); }
  void Start();
  // Ends the traffic and joins the thread; the guest stays connected with its channels open
  // (what the paravisor revokes next, the guest sees as rescinds).
  void Stop();
  InProcessGuestStats stats() const;

 private:
  void Run();
  void Fail(const std::string& what, const absl::Status& status);
  void SetState(const std::string& state);

  vm::VirtualMachine* const vm_;
  const InProcessGuestOptions options_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable Mutex mu_;
  InProcessGuestStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_IN_PROCESS_GUEST_H_
