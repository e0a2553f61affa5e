// RingMemory: the memory of one VMBus ring buffer as a device uses it: the 4 KiB control page
// and the data area, pinned read-write in one view for as long as the ring is open.
//
// The pages come from a GPADL, so they need not be GPA-contiguous. Where the backing has a
// file descriptor (memfd, file), the data pages are mapped twice, back to back, into a private
// virtual range, so a copy that wraps past the end of the data area is one memcpy; otherwise
// copies are split at the wrap and at page discontinuities. Both give the same bytes.
//
// RingMemory is only a window: it knows nothing of the ring protocol and does not validate
// indices beyond keeping every copy inside the data area. ring/ validates the peer's indices
// before it asks for bytes. Copies are single reads of possibly hostile bytes (see
// racy_copy.h); the caller validates what it copied.
//
// Thread safety: const members may be called from any thread; a ring's reader and writer
// sides run on different threads over one RingMemory.
#ifndef CVMBUS_GUESTMEM_RING_MEMORY_H_
#define CVMBUS_GUESTMEM_RING_MEMORY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "guestmem/guest_memory.h"
#include "guestmem/racy_copy.h"

namespace cvmbus::guestmem {

struct RingMemoryOptions {
  // Map the data pages twice when the backing allows it. Off: always split copies.
  bool allow_double_mapping = true;
};

// Largest data area a ring may have: indices are u32 byte offsets; 1 GiB is far beyond any
// VMBus ring (Linux caps rings at a few MiB).
inline constexpr uint64_t kMaxRingDataBytes = uint64_t{1} << 30;

class RingMemory {
 public:
  // `gpns[0]` is the control page, `gpns[1..]` the data pages (at least one). Pins them all
  // read-write in `memory`'s view (errors as GuestMemory::Pin: kNotPrivate, kNotShared, ...).
  static absl::StatusOr<RingMemory> Create(const GuestMemory& memory,
                                           absl::Span<const uint64_t> gpns,
                                           RingMemoryOptions options = {});
  RingMemory(RingMemory&& other) noexcept;
  RingMemory& operator=(RingMemory&& other) noexcept;
  ~RingMemory();

  View view() const { return pinned_.view(); }
  uint32_t data_size() const { return data_size_; }
  bool double_mapped() const { return double_mapping_ != nullptr; }

  // A 32-bit control word at byte `offset` of the control page. `offset` must be a multiple of
  // 4 below 4096: ring/ passes protocol constants, never peer-supplied values.
  uint32_t LoadControl(uint32_t offset, std::memory_order order) const {
    return Word(offset).load(order);
  }
  void StoreControl(uint32_t offset, uint32_t value, std::memory_order order) const {
    Word(offset).store(value, order);
  }
  // A full barrier between our earlier stores and our later loads, made as a seq_cst
  // read-modify-write that adds 0 to the control word at `offset` (a word only we write): an
  // RMW is a full barrier on every architecture, and ThreadSanitizer models it, which it does
  // not for atomic_thread_fence.
  void FullBarrierOnControl(uint32_t offset) const {
    Word(offset).fetch_add(0, std::memory_order_seq_cst);
  }

  // Copies `len` bytes of the data area starting at `offset`, wrapping at data_size(). Returns
  // false (copying nothing) unless offset < data_size() and len <= data_size(). Inline for the
  // double-mapped case (one copy, which a caller's constant length lets the compiler inline).
  bool ReadData(uint32_t offset, void* out, size_t len) const {
    if (double_mapping_ != nullptr && offset < data_size_ && len <= data_size_ && len > 0) {
      internal::RacyCopy(out, double_mapping_ + offset, len);
      return true;
    }
    return ReadDataSlow(offset, out, len);
  }
  // The data area from `offset` for `len` bytes as one writable host range, wrapping included,
  // when the data is double-mapped and offset < data_size(), 0 < len <= data_size(); null
  // otherwise (then use WriteData). For writers that compose their own stores (the ring's
  // packet writer stores its header words from registers): every store through it must be
  // racy-safe (internal::RacyStore), as the other side may be writing the same bytes.
  uint8_t* ContiguousData(uint32_t offset, size_t len) const {
    if (double_mapping_ == nullptr || offset >= data_size_ || len > data_size_ || len == 0) {
      return nullptr;
    }
    return double_mapping_ + offset;
  }
  bool WriteData(uint32_t offset, const void* in, size_t len) const {
    if (double_mapping_ != nullptr && offset < data_size_ && len <= data_size_ && len > 0) {
      internal::RacyStore(double_mapping_ + offset, in, len);
      return true;
    }
    return WriteDataSlow(offset, in, len);
  }

 private:
  RingMemory(PinnedPages pinned, uint32_t data_size)
      : pinned_(std::move(pinned)), data_size_(data_size) {}
  std::atomic_ref<uint32_t> Word(uint32_t offset) const {
    return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(control_ + (offset & 0xffc)));
  }
  void MapTwice(const RingMemoryOptions& options);
  bool ReadDataSlow(uint32_t offset, void* out, size_t len) const;
  bool WriteDataSlow(uint32_t offset, const void* in, size_t len) const;
  // Calls fn(host_address, offset_in_copy, bytes) for each contiguous piece of [offset, +len).
  template <typename Fn>
  void ForEachPiece(uint32_t offset, size_t len, Fn&& fn) const;

  PinnedPages pinned_;
  uint32_t data_size_;
  uint8_t* control_ = nullptr;
  uint8_t* double_mapping_ = nullptr;   // 2 * data_size_ bytes, or null.
  uint8_t* contiguous_data_ = nullptr;  // The data area in the GPA reservation, if contiguous.
  std::vector<uint8_t*> data_pages_;    // Host address of each data page.
};

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_RING_MEMORY_H_
