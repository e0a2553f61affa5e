#include "guestmem/racy_copy.h"

#if !defined(CVMBUS_TSAN)
namespace cvmbus::guestmem::internal {

void RacyCopyBounded(void* dst, const void* src, size_t len) { std::memcpy(dst, src, len); }
void RacyStoreBounded(void* dst, const void* src, size_t len) { std::memcpy(dst, src, len); }
void RacyFill(void* dst, uint8_t value, size_t len) { std::memset(dst, value, len); }

}  // namespace cvmbus::guestmem::internal
#endif
