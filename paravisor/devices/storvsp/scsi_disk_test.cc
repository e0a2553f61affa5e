#include "paravisor/devices/storvsp/scsi_disk.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "paravisor/devices/storvsp/scsi_request_for_test.h"

namespace cvmbus::paravisor::storvsp {
namespace {

constexpr uint64_t kSectors = 0x200000;  // 1 GiB.

ScsiDisk Disk(bool read_only = false) {
  absl::StatusOr<ScsiDisk> disk = ScsiDisk::Create(
      {.sectors = kSectors, .read_only = read_only, .serial = "disk-7", .naa_id = 0x123456789});
  EXPECT_TRUE(disk.ok()) << disk.status();
  return *std::move(disk);
}

ScsiRequest Request(std::initializer_list<uint8_t> cdb, uint32_t length,
                    DataDirection direction = DataDirection::kFromDevice) {
  return RequestForTest(cdb, length, direction);
}

ScsiDisk::Immediate Answer(const ScsiDisk& disk, const ScsiRequest& request) {
  ScsiDisk::Outcome outcome = disk.Execute(request);
  EXPECT_TRUE(std::holds_alternative<ScsiDisk::Immediate>(outcome));
  return std::holds_alternative<ScsiDisk::Immediate>(outcome)
             ? std::get<ScsiDisk::Immediate>(outcome)
             : ScsiDisk::Immediate{};
}

// key/ASC/ASCQ of a CHECK CONDITION, or -1s if it is not one.
std::vector<int> Sense(const ScsiDisk::Immediate& answer) {
  if (answer.result.scsi_status != kScsiCheckCondition || answer.result.sense.size() < 14) {
    return {-1, -1, -1};
  }
  return {answer.result.sense[2], answer.result.sense[12], answer.result.sense[13]};
}

TEST(ScsiDiskTest, StandardInquiryIsAnSpc3MsftVirtualDisk) {
  const ScsiDisk disk = Disk();
  auto answer = Answer(disk, Request({0x12, 0, 0, 0, 36, 0}, 36));
  ASSERT_EQ(answer.data.size(), 36u);
  EXPECT_EQ(answer.result.srb_status, kSrbSuccess);
  EXPECT_EQ(answer.result.transferred, 36u);
  EXPECT_EQ(answer.data[0], 0x00);
  EXPECT_EQ(answer.data[2], 0x05);
  EXPECT_EQ(answer.data[4], 31);
  EXPECT_EQ(std::string(answer.data.begin() + 8, answer.data.begin() + 16), "Msft    ");
  EXPECT_EQ(std::string(answer.data.begin() + 16, answer.data.begin() + 32), "Virtual Disk    ");
  // Cut to the allocation length and to the buffer.
  EXPECT_EQ(Answer(disk, Request({0x12, 0, 0, 0, 5, 0}, 36)).data.size(), 5u);
  EXPECT_EQ(Answer(disk, Request({0x12, 0, 0, 0, 36, 0}, 10)).data.size(), 10u);
  // A page code without EVPD is an invalid field.
  EXPECT_EQ(Sense(Answer(disk, Request({0x12, 0, 0x80, 0, 36, 0}, 36))),
            (std::vector<int>{5, 0x24, 0}));
}

TEST(ScsiDiskTest, VpdPagesListSerialIdentifierAndLimits) {
  const ScsiDisk disk = Disk();
  auto list = Answer(disk, Request({0x12, 1, 0x00, 0, 255, 0}, 255));
  EXPECT_EQ(list.data, (std::vector<uint8_t>{0, 0x00, 0, 5, 0x00, 0x80, 0x83, 0xb0, 0xb1}));
  auto serial = Answer(disk, Request({0x12, 1, 0x80, 0, 255, 0}, 255));
  EXPECT_EQ(serial.data[1], 0x80);
  EXPECT_EQ(std::string(serial.data.begin() + 4, serial.data.end()), "disk-7");
  auto id = Answer(disk, Request({0x12, 1, 0x83, 0, 255, 0}, 255));
  ASSERT_EQ(id.data.size(), 16u);
  EXPECT_EQ(id.data[3], 12);
  EXPECT_EQ(id.data[5], 0x03);  // NAA designator, LUN association.
  EXPECT_EQ(id.data[8], 0x60);  // NAA 6 in the top nibble.
  EXPECT_EQ(id.data[15], 0x89);
  auto limits = Answer(disk, Request({0x12, 1, 0xb0, 0, 255, 0}, 255));
  ASSERT_EQ(limits.data.size(), 64u);
  EXPECT_EQ(limits.data[3], 0x3c);
  EXPECT_EQ(
      (limits.data[8] << 24) | (limits.data[9] << 16) | (limits.data[10] << 8) | limits.data[11],
      512);  // 256 KiB in blocks.
  auto characteristics = Answer(disk, Request({0x12, 1, 0xb1, 0, 255, 0}, 255));
  EXPECT_EQ(characteristics.data[5], 1);  // Non-rotating.
  EXPECT_EQ(Sense(Answer(disk, Request({0x12, 1, 0xb2, 0, 255, 0}, 255))),
            (std::vector<int>{5, 0x24, 0}));
}

TEST(ScsiDiskTest, ReadCapacityReportsTheLastLba) {
  const ScsiDisk disk = Disk();
  auto ten = Answer(disk, Request({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8));
  EXPECT_EQ(ten.data, (std::vector<uint8_t>{0x00, 0x1f, 0xff, 0xff, 0, 0, 0x02, 0}));
  auto sixteen = Answer(disk, Request({0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, 32));
  ASSERT_EQ(sixteen.data.size(), 32u);
  EXPECT_EQ(sixteen.data[5], 0x1f);
  EXPECT_EQ(sixteen.data[7], 0xff);
  EXPECT_EQ(sixteen.data[10], 0x02);
  // Another service action of 0x9e is not ours.
  EXPECT_EQ(Sense(Answer(disk, Request({0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32}, 32))),
            (std::vector<int>{5, 0x24, 0}));
}

TEST(ScsiDiskTest, ModeSenseCachingPageHasWriteCacheEnabled) {
  const ScsiDisk disk = Disk();
  auto six = Answer(disk, Request({0x1a, 0, 0x08, 0, 255, 0}, 255));
  ASSERT_EQ(six.data.size(), 24u);
  EXPECT_EQ(six.data[0], 23);    // Mode data length.
  EXPECT_EQ(six.data[2], 0x10);  // DPOFUA, not write protected.
  EXPECT_EQ(six.data[4], 0x08);
  EXPECT_EQ(six.data[5], 0x12);
  EXPECT_EQ(six.data[6], 0x04);  // WCE.
  auto all = Answer(disk, Request({0x1a, 0, 0x3f, 0, 255, 0}, 255));
  EXPECT_EQ(all.data.size(), 24u);
  auto ten = Answer(disk, Request({0x5a, 0, 0x08, 0, 0, 0, 0, 0, 255, 0}, 255));
  ASSERT_EQ(ten.data.size(), 28u);
  EXPECT_EQ(ten.data[1], 26);
  EXPECT_EQ(ten.data[8], 0x08);
  auto changeable = Answer(disk, Request({0x1a, 0, 0x48, 0, 255, 0}, 255));
  EXPECT_EQ(changeable.data[6], 0);  // Nothing is changeable.
  EXPECT_EQ(Sense(Answer(disk, Request({0x1a, 0, 0xc8, 0, 255, 0}, 255))),
            (std::vector<int>{5, 0x39, 0}));  // Saved values.
  EXPECT_EQ(Sense(Answer(disk, Request({0x1a, 0, 0x0a, 0, 255, 0}, 255))),
            (std::vector<int>{5, 0x24, 0}));
  auto read_only = Answer(Disk(true), Request({0x1a, 0, 0x08, 0, 255, 0}, 255));
  EXPECT_EQ(read_only.data[2], 0x90);  // WP.
}

TEST(ScsiDiskTest, ReportLunsListsLunZero) {
  const ScsiDisk disk = Disk();
  auto luns = Answer(disk, Request({0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, 4096));
  EXPECT_EQ(luns.data, (std::vector<uint8_t>{0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(Sense(Answer(disk, Request({0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, 8))),
            (std::vector<int>{5, 0x24, 0}));
}

TEST(ScsiDiskTest, ReadsAndWritesBecomeTransfers) {
  const ScsiDisk disk = Disk();
  auto read = disk.Execute(Request({0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0}, 4096));
  ASSERT_TRUE(std::holds_alternative<ScsiDisk::Transfer>(read));
  EXPECT_EQ(std::get<ScsiDisk::Transfer>(read).offset, 0x1234u * 512);
  EXPECT_EQ(std::get<ScsiDisk::Transfer>(read).bytes, 4096u);
  EXPECT_FALSE(std::get<ScsiDisk::Transfer>(read).write);
  auto write = disk.Execute(Request({0x8a, 0x08, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xf8, 0, 0, 0, 8, 0, 0},
                                    4096, DataDirection::kToDevice));
  ASSERT_TRUE(std::holds_alternative<ScsiDisk::Transfer>(write));
  EXPECT_EQ(std::get<ScsiDisk::Transfer>(write).offset, (kSectors - 8) * 512);
  EXPECT_TRUE(std::get<ScsiDisk::Transfer>(write).write);
  EXPECT_TRUE(std::get<ScsiDisk::Transfer>(write).force_unit_access);
  auto six = disk.Execute(Request({0x08, 0, 0, 1, 0, 0}, 256 * 512));  // 0 blocks = 256.
  ASSERT_TRUE(std::holds_alternative<ScsiDisk::Transfer>(six));
  EXPECT_EQ(std::get<ScsiDisk::Transfer>(six).bytes, 256u * 512);
  EXPECT_TRUE(std::holds_alternative<ScsiDisk::Flush>(
      disk.Execute(Request({0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))));
  // Zero blocks: nothing to move.
  auto none = Answer(disk, Request({0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0));
  EXPECT_EQ(none.result.srb_status, kSrbSuccess);
}

TEST(ScsiDiskTest, BadReadsAndWritesAreRefusedWithSense) {
  const ScsiDisk disk = Disk();
  // Past the end (the last 8 blocks are fine; one more is not), and an LBA that would wrap.
  EXPECT_EQ(Sense(Answer(
                disk, Request({0x88, 0, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xf9, 0, 0, 0, 8, 0, 0}, 4096))),
            (std::vector<int>{5, 0x21, 0}));
  EXPECT_EQ(Sense(Answer(disk, Request({0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
                                        0, 0, 8, 0, 0},
                                       4096))),
            (std::vector<int>{5, 0x21, 0}));
  // More blocks than the buffer holds, the wrong direction, more than the transfer limit.
  EXPECT_EQ(Sense(Answer(disk, Request({0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0}, 4096))),
            (std::vector<int>{5, 0x24, 0}));
  EXPECT_EQ(Sense(Answer(disk, Request({0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0}, 4096))),
            (std::vector<int>{5, 0x24, 0}));
  EXPECT_EQ(Sense(Answer(disk, Request({0x28, 0, 0, 0, 0, 0, 0, 0x02, 0x01, 0}, 1u << 20))),
            (std::vector<int>{5, 0x24, 0}));
  // A write to a read-only disk.
  EXPECT_EQ(Sense(Answer(Disk(true), Request({0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0}, 4096,
                                             DataDirection::kToDevice))),
            (std::vector<int>{7, 0x27, 0}));
}

TEST(ScsiDiskTest, UnknownCommandsAreInvalidOpcodes) {
  const ScsiDisk disk = Disk();
  // REPORT SUPPORTED OPERATION CODES (older Linux sends it), UNMAP, WRITE SAME(16).
  for (const uint8_t opcode : {0xa3, 0x42, 0x93}) {
    EXPECT_EQ(Sense(Answer(disk, Request({opcode, 0x0c}, 0))), (std::vector<int>{5, 0x20, 0}))
        << "opcode " << int{opcode};
  }
  for (const uint8_t opcode : {0x00, 0x1b, 0x1e}) {  // TUR, START STOP, PREVENT ALLOW.
    EXPECT_EQ(Answer(disk, Request({opcode}, 0)).result.srb_status, kSrbSuccess);
  }
}

TEST(ScsiDiskTest, CreateRefusesBadOptions) {
  EXPECT_EQ(ScsiDisk::Create({.sectors = 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ScsiDisk::Create({.sectors = 8, .max_transfer_bytes = 1000}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ScsiDisk::Create({.sectors = 8, .serial = std::string(256, 'x')}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
