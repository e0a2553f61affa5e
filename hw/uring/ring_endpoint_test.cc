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

// A peer Signal whose Raise fails while `fail` is set (a closed irqfd, a dead peer loop).
class FailingSignal : public Signal {
 public:
  absl::Status Raise() override {
    ++raised;
    return fail ? absl::UnavailableError("test signal: raise failed") : absl::OkStatus();
  }
  bool fail = false;
  int raised = 0;
};

// Packets of 8 payload bytes: 32 bytes in the ring with descriptor and trailer.
constexpr uint32_t kPacketBytes = 32;
ring::OutgoingPacket SmallPacket(uint64_t transaction_id) {
  static constexpr uint8_t kPayload[8] = {};
  return {.transaction_id = transaction_id, .payload = kPayload};
}

// A writer whose end-of-burst signal failed: a burst began while the reader was draining
// (interrupt_mask set), the reader went to sleep without reading, and the signal owed to it,
// raised by the loop before it waited, failed. The error is deferred to the next call.
class DeferredWriterErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ring_.SetControl(ring::control::kInterruptMask, 1);
    ASSERT_TRUE(writer_.ring().Append(SmallPacket(0)).ok());
    ASSERT_TRUE(writer_.Publish().ok());
    ring_.SetControl(ring::control::kInterruptMask, 0);
    peer_.fail = true;
    ASSERT_TRUE(loop_->RunOnce(0ns).ok());  // Runs BeforeWaiting.
    ASSERT_EQ(peer_.raised, 1);
    ASSERT_TRUE(writer_.ring().Append(SmallPacket(1)).ok());
  }

  TestRing ring_{1};
  EventFd wake_;
  std::unique_ptr<EventLoop> loop_ = *EventLoop::Create();
  FailingSignal peer_;
  RingWriter writer_{loop_.get(), *ring::OutgoingRing::Create(ring_.Memory()), wake_.fd, &peer_};
};

TEST_F(DeferredWriterErrorTest, PublishPublishesThenReportsIt) {
  EXPECT_EQ(writer_.Publish(), absl::UnavailableError("test signal: raise failed"));
  EXPECT_EQ(ring_.Control(ring::control::kWriteIndex), 2 * kPacketBytes);
  EXPECT_TRUE(writer_.Publish().ok());  // Reported once.
}

TEST_F(DeferredWriterErrorTest, FlushPublishesThenReportsIt) {
  EXPECT_EQ(writer_.Flush(), absl::UnavailableError("test signal: raise failed"));
  EXPECT_EQ(ring_.Control(ring::control::kWriteIndex), 2 * kPacketBytes);
  EXPECT_TRUE(writer_.Flush().ok());
}

// The reader's side: a burst of releases, then a writer's space request (pending_send_sz)
// that the burst answers; the signal owed at the burst's end fails.
TEST(RingEndpointTest, ReleaseReleasesThenReportsADeferredSignalError) {
  TestRing ring(1);
  EventFd wake;
  auto loop = *EventLoop::Create();
  FailingSignal peer;
  ring::OutgoingRing writer = *ring::OutgoingRing::Create(ring.Memory());
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(writer.Write(SmallPacket(i)).ok());
  RingReader reader(loop.get(), *ring::IncomingRing::Create(ring.Memory()), wake.fd, &peer);
  ring::PacketBuffer buffer;
  ASSERT_TRUE(*reader.ring().Read(&buffer));
  ASSERT_TRUE(reader.Release().ok());
  ring.SetControl(ring::control::kPendingSendSize, kPacketBytes);
  peer.fail = true;
  ASSERT_TRUE(loop->RunOnce(0ns).ok());  // Runs BeforeWaiting.
  ASSERT_EQ(peer.raised, 1);
  ASSERT_TRUE(*reader.ring().Read(&buffer));
  EXPECT_EQ(reader.Release(), absl::UnavailableError("test signal: raise failed"));
  EXPECT_EQ(ring.Control(ring::control::kReadIndex), 2 * kPacketBytes);
  ASSERT_TRUE(*reader.ring().Read(&buffer));
  EXPECT_TRUE(reader.Release().ok());  // Reported once.
}

// Appends packets until the ring is full, then publishes them.
absl::Status Fill(RingWriter* writer) {
  absl::Status appended;
  while ((appended = writer->ring().Append(SmallPacket(0))).ok()) {
  }
  if (!ring::IsRingError(appended, ring::RingError::kFull)) return appended;
  return writer->Flush();
}

// Waits once for room for a packet; sets `*done` when the wait completes.
Task WaitForSpace(RingWriter* writer, absl::Status* status, bool* done) {
  *status = co_await writer->Writable(kPacketBytes);
  *done = true;
}

// Runs `loop` until `*done` (or for a few seconds).
void RunUntil(EventLoop* loop, const bool* done) {
  for (int i = 0; i < 5 && !*done; ++i) (void)loop->RunOnce(1s);
}

// A reader that keeps interrupt_mask set and reads only once the writer has gone to sleep (a
// guest that stalls, or means harm): no busy-reader spin finds space, so the writer backs off,
// spinning on waits 1, 3, 7, 15, 31, 63, then once in 64 (127, 191, 255), and sleeping at once
// on the others; every wait still completes when the reader frees space.
TEST(RingEndpointTest, WriterBacksOffSpinningOnAMaskedReaderThatDoesNotDrain) {
  TestRing ring(1);
  EventFd wake;
  auto loop = *EventLoop::Create();
  CallbackSignal to_reader;
  RingWriter writer(loop.get(), *ring::OutgoingRing::Create(ring.Memory()), wake.fd, &to_reader);
  ring::IncomingRing reader = *ring::IncomingRing::Create(ring.Memory());
  reader.Mask();
  ring::PacketBuffer buffer;
  for (int wait = 1; wait <= 256; ++wait) {
    ASSERT_TRUE(Fill(&writer).ok());
    absl::Status status = absl::UnknownError("not run");
    bool done = false;
    WaitForSpace(&writer, &status, &done);
    ASSERT_FALSE(done) << wait;  // Asleep: nobody frees space.
    // The reader frees a packet's room and, by the pending_send_sz rule, wakes the writer.
    ASSERT_TRUE(*reader.Read(&buffer));
    ASSERT_TRUE(reader.Commit());
    ASSERT_TRUE(EventFdSignal(wake.fd).Raise().ok());
    RunUntil(loop.get(), &done);
    ASSERT_TRUE(done) << wait;
    ASSERT_TRUE(status.ok()) << status;
    if (wait == 16) {
      EXPECT_EQ(writer.stats().busy_waits, 4u);
      EXPECT_EQ(writer.stats().busy_waits_skipped, 12u);
    }
  }
  EXPECT_EQ(writer.stats().busy_waits, 9u);
  EXPECT_EQ(writer.stats().busy_waits_skipped, 256u - 9u);
  EXPECT_EQ(writer.stats().spin_hits, 0u);
  EXPECT_EQ(writer.stats().sleeps, 256u);
}

// A reader that drains (interrupt_mask set, a packet read every 100 us): each busy-reader spin
// finds space, so the writer spins on every wait and never sleeps. (A wait the reader beats,
// finding space at once, spins not at all and counts nowhere.)
TEST(RingEndpointTest, WriterKeepsSpinningOnADrainingReader) {
  TestRing ring(1);
  EventFd wake;
  auto loop = *EventLoop::Create();
  CallbackSignal to_reader;
  // A budget far above the reader's pace: a spin misses only if the reader stalls for 1 s.
  RingWriter writer(loop.get(), *ring::OutgoingRing::Create(ring.Memory()), wake.fd, &to_reader,
                    SpinPolicy{.busy_reader_wait = 1s});
  ring::IncomingRing reader = *ring::IncomingRing::Create(ring.Memory());
  reader.Mask();
  std::atomic<bool> stop{false};
  std::thread drainer([&] {
    ring::PacketBuffer buffer;
    while (!stop.load(std::memory_order_relaxed)) {
      std::this_thread::sleep_for(100us);
      absl::StatusOr<bool> got = reader.Read(&buffer);
      if (!got.ok()) return;
      // Wakes a writer that slept (none should).
      if (*got && reader.Commit()) (void)EventFdSignal(wake.fd).Raise();
    }
  });
  constexpr uint64_t kSpins = 16;
  absl::Status failed;
  for (int wait = 0; wait < 1000 && writer.stats().spin_hits < kSpins && failed.ok(); ++wait) {
    bool done = false;
    if (failed = Fill(&writer); !failed.ok()) break;
    WaitForSpace(&writer, &failed, &done);
    RunUntil(loop.get(), &done);
    if (!done) failed = absl::DeadlineExceededError("the wait for space never completed");
  }
  stop.store(true, std::memory_order_relaxed);
  drainer.join();
  ASSERT_TRUE(failed.ok()) << failed;
  EXPECT_EQ(writer.stats().spin_hits, kSpins);
  EXPECT_EQ(writer.stats().busy_waits, kSpins);
  EXPECT_EQ(writer.stats().busy_waits_skipped, 0u);
  EXPECT_EQ(writer.stats().sleeps, 0u);
}

}  // namespace
}  // namespace cvmbus::hw
