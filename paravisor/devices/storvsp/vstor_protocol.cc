#include "paravisor/devices/storvsp/vstor_protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace cvmbus::paravisor::storvsp {
namespace {

uint32_t LoadU32(const uint8_t* at) {
  uint32_t value;
  std::memcpy(&value, at, sizeof(value));
  return value;
}

void StoreU32(uint8_t* at, uint32_t value) { std::memcpy(at, &value, sizeof(value)); }

}  // namespace

absl::StatusOr<VstorRequest> ParseVstorPacket(absl::Span<const uint8_t> packet) {
  if (packet.size() < kHeaderBytes) {
    return absl::InvalidArgumentError(
        fmt::format("storvsp: a {}-byte packet is shorter than the {}-byte VSTOR header",
                    packet.size(), kHeaderBytes));
  }
  VstorRequest request;
  request.operation = static_cast<VstorOperation>(LoadU32(packet.data()));
  request.flags = LoadU32(packet.data() + 4);
  request.status = LoadU32(packet.data() + 8);
  request.body_bytes = std::min(packet.size() - kHeaderBytes, kMaxBodyBytes);
  std::memcpy(request.body.data(), packet.data() + kHeaderBytes, request.body_bytes);
  return request;
}

std::vector<uint8_t> EncodeCompletion(uint32_t status, absl::Span<const uint8_t> body,
                                      size_t body_bytes) {
  body_bytes = std::min(body_bytes, kMaxBodyBytes);
  std::vector<uint8_t> packet(kHeaderBytes + body_bytes, 0);
  StoreU32(packet.data(), static_cast<uint32_t>(VstorOperation::kCompleteIo));
  StoreU32(packet.data() + 8, status);
  const size_t copied = std::min(body.size(), body_bytes);
  if (copied != 0) std::memcpy(packet.data() + kHeaderBytes, body.data(), copied);
  return packet;
}

std::array<uint8_t, 24> EncodeChannelProperties(const ChannelProperties& properties) {
  // reserved u32 @0, max_channel_cnt u16 @4, reserved u16 @6, flags u32 @8,
  // max_transfer_bytes u32 @12, reserved u64 @16.
  std::array<uint8_t, 24> bytes{};
  std::memcpy(bytes.data() + 4, &properties.max_channel_count, 2);
  StoreU32(bytes.data() + 8, properties.flags);
  StoreU32(bytes.data() + 12, properties.max_transfer_bytes);
  return bytes;
}

}  // namespace cvmbus::paravisor::storvsp
