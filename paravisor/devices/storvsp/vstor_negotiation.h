// The VSTOR channel's initialization, host side: the state machine a storvsp primary channel
// runs before it takes SCSI requests (../storvsp_protocol.md §3). Linux's order is
// BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION (newest first, until one is accepted),
// QUERY_PROPERTIES, END_INITIALIZATION, then CREATE_SUB_CHANNELS; Windows asks for
// subchannels before END_INITIALIZATION. Both are accepted.
//
// Every request is answered, errors included (Linux waits for each init completion, and a
// request out of order gets INVALID_DEVICE_STATE rather than silence). Pure: no I/O; the
// device sends the completion and acts on `create_subchannels`.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_VSTOR_NEGOTIATION_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_VSTOR_NEGOTIATION_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "paravisor/devices/storvsp/vstor_protocol.h"

namespace cvmbus::paravisor::storvsp {

struct NegotiationOptions {
  // Subchannels the guest may create (QUERY_PROPERTIES max_channel_cnt); 0: none, and the
  // multi-channel flag is not offered.
  uint16_t max_subchannels = 0;
  // The largest transfer one request may describe (QUERY_PROPERTIES max_transfer_bytes; Linux
  // derives max_sectors and its scatter list size from it, so it must be a non-zero multiple
  // of 4 KiB). OpenVMM's 256 KiB.
  uint32_t max_transfer_bytes = 256 * 1024;
};

class VstorNegotiation {
 public:
  enum class State {
    kAwaitingBegin,    // Nothing yet (or reset by the channel's close).
    kAwaitingVersion,  // BEGIN_INITIALIZATION done; no version accepted yet.
    kVersioned,        // A version accepted; QUERY_PROPERTIES and END_INITIALIZATION next.
    kReady,            // END_INITIALIZATION done: SCSI requests may flow.
  };
  struct Answer {
    std::vector<uint8_t> completion;             // Always present: send it.
    std::optional<uint16_t> create_subchannels;  // Offer this many subchannels.
  };

  explicit VstorNegotiation(NegotiationOptions options) : options_(options) {}

  // Answers one control request (any operation but EXECUTE_SRB, which the device handles once
  // ready(); before that it is answered here with INVALID_DEVICE_STATE too).
  Answer Handle(const VstorRequest& request);

  State state() const { return state_; }
  bool ready() const { return state_ == State::kReady; }
  // The accepted version; 0 before one is.
  uint16_t version() const { return version_; }
  // Whether the negotiated version carries the Win8 vmscsi_request (0x34 bytes) or the older
  // 0x24-byte one.
  bool win8_srb() const { return version_ >= kVersionWin8; }
  bool subchannels_created() const { return subchannels_created_; }
  // The channel closed (or the guest re-initializes, as on resume): start again.
  void Reset();
  // Servicing: takes up a saved state again. kInvalidArgument, naming what is wrong, for a
  // state that this machine could not have reached (an unknown state or version, a version
  // before one was accepted or none after, subchannels before a version).
  absl::Status Restore(State state, uint16_t version, bool subchannels_created);

 private:
  Answer Complete(uint32_t status, const VstorRequest& request,
                  absl::Span<const uint8_t> body = {});

  const NegotiationOptions options_;
  State state_ = State::kAwaitingBegin;
  uint16_t version_ = 0;
  bool subchannels_created_ = false;
};

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_VSTOR_NEGOTIATION_H_
