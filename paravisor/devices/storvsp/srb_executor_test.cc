#include "paravisor/devices/storvsp/srb_executor.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <memory>
#include <optional>
#include <vector>

#include "guestmem/memory_backing.h"

namespace cvmbus::paravisor::storvsp {
namespace {

using guestmem::Access;
using guestmem::GuestMemory;

constexpr uint64_t kDiskBytes = 1 << 20;

class SrbExecutorTest : public ::testing::Test {
 protected:
  SrbExecutorTest()
      : backend_(kDiskBytes),
        disk_(*ScsiDisk::Create({.sectors = kDiskBytes / 512})),
        executor_(&disk_, &backend_) {
    guestmem::MemoryOptions options;
    options.name = "srb";
    options.type = guestmem::BackingType::kMemfd;
    options.regions = {{0, 64 * 4096}};
    memory_backing_ = *guestmem::MemoryBacking::Create(options);
  }

  GuestMemory Memory() const { return GuestMemory::Private(memory_backing_); }

  SrbResult Run(std::initializer_list<uint8_t> cdb, const std::optional<SrbBuffer>& buffer,
                DataDirection direction) {
    ScsiRequest request;
    std::copy(cdb.begin(), cdb.end(), request.cdb.begin());
    request.data_transfer_length = buffer ? buffer->length : 0;
    request.direction = buffer ? direction : DataDirection::kNone;
    std::optional<SrbResult> result;
    executor_.Execute(request, buffer, Memory(), [&](SrbResult r) { result = std::move(r); });
    EXPECT_TRUE(result.has_value()) << "done did not run";
    return result.value_or(SrbResult{});
  }

  std::shared_ptr<guestmem::MemoryBacking> memory_backing_;
  MemoryBackend backend_;
  ScsiDisk disk_;
  SrbExecutor executor_;
};

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(seed + i * 13);
  return bytes;
}

// A write from guest pages scattered over the memory (and starting mid-page) lands at its LBA;
// a read brings the same bytes back into other pages.
TEST_F(SrbExecutorTest, WritesAndReadsMoveBytesBetweenGuestPagesAndTheBacking) {
  const std::vector<uint8_t> data = Pattern(8192, 5);
  ASSERT_TRUE(Memory().Write(9 * 4096 + 512, absl::MakeConstSpan(data).subspan(0, 3584)).ok());
  ASSERT_TRUE(Memory().Write(3 * 4096, absl::MakeConstSpan(data).subspan(3584, 4096)).ok());
  ASSERT_TRUE(Memory().Write(20 * 4096, absl::MakeConstSpan(data).subspan(7680, 512)).ok());
  const SrbBuffer out{.offset = 512, .length = 8192, .gpns = {9, 3, 20}};
  // WRITE(10) of 16 blocks at LBA 100.
  SrbResult wrote = Run({0x2a, 0, 0, 0, 0, 100, 0, 0, 16, 0}, out, DataDirection::kToDevice);
  EXPECT_EQ(wrote.srb_status, kSrbSuccess);
  EXPECT_EQ(wrote.transferred, 8192u);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), backend_.bytes().begin() + 100 * 512));

  const SrbBuffer in{.offset = 0, .length = 8192, .gpns = {40, 41}};
  SrbResult read = Run({0x28, 0, 0, 0, 0, 100, 0, 0, 16, 0}, in, DataDirection::kFromDevice);
  EXPECT_EQ(read.srb_status, kSrbSuccess);
  EXPECT_EQ(read.transferred, 8192u);
  std::vector<uint8_t> back(8192);
  ASSERT_TRUE(Memory().Read(40 * 4096, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, data);
  EXPECT_EQ(backend_.flushes(), 0u);
}

TEST_F(SrbExecutorTest, ForceUnitAccessAndSynchronizeCacheFlush) {
  const SrbBuffer out{.offset = 0, .length = 512, .gpns = {2}};
  EXPECT_EQ(Run({0x2a, 0x08, 0, 0, 0, 1, 0, 0, 1, 0}, out, DataDirection::kToDevice).srb_status,
            kSrbSuccess);
  EXPECT_EQ(backend_.flushes(), 1u);
  EXPECT_EQ(Run({0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, std::nullopt, DataDirection::kNone).srb_status,
            kSrbSuccess);
  EXPECT_EQ(backend_.flushes(), 2u);
}

// Data the disk answers itself (INQUIRY) is written into the guest's buffer.
TEST_F(SrbExecutorTest, ImmediateDataLandsInTheGuestBuffer) {
  const SrbBuffer in{.offset = 100, .length = 36, .gpns = {7}};
  SrbResult inquiry = Run({0x12, 0, 0, 0, 36, 0}, in, DataDirection::kFromDevice);
  EXPECT_EQ(inquiry.srb_status, kSrbSuccess);
  EXPECT_EQ(inquiry.transferred, 36u);
  std::vector<uint8_t> vendor(8);
  ASSERT_TRUE(Memory().Read(7 * 4096 + 100 + 8, absl::MakeSpan(vendor)).ok());
  EXPECT_EQ(std::string(vendor.begin(), vendor.end()), "Msft    ");
}

// A backing failure is a medium error with sense; a page the view cannot reach is an invalid
// request; neither touches the backing's bytes.
TEST_F(SrbExecutorTest, FailuresBecomeSrbResults) {
  const SrbBuffer in{.offset = 0, .length = 512, .gpns = {4}};
  backend_.fail_next(absl::InternalError("injected"));
  SrbResult read = Run({0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, in, DataDirection::kFromDevice);
  EXPECT_EQ(read.scsi_status, kScsiCheckCondition);
  ASSERT_GE(read.sense.size(), 14u);
  EXPECT_EQ(read.sense[2], 0x03);
  EXPECT_EQ(read.sense[12], 0x11);
  backend_.fail_next(absl::InternalError("injected"));
  SrbResult wrote = Run({0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, in, DataDirection::kToDevice);
  EXPECT_EQ(wrote.sense[12], 0x0c);

  // The private view loses page 4 (as a conversion to shared would take it away).
  ASSERT_TRUE(memory_backing_->SetAccess(4 * 4096, 4096, Access::kNone, Access::kReadWrite).ok());
  backend_.bytes()[0] = 0x5a;
  SrbResult unreachable = Run({0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, in, DataDirection::kFromDevice);
  EXPECT_EQ(unreachable.srb_status, kSrbInvalidRequest);
  SrbResult unreachable_write =
      Run({0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, in, DataDirection::kToDevice);
  EXPECT_EQ(unreachable_write.srb_status, kSrbInvalidRequest);
  EXPECT_EQ(backend_.bytes()[0], 0x5a);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
