// TimeSyncIc: the time synchronization integration component. Once negotiated, the host sends
// the guest its wall-clock time: first with ICTIMESYNCFLAG_SYNC (the guest sets its clock:
// after boot, restore or a reopen), then every `sample_period` with ICTIMESYNCFLAG_SAMPLE (a
// hint Linux only records). Version 4.0 sends ictimesync_ref_data, which carries the guest's
// reference time at the sample so Linux can correct for the delivery delay; older versions
// send ictimesync_data. Each message is a transaction (Windows guests ignore others); the next
// sample is scheduled once it is answered or has timed out.
//
// Threads: as IcDevice (the loop's thread); `clock` is called there.
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_TIMESYNC_IC_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_TIMESYNC_IC_H_

#include <chrono>
#include <cstdint>
#include <functional>

#include "paravisor/devices/ic/ic_device.h"

namespace cvmbus::paravisor::ic {

struct TimeSample {
  uint64_t parent_time_100ns = 0;        // Host UTC in 100 ns since 1601-01-01.
  uint64_t vm_reference_time_100ns = 0;  // The guest's TIME_REF_COUNT at that moment.
};

// The host's UTC now (system_clock) and CLOCK_MONOTONIC in 100 ns units as the reference time.
// The latter is only right where the guest's reference counter is that clock: a daemon should
// pass the partition's reference time instead.
TimeSample SystemTimeSample();

struct TimeSyncOptions {
  Guid instance_id = kTimeSyncInstanceId;
  std::chrono::nanoseconds sample_period = std::chrono::seconds(5);  // OpenVMM's period.
  std::chrono::nanoseconds response_timeout = std::chrono::seconds(5);
  std::function<TimeSample()> clock = SystemTimeSample;
};

struct TimeSyncStats {
  IcDeviceStats channel;
  uint64_t syncs_sent = 0;
  uint64_t samples_sent = 0;
  uint64_t answered = 0;
  uint64_t unanswered = 0;  // Timed out, or the answer was malformed.
  TimeSample last_sent;
  uint8_t last_flags = 0;
};

class TimeSyncIc : public IcDevice {
 public:
  TimeSyncIc(hw::EventLoop* loop, ParentBus* bus, TimeSyncOptions options = {});
  ~TimeSyncIc() override;

  TimeSyncStats stats() const;

 private:
  void OnReady() override;
  void OnClosed() override;
  // Sends a SYNC if one is owed (after negotiation, until one is written), else a SAMPLE.
  void Send();
  void ScheduleSample();

  const TimeSyncOptions options_;
  hw::EventLoop::Id next_ = 0;  // The next sample's timer; 0: none.
  bool sync_owed_ = false;
  TimeSyncStats stats_;
};

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_TIMESYNC_IC_H_
