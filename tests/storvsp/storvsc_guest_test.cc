// The storvsp device driven the way Linux's storvsc drives it (StorvscGuest): initialization,
// subchannels created from the CPU count and opened as their offers arrive, SCSI reads and
// writes on every channel, checked against the backing file's bytes directly; then the close
// orders a guest can use, and a second attach (a driver reload) on the same device.
#include "paravisor/testing/storvsc_guest.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "hw/storage/file_backing.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/devices/storvsp/vstor_protocol.h"
#include "paravisor/protocol/channel_messages.h"
#include "paravisor/protocol/header.h"
#include "paravisor/vm/virtual_machine.h"
#include "tests/storvsp/disk_file.h"

namespace cvmbus::paravisor::storvsp {
namespace {

using namespace std::chrono_literals;
using vm::VirtualMachine;

constexpr uint64_t kDiskBytes = 4 << 20;
constexpr uint64_t kDataGpn = 0x800;  // Private pages for SRB buffers: 16 per channel.
constexpr uint32_t kPagesPerChannel = 16;
constexpr uint16_t kMaxSubchannels = 3;

class StorvscGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = MakeTestDiskFile("storvsc_guest_disk.img", kDiskBytes);
    ASSERT_FALSE(path_.empty());
    vm_ = *VirtualMachine::Create();
    auto file = hw::FileBacking::Open(path_, {});
    ASSERT_TRUE(file.ok()) << file.status();
    backend_ = std::make_unique<FileBlockBackend>(vm_->server_loop(), *std::move(file));
    vm_->OnServer([&] {
      auto device = StorvspDevice::Create(
          vm_->server_loop(), &vm_->bus(),
          {.instance_id = Guid{0x5c5c, 3, 4, {}},
           .disk = {.sectors = kDiskBytes / 512, .unmap = backend_->can_discard()},
           .allow_confidential_external_memory = true,
           .max_subchannels = kMaxSubchannels},
          backend_.get());
      ASSERT_TRUE(device.ok()) << device.status();
      device_ = *std::move(device);
      ASSERT_TRUE(device_->Start().ok());
    });
    auto version =
        vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels);
    ASSERT_TRUE(version.ok()) << version.status();
    auto offers = vm_->guest().RequestOffers();
    ASSERT_TRUE(offers.ok() && offers->size() == 1);
    relid_ = (*offers)[0].child_relid;
    ASSERT_TRUE(vm_->MakePrivate(kDataGpn * 4096, 4 * kPagesPerChannel * 4096).ok());
  }
  void TearDown() override {
    guest_.reset();
    if (vm_) vm_->OnServer([&] { device_.reset(); });
    vm_.reset();  // The loop (and any I/O on it) before the backend.
    backend_.reset();
  }

  // Each attach lays its rings in fresh pages (GuestChannel makes them private: a page is
  // validated once).
  absl::Status Attach(uint32_t cpus, uint64_t first_ring_gpn = 0x100) {
    auto guest = StorvscGuest::Attach(
        vm_.get(), {.relid = relid_, .first_ring_gpn = first_ring_gpn, .cpus = cpus});
    if (!guest.ok()) return guest.status();
    guest_ = *std::move(guest);
    return absl::OkStatus();
  }

  StorvspStats Stats() {
    StorvspStats stats;
    vm_->OnServer([&] { stats = device_->stats(); });
    return stats;
  }

  static GuestBuffer BufferOf(size_t channel) {
    GuestBuffer buffer;
    for (uint32_t i = 0; i < kPagesPerChannel; ++i) {
      buffer.gpns.push_back(kDataGpn + channel * kPagesPerChannel + i);
    }
    return buffer;
  }
  guestmem::GuestMemory Private() const { return guestmem::GuestMemory::Private(vm_->memory()); }

  std::vector<uint8_t> FileBytes(uint64_t offset, size_t length) const {
    return ReadFileBytes(path_, offset, length);
  }
  void PutFileBytes(uint64_t offset, const std::vector<uint8_t>& bytes) const {
    WriteFileBytes(path_, offset, bytes);
  }

  std::string path_;
  std::unique_ptr<VirtualMachine> vm_;
  std::unique_ptr<FileBlockBackend> backend_;
  std::unique_ptr<StorvspDevice> device_;
  std::unique_ptr<StorvscGuest> guest_;
  uint32_t relid_ = 0;
};

TEST_F(StorvscGuestTest, LinuxInitializationOnOneCpuKeepsThePrimaryOnly) {
  ASSERT_TRUE(Attach(/*cpus=*/1).ok());
  EXPECT_EQ(guest_->properties().version, kVersionWin8_1);  // WIN10 refused, WIN8_1 taken.
  EXPECT_EQ(guest_->properties().max_channel_count, kMaxSubchannels);
  EXPECT_EQ(guest_->properties().flags & kSupportsMultiChannel, kSupportsMultiChannel);
  EXPECT_EQ(guest_->properties().max_transfer_bytes, 256u * 1024);
  EXPECT_EQ(guest_->properties().subchannels_asked, 0);
  EXPECT_EQ(guest_->channel_count(), 1u);
  EXPECT_EQ(Stats().subchannels_offered, 0u);
}

TEST_F(StorvscGuestTest, SubchannelsComeFromTheCpuCountCappedByTheHost) {
  ASSERT_TRUE(Attach(/*cpus=*/8).ok());  // min(8 - 1, 3).
  EXPECT_EQ(guest_->properties().subchannels_asked, kMaxSubchannels);
  ASSERT_EQ(guest_->channel_count(), 1u + kMaxSubchannels);
  EXPECT_EQ(Stats().subchannels_offered, kMaxSubchannels);
  for (size_t i = 1; i < guest_->channel_count(); ++i) {
    EXPECT_NE(guest_->relid(i), guest_->relid(0));
  }
}

TEST_F(StorvscGuestTest, WritesOnEveryChannelLandInTheFileAndFileBytesReadBackOnEach) {
  ASSERT_TRUE(Attach(/*cpus=*/4).ok());
  ASSERT_EQ(guest_->channel_count(), 4u);
  for (size_t channel = 0; channel < guest_->channel_count(); ++channel) {
    const GuestBuffer buffer = BufferOf(channel);
    std::vector<uint8_t> data(8192);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + channel);
    ASSERT_TRUE(Private().Write(buffer.gpns[0] * 4096, data).ok());
    const uint64_t lba = 100 + channel * 64;
    auto written = guest_->Execute(channel, Write16Cdb(lba, 16), false, 8192, buffer);
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ(written->srb_status, kSrbSuccess) << "channel " << channel;
    EXPECT_EQ(written->data_transfer_length, 8192u);
    EXPECT_EQ(FileBytes(lba * 512, data.size()), data) << "channel " << channel;

    std::vector<uint8_t> outside(4096);
    for (size_t i = 0; i < outside.size(); ++i) outside[i] = static_cast<uint8_t>(~i ^ channel);
    PutFileBytes((lba + 32) * 512, outside);
    auto read = guest_->Execute(channel, Read16Cdb(lba + 32, 8), true, 4096, buffer);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->srb_status, kSrbSuccess);
    std::vector<uint8_t> got(4096);
    ASSERT_TRUE(Private().Read(buffer.gpns[0] * 4096, absl::MakeSpan(got)).ok());
    EXPECT_EQ(got, outside) << "channel " << channel;
  }
}

TEST_F(StorvscGuestTest, RequestsOutstandingOnAllChannelsAtOnceAllComplete) {
  ASSERT_TRUE(Attach(/*cpus=*/4).ok());
  constexpr uint32_t kDepth = 8;
  for (size_t channel = 0; channel < guest_->channel_count(); ++channel) {
    for (uint32_t i = 0; i < kDepth; ++i) {
      GuestBuffer buffer = BufferOf(channel);
      buffer.gpns = {buffer.gpns[i]};
      ASSERT_TRUE(
          guest_->Submit(channel, 1000 * channel + i, Read16Cdb(i * 8, 8), true, 4096, buffer)
              .ok());
    }
  }
  for (size_t channel = 0; channel < guest_->channel_count(); ++channel) {
    std::vector<bool> seen(kDepth, false);
    for (uint32_t i = 0; i < kDepth; ++i) {
      uint64_t id = 0;
      auto done = guest_->Wait(channel, &id);
      ASSERT_TRUE(done.ok()) << done.status();
      EXPECT_EQ(done->srb_status, kSrbSuccess);
      ASSERT_GE(id, 1000 * channel);
      ASSERT_LT(id - 1000 * channel, kDepth);
      EXPECT_FALSE(seen[id - 1000 * channel]) << "answered twice: " << id;
      seen[id - 1000 * channel] = true;
    }
  }
}

TEST_F(StorvscGuestTest, ASubchannelTakesOnlyScsiRequests) {
  ASSERT_TRUE(Attach(/*cpus=*/2).ok());
  ASSERT_EQ(guest_->channel_count(), 2u);
  auto answer = guest_->Control(1, static_cast<uint32_t>(VstorOperation::kQueryProperties));
  ASSERT_TRUE(answer.ok()) << answer.status();
  uint32_t status = 0;
  std::memcpy(&status, answer->data() + 8, 4);
  EXPECT_EQ(status, kNtInvalidDeviceRequest);
  EXPECT_EQ(answer->size(), 64u);  // As long as the request.
}

TEST_F(StorvscGuestTest, TooManySubchannelsAreRefusedAndNothingIsOffered) {
  ASSERT_TRUE(Attach(/*cpus=*/1).ok());
  auto answer = guest_->Control(0, static_cast<uint32_t>(VstorOperation::kCreateSubChannels),
                                kMaxSubchannels + 1);
  ASSERT_TRUE(answer.ok()) << answer.status();
  uint32_t status = 0;
  std::memcpy(&status, answer->data() + 8, 4);
  EXPECT_EQ(status, kNtInvalidParameter);
  EXPECT_TRUE(vm_->guest().NothingArrives(protocol::MessageType::kOfferChannel, 200ms));
}

// Linux's order: subchannels closed, then the primary. The host then rescinds the
// subchannels; once the guest released them, a second attach creates them again.
TEST_F(StorvscGuestTest, DetachRescindsTheSubchannelsAndAReattachCreatesThemAgain) {
  ASSERT_TRUE(Attach(/*cpus=*/4).ok());
  std::vector<uint32_t> subchannels;
  for (size_t i = 1; i < guest_->channel_count(); ++i) subchannels.push_back(guest_->relid(i));
  ASSERT_TRUE(guest_->Detach().ok());
  for (size_t i = 0; i < subchannels.size(); ++i) {
    auto rescind = vm_->guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 2s);
    ASSERT_TRUE(rescind.ok()) << rescind.status();
    const auto* message = rescind->As<protocol::RescindChannelOffer>();
    ASSERT_NE(message, nullptr);
    EXPECT_NE(message->child_relid, relid_) << "the primary stays offered";
    ASSERT_TRUE(vm_->guest().ReleaseRelid(message->child_relid).ok());
  }
  EXPECT_EQ(Stats().subchannels_revoked, subchannels.size());
  guest_.reset();
  absl::Status again = Attach(/*cpus=*/4, /*first_ring_gpn=*/0x400);
  ASSERT_TRUE(again.ok()) << again;
  EXPECT_EQ(guest_->channel_count(), 4u);
  auto read = guest_->Execute(3, Read16Cdb(0, 8), true, 4096, BufferOf(3));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->srb_status, kSrbSuccess);
}

// A guest that closes the primary with its subchannels still open: they are stopped and
// rescinded, and the primary's close is still answered.
TEST_F(StorvscGuestTest, ClosingThePrimaryFirstStopsAndRescindsItsSubchannels) {
  ASSERT_TRUE(Attach(/*cpus=*/3).ok());
  ASSERT_EQ(guest_->channel_count(), 3u);
  // I/O in flight on a subchannel when the primary goes.
  ASSERT_TRUE(guest_->Submit(2, 77, Read16Cdb(0, 64), true, 32768, BufferOf(2)).ok());
  ASSERT_TRUE(vm_->guest().CloseChannel(guest_->relid(0)).ok());
  for (int i = 0; i < 2; ++i) {
    auto rescind = vm_->guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 2s);
    ASSERT_TRUE(rescind.ok()) << rescind.status();
  }
  EXPECT_EQ(Stats().subchannels_revoked, 2u);
  EXPECT_EQ(Stats().closes, 1u);  // Only the primary's close came from the guest.
}

// The paravisor removes the disk while the guest uses it with subchannels: every channel is
// rescinded, subchannels before the primary (the device's tasks outlive it, so it must drop
// its offers itself).
TEST_F(StorvscGuestTest, DestroyingTheDeviceRescindsSubchannelsThenThePrimary) {
  ASSERT_TRUE(Attach(/*cpus=*/3).ok());
  ASSERT_EQ(guest_->channel_count(), 3u);
  vm_->OnServer([&] { device_.reset(); });
  std::vector<uint32_t> rescinded;
  for (int i = 0; i < 3; ++i) {
    auto rescind = vm_->guest().WaitFor(protocol::MessageType::kRescindChannelOffer, 2s);
    ASSERT_TRUE(rescind.ok()) << i << ": " << rescind.status();
    rescinded.push_back(rescind->As<protocol::RescindChannelOffer>()->child_relid);
  }
  ASSERT_EQ(rescinded.size(), 3u);
  EXPECT_EQ(rescinded.back(), relid_) << "the primary goes last";
}

// Linux's discard: sd sees LBPME in READ CAPACITY(16) and LBPU in VPD 0xB2, so it sends UNMAP
// with one block descriptor; the range then reads as zeros, holds no blocks in the file, and
// the data around it is untouched.
TEST_F(StorvscGuestTest, UnmapPunchesAHoleInTheFileAndTheRestStays) {
  ASSERT_TRUE(backend_->can_discard()) << "a regular file opened read-write";
  ASSERT_TRUE(Attach(/*cpus=*/1).ok());
  const GuestBuffer buffer = BufferOf(0);
  auto capacity =
      guest_->Execute(0, {0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, true, 32, buffer);
  ASSERT_TRUE(capacity.ok()) << capacity.status();
  std::vector<uint8_t> bytes(32);
  ASSERT_TRUE(Private().Read(buffer.gpns[0] * 4096, absl::MakeSpan(bytes)).ok());
  EXPECT_EQ(bytes[14] & 0x80, 0x80) << "LBPME";

  // 64 KiB of data from LBA 1024, then UNMAP the middle 32 KiB of it.
  std::vector<uint8_t> data(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 3 + 1);
  PutFileBytes(1024 * 512, data);
  {
    const int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);  // Blocks allocated now.
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
  }
  struct stat before {};
  ASSERT_EQ(stat(path_.c_str(), &before), 0);
  std::vector<uint8_t> list(24, 0);
  list[1] = 22;  // UNMAP data length.
  list[3] = 16;  // One block descriptor.
  const uint64_t lba = 1024 + 32;
  for (int i = 0; i < 8; ++i) list[8 + i] = static_cast<uint8_t>(lba >> (56 - 8 * i));
  list[8 + 11] = 64;  // 64 blocks.
  ASSERT_TRUE(Private().Write(buffer.gpns[0] * 4096, list).ok());
  auto unmapped =
      guest_->Execute(0, {0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, /*data_in=*/false, 24, buffer);
  ASSERT_TRUE(unmapped.ok()) << unmapped.status();
  EXPECT_EQ(unmapped->srb_status, kSrbSuccess);
  EXPECT_EQ(unmapped->scsi_status, kScsiGood);

  std::vector<uint8_t> expected = data;
  std::fill(expected.begin() + 32 * 512, expected.begin() + 96 * 512, 0);
  EXPECT_EQ(FileBytes(1024 * 512, data.size()), expected);
  struct stat after {};
  ASSERT_EQ(stat(path_.c_str(), &after), 0);
  EXPECT_LT(after.st_blocks, before.st_blocks) << "no blocks were deallocated";
  // Past the end: LOGICAL BLOCK ADDRESS OUT OF RANGE, and nothing changes.
  const uint64_t last = kDiskBytes / 512 - 8;
  for (int i = 0; i < 8; ++i) list[8 + i] = static_cast<uint8_t>(last >> (56 - 8 * i));
  ASSERT_TRUE(Private().Write(buffer.gpns[0] * 4096, list).ok());
  auto past = guest_->Execute(0, {0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, false, 24, buffer);
  ASSERT_TRUE(past.ok()) << past.status();
  EXPECT_EQ(past->scsi_status, kScsiCheckCondition);
  ASSERT_GE(past->sense.size(), 13u);
  EXPECT_EQ(past->sense[12], 0x21);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
