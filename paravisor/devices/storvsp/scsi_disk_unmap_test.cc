// Logical block provisioning as Linux's sd reads it (sd_read_capacity's LBPME, VPD 0xB0's UNMAP
// limits, VPD 0xB2's LBPU, which make sd choose its "unmap" discard mode) and the UNMAP
// command with its parameter list (SBC-3 5.28), on a disk whose backing can discard.
#include <gtest/gtest.h>

#include <initializer_list>
#include <variant>
#include <vector>

#include "paravisor/devices/storvsp/scsi_disk.h"
#include "paravisor/devices/storvsp/scsi_request_for_test.h"

namespace cvmbus::paravisor::storvsp {
namespace {

constexpr uint64_t kSectors = 0x200000;  // 1 GiB.

ScsiDisk Disk(bool unmap, bool read_only = false) {
  absl::StatusOr<ScsiDisk> disk =
      ScsiDisk::Create({.sectors = kSectors, .read_only = read_only, .unmap = unmap});
  EXPECT_TRUE(disk.ok()) << disk.status();
  return *std::move(disk);
}

ScsiRequest Request(std::initializer_list<uint8_t> cdb, uint32_t length, DataDirection direction) {
  return RequestForTest(cdb, length, direction);
}

std::vector<uint8_t> Data(const ScsiDisk& disk, std::initializer_list<uint8_t> cdb,
                          uint32_t length) {
  ScsiDisk::Outcome outcome = disk.Execute(Request(cdb, length, DataDirection::kFromDevice));
  const auto* answer = std::get_if<ScsiDisk::Immediate>(&outcome);
  EXPECT_NE(answer, nullptr);
  return answer != nullptr ? answer->data : std::vector<uint8_t>{};
}

// key/ASC of a CHECK CONDITION, or -1s.
std::vector<int> Sense(const SrbResult& result) {
  if (result.scsi_status != kScsiCheckCondition || result.sense.size() < 14) return {-1, -1};
  return {result.sense[2], result.sense[12]};
}

uint32_t Be32(const uint8_t* at) {
  return uint32_t{at[0]} << 24 | uint32_t{at[1]} << 16 | uint32_t{at[2]} << 8 | at[3];
}

// An UNMAP parameter list with these (lba, blocks) descriptors.
std::vector<uint8_t> Parameters(std::initializer_list<std::pair<uint64_t, uint32_t>> ranges) {
  std::vector<uint8_t> list(8 + 16 * ranges.size(), 0);
  const size_t descriptors = 16 * ranges.size();
  list[0] = static_cast<uint8_t>((list.size() - 2) >> 8);
  list[1] = static_cast<uint8_t>(list.size() - 2);
  list[2] = static_cast<uint8_t>(descriptors >> 8);
  list[3] = static_cast<uint8_t>(descriptors);
  size_t at = 8;
  for (const auto& [lba, blocks] : ranges) {
    for (int i = 0; i < 8; ++i) list[at + i] = static_cast<uint8_t>(lba >> (56 - 8 * i));
    for (int i = 0; i < 4; ++i) list[at + 8 + i] = static_cast<uint8_t>(blocks >> (24 - 8 * i));
    at += 16;
  }
  return list;
}

TEST(ScsiDiskUnmapTest, ADiskThatCanDiscardReportsProvisioningAsSdReadsIt) {
  const ScsiDisk disk = Disk(/*unmap=*/true);
  const std::vector<uint8_t> capacity =
      Data(disk, {0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, 32);
  ASSERT_EQ(capacity.size(), 32u);
  EXPECT_EQ(capacity[14], 0xc0);  // LBPME, LBPRZ.
  const std::vector<uint8_t> pages = Data(disk, {0x12, 1, 0x00, 0, 255, 0}, 255);
  EXPECT_EQ(std::vector<uint8_t>(pages.begin() + 4, pages.end()),
            (std::vector<uint8_t>{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}));
  const std::vector<uint8_t> limits = Data(disk, {0x12, 1, 0xb0, 0, 64, 0}, 64);
  ASSERT_EQ(limits.size(), 64u);
  EXPECT_EQ(Be32(&limits[20]), ScsiDisk::kMaxUnmapBlocks);
  EXPECT_EQ(Be32(&limits[24]), ScsiDisk::kMaxUnmapDescriptors);
  EXPECT_EQ(Be32(&limits[28]), 8u);
  const std::vector<uint8_t> provisioning = Data(disk, {0x12, 1, 0xb2, 0, 8, 0}, 8);
  ASSERT_EQ(provisioning.size(), 8u);
  EXPECT_EQ(provisioning[5], 0x84);  // LBPU, LBPRZ.
}

TEST(ScsiDiskUnmapTest, ADiskThatCannotHasNoneOfIt) {
  const ScsiDisk disk = Disk(/*unmap=*/false);
  const std::vector<uint8_t> capacity =
      Data(disk, {0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, 32);
  EXPECT_EQ(capacity[14], 0);
  EXPECT_EQ(Data(disk, {0x12, 1, 0x00, 0, 255, 0}, 255).size(), 4u + 5);
  EXPECT_EQ(Be32(&Data(disk, {0x12, 1, 0xb0, 0, 64, 0}, 64)[20]), 0u);
  ScsiDisk::Outcome unmap =
      disk.Execute(Request({0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, DataDirection::kToDevice));
  ASSERT_TRUE(std::holds_alternative<ScsiDisk::Immediate>(unmap));
  EXPECT_EQ(Sense(std::get<ScsiDisk::Immediate>(unmap).result), (std::vector<int>{5, 0x20}));
}

TEST(ScsiDiskUnmapTest, TheCommandAsksForItsParameterListOrIsRefused) {
  const ScsiDisk disk = Disk(/*unmap=*/true);
  ScsiDisk::Outcome ok =
      disk.Execute(Request({0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, DataDirection::kToDevice));
  ASSERT_TRUE(std::holds_alternative<ScsiDisk::Unmap>(ok));
  EXPECT_EQ(std::get<ScsiDisk::Unmap>(ok).parameter_bytes, 24u);
  const auto refused = [&](const ScsiDisk& on, std::initializer_list<uint8_t> cdb, uint32_t length,
                           DataDirection direction) {
    ScsiDisk::Outcome outcome = on.Execute(Request(cdb, length, direction));
    const auto* answer = std::get_if<ScsiDisk::Immediate>(&outcome);
    return answer == nullptr ? std::vector<int>{-2, -2} : Sense(answer->result);
  };
  // Shorter than its header: PARAMETER LIST LENGTH ERROR.
  EXPECT_EQ(refused(disk, {0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0}, 24, DataDirection::kToDevice),
            (std::vector<int>{5, 0x1a}));
  // More than the buffer holds, or a buffer the wrong way: INVALID FIELD IN CDB.
  EXPECT_EQ(refused(disk, {0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0}, 24, DataDirection::kToDevice),
            (std::vector<int>{5, 0x24}));
  EXPECT_EQ(refused(disk, {0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, DataDirection::kFromDevice),
            (std::vector<int>{5, 0x24}));
  // A read-only disk: DATA PROTECT, WRITE PROTECTED.
  EXPECT_EQ(
      refused(Disk(true, true), {0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, DataDirection::kToDevice),
      (std::vector<int>{7, 0x27}));
  // Length 0: nothing to do, and no error.
  ScsiDisk::Outcome none = disk.Execute(Request({0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, {}));
  ASSERT_TRUE(std::holds_alternative<ScsiDisk::Immediate>(none));
  EXPECT_EQ(std::get<ScsiDisk::Immediate>(none).result.srb_status, kSrbSuccess);
}

TEST(ScsiDiskUnmapTest, TheParameterListBecomesByteRangesOrACheckCondition) {
  const ScsiDisk disk = Disk(/*unmap=*/true);
  auto parsed = disk.ParseUnmap(Parameters({{8, 16}, {100, 0}, {kSectors - 8, 8}}));
  ASSERT_TRUE(std::holds_alternative<std::vector<ScsiDisk::ByteRange>>(parsed));
  const auto& ranges = std::get<std::vector<ScsiDisk::ByteRange>>(parsed);
  ASSERT_EQ(ranges.size(), 2u);  // The empty descriptor is nothing to do.
  EXPECT_EQ(ranges[0].offset, 8u * 512);
  EXPECT_EQ(ranges[0].bytes, 16u * 512);
  EXPECT_EQ(ranges[1].offset, (kSectors - 8) * 512);

  const auto sense = [&](const std::vector<uint8_t>& list) {
    auto result = disk.ParseUnmap(list);
    const auto* refused = std::get_if<SrbResult>(&result);
    return refused == nullptr ? std::vector<int>{-2, -2} : Sense(*refused);
  };
  EXPECT_EQ(sense(Parameters({{kSectors - 8, 9}})), (std::vector<int>{5, 0x21}));  // Past the end.
  EXPECT_EQ(sense(Parameters({{~0ull - 1, 4}})), (std::vector<int>{5, 0x21}));     // Wraps.
  EXPECT_EQ(sense(Parameters({{0, ScsiDisk::kMaxUnmapBlocks + 1}})), (std::vector<int>{5, 0x26}));
  std::vector<uint8_t> many = Parameters({});
  for (uint32_t i = 0; i <= ScsiDisk::kMaxUnmapDescriptors; ++i) {
    const std::vector<uint8_t> one = Parameters({{i * 8ull, 8}});
    many.insert(many.end(), one.begin() + 8, one.end());
  }
  many[2] = static_cast<uint8_t>((many.size() - 8) >> 8);
  many[3] = static_cast<uint8_t>(many.size() - 8);
  EXPECT_EQ(sense(many), (std::vector<int>{5, 0x26}));
  EXPECT_EQ(sense(std::vector<uint8_t>(7, 0)), (std::vector<int>{5, 0x1a}));
  // A header announcing more descriptors than the list holds: the partial one is ignored.
  std::vector<uint8_t> cut = Parameters({{0, 8}, {16, 8}});
  cut.resize(cut.size() - 4);
  auto partial = disk.ParseUnmap(cut);
  ASSERT_TRUE(std::holds_alternative<std::vector<ScsiDisk::ByteRange>>(partial));
  EXPECT_EQ(std::get<std::vector<ScsiDisk::ByteRange>>(partial).size(), 1u);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
