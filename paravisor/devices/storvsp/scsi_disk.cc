#include "paravisor/devices/storvsp/scsi_disk.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace cvmbus::paravisor::storvsp {
namespace {

// Operation codes (SBC-3, SPC-4).
constexpr uint8_t kTestUnitReady = 0x00;
constexpr uint8_t kRequestSense = 0x03;
constexpr uint8_t kRead6 = 0x08;
constexpr uint8_t kWrite6 = 0x0a;
constexpr uint8_t kInquiry = 0x12;
constexpr uint8_t kModeSense6 = 0x1a;
constexpr uint8_t kStartStopUnit = 0x1b;
constexpr uint8_t kPreventAllowRemoval = 0x1e;
constexpr uint8_t kReadCapacity10 = 0x25;
constexpr uint8_t kRead10 = 0x28;
constexpr uint8_t kWrite10 = 0x2a;
constexpr uint8_t kVerify10 = 0x2f;
constexpr uint8_t kUnmap = 0x42;
constexpr uint8_t kSynchronizeCache10 = 0x35;
constexpr uint8_t kModeSense10 = 0x5a;
constexpr uint8_t kRead16 = 0x88;
constexpr uint8_t kWrite16 = 0x8a;
constexpr uint8_t kSynchronizeCache16 = 0x91;
constexpr uint8_t kServiceActionIn16 = 0x9e;
constexpr uint8_t kReadCapacity16Action = 0x10;
constexpr uint8_t kReportLuns = 0xa0;

// Sense keys and additional sense codes.
constexpr uint8_t kIllegalRequest = 0x05;
constexpr uint8_t kDataProtect = 0x07;
constexpr uint8_t kInvalidOpcode = 0x20;
constexpr uint8_t kLbaOutOfRange = 0x21;
constexpr uint8_t kInvalidFieldInCdb = 0x24;
constexpr uint8_t kWriteProtected = 0x27;
constexpr uint8_t kSavingNotSupported = 0x39;
constexpr uint8_t kParameterListLengthError = 0x1a;
constexpr uint8_t kInvalidFieldInParameterList = 0x26;

uint32_t Be16(const uint8_t* at) { return uint32_t{at[0]} << 8 | at[1]; }
uint32_t Be32(const uint8_t* at) { return Be16(at) << 16 | Be16(at + 2); }
uint64_t Be64(const uint8_t* at) { return uint64_t{Be32(at)} << 32 | Be32(at + 4); }
void PutBe16(uint8_t* at, uint32_t value) {
  at[0] = static_cast<uint8_t>(value >> 8);
  at[1] = static_cast<uint8_t>(value);
}
void PutBe32(uint8_t* at, uint32_t value) {
  PutBe16(at, value >> 16);
  PutBe16(at + 2, value & 0xffff);
}
void PutBe64(uint8_t* at, uint64_t value) {
  PutBe32(at, static_cast<uint32_t>(value >> 32));
  PutBe32(at + 4, static_cast<uint32_t>(value));
}
void PutText(uint8_t* at, size_t width, const std::string& text) {  // Space-padded ASCII.
  std::memset(at, ' ', width);
  std::memcpy(at, text.data(), std::min(width, text.size()));
}

// Appends `n` bytes (resize + memcpy: GCC 12 at -O2 misreads vector::insert into a small
// vector as out of bounds, -Warray-bounds).
void Append(std::vector<uint8_t>& data, const void* bytes, size_t n) {
  const size_t at = data.size();
  data.resize(at + n);
  if (n != 0) std::memcpy(data.data() + at, bytes, n);
}

// VPD pages we have, in the order VPD 0x00 lists them (0xb2 only with unmap).
constexpr uint8_t kVpdPages[] = {0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2};

}  // namespace

absl::StatusOr<ScsiDisk> ScsiDisk::Create(DiskOptions options) {
  if (options.sectors == 0) return absl::InvalidArgumentError("scsi disk: sectors is 0");
  if (options.max_transfer_bytes == 0 || options.max_transfer_bytes % 4096 != 0 ||
      options.max_transfer_bytes > kMaxTransferLimit) {
    return absl::InvalidArgumentError(
        fmt::format("scsi disk: max_transfer_bytes {} is not a non-zero multiple of 4096 up to {}",
                    options.max_transfer_bytes, kMaxTransferLimit));
  }
  if (options.serial.size() > 255) {
    return absl::InvalidArgumentError(
        fmt::format("scsi disk: a {}-byte serial is over 255 bytes", options.serial.size()));
  }
  return ScsiDisk(std::move(options));
}

SrbResult ScsiDisk::Done(uint32_t transferred) {
  return SrbResult{.srb_status = kSrbSuccess, .scsi_status = kScsiGood, .transferred = transferred};
}

SrbResult ScsiDisk::CheckCondition(uint8_t key, uint8_t asc, uint8_t ascq) {
  return SrbResult{.srb_status = kSrbError,
                   .scsi_status = kScsiCheckCondition,
                   .transferred = 0,
                   .sense = FixedSense(key, asc, ascq)};
}

ScsiDisk::Immediate ScsiDisk::Data(const ScsiRequest& request, std::vector<uint8_t> data,
                                   uint32_t allocation_length) const {
  // Only as much as the guest asked for and gave room for, and only into a buffer meant for it.
  size_t bytes = std::min<size_t>({data.size(), allocation_length, request.data_transfer_length});
  if (request.direction != DataDirection::kFromDevice) bytes = 0;
  data.resize(bytes);
  return Immediate{Done(static_cast<uint32_t>(bytes)), std::move(data)};
}

ScsiDisk::Outcome ScsiDisk::Execute(const ScsiRequest& request) const {
  const uint8_t* cdb = request.cdb.data();
  switch (cdb[0]) {
    case kTestUnitReady:
    case kStartStopUnit:
    case kPreventAllowRemoval:
    case kVerify10:  // Our medium needs no verifying (BYTCHK 0: no data is sent).
      return Immediate{Done(0), {}};
    case kRequestSense:  // Nothing pending: NO SENSE.
      return Data(request, FixedSense(0, 0, 0), cdb[4]);
    case kInquiry:
      return Inquiry(request);
    case kModeSense6:
      return ModeSense(request, /*ten_byte=*/false);
    case kModeSense10:
      return ModeSense(request, /*ten_byte=*/true);
    case kReadCapacity10: {
      std::vector<uint8_t> data(8);
      PutBe32(data.data(),
              static_cast<uint32_t>(std::min<uint64_t>(options_.sectors - 1, 0xffffffff)));
      PutBe32(data.data() + 4, kSectorBytes);
      return Data(request, std::move(data), 8);
    }
    case kServiceActionIn16: {
      if ((cdb[1] & 0x1f) != kReadCapacity16Action) {
        return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
      }
      std::vector<uint8_t> data(32, 0);  // No protection, 1 logical block per physical.
      PutBe64(data.data(), options_.sectors - 1);
      PutBe32(data.data() + 8, kSectorBytes);
      if (options_.unmap) data[14] = 0x80 | 0x40;  // LBPME, LBPRZ.
      return Data(request, std::move(data), Be32(cdb + 10));
    }
    case kReportLuns: {
      const uint32_t allocation = Be32(cdb + 6);
      if (allocation < 16) {  // SPC-4 6.33: less than 16 is an invalid field.
        return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
      }
      std::vector<uint8_t> data(16, 0);  // One LUN, 0 (the device answers for the others).
      PutBe32(data.data(), 8);
      return Data(request, std::move(data), allocation);
    }
    case kRead6:
    case kWrite6: {
      const uint64_t lba = (uint64_t{cdb[1] & 0x1fu} << 16) | Be16(cdb + 2);
      const uint32_t blocks = cdb[4] == 0 ? 256 : cdb[4];  // SBC-3: 0 means 256.
      return ReadWrite(request, lba, blocks, cdb[0] == kWrite6, false);
    }
    case kRead10:
    case kWrite10:
      return ReadWrite(request, Be32(cdb + 2), Be16(cdb + 7), cdb[0] == kWrite10,
                       (cdb[1] & 0x08) != 0);
    case kRead16:
    case kWrite16:
      return ReadWrite(request, Be64(cdb + 2), Be32(cdb + 10), cdb[0] == kWrite16,
                       (cdb[1] & 0x08) != 0);
    case kSynchronizeCache10:
    case kSynchronizeCache16:
      return Flush{};
    case kUnmap: {
      if (!options_.unmap) return Immediate{CheckCondition(kIllegalRequest, kInvalidOpcode, 0), {}};
      if (options_.read_only)
        return Immediate{CheckCondition(kDataProtect, kWriteProtected, 0), {}};
      const uint32_t length = Be16(cdb + 7);
      if (length == 0) return Immediate{Done(0), {}};  // SBC-3: not an error.
      if (length < 8) {
        return Immediate{CheckCondition(kIllegalRequest, kParameterListLengthError, 0), {}};
      }
      if (length > request.data_transfer_length || request.direction != DataDirection::kToDevice ||
          (cdb[1] & 0x01) != 0 /* ANCHOR: no anchored state here */) {
        return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
      }
      return Unmap{.parameter_bytes = length};
    }
    default:
      return Immediate{CheckCondition(kIllegalRequest, kInvalidOpcode, 0), {}};
  }
}

ScsiDisk::Outcome ScsiDisk::Inquiry(const ScsiRequest& request) const {
  const uint8_t* cdb = request.cdb.data();
  const bool evpd = (cdb[1] & 0x01) != 0;
  const uint8_t page = cdb[2];
  const uint32_t allocation = Be16(cdb + 3);
  if (!evpd) {
    if (page != 0) return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
    std::vector<uint8_t> data(36, 0);
    data[0] = 0x00;  // Connected direct-access block device.
    data[2] = 0x05;  // SPC-3.
    data[3] = 0x02;  // Response data format 2.
    data[4] = 36 - 5;
    data[7] = 0x02;                // CMDQUE.
    PutText(&data[8], 8, "Msft");  // Linux keys its Hyper-V disk settings on this vendor.
    PutText(&data[16], 16, "Virtual Disk");
    PutText(&data[32], 4, "1.0");
    return Data(request, std::move(data), allocation);
  }
  std::vector<uint8_t> data(4, 0);
  data[1] = page;
  switch (page) {
    case 0x00:
      Append(data, kVpdPages, sizeof(kVpdPages) - (options_.unmap ? 0 : 1));
      break;
    case 0x80:  // Unit serial number.
      Append(data, options_.serial.data(), options_.serial.size());
      break;
    case 0x83: {  // Device identification: one NAA designator for the LUN.
      const uint8_t designator[4] = {0x01 /* binary */, 0x03 /* LUN, NAA */, 0, 8};
      Append(data, designator, sizeof(designator));
      uint8_t naa[8];
      PutBe64(naa, (uint64_t{6} << 60) | (options_.naa_id & ((uint64_t{1} << 60) - 1)));
      Append(data, naa, sizeof(naa));
      break;
    }
    case 0xb0: {  // Block limits: transfers up to max_transfer_bytes; UNMAP's limits.
      data.resize(4 + 0x3c, 0);
      const uint32_t blocks = options_.max_transfer_bytes / kSectorBytes;
      PutBe32(&data[8], blocks);   // Maximum transfer length.
      PutBe32(&data[12], blocks);  // Optimal transfer length.
      if (options_.unmap) {
        PutBe32(&data[20], kMaxUnmapBlocks);       // Maximum unmap LBA count.
        PutBe32(&data[24], kMaxUnmapDescriptors);  // Maximum unmap block descriptor count.
        PutBe32(&data[28], 4096 / kSectorBytes);   // Optimal unmap granularity: a page.
      }
      break;
    }
    case 0xb2:  // Logical block provisioning: UNMAP (LBPU), unmapped blocks read as zeros.
      if (!options_.unmap) {
        return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
      }
      data.resize(8, 0);
      data[5] = 0x80 | 0x04;  // LBPU, LBPRZ (provisioning group descriptor: none).
      data[6] = 0x02;         // Thin provisioned.
      break;
    case 0xb1:  // Block device characteristics: non-rotating medium.
      data.resize(4 + 0x3c, 0);
      PutBe16(&data[4], 1);
      break;
    default:
      return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
  }
  PutBe16(&data[2], static_cast<uint32_t>(data.size() - 4));
  return Data(request, std::move(data), allocation);
}

ScsiDisk::Outcome ScsiDisk::ModeSense(const ScsiRequest& request, bool ten_byte) const {
  const uint8_t* cdb = request.cdb.data();
  const uint8_t page = cdb[2] & 0x3f;
  const uint8_t control = cdb[2] >> 6;  // 0 current, 1 changeable, 2 default, 3 saved.
  const uint32_t allocation = ten_byte ? Be16(cdb + 7) : cdb[4];
  if (control == 3) return Immediate{CheckCondition(kIllegalRequest, kSavingNotSupported, 0), {}};
  if (page != 0x08 && page != 0x3f) {
    return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
  }
  // The caching page: write cache enabled (so Linux sends SYNCHRONIZE CACHE, which our Flush
  // makes durable); no bit is changeable.
  uint8_t caching[20] = {0x08, 0x12};
  if (control != 1) caching[2] = 0x04;  // WCE.
  const size_t header = ten_byte ? 8 : 4;
  std::vector<uint8_t> data(header, 0);
  Append(data, caching, sizeof(caching));
  // Device-specific parameter: write protect, and DPOFUA (we honour FUA).
  const uint8_t device_specific = static_cast<uint8_t>((options_.read_only ? 0x80 : 0) | 0x10);
  if (ten_byte) {
    PutBe16(&data[0], static_cast<uint32_t>(data.size() - 2));
    data[3] = device_specific;
  } else {
    data[0] = static_cast<uint8_t>(data.size() - 1);
    data[2] = device_specific;
  }
  return Data(request, std::move(data), allocation);
}

std::variant<std::vector<ScsiDisk::ByteRange>, SrbResult> ScsiDisk::ParseUnmap(
    absl::Span<const uint8_t> parameters) const {
  if (parameters.size() < 8) return CheckCondition(kIllegalRequest, kParameterListLengthError, 0);
  // Descriptors the header announces, cut to what the list holds (SBC-3: a partial one is
  // ignored).
  const size_t announced = Be16(parameters.data() + 2) / 16;
  const size_t count = std::min(announced, (parameters.size() - 8) / 16);
  if (count > kMaxUnmapDescriptors) {
    return CheckCondition(kIllegalRequest, kInvalidFieldInParameterList, 0);
  }
  std::vector<ByteRange> ranges;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* descriptor = parameters.data() + 8 + 16 * i;
    const uint64_t lba = Be64(descriptor);
    const uint32_t blocks = Be32(descriptor + 8);
    if (blocks > kMaxUnmapBlocks) {
      return CheckCondition(kIllegalRequest, kInvalidFieldInParameterList, 0);
    }
    if (lba > options_.sectors || blocks > options_.sectors - lba) {
      return CheckCondition(kIllegalRequest, kLbaOutOfRange, 0);
    }
    if (blocks != 0) {
      ranges.push_back({.offset = lba * kSectorBytes, .bytes = uint64_t{blocks} * kSectorBytes});
    }
  }
  return ranges;
}

ScsiDisk::Outcome ScsiDisk::ReadWrite(const ScsiRequest& request, uint64_t lba, uint32_t blocks,
                                      bool write, bool fua) const {
  if (lba > options_.sectors || blocks > options_.sectors - lba) {
    return Immediate{CheckCondition(kIllegalRequest, kLbaOutOfRange, 0), {}};
  }
  if (write && options_.read_only) {
    return Immediate{CheckCondition(kDataProtect, kWriteProtected, 0), {}};
  }
  if (blocks == 0) return Immediate{Done(0), {}};  // SBC-3: nothing to move, not an error.
  const uint64_t bytes = uint64_t{blocks} * kSectorBytes;
  const DataDirection wanted = write ? DataDirection::kToDevice : DataDirection::kFromDevice;
  if (bytes > options_.max_transfer_bytes || bytes > request.data_transfer_length ||
      request.direction != wanted) {
    // The CDB asks for more than the request's buffer holds (or the other way).
    return Immediate{CheckCondition(kIllegalRequest, kInvalidFieldInCdb, 0), {}};
  }
  return Transfer{.offset = lba * kSectorBytes,
                  .bytes = static_cast<uint32_t>(bytes),
                  .write = write,
                  .force_unit_access = fua};
}

}  // namespace cvmbus::paravisor::storvsp
