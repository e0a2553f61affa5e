// Copies to and from guest memory that another party may write at the same time.
//
// Guest memory is shared with the guest (and, for the untrusted view, the host); a copy can
// race a peer's write. The contract cvmbus relies on is only that each byte is read once, into
// private memory, and validated there. Plain memcpy gives that and is the fastest copy, but a
// racing memcpy is a data race to ThreadSanitizer, so TSan builds copy with relaxed atomics
// instead: the same semantics, and the race detector stays useful for our own data.
#ifndef CVMBUS_GUESTMEM_RACY_COPY_H_
#define CVMBUS_GUESTMEM_RACY_COPY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SANITIZE_THREAD__)
#define CVMBUS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CVMBUS_TSAN 1
#endif
#endif

namespace cvmbus::guestmem::internal {

#if defined(CVMBUS_TSAN)
inline void RacyCopy(void* dst, const void* src, size_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  auto* in = const_cast<uint8_t*>(static_cast<const uint8_t*>(src));
  for (size_t i = 0; i < len; ++i) {
    out[i] = std::atomic_ref<uint8_t>(in[i]).load(std::memory_order_relaxed);
  }
}
inline void RacyStore(void* dst, const void* src, size_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  auto* in = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < len; ++i) {
    std::atomic_ref<uint8_t>(out[i]).store(in[i], std::memory_order_relaxed);
  }
}
inline void RacyFill(void* dst, uint8_t value, size_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < len; ++i) {
    std::atomic_ref<uint8_t>(out[i]).store(value, std::memory_order_relaxed);
  }
}
#else
// Reads shared memory `src` into private `dst`. (.bazelrc's -mstringop-strategy=libcall keeps
// GCC from expanding copies of bounded length as `rep movsq`: they call libc's vector memcpy.)
inline void RacyCopy(void* dst, const void* src, size_t len) { std::memcpy(dst, src, len); }
// Writes private `src` into shared memory `dst`.
inline void RacyStore(void* dst, const void* src, size_t len) { std::memcpy(dst, src, len); }
inline void RacyFill(void* dst, uint8_t value, size_t len) { std::memset(dst, value, len); }
#endif

}  // namespace cvmbus::guestmem::internal

#endif  // CVMBUS_GUESTMEM_RACY_COPY_H_
