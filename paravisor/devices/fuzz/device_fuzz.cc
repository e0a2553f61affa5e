// libFuzzer target for the device request parsers a guest feeds: the IC answers (ParseIcResponse,
// ParseNegotiateResponse), the hvsocket pipe framing (ParsePipePacket), the relay's CONNECT line
// from a host program (FindConnectLine, ParseConnectLine), and storvsp's VSTOR packets with the
// SCSI request and GPA-direct buffer of an EXECUTE_SRB (ParseVstorPacket, ParseScsiRequest,
// SrbBufferOf), and UNMAP's parameter list (ScsiDisk::ParseUnmap). The first input byte picks
// the parser, the rest is its untrusted input.
//
// Besides ASan/UBSan findings, each accepted parse is checked against the rule it promises
// (the data within the payload, a port in range, a buffer no longer than its pages), and a
// violation aborts.
//
//   paravisor/devices/fuzz/build_fuzzer.sh /tmp/device_fuzz && /tmp/device_fuzz CORPUS
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <variant>
#include <vector>

#include "paravisor/devices/hvsocket/hvsocket_protocol.h"
#include "paravisor/devices/hvsocket/hybrid_vsock.h"
#include "paravisor/devices/ic/ic_message.h"
#include "paravisor/devices/ic/ic_negotiation.h"
#include "paravisor/devices/storvsp/scsi_disk.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/srb_buffer.h"
#include "paravisor/devices/storvsp/vstor_protocol.h"
#include "ring/packet.h"

namespace cvmbus::paravisor {
namespace {

void Check(bool holds) {
  if (!holds) std::abort();
}

bool Within(absl::Span<const uint8_t> inner, absl::Span<const uint8_t> outer) {
  return inner.empty() || (inner.data() >= outer.data() &&
                           inner.data() + inner.size() <= outer.data() + outer.size());
}

void FuzzIc(absl::Span<const uint8_t> input) {
  if (input.size() < 2) return;
  uint16_t type = 0;
  std::memcpy(&type, input.data(), 2);
  const absl::Span<const uint8_t> payload = input.subspan(2);
  absl::StatusOr<ic::IcResponse> response = ic::ParseIcResponse(payload, type);
  if (response.ok()) Check(payload.size() <= ic::kMaxIcPayloadBytes);
  constexpr ic::IcVersion kMessages[] = {ic::kShutdownVersion1, ic::kShutdownVersion3};
  absl::StatusOr<ic::IcVersions> versions = ic::ParseNegotiateResponse(
      payload, {.framework_versions = ic::kHostFrameworkVersions, .message_versions = kMessages});
  if (versions.ok()) {
    Check(versions->framework == ic::kFrameworkVersion1 ||
          versions->framework == ic::kFrameworkVersion3);
    Check(versions->message == ic::kShutdownVersion1 || versions->message == ic::kShutdownVersion3);
  }
}

void FuzzPipe(absl::Span<const uint8_t> input) {
  if (input.empty()) return;
  ring::Packet packet;
  packet.type = static_cast<ring::PacketType>(input[0] % 4 == 0 ? 6 : input[0]);
  packet.payload = input.subspan(1);
  absl::StatusOr<hvsocket::PipeData> data = hvsocket::ParsePipePacket(packet);
  if (data.ok()) {
    Check(Within(data->data, packet.payload));
    Check(data->data.size() <= hvsocket::kMtuBytes);
  }
}

void FuzzConnectLine(absl::Span<const uint8_t> input) {
  const std::string_view bytes(reinterpret_cast<const char*>(input.data()), input.size());
  absl::StatusOr<std::optional<size_t>> end = hvsocket::FindConnectLine(bytes);
  if (end.ok() && end->has_value()) Check(**end <= bytes.size());
  (void)hvsocket::ParseConnectLine(bytes);
}

void FuzzVstor(absl::Span<const uint8_t> input) {
  if (input.size() < 9) return;
  // Header bytes: the GPA-direct range's byte count and offset, then the packet.
  uint32_t byte_count = 0, byte_offset = 0;
  std::memcpy(&byte_count, input.data(), 4);
  std::memcpy(&byte_offset, input.data() + 4, 4);
  const uint32_t pages = input[8] % 8;
  const absl::Span<const uint8_t> body = input.subspan(9);
  absl::StatusOr<storvsp::VstorRequest> request = storvsp::ParseVstorPacket(body);
  if (!request.ok()) return;
  Check(request->body_bytes <= request->body.size());
  absl::StatusOr<storvsp::ScsiRequest> scsi = storvsp::ParseScsiRequest(*request);
  if (!scsi.ok()) return;
  std::vector<uint64_t> gpns(pages);
  for (uint32_t i = 0; i < pages; ++i) gpns[i] = 0x100 + i;
  ring::Packet packet;
  packet.type = ring::PacketType::kDataUsingGpaDirect;
  packet.payload = body;
  packet.gpa_ranges.push_back(
      ring::GpaRange{.byte_count = byte_count, .byte_offset = byte_offset, .gpns = gpns});
  absl::StatusOr<std::optional<storvsp::SrbBuffer>> buffer =
      storvsp::SrbBufferOf(packet, byte_count, 1u << 20);
  if (buffer.ok() && buffer->has_value()) {
    const storvsp::SrbBuffer& b = **buffer;
    Check(b.offset < 4096);
    Check(uint64_t{b.offset} + b.length <= uint64_t{b.gpns.size()} * 4096);
    Check(b.gpns.size() <= gpns.size());
  }
}

// An UNMAP parameter list (the guest's data-out buffer) against a disk whose size the first
// four bytes pick: every accepted range lies inside the disk and within the limits.
void FuzzUnmap(absl::Span<const uint8_t> input) {
  if (input.size() < 4) return;
  uint32_t sectors = 0;
  std::memcpy(&sectors, input.data(), 4);
  absl::StatusOr<storvsp::ScsiDisk> disk =
      storvsp::ScsiDisk::Create({.sectors = uint64_t{sectors} + 1, .unmap = true});
  Check(disk.ok());
  auto parsed = disk->ParseUnmap(input.subspan(4));
  if (const auto* ranges = std::get_if<std::vector<storvsp::ScsiDisk::ByteRange>>(&parsed)) {
    Check(ranges->size() <= storvsp::ScsiDisk::kMaxUnmapDescriptors);
    const uint64_t disk_bytes = (uint64_t{sectors} + 1) * storvsp::ScsiDisk::kSectorBytes;
    for (const storvsp::ScsiDisk::ByteRange& range : *ranges) {
      Check(range.bytes > 0 && range.offset <= disk_bytes &&
            range.bytes <= disk_bytes - range.offset);
      Check(range.bytes <= uint64_t{storvsp::ScsiDisk::kMaxUnmapBlocks} * 512);
    }
  }
}

}  // namespace
}  // namespace cvmbus::paravisor

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::Span<const uint8_t> input(data + 1, size - 1);
  switch (data[0] % 5) {
    case 0:
      cvmbus::paravisor::FuzzIc(input);
      break;
    case 1:
      cvmbus::paravisor::FuzzPipe(input);
      break;
    case 2:
      cvmbus::paravisor::FuzzConnectLine(input);
      break;
    case 3:
      cvmbus::paravisor::FuzzVstor(input);
      break;
    default:
      cvmbus::paravisor::FuzzUnmap(input);
      break;
  }
  return 0;
}
