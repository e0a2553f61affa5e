// The host side of the "hybrid vsock" convention of Firecracker (docs/vsock.md), which
// OpenVMM's hvsocket relay follows:
//   - A guest that connects to vsock port P reaches the host program listening on the Unix
//     socket "<base>_<P>".
//   - A host program that wants a guest's port P connects to the Unix socket "<base>", writes
//     the line "CONNECT <P>\n" and, once the guest accepted, reads "OK <port>\n", where <port>
//     is the host end's port as the guest sees it; every byte after that is the stream.
// The CONNECT line comes from an untrusted host program: it is parsed with a length limit.
#ifndef CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HYBRID_VSOCK_H_
#define CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HYBRID_VSOCK_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace cvmbus::paravisor::hvsocket {

// The longest CONNECT line accepted, newline included ("CONNECT 4294967295\n" is 19 bytes;
// OpenVMM's limit, which also admits a service GUID, is 45).
inline constexpr size_t kMaxConnectLineBytes = 64;

// "<base>_<port>".
std::string HostSocketPath(std::string_view base, uint32_t port);

// Parses the line without its newline: "CONNECT" (any case, as OpenVMM), one space, then a
// decimal port of 1 to 10 digits that fits 32 bits; nothing else. kInvalidArgument otherwise.
absl::StatusOr<uint32_t> ParseConnectLine(std::string_view line);

// "OK <port>\n".
std::string OkLine(uint32_t port);

// Finds the first line in `bytes`: its length without the newline, or nullopt if no newline
// came yet. kInvalidArgument once `bytes` holds kMaxConnectLineBytes without a newline.
absl::StatusOr<std::optional<size_t>> FindConnectLine(std::string_view bytes);

}  // namespace cvmbus::paravisor::hvsocket

#endif  // CVMBUS_PARAVISOR_DEVICES_HVSOCKET_HYBRID_VSOCK_H_
