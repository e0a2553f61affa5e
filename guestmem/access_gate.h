// AccessGate: lets an access-state change wait out the accesses that began before it.
//
// Every guest memory access checks per-page access state and then copies. If a conversion
// (private <-> shared) changed the state between the check and the copy, the copy would go
// through the wrong view: a use-after-unshare. The gate closes that window the way RCU does:
//
//   accessor:  Enter();  load page states (seq_cst);  copy;  Exit();
//   converter: store page states (seq_cst);  WaitForAccessesInFlight();
//
// With both sides sequentially consistent, either the accessor sees the new state, or the
// converter sees the accessor inside and waits for it to leave. Each thread owns one slot (a
// cache line holding a sequence number, odd while inside), so entering costs one uncontended
// atomic RMW on a line no other thread writes.
//
// Thread safety: all functions may be called from any thread. Enter/Exit pairs must not nest
// across different AccessGate users on one thread (they are scoped by AccessScope).
#ifndef CVMBUS_GUESTMEM_ACCESS_GATE_H_
#define CVMBUS_GUESTMEM_ACCESS_GATE_H_

#include <atomic>
#include <cstdint>

namespace cvmbus::guestmem {

// One thread's slot. Owned by the registry; lives until the thread exits.
struct alignas(64) AccessSlot {
  std::atomic<uint64_t> sequence{0};  // Odd while the owning thread is inside an access.
};

// Returns the calling thread's slot, registering it on first use.
AccessSlot& ThisThreadAccessSlot();

// Blocks until every thread that was inside an access when this was called has left it.
// Accesses that start afterwards are not waited for (they see the new page states).
void WaitForAccessesInFlight();

// Marks the calling thread as inside an access for the scope's lifetime. Not reentrant.
class AccessScope {
 public:
  AccessScope() : slot_(ThisThreadAccessSlot()) {
    // seq_cst RMW: orders this entry before the page-state loads that follow (store->load),
    // pairing with the converter's seq_cst state stores and slot loads.
    slot_.sequence.fetch_add(1, std::memory_order_seq_cst);
  }
  ~AccessScope() {
    // release: the copy inside the scope happens-before a converter that sees us leave.
    slot_.sequence.fetch_add(1, std::memory_order_release);
  }
  AccessScope(const AccessScope&) = delete;
  AccessScope& operator=(const AccessScope&) = delete;

 private:
  AccessSlot& slot_;
};

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_ACCESS_GATE_H_
