#include "guestmem/access_gate.h"

#include <sched.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace cvmbus::guestmem {
namespace {

// All live threads' slots. Slots are never freed while registered; a thread unregisters its
// slot at exit, after which no access of that thread can be in flight.
class SlotRegistry {
 public:
  void Add(AccessSlot* slot) {
    absl::MutexLock lock(&mu_);
    slots_.push_back(slot);
  }
  void Remove(AccessSlot* slot) {
    absl::MutexLock lock(&mu_);
    slots_.erase(std::remove(slots_.begin(), slots_.end(), slot), slots_.end());
  }
  // Waits for each slot that is odd now to move on. Holding mu_ keeps slots alive; a thread
  // blocked on exit in Remove() cannot be inside an access, so it is never waited for.
  void WaitForOddSlots() {
    absl::MutexLock lock(&mu_);
    for (AccessSlot* slot : slots_) {
      const uint64_t seen = slot->sequence.load(std::memory_order_seq_cst);
      if ((seen & 1) == 0) continue;
      while (slot->sequence.load(std::memory_order_acquire) == seen) sched_yield();
    }
  }

 private:
  absl::Mutex mu_;
  std::vector<AccessSlot*> slots_ ABSL_GUARDED_BY(mu_);
};

SlotRegistry& Registry() {
  static SlotRegistry* const registry = new SlotRegistry();  // Never destroyed: threads may
  return *registry;                                          // exit after static teardown.
}

struct ThreadSlot {
  ThreadSlot() { Registry().Add(&slot); }
  ~ThreadSlot() { Registry().Remove(&slot); }
  AccessSlot slot;
};

}  // namespace

AccessSlot& ThisThreadAccessSlot() {
  thread_local ThreadSlot thread_slot;
  return thread_slot.slot;
}

void WaitForAccessesInFlight() { Registry().WaitForOddSlots(); }

}  // namespace cvmbus::guestmem
