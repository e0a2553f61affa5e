#include "hw/uring/event_loop.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <memory>
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

TEST(EventLoopTest, PosterRefusesWorkOnceItsLoopIsGone) {
  auto loop = *EventLoop::Create();
  std::shared_ptr<EventLoop::Poster> poster = loop->poster();
  int ran = 0;
  EXPECT_TRUE(poster->Post([&] { ++ran; }));
  ASSERT_TRUE(loop->RunOnce(100ms).ok());
  EXPECT_EQ(ran, 1);
  loop.reset();
  // A closure refused by a Poster whose loop is gone is destroyed unrun, here.
  auto captured = std::make_shared<int>(0);
  std::thread other([&] { EXPECT_FALSE(poster->Post([&ran, captured] { ++ran; })); });
  other.join();
  EXPECT_EQ(captured.use_count(), 1);
  EXPECT_EQ(ran, 1);
}

// Parks on `loop` until woken; hands the Waker out through `out`.
struct ParkAwaiter {
  EventLoop* loop;
  EventLoop::Waker* out;
  bool continue_instead = false;  // Parks, then withdraws and does not suspend.
  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> handle) {
    *out = loop->Park(handle);
    if (!continue_instead) return true;
    loop->Unpark(*out);
    return false;
  }
  void await_resume() const noexcept {}
};

Task ParkThenRecord(EventLoop* loop, EventLoop::Waker* waker, std::atomic<int>* live,
                    std::thread::id* resumed_on) {
  Tracker tracker(live);
  co_await ParkAwaiter{loop, waker};
  *resumed_on = std::this_thread::get_id();
  loop->Stop();
}

TEST(EventLoopTest, AParkedTaskResumesOnItsLoopThreadOnce) {
  auto loop = *EventLoop::Create();
  std::atomic<int> live{0};
  EventLoop::Waker waker;
  std::thread::id resumed_on;
  ParkThenRecord(loop.get(), &waker, &live, &resumed_on);
  EXPECT_EQ(live.load(), 1);
  std::thread::id woken_from;
  std::thread other([&] {
    woken_from = std::this_thread::get_id();
    EXPECT_TRUE(waker.Wake());
    EXPECT_TRUE(waker.Wake());  // Posted, but the task is no longer parked: nothing resumes.
  });
  ASSERT_TRUE(loop->Run().ok());
  other.join();
  ASSERT_TRUE(loop->RunOnce(10ms).ok());  // The second wake-up runs, and finds nothing.
  EXPECT_EQ(resumed_on, std::this_thread::get_id());
  EXPECT_NE(resumed_on, woken_from);
  EXPECT_EQ(live.load(), 0);  // Finished: the second wake-up resumed no freed frame.
}

TEST(EventLoopTest, TeardownDestroysParkedTasksAndLaterWakeUpsPostNothing) {
  std::atomic<int> live{0};
  EventLoop::Waker waker;
  std::thread::id resumed_on;
  {
    auto loop = *EventLoop::Create();
    ParkThenRecord(loop.get(), &waker, &live, &resumed_on);
    EXPECT_EQ(live.load(), 1);
  }
  EXPECT_EQ(live.load(), 0);                               // Destroyed with its loop...
  std::thread other([&] { EXPECT_FALSE(waker.Wake()); });  // ...and never resumed after.
  other.join();
  EXPECT_EQ(resumed_on, std::thread::id());
}

// Parked until `waker` is woken; records whether it resumed.
Task ParkUntilWoken(EventLoop* loop, EventLoop::Waker* waker, bool* resumed) {
  co_await ParkAwaiter{loop, waker};
  *resumed = true;
}

// Wakes `waker` from its destructor, as a dropped Rpc wakes the task awaiting its reply.
struct WakeOnDestruction {
  ~WakeOnDestruction() { waker->Wake(); }
  EventLoop::Waker* waker;
};

Task HoldUntilCancelled(EventLoop* loop, int fd, EventLoop::Waker* waker) {
  WakeOnDestruction wake{waker};
  (void)co_await loop->Readable(fd);
}

TEST(EventLoopTest, WakeUpsPostedDuringTeardownStillResumeParkedTasks) {
  bool resumed = false;
  EventFd fd;
  EventLoop::Waker waker;
  {
    auto loop = *EventLoop::Create();
    ParkUntilWoken(loop.get(), &waker, &resumed);
    HoldUntilCancelled(loop.get(), fd.fd, &waker);
    ASSERT_TRUE(loop->RunOnce(1ms).ok());
  }
  // Cancelling the poll destroyed the holder, whose wake-up ran before parked tasks were
  // destroyed.
  EXPECT_TRUE(resumed);
}

Task ParkButContinue(EventLoop* loop, EventLoop::Waker* waker, bool* finished) {
  co_await ParkAwaiter{loop, waker, /*continue_instead=*/true};
  *finished = true;
}

TEST(EventLoopTest, AnUnparkedWakerResumesNothing) {
  bool finished = false;
  EventLoop::Waker waker;
  {
    auto loop = *EventLoop::Create();
    ParkButContinue(loop.get(), &waker, &finished);
    EXPECT_TRUE(finished);  // Did not suspend; its frame is gone.
    EXPECT_TRUE(waker.Wake());
    ASSERT_TRUE(loop->RunOnce(10ms).ok());  // Finds nothing to resume (ASan: no use of the frame).
  }  // Nor does the teardown destroy the finished frame again.
}

}  // namespace
}  // namespace cvmbus::hw
