// MonitorScanner: the server's side of a connection's child -> parent monitor page (MNF; the
// layout is in paravisor/protocol/monitor_page.h).
//
// The guest sets a channel's pending bit instead of making a hypercall. Nothing intercepts
// that write here, so the scanner does what the Hyper-V hypervisor does: while monitored
// channels are open it scans the pending words every latency period (the smallest latency of
// the open channels, clamped to [kMinInterval, kMaxInterval]; after kIdleScans scans that find
// nothing the period doubles, up to kMaxBackoff times, and the first bit found restores it, so
// an idle monitored channel does not cost a wake-up every 50 us), clears the bits it finds with
// a compare-and-swap (a bit the guest sets meanwhile is kept for the next scan), and raises
// each bit's channel event. It also publishes each monitored channel's latency (100 ns units)
// and connection id in the page, and enables its trigger group, as Hyper-V's host does.
//
// The page is guest memory: a bit for an id with no open channel is counted and dropped; a
// page that stops being accessible (converted away by a hostile host) stops the scan with a
// log line instead of failing every period.
//
// Threads: the loop's thread only.
#ifndef CVMBUS_PARAVISOR_SERVER_MONITOR_SCANNER_H_
#define CVMBUS_PARAVISOR_SERVER_MONITOR_SCANNER_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "paravisor/protocol/monitor_page.h"

namespace cvmbus::paravisor {

class MonitorScanner {
 public:
  static constexpr std::chrono::nanoseconds kMinInterval = std::chrono::microseconds(50);
  static constexpr std::chrono::nanoseconds kMaxInterval = std::chrono::milliseconds(100);
  static constexpr int kIdleScans = 64;
  static constexpr int kMaxBackoff = 16;

  struct Stats {
    uint64_t scans = 0;
    uint64_t signals = 0;       // Channel events raised.
    uint64_t unknown_bits = 0;  // Pending bits with no open channel.
  };

  // `memory` is the view the page lives in (private for a page the server allocated on a
  // confidential VM, untrusted for the guest's own page); `gpa` is page aligned.
  MonitorScanner(hw::EventLoop* loop, guestmem::GuestMemory memory, uint64_t gpa,
                 std::function<void(const std::string&)> log);
  ~MonitorScanner();
  MonitorScanner(const MonitorScanner&) = delete;
  MonitorScanner& operator=(const MonitorScanner&) = delete;

  uint64_t gpa() const { return gpa_; }
  const Stats& stats() const { return stats_; }

  // Zeroes the page's defined fields (for a page the server allocated).
  absl::Status Clear();
  // Publishes a monitored channel: its latency and connection id, its group enabled.
  absl::Status Describe(uint8_t monitor_id, uint32_t connection_id,
                        std::chrono::nanoseconds latency);
  // Starts raising `target` for the channel's bit (the channel opened); Unwatch stops it.
  void Watch(uint8_t monitor_id, std::shared_ptr<hw::Signal> target,
             std::chrono::nanoseconds latency);
  void Unwatch(uint8_t monitor_id);
  // One scan now (the timer runs these). Returns the channel events raised.
  absl::StatusOr<int> ScanOnce();
  // The period the next scan is armed with.
  std::chrono::nanoseconds Interval() const;

 private:
  struct Watched {
    std::shared_ptr<hw::Signal> target;
    std::chrono::nanoseconds latency{0};
  };
  void Arm();

  hw::EventLoop* const loop_;
  const guestmem::GuestMemory memory_;
  const uint64_t gpa_;
  std::function<void(const std::string&)> log_;
  std::array<Watched, protocol::monitor::kMaxMonitorIds> watched_;
  int watched_count_ = 0;
  std::optional<hw::EventLoop::Id> timer_;
  bool broken_ = false;  // The page failed an access; scanning stopped.
  int idle_scans_ = 0;   // Scans in a row that found no bit.
  int backoff_ = 1;      // The period's multiplier (1..kMaxBackoff).
  Stats stats_;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_MONITOR_SCANNER_H_
