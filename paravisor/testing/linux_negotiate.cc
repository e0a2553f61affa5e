#include "paravisor/testing/linux_negotiate.h"

#include <cstring>

namespace cvmbus::paravisor::ic::testing {
namespace {

uint16_t Get16(const std::vector<uint8_t>& buf, size_t at) {
  uint16_t value = 0;
  if (at + 2 <= buf.size()) std::memcpy(&value, buf.data() + at, 2);
  return value;
}
void Put16(std::vector<uint8_t>& buf, size_t at, uint16_t value) {
  if (at + 2 <= buf.size()) std::memcpy(buf.data() + at, &value, 2);
}
IcVersion GetVersion(const std::vector<uint8_t>& buf, size_t at) {
  return IcVersion{Get16(buf, at), Get16(buf, at + 2)};
}

}  // namespace

LinuxNegotiation PrepareNegotiateResponse(std::vector<uint8_t>& buf, uint32_t recvlen,
                                          absl::Span<const IcVersion> fw_versions,
                                          absl::Span<const IcVersion> srv_versions) {
  constexpr size_t kNegotiate = kIcBodyOffset;  // &buf[ICMSG_HDR]
  constexpr size_t kVersionData = kNegotiate + sizeof(NegotiateMessage);
  LinuxNegotiation result;
  // "Check that there's enough space for icframe_vercnt, icmsg_vercnt".
  if (recvlen < kNegotiate + offsetof(NegotiateMessage, reserved)) return result;
  Put16(buf, kIcHeaderOffset + offsetof(IcMessageHeader, message_bytes), 0x10);
  const uint16_t icframe_vercnt = Get16(buf, kNegotiate);
  const uint16_t icmsg_vercnt = Get16(buf, kNegotiate + 2);
  IcVersion icframe{icframe_vercnt, 0};
  IcVersion icmsg{icmsg_vercnt, 0};
  bool found = false;
  const size_t packet_size = kVersionData + (size_t{icframe_vercnt} + icmsg_vercnt) * 4;
  if (icframe_vercnt <= kMaxNegotiateVersionCount && icmsg_vercnt <= kMaxNegotiateVersionCount &&
      packet_size <= recvlen) {
    for (const IcVersion& fw : fw_versions) {
      for (uint32_t j = 0; j < icframe_vercnt; ++j) {
        if (GetVersion(buf, kVersionData + 4 * j) == fw) {
          icframe = fw;
          found = true;
          break;
        }
      }
      if (found) break;
    }
    if (found) {
      found = false;
      for (const IcVersion& srv : srv_versions) {
        for (uint32_t j = icframe_vercnt; j < uint32_t{icframe_vercnt} + icmsg_vercnt; ++j) {
          if (GetVersion(buf, kVersionData + 4 * j) == srv) {
            icmsg = srv;
            found = true;
            break;
          }
        }
        if (found) break;
      }
    }
  }
  // fw_error:
  Put16(buf, kNegotiate, found ? 1 : 0);
  Put16(buf, kNegotiate + 2, found ? 1 : 0);
  Put16(buf, kVersionData, icframe.major);
  Put16(buf, kVersionData + 2, icframe.minor);
  Put16(buf, kVersionData + 4, icmsg.major);
  Put16(buf, kVersionData + 6, icmsg.minor);
  result.found = found;
  result.framework = icframe;
  result.message = icmsg;
  return result;
}

}  // namespace cvmbus::paravisor::ic::testing
