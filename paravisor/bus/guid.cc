#include "paravisor/bus/guid.h"

#include <fmt/format.h>

namespace cvmbus::paravisor {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<Guid> Guid::Parse(std::string_view text) {
  const std::string original(text);
  if (text.size() == 38 && text.front() == '{' && text.back() == '}') {
    text = text.substr(1, 36);
  }
  const auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(fmt::format("guid '{}': {}", original, why));
  };
  if (text.size() != 36) return bad("expected 36 characters xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
  uint8_t bytes[16];
  size_t byte = 0;
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return bad(fmt::format("expected '-' at position {}", i));
      ++i;
      continue;
    }
    const int high = HexValue(text[i]), low = HexValue(text[i + 1]);
    if (high < 0 || low < 0) return bad(fmt::format("not a hex digit at position {}", i));
    bytes[byte++] = static_cast<uint8_t>(high << 4 | low);
    i += 2;
  }
  Guid guid;
  guid.data1 =
      uint32_t{bytes[0]} << 24 | uint32_t{bytes[1]} << 16 | uint32_t{bytes[2]} << 8 | bytes[3];
  guid.data2 = static_cast<uint16_t>(bytes[4] << 8 | bytes[5]);
  guid.data3 = static_cast<uint16_t>(bytes[6] << 8 | bytes[7]);
  for (int i = 0; i < 8; ++i) guid.data4[i] = bytes[8 + i];
  return guid;
}

std::string Guid::ToString() const {
  return fmt::format("{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                     data1, data2, data3, data4[0], data4[1], data4[2], data4[3], data4[4],
                     data4[5], data4[6], data4[7]);
}

}  // namespace cvmbus::paravisor
