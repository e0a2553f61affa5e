#include "paravisor/devices/hvsocket/hvsocket_protocol.h"

#include <fmt/format.h>

#include <cstring>

namespace cvmbus::paravisor::hvsocket {

absl::StatusOr<PipeData> ParsePipePacket(const ring::Packet& packet) {
  if (packet.type != ring::PacketType::kDataInBand) {
    return absl::InvalidArgumentError(fmt::format("hvsocket packet: type {:#x}, not in-band",
                                                  static_cast<uint16_t>(packet.type)));
  }
  if (packet.payload.size() < sizeof(PipeHeader)) {
    return absl::InvalidArgumentError(fmt::format(
        "hvsocket packet: {} payload bytes, less than the pipe header", packet.payload.size()));
  }
  PipeHeader header;
  std::memcpy(&header, packet.payload.data(), sizeof(header));
  if (header.packet_type != kPipePacketData) {
    return absl::InvalidArgumentError(
        fmt::format("hvsocket packet: pipe type {:#x}, not data", header.packet_type));
  }
  const size_t room = packet.payload.size() - sizeof(PipeHeader);
  if (header.data_size > room || header.data_size > kMtuBytes) {
    return absl::InvalidArgumentError(
        fmt::format("hvsocket packet: data_size {} in a payload of {} bytes (MTU {})",
                    header.data_size, room, kMtuBytes));
  }
  return PipeData{packet.payload.subspan(sizeof(PipeHeader), header.data_size)};
}

}  // namespace cvmbus::paravisor::hvsocket
