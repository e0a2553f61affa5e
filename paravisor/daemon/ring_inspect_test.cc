#include "paravisor/daemon/ring_inspect.h"

#include <gtest/gtest.h>

#include <cstring>

#include "guestmem/memory_backing.h"
#include "ring/protocol.h"

namespace cvmbus::paravisor::daemon {
namespace {

namespace control = ring::control;

// Two 3-page rings (control page + 8 KiB data) at gpns 0x10.. and 0x20.., untrusted memory.
class RingInspectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backing = guestmem::MemoryBacking::Create({.name = "test", .regions = {{0, 1 << 20}}});
    ASSERT_TRUE(backing.ok()) << backing.status();
    rings_.memory = guestmem::GuestMemory::Untrusted(*backing);
    rings_.guest_to_host = {0x10, 0x11, 0x12};
    rings_.host_to_guest = {0x20, 0x21, 0x22};
  }
  void SetControl(uint64_t gpn, uint32_t offset, uint32_t value) {
    uint8_t bytes[4];
    std::memcpy(bytes, &value, sizeof(value));
    ASSERT_TRUE(rings_.memory.Write(gpn * 4096 + offset, bytes).ok());
  }
  RingPages rings_;
};

TEST_F(RingInspectTest, TheSummaryShowsEachControlPageAndTheSpaceUsed) {
  SetControl(0x10, control::kWriteIndex, 0x100);
  SetControl(0x10, control::kReadIndex, 0x40);
  SetControl(0x10, control::kInterruptMask, 1);
  SetControl(0x20, control::kWriteIndex, 0x8);  // Wrapped: the writer is behind the reader.
  SetControl(0x20, control::kReadIndex, 0x1ff8);
  SetControl(0x20, control::kPendingSendSize, 0x200);
  SetControl(0x20, control::kFeatureBits, 1);
  const Tree summary = RingSummary(rings_);
  EXPECT_EQ(summary["view"], "untrusted");
  const Tree& out = summary["guest_to_host"];
  EXPECT_EQ(out["data_bytes"], 8192);
  EXPECT_EQ(out["used_bytes"], 0xc0);
  EXPECT_EQ(out["free_bytes"], 8192 - 0xc0);
  EXPECT_EQ(out["interrupt_mask"], 1);
  const Tree& in = summary["host_to_guest"];
  EXPECT_EQ(in["used_bytes"], 0x10);
  EXPECT_EQ(in["pending_send_size"], 0x200);
  EXPECT_EQ(in["feature_bits"], 1);
}

TEST_F(RingInspectTest, IndicesOutOfRangeOrUnalignedAreShownAsInvalid) {
  SetControl(0x10, control::kWriteIndex, 8192);  // One past the end.
  SetControl(0x20, control::kReadIndex, 4);      // Not 8-aligned.
  const Tree summary = RingSummary(rings_);
  EXPECT_EQ(summary["guest_to_host"]["indices"], "invalid");
  EXPECT_FALSE(summary["guest_to_host"].contains("free_bytes"));
  EXPECT_EQ(summary["host_to_guest"]["indices"], "invalid");
  EXPECT_EQ(summary["guest_to_host"]["write_index"], 8192);
}

TEST_F(RingInspectTest, PagesOutsideGuestMemoryAreAnErrorInTheSummaryAndTheDump) {
  rings_.host_to_guest = {0x100000, 0x100001};  // 4 GiB up: not guest memory.
  const Tree summary = RingSummary(rings_);
  EXPECT_TRUE(summary["host_to_guest"].contains("error")) << summary.dump();
  EXPECT_TRUE(summary["guest_to_host"].contains("free_bytes"));
  absl::StatusOr<std::string> dump = RingDumpText(rings_, 4);
  ASSERT_FALSE(dump.ok());
  EXPECT_EQ(std::string(dump.status().message()).rfind("ring 4/host_to_guest: ", 0), 0u)
      << dump.status();
}

TEST_F(RingInspectTest, TheDumpShowsBothRingsAndEndsACorruptOneWithItsReason) {
  SetControl(0x10, control::kWriteIndex, 0x10);  // 16 bytes "written" of zeros: a bad packet.
  absl::StatusOr<std::string> dump = RingDumpText(rings_, 4);
  ASSERT_TRUE(dump.ok()) << dump.status();
  EXPECT_EQ(dump->rfind("ring 4/guest_to_host: data area 0x2000 bytes (2 pages)\n", 0), 0u)
      << *dump;
  EXPECT_NE(dump->find("CORRUPT: packet at 0x0: "), std::string::npos) << *dump;
  EXPECT_NE(dump->find("ring 4/host_to_guest: data area 0x2000 bytes (2 pages)\n"),
            std::string::npos)
      << *dump;
  EXPECT_NE(dump->find("0 packets, 0x0 bytes\n"), std::string::npos) << *dump;
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
