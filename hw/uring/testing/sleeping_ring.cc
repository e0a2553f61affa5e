#include "hw/uring/testing/sleeping_ring.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "base/bench/placement.h"
#include "guestmem/guest_memory.h"
#include "guestmem/ring_memory.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/ring_endpoint.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "ring/ring.h"

namespace cvmbus::hw::testing {
namespace {

using Clock = std::chrono::steady_clock;
using bench::PinToCpu;

struct EventFd {
  EventFd(int flags) : fd(eventfd(0, flags)) {}
  ~EventFd() { close(fd); }
  int fd;
};

void Ring(int fd) {
  const uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}

Task Produce(EventLoop* loop, RingWriter* writer, size_t size, const std::atomic<bool>* stop,
             uint64_t* sent) {
  std::vector<uint8_t> payload(size + 1, 0x5a);
  const ring::OutgoingPacket packet{.payload = absl::MakeSpan(payload.data(), size)};
  const uint32_t packet_bytes = static_cast<uint32_t>(((size + 7) & ~size_t{7}) + 24);
  uint64_t count = 0;  // Counted here, stored once: *sent may share a line the consumer writes.
  while (!stop->load(std::memory_order_relaxed)) {
    absl::Status status = writer->ring().Append(packet);
    if (status.ok()) {
      ++count;
      // Publish per packet: each write is visible at once, as a device answering requests;
      // the signalling check is per burst (RingWriter::Publish).
      (void)writer->Publish();
      continue;
    }
    if (!(co_await writer->Writable(packet_bytes)).ok()) break;
  }
  (void)writer->Flush();
  *sent = count;
  loop->Stop();
}

Task Consume(EventLoop* loop, RingReader* reader, const std::atomic<uint64_t>* target,
             uint64_t* received) {
  ring::PacketBuffer buffer;
  uint64_t count = 0;  // Counted here, stored once: *received may share a line with the producer.
  while (count < target->load(std::memory_order_acquire)) {
    if (!(co_await reader->Readable()).ok()) break;
    // Release space in slices of 1/8 ring, so a writer waiting for space wakes while we drain.
    uint32_t unreleased = 0;
    while (*reader->ring().Read(&buffer)) {
      ++count;
      unreleased += static_cast<uint32_t>(buffer.packet().payload.size()) + 24;
      if (unreleased >= kSleepingRingDataBytes / 8) {
        (void)reader->Release();
        unreleased = 0;
      }
    }
    (void)reader->Release();
  }
  *received = count;
  loop->Stop();
}

}  // namespace

SleepingRingResult SleepingRing(size_t size, int millis, uint32_t spin) {
  guestmem::MemoryOptions options;
  options.regions = {{0, 4096 + uint64_t{kSleepingRingDataBytes}}};
  auto backing = *guestmem::MemoryBacking::Create(options);
  std::vector<uint64_t> gpns;
  for (uint64_t i = 0; i <= kSleepingRingDataBytes / 4096; ++i) gpns.push_back(i);
  const auto memory = [&] {
    return *guestmem::RingMemory::Create(guestmem::GuestMemory::Untrusted(backing), gpns);
  };
  EventFd to_consumer(EFD_NONBLOCK | EFD_CLOEXEC), to_producer(EFD_NONBLOCK | EFD_CLOEXEC);
  std::atomic<uint64_t> target{~uint64_t{0}};
  std::atomic<bool> stop{false};
  uint64_t received = 0, sent = 0;
  EndpointStats reader_stats, writer_stats;
  Clock::time_point end;
  std::atomic<bool> consumer_ready{false};
  std::thread consumer([&] {
    PinToCpu(1);
    auto loop = *EventLoop::Create();
    EventFdSignal wake_producer(to_producer.fd);
    RingReader reader(loop.get(), *ring::IncomingRing::Create(memory()), to_consumer.fd,
                      &wake_producer, {.polls_before_sleep = spin});
    Consume(loop.get(), &reader, &target, &received);
    consumer_ready = true;
    (void)loop->Run();
    end = Clock::now();
    reader_stats = reader.stats();
  });
  while (!consumer_ready.load()) std::this_thread::yield();
  PinToCpu(0);
  auto loop = *EventLoop::Create();
  EventFdSignal wake_consumer(to_consumer.fd);
  RingWriter writer(loop.get(), *ring::OutgoingRing::Create(memory()), to_producer.fd,
                    &wake_consumer, {.polls_before_sleep = spin});
  std::thread timer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(millis));
    stop = true;
    Ring(to_producer.fd);  // Wake a sleeping producer so it sees `stop`.
  });
  const auto start = Clock::now();
  Produce(loop.get(), &writer, size, &stop, &sent);
  (void)loop->Run();
  writer_stats = writer.stats();
  target.store(sent, std::memory_order_release);
  Ring(to_consumer.fd);
  consumer.join();
  timer.join();
  SleepingRingResult result;
  result.packets_per_second = sent / std::chrono::duration<double>(end - start).count();
  result.signals_per_packet =
      static_cast<double>(writer_stats.signals_sent + reader_stats.signals_sent) /
      std::max<uint64_t>(sent, 1);
  return result;
}

}  // namespace cvmbus::hw::testing
