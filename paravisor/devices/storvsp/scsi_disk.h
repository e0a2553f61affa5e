// ScsiDisk: the SCSI commands a Linux disk driver (sd, the SCSI scan) sends to a Hyper-V disk,
// answered for one LUN of a fixed size (../storvsp_protocol.md §6). Pure: commands that
// return device data are answered here, with the bytes to copy into the guest's buffer;
// reads, writes and flushes come back as a Transfer or Flush for the device to run against
// its backing (io_uring, straight between the backing and the guest's pages).
//
// Everything else gets CHECK CONDITION with fixed-format sense: ILLEGAL REQUEST / INVALID
// COMMAND OPERATION CODE (5/20/00) for commands we do not implement (Linux before 6.x sends
// REPORT SUPPORTED OPERATION CODES), INVALID FIELD IN CDB (5/24/00), LOGICAL BLOCK ADDRESS
// OUT OF RANGE (5/21/00), WRITE PROTECTED (7/27/00).
#ifndef CVMBUS_PARAVISOR_DEVICES_STORVSP_SCSI_DISK_H_
#define CVMBUS_PARAVISOR_DEVICES_STORVSP_SCSI_DISK_H_

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "paravisor/devices/storvsp/srb.h"

namespace cvmbus::paravisor::storvsp {

struct DiskOptions {
  uint64_t sectors = 0;  // Capacity in 512-byte logical blocks (> 0).
  bool read_only = false;
  // VPD 0x80 (unit serial number) and the NAA identifier of VPD 0x83 come from these.
  std::string serial = "cvmbus";
  uint64_t naa_id = 0;  // The low 60 bits of an NAA type 6 identifier.
  // The largest transfer (QUERY_PROPERTIES max_transfer_bytes), reported in VPD 0xB0. Linux
  // issues requests up to this size (max_sectors = bytes / 512). OpenVMM's 256 KiB by default;
  // at most kMaxTransferLimit, which bounds the pages one request pins.
  uint32_t max_transfer_bytes = 256 * 1024;
  // The backing can deallocate blocks (BlockBackend::can_discard): the disk reports logical
  // block provisioning (READ CAPACITY 16 LBPME and LBPRZ, VPD 0xB2 with LBPU, UNMAP limits in
  // VPD 0xB0), so Linux's sd picks its "unmap" discard mode, and takes UNMAP.
  bool unmap = false;
};

class ScsiDisk {
 public:
  static constexpr uint32_t kSectorBytes = 512;
  static constexpr uint32_t kMaxTransferLimit = 8u << 20;

  // Answered now: the status and the bytes to copy into the guest's buffer (already cut to
  // the allocation length and the request's data_transfer_length; result.transferred is
  // data.size()).
  struct Immediate {
    SrbResult result;
    std::vector<uint8_t> data;
  };
  // Move `bytes` between the guest's buffer and the backing at byte `offset`; then, if
  // `force_unit_access`, make the write durable before completing.
  struct Transfer {
    uint64_t offset = 0;
    uint32_t bytes = 0;
    bool write = false;
    bool force_unit_access = false;
  };
  struct Flush {};  // SYNCHRONIZE CACHE: make every completed write durable.
  // UNMAP: read `parameter_bytes` of its parameter list from the guest's buffer and hand them
  // to ParseUnmap.
  struct Unmap {
    uint32_t parameter_bytes = 0;
  };
  using Outcome = std::variant<Immediate, Transfer, Flush, Unmap>;
  // Byte ranges of the disk to deallocate.
  struct ByteRange {
    uint64_t offset = 0;
    uint64_t bytes = 0;
  };
  // UNMAP's limits (VPD 0xB0): block descriptors per command, blocks per descriptor.
  static constexpr uint32_t kMaxUnmapDescriptors = 16;
  static constexpr uint32_t kMaxUnmapBlocks = 1u << 23;  // 4 GiB.

  // Errors (kInvalidArgument, naming the field): no sectors, a max_transfer_bytes that is
  // not a non-zero multiple of 4 KiB, a serial longer than 255 bytes.
  static absl::StatusOr<ScsiDisk> Create(DiskOptions options);

  // Executes `request`'s CDB. A request whose buffer is too small for its transfer, or that
  // moves data in the wrong direction, is refused (INVALID FIELD IN CDB).
  Outcome Execute(const ScsiRequest& request) const;

  // An UNMAP parameter list (SBC-3 5.28.2) as copied from the guest: the ranges, or the
  // CHECK CONDITION that refuses it (a list shorter than its header, more descriptors than
  // the limit, a descriptor past the end of the disk or over the block limit).
  std::variant<std::vector<ByteRange>, SrbResult> ParseUnmap(
      absl::Span<const uint8_t> parameters) const;

  // What a successful Transfer or Flush completes with.
  static SrbResult Done(uint32_t transferred);
  // CHECK CONDITION with fixed-format sense (key, ASC, ASCQ).
  static SrbResult CheckCondition(uint8_t key, uint8_t asc, uint8_t ascq);

  const DiskOptions& options() const { return options_; }

 private:
  Outcome Inquiry(const ScsiRequest& request) const;
  Outcome ModeSense(const ScsiRequest& request, bool ten_byte) const;
  Outcome ReadWrite(const ScsiRequest& request, uint64_t lba, uint32_t blocks, bool write,
                    bool fua) const;
  Immediate Data(const ScsiRequest& request, std::vector<uint8_t> data,
                 uint32_t allocation_length) const;

  explicit ScsiDisk(DiskOptions options) : options_(std::move(options)) {}

  DiskOptions options_;
};

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_DEVICES_STORVSP_SCSI_DISK_H_
