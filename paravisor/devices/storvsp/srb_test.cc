#include "paravisor/devices/storvsp/srb.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace cvmbus::paravisor::storvsp {
namespace {

// An EXECUTE_SRB as Linux 6.x's storvsc_queuecommand fills it (64 bytes), for READ(10) of
// 8 blocks at LBA 0x1234 on (path 1, target 0, lun 3).
std::vector<uint8_t> LinuxRead10(size_t bytes = 64) {
  std::vector<uint8_t> packet(bytes, 0);
  const uint32_t op = static_cast<uint32_t>(VstorOperation::kExecuteSrb);
  std::memcpy(packet.data(), &op, 4);
  std::memcpy(packet.data() + 4, &kRequestCompletionFlag, 4);
  uint8_t* srb = packet.data() + kHeaderBytes;
  const uint16_t length = bytes == 64 ? 0x34 : 0x24;
  std::memcpy(srb, &length, 2);
  srb[4] = 2;     // port_number (the guest's host number)
  srb[5] = 1;     // path_id
  srb[6] = 0;     // target_id
  srb[7] = 3;     // lun
  srb[8] = 10;    // cdb_length
  srb[9] = 0x14;  // sense_info_length
  srb[10] = 1;    // data_in: READ_TYPE
  const uint32_t transfer = 8 * 512;
  std::memcpy(srb + 0x0c, &transfer, 4);
  const uint8_t cdb[10] = {0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0};
  std::memcpy(srb + 0x10, cdb, sizeof(cdb));
  if (bytes == 64) {
    srb[0x26] = 0xff;  // queue_tag: SP_UNTAGGED
    srb[0x27] = 0x20;  // queue_action: SRB_SIMPLE_TAG_REQUEST
    const uint32_t flags = 0x08 | 0x02 | 0x100 | 0x40;
    std::memcpy(srb + 0x28, &flags, 4);
    const uint32_t timeout = 60;
    std::memcpy(srb + 0x2c, &timeout, 4);
  }
  return packet;
}

ScsiRequest Parse(const std::vector<uint8_t>& packet) {
  absl::StatusOr<VstorRequest> request = ParseVstorPacket(packet);
  EXPECT_TRUE(request.ok());
  absl::StatusOr<ScsiRequest> srb = ParseScsiRequest(*request);
  EXPECT_TRUE(srb.ok()) << srb.status();
  return srb.ok() ? *srb : ScsiRequest{};
}

TEST(SrbTest, ParsesLinuxsRequestFieldByField) {
  const ScsiRequest srb = Parse(LinuxRead10());
  EXPECT_EQ(srb.port_number, 2);
  EXPECT_EQ(srb.path_id, 1);
  EXPECT_EQ(srb.target_id, 0);
  EXPECT_EQ(srb.lun, 3);
  EXPECT_EQ(srb.cdb_length, 10);
  EXPECT_EQ(srb.sense_info_length, 0x14);
  EXPECT_EQ(srb.direction, DataDirection::kFromDevice);
  EXPECT_EQ(srb.data_transfer_length, 4096u);
  EXPECT_EQ(srb.cdb[0], 0x28);
  EXPECT_EQ(srb.cdb[5], 0x34);
  EXPECT_EQ(srb.cdb[10], 0);
  EXPECT_EQ(srb.queue_tag, 0xff);
  EXPECT_EQ(srb.queue_action, 0x20);
  EXPECT_EQ(srb.srb_flags, 0x14au);
  EXPECT_EQ(srb.time_out_value, 60u);
}

// Before Win8 the request is 0x24 bytes (no extension): the extension reads as zeros.
TEST(SrbTest, APreWin8RequestHasNoExtension) {
  const ScsiRequest srb = Parse(LinuxRead10(48));
  EXPECT_EQ(srb.data_transfer_length, 4096u);
  EXPECT_EQ(srb.cdb[0], 0x28);
  EXPECT_EQ(srb.queue_tag, 0);
  EXPECT_EQ(srb.srb_flags, 0u);
}

TEST(SrbTest, MalformedRequestsAreErrorsNamingTheField) {
  std::vector<uint8_t> packet = LinuxRead10();
  packet[kHeaderBytes + 10] = 3;  // data_in
  absl::StatusOr<ScsiRequest> srb = ParseScsiRequest(*ParseVstorPacket(packet));
  EXPECT_EQ(srb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(srb.status().message().find("data_in 3"), std::string::npos);

  packet = LinuxRead10();
  packet[kHeaderBytes + 8] = 17;  // cdb_length
  srb = ParseScsiRequest(*ParseVstorPacket(packet));
  EXPECT_NE(srb.status().message().find("cdb_length 17"), std::string::npos);

  packet = LinuxRead10();
  packet[kHeaderBytes + 10] = 2;  // No data, yet a length.
  srb = ParseScsiRequest(*ParseVstorPacket(packet));
  EXPECT_NE(srb.status().message().find("data_transfer_length of 4096"), std::string::npos);

  packet = LinuxRead10();
  packet[0] = static_cast<uint8_t>(VstorOperation::kQueryProperties);
  srb = ParseScsiRequest(*ParseVstorPacket(packet));
  EXPECT_NE(srb.status().message().find("not EXECUTE_SRB"), std::string::npos);

  // A read of zero bytes is a valid request.
  packet = LinuxRead10();
  std::memset(packet.data() + kHeaderBytes + 0x0c, 0, 4);
  EXPECT_TRUE(ParseScsiRequest(*ParseVstorPacket(packet)).ok());
}

uint32_t U32At(const std::vector<uint8_t>& bytes, size_t offset) {
  uint32_t value = 0;
  std::memcpy(&value, bytes.data() + offset, 4);
  return value;
}

// Success: srb_status exactly 0x01 (no autosense bit, which would cost Linux the residual),
// the bytes moved, the NTSTATUS 0, as long as the request.
TEST(SrbTest, ASuccessCarriesTheBytesMovedAndNoAutosense) {
  const std::vector<uint8_t> completion =
      EncodeSrbCompletion({.srb_status = kSrbSuccess, .transferred = 1536}, 0x34);
  ASSERT_EQ(completion.size(), 64u);
  EXPECT_EQ(U32At(completion, 0), static_cast<uint32_t>(VstorOperation::kCompleteIo));
  EXPECT_EQ(U32At(completion, 4), 0u);
  EXPECT_EQ(U32At(completion, 8), kNtSuccess);
  const uint8_t* srb = completion.data() + kHeaderBytes;
  EXPECT_EQ(srb[0], 0x34);
  EXPECT_EQ(srb[2], kSrbSuccess);
  EXPECT_EQ(srb[3], kScsiGood);
  EXPECT_EQ(srb[8], 16);
  EXPECT_EQ(srb[9], 0);
  EXPECT_EQ(U32At(completion, kHeaderBytes + 0x0c), 1536u);
  EXPECT_EQ(EncodeSrbCompletion({}, 0x24).size(), 48u);  // A pre-Win8 request's size.
}

// CHECK CONDITION: autosense valid, the sense where the CDB was, its length; the NTSTATUS of
// the SRB status.
TEST(SrbTest, ACheckConditionCarriesItsSense) {
  const std::vector<uint8_t> sense = FixedSense(0x05, 0x21, 0x00);  // LBA out of range.
  ASSERT_EQ(sense.size(), 18u);
  EXPECT_EQ(sense[0], 0x70);
  EXPECT_EQ(sense[2], 0x05);
  EXPECT_EQ(sense[7], 10);
  EXPECT_EQ(sense[12], 0x21);
  const std::vector<uint8_t> completion = EncodeSrbCompletion(
      {.srb_status = kSrbError, .scsi_status = kScsiCheckCondition, .sense = sense}, 0x34);
  const uint8_t* srb = completion.data() + kHeaderBytes;
  EXPECT_EQ(srb[2], kSrbError | kSrbAutosenseValid);
  EXPECT_EQ(srb[3], kScsiCheckCondition);
  EXPECT_EQ(srb[9], 18);
  EXPECT_EQ(std::memcmp(srb + 0x10, sense.data(), sense.size()), 0);
  EXPECT_EQ(U32At(completion, 8), 0xC0000185u);
  // Sense longer than the slot is cut to 20 bytes.
  const std::vector<uint8_t> long_sense(30, 0x77);
  const std::vector<uint8_t> cut = EncodeSrbCompletion(
      {.srb_status = kSrbError, .scsi_status = kScsiCheckCondition, .sense = long_sense}, 0x34);
  EXPECT_EQ(cut[kHeaderBytes + 9], kMaxSenseBytes);
  EXPECT_EQ(cut[kHeaderBytes + 0x10 + kMaxSenseBytes], 0) << "sense spilled past its slot";
}

TEST(SrbTest, NtStatusFollowsTheSrbStatus) {
  EXPECT_EQ(NtStatusForSrb(kSrbSuccess), kNtSuccess);
  EXPECT_EQ(NtStatusForSrb(kSrbDataOverrun), 0x80000005u);
  EXPECT_EQ(NtStatusForSrb(kSrbInvalidLun), 0xC00000C0u);
  EXPECT_EQ(NtStatusForSrb(kSrbInvalidLun | kSrbAutosenseValid), 0xC00000C0u);
  EXPECT_EQ(NtStatusForSrb(kSrbAborted), 0xC0000120u);
  EXPECT_EQ(NtStatusForSrb(kSrbInvalidRequest), kNtInvalidDeviceRequest);
  EXPECT_EQ(NtStatusForSrb(kSrbError), 0xC0000185u);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
