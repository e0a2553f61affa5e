// Views of guest memory and the per-page access state each view has.
#ifndef CVMBUS_GUESTMEM_PAGE_STATE_H_
#define CVMBUS_GUESTMEM_PAGE_STATE_H_

#include <cstdint>
#include <string_view>

namespace cvmbus::guestmem {

inline constexpr uint64_t kPageShift = 12;
inline constexpr uint64_t kPageSize = uint64_t{1} << kPageShift;
inline constexpr uint64_t kPageMask = kPageSize - 1;

// The two ways the paravisor sees one guest page. kPrivate is confidential (encrypted, C=1 /
// TDX private) memory; kUntrusted is memory shared with the host, which may rewrite it at any
// moment.
enum class View : uint8_t { kPrivate = 0, kUntrusted = 1 };

// What a view may do to a page. The values are bit sets: bit 0 read, bit 1 write.
enum class Access : uint8_t { kNone = 0, kRead = 1, kReadWrite = 3 };

std::string_view ViewName(View view);
std::string_view AccessName(Access access);

// The packed per-page state word (one byte per 4 KiB page):
//   bit 7      the page exists (not a hole, not past the end)
//   bits 0-1   the private view's Access
//   bits 2-3   the untrusted view's Access
namespace page_state {
inline constexpr uint8_t kPresent = 0x80;
inline constexpr unsigned ViewShift(View view) { return view == View::kPrivate ? 0 : 2; }
inline constexpr uint8_t Encode(Access private_access, Access untrusted_access) {
  return static_cast<uint8_t>(kPresent | static_cast<uint8_t>(private_access) |
                              (static_cast<uint8_t>(untrusted_access) << 2));
}
inline constexpr Access AccessOf(uint8_t state, View view) {
  return static_cast<Access>((state >> ViewShift(view)) & 3);
}
// The bits that must all be set for `view` to read (or write) a page.
inline constexpr uint8_t RequiredBits(View view, bool write) {
  return static_cast<uint8_t>(kPresent | ((write ? 2 : 1) << ViewShift(view)));
}
}  // namespace page_state

}  // namespace cvmbus::guestmem

#endif  // CVMBUS_GUESTMEM_PAGE_STATE_H_
