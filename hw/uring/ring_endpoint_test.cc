// Two loops on two threads exchange packets through one ring each way, sleeping on eventfds,
// with random stalls on both sides: no packet and no wake-up may be lost.
#include "hw/uring/ring_endpoint.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "hw/uring/task.h"
#include "ring/errors.h"
#include "ring/testing/ring_pair.h"

namespace cvmbus::hw {
namespace {

using namespace std::chrono_literals;
using ring::testing::TestRing;

struct EventFd {
  EventFd() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~EventFd() { close(fd); }
  int fd;
};

struct Outcome {
  uint64_t packets = 0;
  absl::Status status;
  EndpointStats stats;
};

uint32_t AlignUp(size_t bytes) { return static_cast<uint32_t>((bytes + 7) & ~size_t{7}); }

// Writes `count` packets whose payload is their sequence number, stalling now and then.
Task Produce(EventLoop* loop, RingWriter* writer, uint64_t count, uint32_t seed, Outcome* outcome) {
  std::mt19937 random(seed);
  for (uint64_t sequence = 0; sequence < count; ++sequence) {
    std::array<uint8_t, 64> payload{};
    std::memcpy(payload.data(), &sequence, sizeof(sequence));
    const size_t size = 8 + random() % 56;
    const ring::OutgoingPacket packet{.transaction_id = sequence,
                                      .payload = absl::MakeSpan(payload.data(), size)};
    while (true) {
      absl::Status appended = writer->ring().Append(packet);
      if (appended.ok()) break;
      if (!ring::IsRingError(appended, ring::RingError::kFull)) {
        outcome->status = appended;
        loop->Stop();
        co_return;
      }
      // Full: publish what we have, then wait for space.
      if (absl::Status flushed = writer->Flush(); !flushed.ok()) outcome->status = flushed;
      absl::Status space = co_await writer->Writable(AlignUp(size) + 24);
      if (!space.ok()) {
        outcome->status = space;
        loop->Stop();
        co_return;
      }
    }
    ++outcome->packets;
    // Publish per packet in bursts (the signal check deferred to the burst's end), in
    // random-sized batches, or with the full check; and stall sometimes.
    const uint32_t how = random() % 8;
    if (how == 0) {
      (void)writer->Flush();
    } else if (how <= 4) {
      if (absl::Status published = writer->Publish(); !published.ok()) outcome->status = published;
    }
    if (random() % 4096 == 0) co_await loop->Sleep(std::chrono::microseconds(random() % 200));
  }
  (void)writer->Flush();
  outcome->stats = writer->stats();
  loop->Stop();
}

Task Consume(EventLoop* loop, RingReader* reader, uint64_t count, uint32_t seed, Outcome* outcome) {
  std::mt19937 random(seed);
  ring::PacketBuffer buffer;
  while (outcome->packets < count) {
    absl::Status readable = co_await reader->Readable();
    if (!readable.ok()) {
      outcome->status = readable;
      break;
    }
    while (true) {
      absl::StatusOr<bool> got = reader->ring().Read(&buffer);
      if (!got.ok()) {
        outcome->status = got.status();
        loop->Stop();
        co_return;
      }
      if (!*got) break;
      uint64_t sequence;
      std::memcpy(&sequence, buffer.packet().payload.data(), sizeof(sequence));
      if (sequence != outcome->packets || buffer.packet().transaction_id != sequence) {
        outcome->status = absl::DataLossError("packet out of order or corrupted");
        loop->Stop();
        co_return;
      }
      ++outcome->packets;
      if (random() % 64 == 0) (void)reader->Release();  // Release mid-drain sometimes.
    }
    (void)reader->Release();
    if (random() % 2048 == 0) co_await loop->Sleep(std::chrono::microseconds(random() % 200));
  }
  outcome->stats = reader->stats();
  loop->Stop();
}

void RunExchange(uint64_t count, SpinPolicy spin, uint32_t data_pages) {
  TestRing ring(data_pages);
  EventFd to_consumer, to_producer;  // Each side's wake fd; the other side signals it.
  Outcome produced, consumed;
  std::thread consumer([&] {
    auto loop = *EventLoop::Create();
    EventFdSignal wake_producer(to_producer.fd);
    RingReader reader(loop.get(), *ring::IncomingRing::Create(ring.Memory()), to_consumer.fd,
                      &wake_producer, spin);
    Consume(loop.get(), &reader, count, 2, &consumed);
    consumed.status.Update(loop->Run());
  });
  {
    auto loop = *EventLoop::Create();
    EventFdSignal wake_consumer(to_consumer.fd);
    RingWriter writer(loop.get(), *ring::OutgoingRing::Create(ring.Memory()), to_producer.fd,
                      &wake_consumer, spin);
    Produce(loop.get(), &writer, count, 1, &produced);
    produced.status.Update(loop->Run());
  }
  consumer.join();
  ASSERT_TRUE(produced.status.ok()) << produced.status;
  ASSERT_TRUE(consumed.status.ok()) << consumed.status;
  EXPECT_EQ(produced.packets, count);
  EXPECT_EQ(consumed.packets, count);
  // Both sides slept (the wake-up paths were exercised), and signals stayed below one per
  // packet (the interrupt_mask and pending_send_sz rules batch them).
  EXPECT_GT(consumed.stats.sleeps, 0u);
  EXPECT_GT(produced.stats.sleeps, 0u);
  EXPECT_LT(produced.stats.signals_sent, count);
}

TEST(RingEndpointTest, NoLostWakeupSleepingOnEventFds) {
  RunExchange(/*count=*/1000000, SpinPolicy{.polls_before_sleep = 0}, /*data_pages=*/1);
}

TEST(RingEndpointTest, NoLostWakeupWithSpinThenSleep) {
  RunExchange(/*count=*/1000000, SpinPolicy{.polls_before_sleep = 200}, /*data_pages=*/2);
}

// Many channels share one loop on each side: 32 rings, each with its own pair of eventfds.
// (The coroutines are captureless lambdas: a capture would die with the lambda object while the
// coroutine is still suspended.)
constexpr int kChannels = 32;
constexpr uint64_t kPackets = 20000;

TEST(RingEndpointTest, ManyChannelsOnOneLoop) {
  std::vector<std::unique_ptr<TestRing>> rings;
  std::vector<std::unique_ptr<EventFd>> to_consumer, to_producer;
  for (int i = 0; i < kChannels; ++i) {
    rings.push_back(std::make_unique<TestRing>(1));
    to_consumer.push_back(std::make_unique<EventFd>());
    to_producer.push_back(std::make_unique<EventFd>());
  }
  std::vector<Outcome> produced(kChannels), consumed(kChannels);
  std::atomic<int> consumers_done{0}, producers_done{0};
  std::thread consumer([&] {
    auto loop = *EventLoop::Create();
    std::vector<std::unique_ptr<EventFdSignal>> signals;
    std::vector<std::unique_ptr<RingReader>> readers;
    for (int i = 0; i < kChannels; ++i) {
      signals.push_back(std::make_unique<EventFdSignal>(to_producer[i]->fd));
      readers.push_back(
          std::make_unique<RingReader>(loop.get(), *ring::IncomingRing::Create(rings[i]->Memory()),
                                       to_consumer[i]->fd, signals.back().get()));
    }
    for (int i = 0; i < kChannels; ++i) {
      [](EventLoop* loop, RingReader* reader, Outcome* outcome, std::atomic<int>* done,
         uint32_t seed) -> Task {
        ring::PacketBuffer buffer;
        std::mt19937 random(seed);
        while (outcome->packets < kPackets) {
          if (!(co_await reader->Readable()).ok()) break;
          while (*reader->ring().Read(&buffer)) {
            uint64_t sequence;
            std::memcpy(&sequence, buffer.packet().payload.data(), sizeof(sequence));
            if (sequence != outcome->packets) outcome->status = absl::DataLossError("order");
            ++outcome->packets;
          }
          (void)reader->Release();
          if (random() % 512 == 0) co_await loop->Sleep(std::chrono::microseconds(50));
        }
        if (done->fetch_add(1) + 1 == kChannels) loop->Stop();
      }(loop.get(), readers[i].get(), &consumed[i], &consumers_done, i);
    }
    (void)loop->Run();
  });
  {
    auto loop = *EventLoop::Create();
    std::vector<std::unique_ptr<EventFdSignal>> signals;
    std::vector<std::unique_ptr<RingWriter>> writers;
    for (int i = 0; i < kChannels; ++i) {
      signals.push_back(std::make_unique<EventFdSignal>(to_consumer[i]->fd));
      writers.push_back(
          std::make_unique<RingWriter>(loop.get(), *ring::OutgoingRing::Create(rings[i]->Memory()),
                                       to_producer[i]->fd, signals.back().get()));
    }
    for (int i = 0; i < kChannels; ++i) {
      [](EventLoop* loop, RingWriter* writer, Outcome* outcome, std::atomic<int>* done) -> Task {
        for (uint64_t sequence = 0; sequence < kPackets; ++sequence) {
          const ring::OutgoingPacket packet{
              .payload = absl::MakeSpan(reinterpret_cast<const uint8_t*>(&sequence), 8)};
          while (!writer->ring().Append(packet).ok()) {
            (void)writer->Flush();
            if (!(co_await writer->Writable(32)).ok()) co_return;
          }
          ++outcome->packets;
          if (sequence % 16 == 15) (void)writer->Flush();
        }
        (void)writer->Flush();
        if (done->fetch_add(1) + 1 == kChannels) loop->Stop();
      }(loop.get(), writers[i].get(), &produced[i], &producers_done);
    }
    (void)loop->Run();
  }
  consumer.join();
  for (int i = 0; i < kChannels; ++i) {
    EXPECT_EQ(produced[i].packets, kPackets) << i;
    EXPECT_EQ(consumed[i].packets, kPackets) << i;
    EXPECT_TRUE(consumed[i].status.ok()) << i;
  }
}

TEST(RingEndpointTest, ReadableReportsACorruptRing) {
  TestRing ring;
  EventFd wake;
  auto loop = *EventLoop::Create();
  CallbackSignal peer;
  RingReader reader(loop.get(), *ring::IncomingRing::Create(ring.Memory()), wake.fd, &peer);
  ring.SetControl(ring::control::kWriteIndex, 0x11);  // Unaligned.
  absl::Status seen = absl::UnknownError("not run");
  [](RingReader* r, absl::Status* out) -> Task { *out = co_await r->Readable(); }(&reader, &seen);
  EXPECT_TRUE(ring::IsRingError(seen, ring::RingError::kIndexUnaligned)) << seen;
}

}  // namespace
}  // namespace cvmbus::hw
