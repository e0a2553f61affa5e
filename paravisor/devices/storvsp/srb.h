// EXECUTE_SRB: the vmscsi_request a guest sends (a SCSI command, its target, its data
// direction and length) and the completion the host answers with (SRB and SCSI status, bytes
// moved, sense data). ../storvsp_protocol.md §4 and §8.7.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/devices/storvsp/vstor_protocol.h"

namespace cvmbus::paravisor::storvsp {

// SRB status codes (the low 6 bits of srb_status; §4.2).
inline constexpr uint8_t kSrbSuccess = 0x01;
inline constexpr uint8_t kSrbAborted = 0x02;
inline constexpr uint8_t kSrbError = 0x04;
inline constexpr uint8_t kSrbInvalidRequest = 0x06;
inline constexpr uint8_t kSrbDataOverrun = 0x12;
inline constexpr uint8_t kSrbInvalidLun = 0x20;
// srb_status bit: sense data is valid (set only with CHECK CONDITION: on a success Linux would
// take it for an error and drop the residual).
inline constexpr uint8_t kSrbAutosenseValid = 0x80;

// SAM status codes.
inline constexpr uint8_t kScsiGood = 0x00;
inline constexpr uint8_t kScsiCheckCondition = 0x02;
inline constexpr uint8_t kScsiBusy = 0x08;

// The data direction (vmscsi_request.data_in).
enum class DataDirection : uint8_t { kToDevice = 0, kFromDevice = 1, kNone = 2 };

// Sense data fits the 20-byte union slot the CDB shares.
inline constexpr size_t kMaxSenseBytes = 0x14;

struct ScsiRequest {
  uint8_t port_number = 0;
  uint8_t path_id = 0;
  uint8_t target_id = 0;
  uint8_t lun = 0;
  uint8_t cdb_length = 0;
  uint8_t sense_info_length = 0;  // How much sense the guest can take.
  DataDirection direction = DataDirection::kNone;
  uint32_t data_transfer_length = 0;
  std::array<uint8_t, 16> cdb{};
  // The Win8 extension (zero before Win8).
  uint8_t queue_tag = 0;
  uint8_t queue_action = 0;
  uint32_t srb_flags = 0;
  uint32_t time_out_value = 0;
};

// Parses the vmscsi_request in an EXECUTE_SRB request (its body, zero-extended: a pre-Win8
// guest sends 0x24 bytes). Errors (kInvalidArgument, naming the field): not EXECUTE_SRB, a data
// direction other than 0..2, a CDB length over 16, no data direction but a non-zero length.
// (A direction with a length of 0 is valid: a READ of 0 blocks.)
absl::StatusOr<ScsiRequest> ParseScsiRequest(const VstorRequest& request);

// What the device did with a request.
struct SrbResult {
  uint8_t srb_status = kSrbSuccess;  // Without kSrbAutosenseValid: added when sense is given.
  uint8_t scsi_status = kScsiGood;
  uint32_t transferred = 0;    // Bytes moved (for a short transfer: SUCCESS with this count).
  std::vector<uint8_t> sense;  // At most kMaxSenseBytes; only with CHECK CONDITION.
};

// Fixed-format sense data (SPC-4 4.5.3), 18 bytes: current error, key, ASC, ASCQ.
std::vector<uint8_t> FixedSense(uint8_t key, uint8_t asc, uint8_t ascq);

// The packet NTSTATUS a completion carries for an SRB status (§4.3, as OpenVMM maps it; Linux
// only logs it).
uint32_t NtStatusForSrb(uint8_t srb_status);

// The EXECUTE_SRB completion: COMPLETE_IO with the vmscsi_request's result fields (length
// 0x34, srb and SCSI status, sense length and the sense in the CDB's slot, the bytes moved,
// CDB length 16; the rest zero) in a body of `body_bytes` (the request's: completions mirror
// their request's size). Sense is cut to kMaxSenseBytes.
std::vector<uint8_t> EncodeSrbCompletion(const SrbResult& result, size_t body_bytes);

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_SRB_H_
