#include "paravisor/devices/storvsp/srb.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace cvmbus::paravisor::storvsp {
namespace {

// vmscsi_request offsets within the body (§4.1).
constexpr size_t kLength = 0x00;
constexpr size_t kSrbStatus = 0x02;
constexpr size_t kScsiStatus = 0x03;
constexpr size_t kPortNumber = 0x04;
constexpr size_t kPathId = 0x05;
constexpr size_t kTargetId = 0x06;
constexpr size_t kLun = 0x07;
constexpr size_t kCdbLength = 0x08;
constexpr size_t kSenseInfoLength = 0x09;
constexpr size_t kDataIn = 0x0a;
constexpr size_t kDataTransferLength = 0x0c;
constexpr size_t kCdbOrSense = 0x10;
constexpr size_t kQueueTag = 0x26;
constexpr size_t kQueueAction = 0x27;
constexpr size_t kSrbFlags = 0x28;
constexpr size_t kTimeOutValue = 0x2c;

uint32_t LoadU32(const uint8_t* at) {
  uint32_t value;
  std::memcpy(&value, at, sizeof(value));
  return value;
}

}  // namespace

absl::StatusOr<ScsiRequest> ParseScsiRequest(const VstorRequest& request) {
  if (request.operation != VstorOperation::kExecuteSrb) {
    return absl::InvalidArgumentError(fmt::format("storvsp: operation {} is not EXECUTE_SRB",
                                                  static_cast<uint32_t>(request.operation)));
  }
  const uint8_t* body = request.body.data();  // Our copy, zero-extended: read each field once.
  ScsiRequest srb;
  srb.port_number = body[kPortNumber];
  srb.path_id = body[kPathId];
  srb.target_id = body[kTargetId];
  srb.lun = body[kLun];
  srb.cdb_length = body[kCdbLength];
  srb.sense_info_length = body[kSenseInfoLength];
  const uint8_t data_in = body[kDataIn];
  srb.data_transfer_length = LoadU32(body + kDataTransferLength);
  std::memcpy(srb.cdb.data(), body + kCdbOrSense, srb.cdb.size());
  srb.queue_tag = body[kQueueTag];
  srb.queue_action = body[kQueueAction];
  srb.srb_flags = LoadU32(body + kSrbFlags);
  srb.time_out_value = LoadU32(body + kTimeOutValue);
  if (data_in > static_cast<uint8_t>(DataDirection::kNone)) {
    return absl::InvalidArgumentError(
        fmt::format("storvsp: data_in {} is not a direction (0 write, 1 read, 2 none)", data_in));
  }
  srb.direction = static_cast<DataDirection>(data_in);
  if (srb.cdb_length > srb.cdb.size()) {
    return absl::InvalidArgumentError(
        fmt::format("storvsp: cdb_length {} is over 16", srb.cdb_length));
  }
  if (srb.direction == DataDirection::kNone && srb.data_transfer_length != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "storvsp: no data direction but a data_transfer_length of {}", srb.data_transfer_length));
  }
  return srb;
}

std::vector<uint8_t> FixedSense(uint8_t key, uint8_t asc, uint8_t ascq) {
  std::vector<uint8_t> sense(18, 0);
  sense[0] = 0x70;  // Current error, fixed format.
  sense[2] = key & 0x0f;
  sense[7] = 10;  // Additional sense length: bytes 8..17.
  sense[12] = asc;
  sense[13] = ascq;
  return sense;
}

uint32_t NtStatusForSrb(uint8_t srb_status) {
  switch (srb_status & 0x3f) {
    case kSrbSuccess:
      return kNtSuccess;
    case kSrbDataOverrun:
      return 0x80000005;  // STATUS_BUFFER_OVERFLOW
    case kSrbInvalidLun:
      return 0xC00000C0;  // STATUS_DEVICE_DOES_NOT_EXIST
    case kSrbAborted:
      return 0xC0000120;  // STATUS_CANCELLED
    case kSrbInvalidRequest:
      return kNtInvalidDeviceRequest;
    default:
      return 0xC0000185;  // STATUS_IO_DEVICE_ERROR
  }
}

std::vector<uint8_t> EncodeSrbCompletion(const SrbResult& result, size_t body_bytes) {
  std::array<uint8_t, kMaxBodyBytes> body{};
  const uint16_t length = kMaxBodyBytes;
  std::memcpy(body.data() + kLength, &length, sizeof(length));
  const size_t sense_bytes = std::min(result.sense.size(), kMaxSenseBytes);
  body[kSrbStatus] =
      static_cast<uint8_t>(result.srb_status | (sense_bytes != 0 ? kSrbAutosenseValid : 0));
  body[kScsiStatus] = result.scsi_status;
  body[kCdbLength] = 16;
  body[kSenseInfoLength] = static_cast<uint8_t>(sense_bytes);
  std::memcpy(body.data() + kDataTransferLength, &result.transferred, sizeof(result.transferred));
  if (sense_bytes != 0) std::memcpy(body.data() + kCdbOrSense, result.sense.data(), sense_bytes);
  return EncodeCompletion(NtStatusForSrb(result.srb_status), body, body_bytes);
}

}  // namespace cvmbus::paravisor::storvsp
