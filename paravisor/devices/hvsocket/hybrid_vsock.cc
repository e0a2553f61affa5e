#include "paravisor/devices/hvsocket/hybrid_vsock.h"

#include <fmt/format.h>

#include <cctype>

namespace cvmbus::paravisor::hvsocket {

std::string HostSocketPath(std::string_view base, uint32_t port) {
  return fmt::format("{}_{}", base, port);
}

absl::StatusOr<uint32_t> ParseConnectLine(std::string_view line) {
  constexpr std::string_view kPrefix = "CONNECT ";
  const auto bad = [&](std::string_view why) {
    // Only a bounded, printable prefix of the host's bytes goes into the message.
    std::string shown;
    for (char c : line.substr(0, kMaxConnectLineBytes)) {
      shown += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
    }
    return absl::InvalidArgumentError(
        fmt::format("hybrid vsock: bad connect request \"{}\": {}", shown, why));
  };
  if (line.size() < kPrefix.size()) return bad("too short");
  for (size_t i = 0; i < kPrefix.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(line[i])) != kPrefix[i]) {
      return bad("expected \"CONNECT <port>\"");
    }
  }
  const std::string_view digits = line.substr(kPrefix.size());
  if (digits.empty() || digits.size() > 10) return bad("the port needs 1 to 10 digits");
  uint64_t port = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return bad("the port is not a decimal number");
    port = port * 10 + static_cast<uint64_t>(c - '0');
  }
  if (port > UINT32_MAX) return bad("the port does not fit 32 bits");
  return static_cast<uint32_t>(port);
}

std::string OkLine(uint32_t port) { return fmt::format("OK {}\n", port); }

absl::StatusOr<std::optional<size_t>> FindConnectLine(std::string_view bytes) {
  const size_t newline = bytes.substr(0, kMaxConnectLineBytes).find('\n');
  if (newline != std::string_view::npos) return std::optional<size_t>(newline);
  if (bytes.size() >= kMaxConnectLineBytes) {
    return absl::InvalidArgumentError(fmt::format(
        "hybrid vsock: no newline within {} bytes of the connect request", kMaxConnectLineBytes));
  }
  return std::optional<size_t>();
}

}  // namespace cvmbus::paravisor::hvsocket
