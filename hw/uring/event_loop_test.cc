#include "hw/uring/event_loop.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "hw/uring/signal.h"
#include "hw/uring/task.h"

namespace cvmbus::hw {
namespace {

using namespace std::chrono_literals;

struct EventFd {
  EventFd() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~EventFd() { close(fd); }
  int fd;
};

void Signal(int fd) {
  const uint64_t one = 1;
  ASSERT_EQ(write(fd, &one, sizeof(one)), 8);
}

TEST(EventLoopTest, UsesDeferTaskrunWhereTheKernelHasIt) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok()) << loop.status();
  // The kernel here (6.18) has SINGLE_ISSUER and DEFER_TASKRUN; the fallback is tested below.
  EXPECT_EQ((*loop)->setup_description(), "single_issuer+defer_taskrun");
  auto fallback = EventLoop::Create({.allow_defer_taskrun = false});
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ((*fallback)->setup_description(), "coop_taskrun");
}

TEST(EventLoopTest, BusyPollCatchesADoorbellWithoutSleeping) {
  auto loop = *EventLoop::Create({.busy_poll = 10s});
  EventFd doorbell;
  uint64_t seen = 0;
  ASSERT_TRUE(loop->WatchEventFd(doorbell.fd, [&](uint64_t count) { seen += count; }).ok());
  ASSERT_TRUE(loop->RunOnce(0ns).ok());  // The watch is submitted.
  std::thread ringer([&] {
    std::this_thread::sleep_for(20ms);
    Signal(doorbell.fd);
  });
  // With DEFER_TASKRUN the poll's completion exists only once the loop asks the kernel for it:
  // found while spinning, it is a hit; a loop that slept instead would show a miss.
  for (int i = 0; i < 100 && seen == 0; ++i) ASSERT_TRUE(loop->RunOnce(10s).ok());
  ringer.join();
  EXPECT_EQ(seen, 1u);
  EXPECT_GE(loop->spin_stats().hits, 1u);
  EXPECT_EQ(loop->spin_stats().misses, 0u);
}

TEST(EventLoopTest, BusyPollGivesUpAfterItsBudgetAndSleeps) {
  auto loop = *EventLoop::Create();
  EXPECT_EQ(loop->spin_stats().hits + loop->spin_stats().misses, 0u);  // Off by default.
  loop->SetBusyPoll(1ms);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(loop->RunOnce(30ms).ok());  // Nothing arrives: spin 1 ms, then sleep.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  EXPECT_EQ(loop->spin_stats().misses, 1u);
  EXPECT_EQ(loop->spin_stats().hits, 0u);
}

TEST(EventLoopTest, WatchesManyEventFdsAndCoalescesCounts) {
  auto loop = *EventLoop::Create();
  EventFd a, b;
  uint64_t seen_a = 0, seen_b = 0;
  auto watch_a = loop->WatchEventFd(a.fd, [&](uint64_t count) { seen_a += count; });
  auto watch_b = loop->WatchEventFd(b.fd, [&](uint64_t count) { seen_b += count; });
  ASSERT_TRUE(watch_a.ok() && watch_b.ok());
  Signal(a.fd);
  Signal(a.fd);
  Signal(b.fd);
  for (int i = 0; i < 10 && (seen_a < 2 || seen_b < 1); ++i) ASSERT_TRUE(loop->RunOnce(100ms).ok());
  EXPECT_EQ(seen_a, 2u);
  EXPECT_EQ(seen_b, 1u);
  // Multishot: later signals arrive without re-registering.
  Signal(b.fd);
  for (int i = 0; i < 10 && seen_b < 2; ++i) ASSERT_TRUE(loop->RunOnce(100ms).ok());
  EXPECT_EQ(seen_b, 2u);
  loop->Unwatch(*watch_b);
  Signal(b.fd);
  ASSERT_TRUE(loop->RunOnce(50ms).ok());
  ASSERT_TRUE(loop->RunOnce(50ms).ok());
  EXPECT_EQ(seen_b, 2u);  // No callback after Unwatch.
}

TEST(EventLoopTest, IdleHooksRunOnceBeforeTheLoopWaits) {
  auto loop = *EventLoop::Create();
  struct Hook : EventLoop::IdleHook {
    void BeforeWaiting() override {
      ++calls;
      if (then != nullptr) loop->CallBeforeWaiting(then);
    }
    EventLoop* loop = nullptr;
    Hook* then = nullptr;
    int calls = 0;
  };
  Hook first, second, cancelled;
  first.loop = loop.get();
  first.then = &second;  // Registered from inside a hook: still runs before the wait.
  loop->CallBeforeWaiting(&first);
  loop->CallBeforeWaiting(&first);  // Already pending: once.
  loop->CallBeforeWaiting(&cancelled);
  loop->CancelBeforeWaiting(&cancelled);
  ASSERT_TRUE(loop->RunOnce(0ms).ok());
  EXPECT_EQ(first.calls, 1);
  EXPECT_EQ(second.calls, 1);
  EXPECT_EQ(cancelled.calls, 0);
  ASSERT_TRUE(loop->RunOnce(0ms).ok());  // Nothing pending any more.
  EXPECT_EQ(first.calls, 1);
  loop->CallBeforeWaiting(&first);  // Pending again after it ran.
  first.then = nullptr;
  ASSERT_TRUE(loop->RunOnce(0ms).ok());
  EXPECT_EQ(first.calls, 2);
}

TEST(EventLoopTest, TimersFireOnceAndCancel) {
  auto loop = *EventLoop::Create();
  int fired = 0, cancelled_fired = 0;
  ASSERT_TRUE(loop->AddTimer(1ms, [&] { ++fired; }).ok());
  auto cancelled = loop->AddTimer(5ms, [&] { ++cancelled_fired; });
  loop->CancelTimer(*cancelled);
  const auto deadline = std::chrono::steady_clock::now() + 200ms;
  while (std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(loop->RunOnce(10ms).ok());
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(cancelled_fired, 0);
}

TEST(EventLoopTest, PostAndStopFromAnotherThread) {
  auto loop = *EventLoop::Create();
  std::atomic<int> ran{0};
  std::thread other([&] {
    for (int i = 0; i < 1000; ++i) loop->Post([&] { ran.fetch_add(1); });
    loop->Stop();
  });
  ASSERT_TRUE(loop->Run().ok());
  other.join();
  // Stop is handled after the posts that preceded it.
  EXPECT_EQ(ran.load(), 1000);
}

TEST(EventLoopTest, MsgRingBetweenLoopsOnTwoThreads) {
  std::atomic<int> target_fd{-1};
  std::atomic<uint64_t> received{0};
  std::atomic<bool> done{false};
  std::thread receiver([&] {
    auto loop = *EventLoop::Create();
    loop->OnMessage([&](uint64_t value) {
      received.fetch_add(value);
      if (received.load() == 1 + 2 + 3) loop->Stop();
    });
    target_fd = loop->ring_fd();
    ASSERT_TRUE(loop->Run().ok());
    done = true;
  });
  while (target_fd.load() < 0) std::this_thread::yield();
  auto sender = *EventLoop::Create();
  MsgRingSignal one(sender.get(), target_fd.load(), 1), two(sender.get(), target_fd.load(), 2);
  ASSERT_TRUE(one.Raise().ok());
  ASSERT_TRUE(two.Raise().ok());
  ASSERT_TRUE(sender->SendMessage(target_fd.load(), 3).ok());
  receiver.join();
  EXPECT_TRUE(done.load());
  EXPECT_EQ(received.load(), 6u);
  EXPECT_FALSE(sender->SendMessage(target_fd.load(), uint64_t{1} << 62).ok());
}

Task WaitThenRecord(EventLoop* loop, int fd, std::vector<std::string>* log) {
  log->push_back("start");
  absl::Status status = co_await loop->Readable(fd);
  log->push_back(status.ok() ? "readable" : "error");
  co_await loop->Sleep(1ms);
  log->push_back("slept");
}

TEST(EventLoopTest, CoroutinesReadTopToBottom) {
  auto loop = *EventLoop::Create();
  EventFd fd;
  std::vector<std::string> log;
  WaitThenRecord(loop.get(), fd.fd, &log);
  EXPECT_EQ(log, std::vector<std::string>{"start"});  // Suspended at the first co_await.
  ASSERT_TRUE(loop->RunOnce(10ms).ok());
  EXPECT_EQ(log.size(), 1u);  // Nothing signalled yet.
  Signal(fd.fd);
  for (int i = 0; i < 20 && log.size() < 3; ++i) ASSERT_TRUE(loop->RunOnce(20ms).ok());
  EXPECT_EQ(log, (std::vector<std::string>{"start", "readable", "slept"}));
}

struct Tracker {
  explicit Tracker(std::atomic<int>* live) : live(live) { live->fetch_add(1); }
  ~Tracker() { live->fetch_sub(1); }
  std::atomic<int>* live;
};

Task WaitForever(EventLoop* loop, int fd, std::atomic<int>* live, bool* resumed) {
  Tracker tracker(live);
  (void)co_await loop->Readable(fd);
  *resumed = true;
}

TEST(EventLoopTest, TeardownCancelsEverythingAndDestroysSuspendedTasks) {
  std::atomic<int> live{0};
  bool resumed = false;
  EventFd fd;
  {
    auto loop = *EventLoop::Create();
    for (int i = 0; i < 50; ++i) WaitForever(loop.get(), fd.fd, &live, &resumed);
    for (int i = 0; i < 50; ++i) ASSERT_TRUE(loop->AddTimer(1h, [] {}).ok());
    ASSERT_TRUE(loop->WatchEventFd(fd.fd, [](uint64_t) {}).ok());
    ASSERT_TRUE(loop->RunOnce(1ms).ok());
    EXPECT_EQ(live.load(), 50);
    EXPECT_GE(loop->operations_in_flight(), 101u);
  }
  EXPECT_EQ(live.load(), 0);  // Every suspended task's frame was destroyed...
  EXPECT_FALSE(resumed);      // ...without resuming it.
}

}  // namespace
}  // namespace cvmbus::hw
