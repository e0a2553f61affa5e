// A ScsiRequest as a parsed EXECUTE_SRB would carry it, for the ScsiDisk tests.
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_SCSI_REQUEST_FOR_TEST_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_SCSI_REQUEST_FOR_TEST_H_

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "paravisor/devices/storvsp/srb.h"

namespace cvmbus::paravisor::storvsp {

// `cdb` with a buffer of `length` bytes moving in `direction` (none when `length` is 0).
inline ScsiRequest RequestForTest(std::initializer_list<uint8_t> cdb, uint32_t length,
                                  DataDirection direction) {
  ScsiRequest request;
  std::copy(cdb.begin(), cdb.end(), request.cdb.begin());
  request.cdb_length = static_cast<uint8_t>(cdb.size());
  request.data_transfer_length = length;
  request.direction = length == 0 ? DataDirection::kNone : direction;
  return request;
}

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_SCSI_REQUEST_FOR_TEST_H_
