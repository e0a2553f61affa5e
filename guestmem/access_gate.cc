#include "guestmem/access_gate.h"

#include <fmt/format.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
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

// The process-wide barrier's parts, replaceable by tests (SetBarrierHooksForTest).
long (*expedited_barrier)() = [] { return Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED); };
std::atomic<uint64_t> membarrier_failures{0};
std::atomic<uint64_t> fallback_barriers{0};

// The fallback when membarrier fails: taking write access away from a page this thread just
// wrote makes the kernel shoot down that page's TLB entries with an IPI to every CPU running
// a thread of this process, and an IPI serialises the CPU it interrupts (the scheme .NET's
// FlushProcessWriteBuffers falls back on). CPUs not running our threads pass a full barrier
// when they next switch to one. Returns 0 or the errno of the mprotect that failed.
int MprotectBarrier() {
  static Mutex mu;
  static void* page = nullptr;
  MutexLock lock(&mu);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (page == nullptr) {
    void* mapped =
        mmap(nullptr, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) return errno;
    page = mapped;
  }
  if (mprotect(page, page_size, PROT_READ | PROT_WRITE) != 0) return errno;
  // A locked RMW: the page is present and writable in this CPU's TLB before the downgrade.
  std::atomic_ref<uint64_t>(*static_cast<uint64_t*>(page)).fetch_add(1, std::memory_order_seq_cst);
  if (mprotect(page, page_size, PROT_READ) != 0) return errno;
  return 0;
}

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

absl::Status WaitForAccessesInFlight() {
  ChooseBarrierOnce();
  if (internal::access_gate_uses_membarrier) {
    // Every thread runs a full barrier: an accessor's slot store is now visible to us, or its
    // page-state load comes after our state stores. Accessors rely on it (they fence only the
    // compiler), so a failed membarrier must be made up for, never ignored.
    if (expedited_barrier() != 0) {
      const int membarrier_errno = errno;
      membarrier_failures.fetch_add(1, std::memory_order_relaxed);
      if (expedited_barrier() != 0) {
        fallback_barriers.fetch_add(1, std::memory_order_relaxed);
        if (const int mprotect_errno = MprotectBarrier(); mprotect_errno != 0) {
          return absl::InternalError(fmt::format(
              "access gate: no process-wide barrier: membarrier failed ({}) and the mprotect "
              "fallback failed ({}); accesses in flight may use the old page states",
              std::strerror(membarrier_errno), std::strerror(mprotect_errno)));
        }
      }
    }
  }
  // Without membarrier, accessors enter with a seq_cst RMW; our seq_cst state stores and slot
  // loads complete the handshake with no fence here.
  Registry().WaitForOddSlots();
  return absl::OkStatus();
}

AccessGateStats access_gate_stats() {
  return AccessGateStats{
      .uses_membarrier =
          [] {
            ChooseBarrierOnce();
            return internal::access_gate_uses_membarrier;
          }(),
      .membarrier_failures = membarrier_failures.load(std::memory_order_relaxed),
      .fallback_barriers = fallback_barriers.load(std::memory_order_relaxed),
  };
}

void internal::SetExpeditedBarrierForTest(long (*barrier)()) {
  expedited_barrier =
      barrier != nullptr ? barrier : [] { return Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED); };
}

}  // namespace cvmbus::guestmem
