// Guid: a 16-byte GUID in the Windows mixed-endian wire layout VMBus offers carry
// (u32 data1, u16 data2, u16 data3 little-endian, then 8 bytes), printed and parsed in the
// registry form "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". Ordered, hashable, trivially copyable.
#ifndef CVMBUS_PARAVISOR_BUS_GUID_H_
#define CVMBUS_PARAVISOR_BUS_GUID_H_

#include <array>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace cvmbus::paravisor {

struct Guid {
  uint32_t data1 = 0;
  uint16_t data2 = 0;
  uint16_t data3 = 0;
  std::array<uint8_t, 8> data4{};

  static constexpr Guid Zero() { return Guid{}; }
  // Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (optionally in braces), any hex case.
  static absl::StatusOr<Guid> Parse(std::string_view text);

  std::string ToString() const;  // Lower case, no braces.
  bool is_zero() const { return *this == Guid{}; }

  friend auto operator<=>(const Guid&, const Guid&) = default;
  friend bool operator==(const Guid&, const Guid&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Guid& guid) {
    return H::combine(std::move(h), guid.data1, guid.data2, guid.data3, guid.data4);
  }
};
static_assert(sizeof(Guid) == 16);

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_BUS_GUID_H_
