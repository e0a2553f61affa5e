// The sleeping ring endpoints, measured: a producer task (RingWriter) on an io_uring loop on
// cpu0 and a consumer task (RingReader) on one on cpu1, both sleeping on eventfds when the ring
// is full or empty, under the VMBus signalling rules. The producer publishes per packet (as a
// device answering requests; the signalling check once per burst), the consumer releases every
// 1/8 ring and at the end of each drain. 256 KiB data area in a memfd guest memory, untrusted
// view. uring_bench's "sleep" rows and channel_bench's reference for one-way traffic.
#ifndef CVMBUS_HW_URING_TESTING_SLEEPING_RING_H_
#define CVMBUS_HW_URING_TESTING_SLEEPING_RING_H_

#include <cstddef>
#include <cstdint>

namespace cvmbus::hw::testing {

inline constexpr uint32_t kSleepingRingDataBytes = 256 << 10;

struct SleepingRingResult {
  double packets_per_second = 0;
  double signals_per_packet = 0;  // Signals raised by both sides.
};

// Runs `size`-byte packets for `millis` ms; `spin`: polls before sleeping (SpinPolicy).
SleepingRingResult SleepingRing(size_t size, int millis, uint32_t spin);

}  // namespace cvmbus::hw::testing

#endif  // CVMBUS_HW_URING_TESTING_SLEEPING_RING_H_
