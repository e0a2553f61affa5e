// IC version negotiation, host side. The host speaks first on every open channel: one
// ICMSGTYPE_NEGOTIATE request listing the framework versions and the service's message
// versions it supports; the guest answers with the one pair it chose (Linux:
// vmbus_prep_negotiate_resp picks, for each list, its own newest version the host also
// listed) or with empty lists when nothing matched. Pure: no I/O.
#ifndef CVMBUS_PARAVISOR_DEVICES_IC_IC_NEGOTIATION_H_
#define CVMBUS_PARAVISOR_DEVICES_IC_IC_NEGOTIATION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/devices/ic/ic_message.h"
#include "paravisor/devices/ic/ic_protocol.h"

namespace cvmbus::paravisor::ic {

// The framework versions the host offers on every IC (Hyper-V's, in OpenVMM's order).
inline constexpr IcVersion kHostFrameworkVersions[] = {kFrameworkVersion1, kFrameworkVersion3};

// What the host offers: both lists non-empty and at most kMaxNegotiateVersionCount long.
struct NegotiateOffer {
  absl::Span<const IcVersion> framework_versions;
  absl::Span<const IcVersion> message_versions;
};

// The NEGOTIATE request's payload (header versions 0.0, as Hyper-V sends before agreeing).
// Precondition (our own constants): the offer is valid; CHECKed.
std::vector<uint8_t> BuildNegotiateRequest(const NegotiateOffer& offer);

// Parses the guest's answer to BuildNegotiateRequest(offer) from the packet's private copy.
// Errors (IcError): those of ParseIcResponse; kTooShort (no icmsg_negotiate, or fewer version
// bytes than the counts say); kBadVersionCount (a count over 100, or counts other than 1 and
// 1); kNoCommonVersion (0 and 0: Linux's "no match"); kUnofferedVersion (a version that is not
// in the offer); kBadBody (a failure status).
absl::StatusOr<IcVersions> ParseNegotiateResponse(absl::Span<const uint8_t> untrusted_payload,
                                                  const NegotiateOffer& offer);

}  // namespace cvmbus::paravisor::ic

#endif  // CVMBUS_PARAVISOR_DEVICES_IC_IC_NEGOTIATION_H_
