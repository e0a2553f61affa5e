// A live hostile host against a storage channel: a disk on a VM whose guest did not ask for
// confidential channels, so its rings and its SRB data buffers are shared pages. While the
// guest writes and reads through storvsc, the host (a thread of its own, writing only through
// the untrusted view) rewrites random bytes of the data buffers and of the packets the guest
// has just written (vstor packets, SRBs, CDBs, GPA ranges) near the ring's write index. A
// rewritten packet may name any LBA or any guest page: the host owns shared memory, so it may
// point the disk anywhere in the disk, but never past its end, never at private memory, and
// never at the paravisor's own memory. A corruption the device notices is an error completion
// or a ring error on that channel, which then closes and tears down cleanly; the guest attaches
// again and goes on. Afterwards the disk is intact in size, a private page holds its bytes, and
// a clean attach reads back what it writes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "guestmem/errors.h"
#include "guestmem/guest_memory.h"
#include "hw/storage/file_backing.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/testing/storvsc_guest.h"
#include "paravisor/vm/virtual_machine.h"
#include "tests/storvsp/disk_file.h"

namespace cvmbus::paravisor::storvsp {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kDiskBytes = 4 << 20;
constexpr uint64_t kRingGpn = 0x100;    // Both rings of the one channel, shared.
constexpr uint32_t kRingPages = 8;      // Per direction, control page included.
constexpr uint64_t kWriteGpn = 0x800;   // The SRB buffers, shared: 2 pages to write from,
constexpr uint64_t kReadGpn = 0x802;    // 2 to read into.
constexpr uint64_t kCanaryGpn = 0x900;  // A private page nothing may touch.
constexpr uint32_t kBlocks = 16;        // 8 KiB per request.
constexpr auto kAttack = 1500ms;

std::vector<uint8_t> Pattern(size_t size, uint8_t seed) {
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i * 13 + seed);
  return bytes;
}

class HostileHostStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = MakeTestDiskFile("hostile_host_storage.img", kDiskBytes);
    ASSERT_FALSE(path_.empty());
    vm_ = *vm::VirtualMachine::Create();
    auto file = hw::FileBacking::Open(path_, {});
    ASSERT_TRUE(file.ok()) << file.status();
    backend_ = std::make_unique<FileBlockBackend>(vm_->server_loop(), *std::move(file));
    vm_->OnServer([&] {
      auto device = StorvspDevice::Create(vm_->server_loop(), &vm_->bus(),
                                          {.instance_id = Guid{0x5c5c, 7, 7, {}},
                                           .disk = {.sectors = kDiskBytes / 512},
                                           .max_subchannels = 0},
                                          backend_.get());
      ASSERT_TRUE(device.ok()) << device.status();
      device_ = *std::move(device);
      ASSERT_TRUE(device_->Start().ok());
    });
    ASSERT_TRUE(vm_->guest().Connect(protocol::kVersionWin10V6_0, 0).ok());
    auto offers = vm_->guest().RequestOffers();
    ASSERT_TRUE(offers.ok() && offers->size() == 1);
    relid_ = (*offers)[0].child_relid;
    ASSERT_TRUE(vm_->MakePrivate(kCanaryGpn * 4096, 4096).ok());
    ASSERT_TRUE(Private().Write(kCanaryGpn * 4096, Pattern(4096, 0xca)).ok());
  }
  void TearDown() override {
    guest_.reset();
    if (vm_) vm_->OnServer([&] { device_.reset(); });
    vm_.reset();
    backend_.reset();
  }

  // Attach number `round`: its own GPADL ids, the same (shared) ring pages.
  absl::Status Attach(uint32_t round) {
    auto guest = StorvscGuest::Attach(vm_.get(), {.relid = relid_,
                                                  .first_gpadl_id = 1 + round,
                                                  .first_ring_gpn = kRingGpn,
                                                  .ring_pages = kRingPages,
                                                  .confidential = false,
                                                  .timeout = 200ms});
    if (!guest.ok()) return guest.status();
    guest_ = *std::move(guest);
    return absl::OkStatus();
  }

  guestmem::GuestMemory Private() const { return guestmem::GuestMemory::Private(vm_->memory()); }
  guestmem::GuestMemory Shared() const { return guestmem::GuestMemory::Untrusted(vm_->memory()); }

  std::string path_;
  std::unique_ptr<vm::VirtualMachine> vm_;
  std::unique_ptr<FileBlockBackend> backend_;
  std::unique_ptr<StorvspDevice> device_;
  std::unique_ptr<StorvscGuest> guest_;
  uint32_t relid_ = 0;
};

struct GuestCounts {
  uint64_t good = 0;          // Requests the disk completed with success.
  uint64_t refused = 0;       // Answered with an error (a corrupted request, as the host made it).
  uint64_t channel_ends = 0;  // The channel failed (a ring error or no answer): detached.
  uint64_t attaches = 0;
};

TEST_F(HostileHostStorageTest, RewritingSharedPacketsAndBuffersNeverEscapesTheDisk) {
  std::atomic<bool> stop{false};
  GuestCounts counts;
  absl::Status guest_error;
  std::thread guest([&] {
    std::mt19937_64 random(12);
    const GuestBuffer write_buffer{.gpns = {kWriteGpn, kWriteGpn + 1}};
    const GuestBuffer read_buffer{.gpns = {kReadGpn, kReadGpn + 1}};
    for (uint32_t round = 0; !stop.load() && round < 10000; ++round) {
      if (absl::Status attached = Attach(round * 2); !attached.ok()) {
        // The host may corrupt the initialization packets too: the attach fails, cleanly.
        ++counts.channel_ends;
        guest_.reset();
        continue;
      }
      ++counts.attaches;
      bool alive = true;
      while (alive && !stop.load()) {
        const uint64_t lba = random() % (kDiskBytes / 512 - kBlocks);
        for (const bool read : {false, true}) {
          if (!read) {
            (void)Shared().Write(kWriteGpn * 4096,
                                 Pattern(kBlocks * 512, static_cast<uint8_t>(lba)));
          }
          auto done = guest_->Execute(0, read ? Read16Cdb(lba, kBlocks) : Write16Cdb(lba, kBlocks),
                                      read, kBlocks * 512, read ? read_buffer : write_buffer);
          if (!done.ok()) {
            alive = false;
            break;
          }
          (done->srb_status == kSrbSuccess ? counts.good : counts.refused)++;
        }
      }
      if (!alive) ++counts.channel_ends;
      // Close and tear down, whatever the rings hold: the control path is the host's to
      // delay, not to corrupt (SynIC messages are private on this VM).
      if (absl::Status detached = guest_->Detach(); !detached.ok()) {
        guest_error = detached;
        return;
      }
      guest_.reset();
    }
  });

  // The host: the packets just written (the 256 bytes below the guest -> host ring's write
  // index, which it reads like any shared word), and the data buffers.
  std::mt19937_64 random(13);
  const guestmem::GuestMemory host = Shared();
  const uint32_t data_bytes = (kRingPages - 1) * 4096;
  uint64_t corruptions = 0, private_refused = 0;
  const auto attack_end = std::chrono::steady_clock::now() + kAttack;
  while (std::chrono::steady_clock::now() < attack_end) {
    uint64_t gpa;
    // One in 16 at the packets (most requests then go through whole, and a channel a
    // corruption ended is soon attached again), one in 8 at the private page, the rest at the
    // buffers.
    switch (const uint64_t pick = random() % 16; pick) {
      case 0: {
        const uint32_t write = host.ReadPlain<uint32_t>(kRingGpn * 4096).value_or(0) % data_bytes;
        const uint32_t offset = (write + data_bytes - 1 - random() % 256) % data_bytes;
        gpa = (kRingGpn + 1) * 4096 + offset;
        break;
      }
      case 1:
      case 2:
        gpa = kCanaryGpn * 4096 + random() % 4096;
        break;
      default:
        gpa = kWriteGpn * 4096 + random() % (4 * 4096);
    }
    const uint64_t value = random();
    const size_t len = std::min<uint64_t>(1 + random() % 4, 4096 - gpa % 4096);
    const absl::Status wrote =
        host.Write(gpa, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&value), len));
    if (gpa / 4096 == kCanaryGpn) {
      EXPECT_TRUE(guestmem::IsError(wrote, guestmem::ErrorKind::kNotShared)) << wrote;
      ++private_refused;
    } else {
      ASSERT_TRUE(wrote.ok()) << wrote;
      ++corruptions;
    }
    std::this_thread::sleep_for(20us);
  }
  stop = true;
  guest.join();
  ASSERT_TRUE(guest_error.ok()) << guest_error;
  EXPECT_GT(counts.good, 20u);  // Hundreds here; each channel end costs a 200 ms wait.
  EXPECT_GT(counts.attaches, 0u);

  // Nothing escaped: the disk is its size, the private page its bytes.
  struct stat file {};
  ASSERT_EQ(stat(path_.c_str(), &file), 0);
  EXPECT_EQ(static_cast<uint64_t>(file.st_size), kDiskBytes);
  std::vector<uint8_t> canary(4096);
  ASSERT_TRUE(Private().Read(kCanaryGpn * 4096, absl::MakeSpan(canary)).ok());
  EXPECT_EQ(canary, Pattern(4096, 0xca));

  // And the disk still serves a guest the host leaves alone: written bytes land in the file.
  ASSERT_TRUE(Attach(100000).ok());
  const std::vector<uint8_t> data = Pattern(kBlocks * 512, 0x77);
  ASSERT_TRUE(Shared().Write(kWriteGpn * 4096, data).ok());
  auto written = guest_->Execute(0, Write16Cdb(64, kBlocks), false, kBlocks * 512,
                                 {.gpns = {kWriteGpn, kWriteGpn + 1}});
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->srb_status, kSrbSuccess);
  EXPECT_EQ(ReadFileBytes(path_, 64 * 512, data.size()), data);
  StorvspStats stats;
  vm_->OnServer([&] { stats = device_->stats(); });
  std::printf(
      "hostile host on storage: %llu rewrites in %lld ms (packets and buffers), %llu writes to a "
      "private page all refused; guest: %llu requests done, %llu refused, %llu channel ends over "
      "%llu attaches; device: %llu packets, %llu malformed, last error '%s'\n",
      static_cast<unsigned long long>(corruptions),
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(kAttack).count()),
      static_cast<unsigned long long>(private_refused),
      static_cast<unsigned long long>(counts.good), static_cast<unsigned long long>(counts.refused),
      static_cast<unsigned long long>(counts.channel_ends),
      static_cast<unsigned long long>(counts.attaches),
      static_cast<unsigned long long>(stats.packets),
      static_cast<unsigned long long>(stats.bad_packets), stats.last_error.ToString().c_str());
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
