#include "paravisor/bus/bus.h"

#include <fmt/format.h>

namespace cvmbus::paravisor {

std::string OfferKey::ToString() const {
  return fmt::format("{{{}}}-{{{}}}-{}", interface_id.ToString(), instance_id.ToString(),
                     subchannel_index);
}

absl::StatusOr<guestmem::GuestMemory> OfferResources::Get(bool use_private,
                                                          const char* what) const {
  if (!use_private) return untrusted_memory_;
  if (!private_memory_.has_value()) {
    return absl::FailedPreconditionError(
        fmt::format("offer resources: the open request asks for confidential {} but this bus "
                    "has no private memory (not a hardware-isolated VM)",
                    what));
  }
  return *private_memory_;
}

}  // namespace cvmbus::paravisor
