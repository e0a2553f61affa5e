// The storvsp device end to end, as Linux's storvsc drives it: an SEV-SNP VM, VMBus 6.0 with
// confidential channels, the controller's ring and the disk buffers in private (validated)
// guest pages, the VSTOR initialization, then SCSI commands in GPA-direct packets whose data
// moves straight between the guest's private pages and the disk's blocks.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "hw/storage/file_backing.h"
#include "paravisor/devices/storvsp/block_backend.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/devices/storvsp/vstor_protocol.h"
#include "paravisor/protocol/header.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor::storvsp {
namespace {

using namespace std::chrono_literals;
using testing::GuestChannel;
using vm::VirtualMachine;

constexpr uint64_t kDiskBytes = 1 << 20;
constexpr uint64_t kDataGpn = 0x300;  // Four private pages for SRB buffers.

class StorvspTest : public ::testing::Test {
 protected:
  // The disk's blocks: in memory here; in a file, through io_uring, in StorvspFileTest.
  virtual BlockBackend* MakeBackend() { return &memory_backend_; }

  void SetUp() override {
    vm_ = *VirtualMachine::Create();
    backend_ = MakeBackend();
    ASSERT_NE(backend_, nullptr);
    vm_->OnServer([&] {
      auto device = StorvspDevice::Create(vm_->server_loop(), &vm_->bus(),
                                          {.instance_id = Guid{0x5c51, 1, 2, {}},
                                           .disk = {.sectors = kDiskBytes / 512, .serial = "e2e"},
                                           .allow_confidential_external_memory = true},
                                          backend_);
      ASSERT_TRUE(device.ok()) << device.status();
      device_ = *std::move(device);
      ASSERT_TRUE(device_->Start().ok());
    });
    auto version =
        vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels);
    ASSERT_TRUE(version.ok()) << version.status();
    auto offers = vm_->guest().RequestOffers();
    ASSERT_TRUE(offers.ok() && offers->size() == 1);
    const uint32_t relid = (*offers)[0].child_relid;
    auto channel = GuestChannel::Open(
        vm_.get(),
        {.relid = relid, .gpadl_id = 1, .first_gpn = 0x100, .ring_pages = 8, .confidential = true});
    ASSERT_TRUE(channel.ok()) << channel.status();
    channel_ = *std::move(channel);
    ASSERT_TRUE(vm_->MakePrivate(kDataGpn * 4096, 4 * 4096).ok());
  }
  void TearDown() override {
    channel_.reset();
    if (vm_) vm_->OnServer([&] { device_.reset(); });
  }

  guestmem::GuestMemory Private() const { return guestmem::GuestMemory::Private(vm_->memory()); }

  // One request packet (64 bytes, as Linux 6.x) and its completion's payload.
  std::vector<uint8_t> RoundTrip(const std::vector<uint8_t>& packet, uint64_t transaction_id,
                                 const std::vector<ring::GpaRange>& ranges = {}) {
    ring::OutgoingPacket out{.type = ranges.empty() ? ring::PacketType::kDataInBand
                                                    : ring::PacketType::kDataUsingGpaDirect,
                             .flags = ring::kFlagCompletionRequested,
                             .transaction_id = transaction_id,
                             .payload = packet,
                             .gpa_ranges = ranges};
    EXPECT_TRUE(channel_->SendPacket(out).ok());
    ring::PacketBuffer buffer;
    absl::Status received = channel_->Receive(&buffer, 5s);
    EXPECT_TRUE(received.ok()) << received;
    if (!received.ok()) return {};
    EXPECT_EQ(buffer.packet().type, ring::PacketType::kCompletion);
    EXPECT_EQ(buffer.packet().transaction_id, transaction_id);
    return {buffer.packet().payload.begin(), buffer.packet().payload.end()};
  }

  static std::vector<uint8_t> Control(VstorOperation operation, uint16_t value = 0) {
    std::vector<uint8_t> packet(64, 0);
    const uint32_t op = static_cast<uint32_t>(operation);
    std::memcpy(packet.data(), &op, 4);
    std::memcpy(packet.data() + 4, &kRequestCompletionFlag, 4);
    std::memcpy(packet.data() + 12, &value, 2);
    return packet;
  }

  static std::vector<uint8_t> Srb(std::vector<uint8_t> cdb, uint32_t length, uint8_t data_in,
                                  uint8_t lun = 0) {
    std::vector<uint8_t> packet = Control(VstorOperation::kExecuteSrb);
    uint8_t* srb = packet.data() + 12;
    srb[0] = 0x34;
    srb[7] = lun;
    srb[8] = static_cast<uint8_t>(cdb.size());
    srb[9] = 0x14;
    srb[10] = length == 0 ? 2 : data_in;
    std::memcpy(srb + 0x0c, &length, 4);
    std::memcpy(srb + 0x10, cdb.data(), cdb.size());
    return packet;
  }

  static uint32_t Status(const std::vector<uint8_t>& completion) {
    uint32_t status = ~0u;
    if (completion.size() >= 12) std::memcpy(&status, completion.data() + 8, 4);
    return status;
  }

  void Initialize() {
    EXPECT_EQ(Status(RoundTrip(Control(VstorOperation::kBeginInitialization), ~0ull - 2)), 0u);
    EXPECT_EQ(
        Status(RoundTrip(Control(VstorOperation::kQueryProtocolVersion, kVersionWin10), ~0ull - 2)),
        kNtRevisionMismatch);
    EXPECT_EQ(Status(RoundTrip(Control(VstorOperation::kQueryProtocolVersion, kVersionWin8_1),
                               ~0ull - 2)),
              0u);
    std::vector<uint8_t> properties =
        RoundTrip(Control(VstorOperation::kQueryProperties), ~0ull - 2);
    ASSERT_EQ(properties.size(), 64u);
    uint32_t max_transfer;
    std::memcpy(&max_transfer, properties.data() + 0x18, 4);
    EXPECT_EQ(max_transfer, 256u * 1024);
    EXPECT_EQ(Status(RoundTrip(Control(VstorOperation::kEndInitialization), ~0ull - 2)), 0u);
  }

  std::unique_ptr<VirtualMachine> vm_;
  MemoryBackend memory_backend_{kDiskBytes};
  BlockBackend* backend_ = nullptr;
  std::unique_ptr<StorvspDevice> device_;
  std::unique_ptr<GuestChannel> channel_;
};

TEST_F(StorvspTest, LinuxInitializesThenWritesAndReadsThroughPrivatePages) {
  ASSERT_NO_FATAL_FAILURE(Initialize());
  // WRITE(10): 8 blocks at LBA 16 from a buffer that starts 512 bytes into the first page.
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
  ASSERT_TRUE(Private().Write(kDataGpn * 4096 + 512, data).ok());
  const uint64_t write_pages[] = {kDataGpn, kDataGpn + 1};
  std::vector<uint8_t> wrote =
      RoundTrip(Srb({0x2a, 0, 0, 0, 0, 16, 0, 0, 8, 0}, 4096, 0), 0x101,
                {{.byte_count = 4096, .byte_offset = 512, .gpns = write_pages}});
  ASSERT_EQ(wrote.size(), 64u);
  EXPECT_EQ(Status(wrote), 0u);
  EXPECT_EQ(wrote[12 + 2], kSrbSuccess);
  uint32_t transferred;
  std::memcpy(&transferred, wrote.data() + 12 + 0x0c, 4);
  EXPECT_EQ(transferred, 4096u);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), memory_backend_.bytes().begin() + 16 * 512));

  // READ(10) of the same blocks into another page.
  const uint64_t read_pages[] = {kDataGpn + 3};
  std::vector<uint8_t> read =
      RoundTrip(Srb({0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0}, 4096, 1), 0x102,
                {{.byte_count = 4096, .byte_offset = 0, .gpns = read_pages}});
  EXPECT_EQ(read[12 + 2], kSrbSuccess);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(Private().Read((kDataGpn + 3) * 4096, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, data);
  vm_->OnServer([&] {
    EXPECT_EQ(device_->stats().version, kVersionWin8_1);
    EXPECT_EQ(device_->stats().bad_packets, 0u);
  });
}

TEST_F(StorvspTest, InquiryAndMissingLunsAnswerAsHyperVDoes) {
  ASSERT_NO_FATAL_FAILURE(Initialize());
  const uint64_t page[] = {kDataGpn};
  std::vector<uint8_t> inquiry = RoundTrip(Srb({0x12, 0, 0, 0, 36, 0}, 36, 1), 0x201,
                                           {{.byte_count = 36, .byte_offset = 0, .gpns = page}});
  EXPECT_EQ(inquiry[12 + 2], kSrbSuccess);
  std::vector<uint8_t> vendor(8);
  ASSERT_TRUE(Private().Read(kDataGpn * 4096 + 8, absl::MakeSpan(vendor)).ok());
  EXPECT_EQ(std::string(vendor.begin(), vendor.end()), "Msft    ");
  // LUN 1: INQUIRY says "no unit here", anything else is INVALID_LUN.
  std::vector<uint8_t> missing = RoundTrip(Srb({0x12, 0, 0, 0, 36, 0}, 36, 1, /*lun=*/1), 0x202,
                                           {{.byte_count = 36, .byte_offset = 0, .gpns = page}});
  EXPECT_EQ(missing[12 + 2], kSrbSuccess);
  uint8_t qualifier = 0;
  ASSERT_TRUE(Private().Read(kDataGpn * 4096, absl::MakeSpan(&qualifier, 1)).ok());
  EXPECT_EQ(qualifier, 0x7f);
  std::vector<uint8_t> tur = RoundTrip(Srb({0x00, 0, 0, 0, 0, 0}, 0, 2, /*lun=*/1), 0x203);
  EXPECT_EQ(tur[12 + 2], kSrbInvalidLun);
}

TEST_F(StorvspTest, BadRequestsGetErrorCompletions) {
  // An SRB before END_INITIALIZATION.
  EXPECT_EQ(Status(RoundTrip(Srb({0x00, 0, 0, 0, 0, 0}, 0, 2), 0x300)), kNtInvalidDeviceState);
  ASSERT_NO_FATAL_FAILURE(Initialize());
  // A read whose range is shorter than its transfer.
  const uint64_t page[] = {kDataGpn};
  std::vector<uint8_t> short_range =
      RoundTrip(Srb({0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0}, 4096, 1), 0x301,
                {{.byte_count = 512, .byte_offset = 0, .gpns = page}});
  EXPECT_EQ(short_range[12 + 2], kSrbInvalidRequest);
  // Data to move but no pages.
  std::vector<uint8_t> no_pages = RoundTrip(Srb({0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 512, 1), 0x302);
  EXPECT_EQ(no_pages[12 + 2], kSrbInvalidRequest);
  // A packet too short for the VSTOR header is still answered.
  std::vector<uint8_t> tiny = RoundTrip(std::vector<uint8_t>(8, 0), 0x303);
  EXPECT_EQ(Status(tiny), kNtInvalidParameter);
  // A buffer in pages the private view does not have (shared pages: the host's).
  const uint64_t shared_page[] = {0x380};
  std::vector<uint8_t> shared =
      RoundTrip(Srb({0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 512, 1), 0x304,
                {{.byte_count = 512, .byte_offset = 0, .gpns = shared_page}});
  EXPECT_EQ(shared[12 + 2], kSrbInvalidRequest);
  // A buffer past the end of guest memory (where paravisor memory would be): unreachable.
  const uint64_t outside[] = {(64ull << 20) / 4096 + 16};
  std::vector<uint8_t> beyond = RoundTrip(Srb({0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 512, 1), 0x305,
                                          {{.byte_count = 512, .byte_offset = 0, .gpns = outside}});
  EXPECT_EQ(beyond[12 + 2], kSrbInvalidRequest);
  vm_->OnServer([&] { EXPECT_EQ(device_->stats().bad_packets, 3u); });
}

// The same device over a file on disk: reads and writes are io_uring readv/writev straight
// between the file and the guest's private pages, SYNCHRONIZE CACHE an fdatasync.
class StorvspFileTest : public StorvspTest {
 protected:
  BlockBackend* MakeBackend() override {
    const char* dir = std::getenv("TEST_TMPDIR");
    path_ = std::string(dir != nullptr ? dir : "/tmp") + "/storvsp_disk.img";
    const int fd = open(path_.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, kDiskBytes) != 0) return nullptr;
    close(fd);
    auto file = hw::FileBacking::Open(path_, {});
    if (!file.ok()) return nullptr;
    file_backend_ = std::make_unique<FileBlockBackend>(vm_->server_loop(), *std::move(file));
    return file_backend_.get();
  }
  void TearDown() override {
    StorvspTest::TearDown();
    vm_.reset();  // The loop (and any I/O on it) before the backend.
    file_backend_.reset();
  }
  std::string path_;
  std::unique_ptr<FileBlockBackend> file_backend_;
};

TEST_F(StorvspFileTest, WritesReachTheFileAndReadsComeBackThroughIoUring) {
  ASSERT_NO_FATAL_FAILURE(Initialize());
  std::vector<uint8_t> data(8192);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 11 + 1);
  ASSERT_TRUE(Private().Write(kDataGpn * 4096, data).ok());
  const uint64_t pages[] = {kDataGpn, kDataGpn + 1};
  // WRITE(10) with FUA: 16 blocks at LBA 64, durable before it completes.
  std::vector<uint8_t> wrote =
      RoundTrip(Srb({0x2a, 0x08, 0, 0, 0, 64, 0, 0, 16, 0}, 8192, 0), 0x401,
                {{.byte_count = 8192, .byte_offset = 0, .gpns = pages}});
  EXPECT_EQ(wrote[12 + 2], kSrbSuccess);
  std::vector<uint8_t> on_disk(8192);
  const int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pread(fd, on_disk.data(), on_disk.size(), 64 * 512), 8192);
  close(fd);
  EXPECT_EQ(on_disk, data);
  // SYNCHRONIZE CACHE, then READ(16) of the same blocks into other pages.
  EXPECT_EQ(RoundTrip(Srb({0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, 2), 0x402)[12 + 2], kSrbSuccess);
  const uint64_t read_pages[] = {kDataGpn + 2, kDataGpn + 3};
  std::vector<uint8_t> read =
      RoundTrip(Srb({0x88, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 16, 0, 0}, 8192, 1), 0x403,
                {{.byte_count = 8192, .byte_offset = 0, .gpns = read_pages}});
  EXPECT_EQ(read[12 + 2], kSrbSuccess);
  std::vector<uint8_t> back(8192);
  ASSERT_TRUE(Private().Read((kDataGpn + 2) * 4096, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, data);
  // Nothing outside the request was written: the blocks on either side are still zero.
  const int check = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(check, 0);
  std::vector<uint8_t> around(512);
  ASSERT_EQ(pread(check, around.data(), around.size(), 63 * 512), 512);
  EXPECT_EQ(around, std::vector<uint8_t>(512, 0));
  ASSERT_EQ(pread(check, around.data(), around.size(), 80 * 512), 512);
  EXPECT_EQ(around, std::vector<uint8_t>(512, 0));
  close(check);
}

// The other way round: bytes put in the file from outside are what the guest reads.
TEST_F(StorvspFileTest, BytesWrittenToTheFileAreWhatTheGuestReads) {
  ASSERT_NO_FATAL_FAILURE(Initialize());
  std::vector<uint8_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(255 - i % 251);
  const int fd = open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 1000 * 512), 4096);
  close(fd);
  const uint64_t page[] = {kDataGpn + 1};
  std::vector<uint8_t> read =
      RoundTrip(Srb({0x28, 0, 0, 0, 0x03, 0xe8, 0, 0, 8, 0}, 4096, 1), 0x501,
                {{.byte_count = 4096, .byte_offset = 0, .gpns = page}});
  EXPECT_EQ(read[12 + 2], kSrbSuccess);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(Private().Read((kDataGpn + 1) * 4096, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, data);
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
