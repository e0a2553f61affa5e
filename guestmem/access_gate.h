// AccessGate: lets an access-state change wait out the accesses that began before it.
//
// Every guest memory access checks per-page access state and then copies. If a conversion
// (private <-> shared) changed the state between the check and the copy, the copy would go
// through the wrong view: a use-after-unshare. The gate closes that window the way RCU does:
//
//   accessor:  enter (slot odd);  load page states;  copy;  leave (slot even)
//   converter: store page states;  heavy barrier;  wait for each odd slot to move on
//
// The accessor/converter pair is a Dekker handshake: either the accessor's state load sees the
// new state, or the converter sees the accessor's slot odd and waits. The store->load order
// needs a full barrier on both sides; to keep accesses cheap the accessor only stops the
// compiler, and the converter issues membarrier(PRIVATE_EXPEDITED), which runs a full barrier
// on every thread of the process (the asymmetric-fence scheme of liburcu and folly). Where
// membarrier is unavailable, and under ThreadSanitizer (which cannot see membarrier), the
// accessor uses a sequentially consistent RMW instead. Should membarrier fail after it was
// chosen (the kernel may refuse with ENOMEM), the converter retries it once, then forces the
// barrier on every CPU running a thread of ours with a TLB shootdown (an mprotect downgrade of
// a page it just wrote); only if that fails too does the wait return an error.
//
// Each thread owns one slot (a cache line nobody else writes), registered on first use.
// Thread safety: all functions may be called from any thread; AccessScope is not reentrant.
#ifndef CVMBUS_GUESTMEM_ACCESS_GATE_H_
#define CVMBUS_GUESTMEM_ACCESS_GATE_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "guestmem/racy_copy.h"  // CVMBUS_TSAN

namespace cvmbus::guestmem {

// One thread's slot: `sequence` is odd while the owning thread is inside an access. Written
// only by its owner; read by converters.
struct alignas(64) AccessSlot {
  std::atomic<uint64_t> sequence{0};
};

namespace internal {
// Null until registered. constinit: no dynamic initialisation, so no TLS-init call per access.
extern constinit thread_local AccessSlot* this_thread_access_slot;
AccessSlot* RegisterThisThreadForAccess();
extern bool access_gate_uses_membarrier;  // Set once, before any thread's first access.
// Replaces membarrier(PRIVATE_EXPEDITED) (returns 0 or -1 with errno); null restores it.
void SetExpeditedBarrierForTest(long (*barrier)());
}  // namespace internal

// Blocks until every thread that was inside an access when this was called has left it.
// Accesses that start afterwards are not waited for: they see the new page states.
// kInternal only if no process-wide barrier could be had (see above): the caller's state
// change is then not safe against accesses in flight, and must be reported as failed.
[[nodiscard]] absl::Status WaitForAccessesInFlight();

struct AccessGateStats {
  bool uses_membarrier = false;      // The asymmetric scheme (else the RMW one).
  uint64_t membarrier_failures = 0;  // membarrier calls that failed (then retried once).
  uint64_t fallback_barriers = 0;    // Barriers made by the mprotect fallback.
};
AccessGateStats access_gate_stats();

// Marks the calling thread as inside an access for the scope's lifetime.
class AccessScope {
 public:
  AccessScope() {
    AccessSlot* slot = internal::this_thread_access_slot;
    if (slot == nullptr) slot = internal::RegisterThisThreadForAccess();
    slot_ = slot;
    entered_ = slot->sequence.load(std::memory_order_relaxed) + 1;  // Only we write it.
#if !defined(CVMBUS_TSAN)
    if (internal::access_gate_uses_membarrier) {
      slot->sequence.store(entered_, std::memory_order_relaxed);
      // Compiler-only barrier: the converter's membarrier supplies the CPU barrier that
      // orders this store before our page-state loads.
      std::atomic_signal_fence(std::memory_order_seq_cst);
      return;
    }
#endif
    // Full barrier: the slot store is ordered before the page-state loads that follow.
    slot->sequence.fetch_add(1, std::memory_order_seq_cst);
  }
  ~AccessScope() {
    // release: our copy happens-before a converter that sees the slot move on.
    slot_->sequence.store(entered_ + 1, std::memory_order_release);
  }
  AccessScope(const AccessScope&) = delete;
  AccessScope& operator=(const AccessScope&) = delete;

 private:
  AccessSlot* slot_;
  uint64_t entered_;
};

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_ACCESS_GATE_H_
