#include "paravisor/devices/storvsp/srb_buffer.h"

#include <gtest/gtest.h>

#include <vector>

namespace cvmbus::paravisor::storvsp {
namespace {

constexpr uint32_t kLimit = 256 * 1024;

ring::Packet GpaDirect(const std::vector<uint64_t>& gpns, uint32_t offset, uint32_t count,
                       int ranges = 1) {
  ring::Packet packet;
  packet.type = ring::PacketType::kDataUsingGpaDirect;
  for (int i = 0; i < ranges; ++i) {
    packet.gpa_ranges.push_back(
        ring::GpaRange{.byte_count = count, .byte_offset = offset, .gpns = gpns});
  }
  return packet;
}

std::string Why(const absl::StatusOr<std::optional<SrbBuffer>>& buffer) {
  return buffer.ok() ? "ok" : std::string(buffer.status().message());
}

TEST(SrbBufferTest, LinuxsOneRangeGivesExactlyThePagesTheTransferTouches) {
  const std::vector<uint64_t> gpns = {0x100, 0x2a7, 0x105};
  auto buffer = SrbBufferOf(GpaDirect(gpns, 0x200, 8192), 8192, kLimit);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  ASSERT_TRUE(buffer->has_value());
  EXPECT_EQ((*buffer)->offset, 0x200u);
  EXPECT_EQ((*buffer)->length, 8192u);
  EXPECT_EQ((*buffer)->gpns, gpns);  // 0x200 + 8192 spans three pages.
  // Older Linux pads the descriptor with unused page slots: only the needed pages are taken.
  const std::vector<uint64_t> padded = {0x100, 0x101, 0, 0, 0, 0};
  auto short_one = SrbBufferOf(GpaDirect(padded, 0, 4096), 4096, kLimit);
  ASSERT_TRUE(short_one.ok());
  EXPECT_EQ((*short_one)->gpns, (std::vector<uint64_t>{0x100}));
  // A range longer than the transfer is cut to the transfer.
  auto cut = SrbBufferOf(GpaDirect(gpns, 0, 12288), 512, kLimit);
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ((*cut)->length, 512u);
  EXPECT_EQ((*cut)->gpns.size(), 1u);
}

TEST(SrbBufferTest, NoDataNeedsNoPages) {
  ring::Packet inband;
  auto none = SrbBufferOf(inband, 0, kLimit);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto gpa_none = SrbBufferOf(GpaDirect({0x100}, 0, 0), 0, kLimit);
  ASSERT_TRUE(gpa_none.ok());
  EXPECT_FALSE(gpa_none->has_value());
}

TEST(SrbBufferTest, BuffersThatDisagreeWithTheRequestAreRefused) {
  ring::Packet inband;
  EXPECT_EQ(Why(SrbBufferOf(inband, 512, kLimit)),
            "storvsp: SRB buffer: 512 bytes to move but the packet carries no pages");
  EXPECT_EQ(Why(SrbBufferOf(GpaDirect({0x100}, 0, 4096, 2), 4096, kLimit)),
            "storvsp: SRB buffer: 2 ranges (storvsc sends one)");
  EXPECT_EQ(Why(SrbBufferOf(GpaDirect({0x100}, 4096, 4096), 512, kLimit)),
            "storvsp: SRB buffer: offset 4096 is outside the first page");
  EXPECT_EQ(Why(SrbBufferOf(GpaDirect({0x100}, 0, 1024), 4096, kLimit)),
            "storvsp: SRB buffer: the range holds 1024 bytes, the request moves 4096");
  EXPECT_EQ(Why(SrbBufferOf(GpaDirect({0x100}, 0x800, 4096), 4096, kLimit)),
            "storvsp: SRB buffer: 1 pages for 4096 bytes at offset 2048, which need 2");
  EXPECT_EQ(Why(SrbBufferOf(GpaDirect({0x100}, 0, 1u << 20), 1u << 20, kLimit)),
            "storvsp: SRB buffer: 1048576 bytes is over the 262144-byte transfer limit");
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
