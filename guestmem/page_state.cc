#include "guestmem/page_state.h"

namespace cvmbus::guestmem {

std::string_view ViewName(View view) { return view == View::kPrivate ? "private" : "untrusted"; }

std::string_view AccessName(Access access) {
  switch (access) {
    case Access::kNone:
      return "none";
    case Access::kRead:
      return "read";
    case Access::kReadWrite:
      return "read-write";
  }
  return "invalid";
}

}  // namespace cvmbus::guestmem
