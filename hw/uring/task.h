// Task: a fire-and-forget C++20 coroutine that runs on an EventLoop.
//
// Device code reads top to bottom:
//
//   Task Serve(RingReader& in, RingWriter& out) {
//     while (true) {
//       absl::Status status = co_await in.Readable();  // Suspends until the peer signals.
//       ...
//     }
//   }
//
// A Task starts running at once on the calling (loop) thread, suspends at each co_await and is
// resumed by the loop when the awaited event completes; its frame is freed when it returns. A
// Task still suspended when its loop is destroyed is destroyed with it (its locals' destructors
// run; it never resumes). Tasks belong to one loop thread; they are not thread-safe.
//
// Why coroutines: the ring protocol is a sequence of "try, else wait for the peer" steps; as
// coroutines they stay one readable function each, with no hand-written state machines, and a
// suspension costs one heap frame at start plus no allocation per wait.
#ifndef CVMBUS_HW_URING_TASK_H_
#define CVMBUS_HW_URING_TASK_H_

#include <coroutine>
#include <exception>

namespace cvmbus::hw {

struct Task {
  struct promise_type {
    Task get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    // cvmbus reports failures as absl::Status; an exception escaping a task is a bug.
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

}  // namespace cvmbus::hw

#endif  // CVMBUS_HW_URING_TASK_H_
