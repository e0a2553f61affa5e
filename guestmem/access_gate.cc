#include "guestmem/access_gate.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <vector>

#include "base/mutex.h"

namespace cvmbus::guestmem {
namespace internal {
constinit thread_local AccessSlot* this_thread_access_slot = nullptr;
bool access_gate_uses_membarrier = false;
}  // namespace internal

namespace {

// All live threads' slots. A thread unregisters its slot at exit, when none of its accesses can
// be in flight.
class SlotRegistry {
 public:
  void Add(AccessSlot* slot) {
    MutexLock lock(&mu_);
    slots_.push_back(slot);
  }
  void Remove(AccessSlot* slot) {
    MutexLock lock(&mu_);
    slots_.erase(std::remove(slots_.begin(), slots_.end(), slot), slots_.end());
  }
  // Waits for each slot that is odd now to move on. Holding mu_ keeps the slots alive; a thread
  // blocked in Remove() is exiting and is not inside an access.
  void WaitForOddSlots() {
    MutexLock lock(&mu_);
    for (AccessSlot* slot : slots_) {
      const uint64_t seen = slot->sequence.load(std::memory_order_seq_cst);
      if ((seen & 1) == 0) continue;
      while (slot->sequence.load(std::memory_order_acquire) == seen) sched_yield();
    }
  }

 private:
  Mutex mu_;
  std::vector<AccessSlot*> slots_ ABSL_GUARDED_BY(mu_);
};

SlotRegistry& Registry() {
  static SlotRegistry* const registry = new SlotRegistry();  // Never destroyed: threads may
  return *registry;                                          // exit after static teardown.
}

[[maybe_unused]] long Membarrier(int command) { return syscall(__NR_membarrier, command, 0, 0); }

void ChooseBarrierOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
#if !defined(CVMBUS_TSAN)
    // CVMBUS_ACCESS_GATE=rmw selects the RMW scheme (to compare the two; see copy_bench).
    const char* choice = std::getenv("CVMBUS_ACCESS_GATE");
    if (choice != nullptr && std::string_view(choice) == "rmw") return;
    const long supported = Membarrier(MEMBARRIER_CMD_QUERY);
    internal::access_gate_uses_membarrier =
        supported > 0 && (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
        Membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
#endif
  });
}

// Owns the calling thread's slot; unregisters it when the thread exits.
struct ThreadSlot {
  ThreadSlot() {
    Registry().Add(&slot);
    internal::this_thread_access_slot = &slot;
  }
  ~ThreadSlot() {
    internal::this_thread_access_slot = nullptr;
    Registry().Remove(&slot);
  }
  AccessSlot slot;
};

}  // namespace

AccessSlot* internal::RegisterThisThreadForAccess() {
  ChooseBarrierOnce();  // Happens-before this thread's first access reads the choice.
  thread_local ThreadSlot thread_slot;
  return &thread_slot.slot;
}

void WaitForAccessesInFlight() {
  ChooseBarrierOnce();
  if (internal::access_gate_uses_membarrier) {
    // Every thread runs a full barrier: an accessor's slot store is now visible to us, or its
    // page-state load comes after our state stores.
    Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  }
  // Without membarrier, accessors enter with a seq_cst RMW; our seq_cst state stores and slot
  // loads complete the handshake with no fence here.
  Registry().WaitForOddSlots();
}

}  // namespace cvmbus::guestmem
