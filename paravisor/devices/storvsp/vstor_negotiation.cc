#include "paravisor/devices/storvsp/vstor_negotiation.h"

#include <fmt/format.h>

#include <cstring>

namespace cvmbus::paravisor::storvsp {
namespace {

// The versions we accept: Linux 6.x offers Win10, Win8.1, Win8 (in that order), older Linux
// also Win7 and Win6. Win10 is refused as OpenVMM refuses it, so Linux settles on Win8.1, the
// version whose behaviour (SCSI level, WRITE SAME) OpenVMM and Hyper-V hosts are known to match.
bool Accepted(uint16_t version) {
  return version == kVersionWin8_1 || version == kVersionWin8 || version == kVersionWin7 ||
         version == kVersionWin6;
}

}  // namespace

void VstorNegotiation::Reset() {
  state_ = State::kAwaitingBegin;
  version_ = 0;
  subchannels_created_ = false;
}

absl::Status VstorNegotiation::Restore(State state, uint16_t version, bool subchannels_created) {
  const bool versioned = state == State::kVersioned || state == State::kReady;
  if (state != State::kAwaitingBegin && state != State::kAwaitingVersion && !versioned) {
    return absl::InvalidArgumentError(
        fmt::format("vstor: saved state {} is not a state", static_cast<int>(state)));
  }
  if (versioned != (version != 0) || (version != 0 && !Accepted(version))) {
    return absl::InvalidArgumentError(fmt::format(
        "vstor: saved version {:#x} does not fit state {}", version, static_cast<int>(state)));
  }
  if (subchannels_created && !versioned) {
    return absl::InvalidArgumentError("vstor: saved subchannels before a version was accepted");
  }
  state_ = state;
  version_ = version;
  subchannels_created_ = subchannels_created;
  return absl::OkStatus();
}

VstorNegotiation::Answer VstorNegotiation::Complete(uint32_t status, const VstorRequest& request,
                                                    absl::Span<const uint8_t> body) {
  // Echo the request's body where no other is given (OpenVMM echoes the version field), sized
  // as the request was.
  const absl::Span<const uint8_t> echoed =
      body.empty() ? absl::MakeConstSpan(request.body.data(), request.body_bytes) : body;
  return Answer{EncodeCompletion(status, echoed, request.body_bytes), std::nullopt};
}

VstorNegotiation::Answer VstorNegotiation::Handle(const VstorRequest& request) {
  switch (request.operation) {
    case VstorOperation::kBeginInitialization:
      // Also a restart from any state: a guest that resumes from hibernation begins again on
      // a channel it reopened, and Reset() has run; one that begins twice starts over.
      Reset();
      state_ = State::kAwaitingVersion;
      return Complete(kNtSuccess, request);

    case VstorOperation::kQueryProtocolVersion: {
      if (state_ != State::kAwaitingVersion) return Complete(kNtInvalidDeviceState, request);
      if (request.body_bytes < 2) return Complete(kNtInvalidParameter, request);
      uint16_t offered;
      std::memcpy(&offered, request.body.data(), sizeof(offered));
      if (!Accepted(offered)) return Complete(kNtRevisionMismatch, request);
      version_ = offered;
      state_ = State::kVersioned;
      return Complete(kNtSuccess, request);
    }

    case VstorOperation::kQueryProperties: {
      if (state_ != State::kVersioned) return Complete(kNtInvalidDeviceState, request);
      const std::array<uint8_t, 24> properties = EncodeChannelProperties(
          {.max_channel_count = options_.max_subchannels,
           .flags = options_.max_subchannels > 0 ? kSupportsMultiChannel : 0u,
           .max_transfer_bytes = options_.max_transfer_bytes});
      return Complete(kNtSuccess, request, properties);
    }

    case VstorOperation::kEndInitialization:
      if (state_ != State::kVersioned) return Complete(kNtInvalidDeviceState, request);
      state_ = State::kReady;
      return Complete(kNtSuccess, request);

    case VstorOperation::kCreateSubChannels: {
      // Windows asks before END_INITIALIZATION, Linux after it; once per initialization.
      if (state_ != State::kVersioned && state_ != State::kReady) {
        return Complete(kNtInvalidDeviceState, request);
      }
      uint16_t count = 0;
      if (request.body_bytes >= 2) std::memcpy(&count, request.body.data(), sizeof(count));
      if (count == 0 || count > options_.max_subchannels || subchannels_created_) {
        return Complete(kNtInvalidParameter, request);
      }
      subchannels_created_ = true;
      Answer answer = Complete(kNtSuccess, request);
      answer.create_subchannels = count;
      return answer;
    }

    case VstorOperation::kResetBus:
    case VstorOperation::kResetAdapter:
    case VstorOperation::kResetLun:
      // Nothing of ours to reset: requests in flight finish normally, which is what Linux
      // waits for after the completion.
      if (state_ != State::kReady) return Complete(kNtInvalidDeviceState, request);
      return Complete(kNtSuccess, request);

    case VstorOperation::kExecuteSrb:
      return Complete(kNtInvalidDeviceState, request);  // Before END_INITIALIZATION.

    case VstorOperation::kCompleteIo:
    case VstorOperation::kRemoveDevice:
    case VstorOperation::kEnumerateBus:
    case VstorOperation::kFcHbaData:  // Fibre Channel: not offered.
      break;
  }
  return Complete(kNtInvalidDeviceRequest, request);  // Not a request a guest may make.
}

}  // namespace cvmbus::paravisor::storvsp
