// Mutex and MutexLock: a std::mutex with Abseil's thread-safety annotations.
//
// Why not absl::Mutex: Debian's Abseil is built without ThreadSanitizer instrumentation, so
// TSan cannot see absl::Mutex's synchronization and reports every guarded access as a race.
// std::mutex goes through pthreads, which TSan intercepts. The annotations keep clang's
// -Wthread-safety analysis (ABSL_GUARDED_BY and friends) working.
#ifndef CVMBUS_BASE_MUTEX_H_
#define CVMBUS_BASE_MUTEX_H_

#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace cvmbus {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }

  // For std::condition_variable_any and other std lock adapters.
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace cvmbus

#endif  // CVMBUS_BASE_MUTEX_H_
