// Servicing a storvsp disk while its guest has I/O in flight: the device pauses, its I/O
// drains, the server and the device are saved and replaced on the loop, and the new device
// takes up every channel (the primary and its subchannels) where the old one stopped. Every
// request the guest sent, before or during the servicing, is answered exactly once, and the
// file holds what was written; and so through 200 servicings at random moments under reads
// and writes on every channel. Also: a paused device that is resumed instead, and saved
// states that could not have come from this device.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "hw/storage/file_backing.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/server/saved_queries.h"
#include "paravisor/testing/storvsc_guest.h"
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
const Guid kInstance{0x5e41ce, 1, 2, {}};

class StorvspServicingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = MakeTestDiskFile("storvsp_servicing_disk.img", kDiskBytes);
    ASSERT_FALSE(path_.empty());
    vm_ = *VirtualMachine::Create();
    auto file = hw::FileBacking::Open(path_, {});
    ASSERT_TRUE(file.ok()) << file.status();
    backend_ = std::make_unique<FileBlockBackend>(vm_->server_loop(), *std::move(file));
    vm_->OnServer([&] {
      device_ = NewDevice();
      ASSERT_NE(device_, nullptr);
      ASSERT_TRUE(device_->Start().ok());
    });
    auto version =
        vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels);
    ASSERT_TRUE(version.ok()) << version.status();
    auto offers = vm_->guest().RequestOffers();
    ASSERT_TRUE(offers.ok() && offers->size() == 1);
    ASSERT_TRUE(vm_->MakePrivate(kDataGpn * 4096, 4 * kPagesPerChannel * 4096).ok());
    auto guest = StorvscGuest::Attach(vm_.get(), {.relid = (*offers)[0].child_relid, .cpus = 4});
    ASSERT_TRUE(guest.ok()) << guest.status();
    guest_ = *std::move(guest);
    ASSERT_EQ(guest_->channel_count(), 1u + kMaxSubchannels);
  }
  void TearDown() override {
    guest_.reset();
    if (vm_) vm_->OnServer([&] { device_.reset(); });
    vm_.reset();  // The loop (and any I/O on it) before the backend.
    backend_.reset();
  }

  // Loop thread.
  std::unique_ptr<StorvspDevice> NewDevice() {
    auto device = StorvspDevice::Create(vm_->server_loop(), &vm_->bus(),
                                        {.instance_id = kInstance,
                                         .disk = {.sectors = kDiskBytes / 512},
                                         .allow_confidential_external_memory = true,
                                         .max_subchannels = kMaxSubchannels},
                                        backend_.get());
    EXPECT_TRUE(device.ok()) << device.status();
    return device.ok() ? *std::move(device) : nullptr;
  }

  // Pauses the device and waits (up to 5 s) for its I/O to drain.
  bool PauseAndDrain() {
    vm_->OnServer([&] { device_->Pause(); });
    for (int i = 0; i < 5000; ++i) {
      bool quiesced = false;
      vm_->OnServer([&] { quiesced = device_->Quiesced(); });
      if (quiesced) return true;
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }

  // The servicing the daemon does, for this one device (the device must be drained).
  absl::Status Service() {
    absl::Status result;
    vm_->OnServer([&] {
      absl::StatusOr<saved::Storvsp> device_state = device_->Save();
      if (!device_state.ok()) {
        result = device_state.status();
        return;
      }
      saved_ = *device_state;
      absl::StatusOr<saved::Server> server_state =
          vm_->ServiceServerOnLoop([&] { device_.reset(); });
      if (!server_state.ok()) {
        result = server_state.status();
        return;
      }
      device_ = NewDevice();
      result = device_->StartRestored(saved_, [&](uint16_t index) {
        return SavedChannelOpen(*server_state, kScsiInterfaceId, kInstance, index);
      });
    });
    return result;
  }

  static GuestBuffer BufferOf(size_t channel, uint32_t page = 0, uint32_t pages = 1) {
    GuestBuffer buffer;
    for (uint32_t i = 0; i < pages; ++i) {
      buffer.gpns.push_back(kDataGpn + channel * kPagesPerChannel + page + i);
    }
    return buffer;
  }
  guestmem::GuestMemory Private() const { return guestmem::GuestMemory::Private(vm_->memory()); }
  static std::vector<uint8_t> Pattern(size_t channel, uint32_t i) {
    std::vector<uint8_t> data(4096);
    for (size_t b = 0; b < data.size(); ++b) data[b] = static_cast<uint8_t>(b * 13 + channel + i);
    return data;
  }
  std::vector<uint8_t> FileBytes(uint64_t offset, size_t length) const {
    return ReadFileBytes(path_, offset, length);
  }
  StorvspStats Stats() {
    StorvspStats stats;
    vm_->OnServer([&] { stats = device_->stats(); });
    return stats;
  }

  std::string path_;
  std::unique_ptr<VirtualMachine> vm_;
  std::unique_ptr<FileBlockBackend> backend_;
  std::unique_ptr<StorvspDevice> device_;
  std::unique_ptr<StorvscGuest> guest_;
  saved::Storvsp saved_;
};

constexpr uint32_t kWritesPerChannel = 8;
uint64_t LbaOf(size_t channel, uint32_t i) { return 8 * (channel * 32 + i); }
uint64_t IdOf(size_t channel, uint32_t i) { return 1000 * (channel + 1) + i; }

TEST_F(StorvspServicingTest, WritesInFlightAndSentDuringServicingCompleteOnceOnEveryChannel) {
  // Half the writes of each channel go before the pause (in flight or done), half while the
  // device is paused (they wait in the ring for the restored device).
  const auto submit = [&](uint32_t from, uint32_t to) {
    for (size_t channel = 0; channel < guest_->channel_count(); ++channel) {
      for (uint32_t i = from; i < to; ++i) {
        ASSERT_TRUE(Private().Write(BufferOf(channel, i).gpns[0] * 4096, Pattern(channel, i)).ok());
        ASSERT_TRUE(guest_
                        ->Submit(channel, IdOf(channel, i), Write16Cdb(LbaOf(channel, i), 8), false,
                                 4096, BufferOf(channel, i))
                        .ok());
      }
    }
  };
  submit(0, kWritesPerChannel / 2);
  ASSERT_TRUE(PauseAndDrain());
  submit(kWritesPerChannel / 2, kWritesPerChannel);
  absl::Status serviced = Service();
  ASSERT_TRUE(serviced.ok()) << serviced;
  EXPECT_EQ(saved_.subchannels(), kMaxSubchannels);
  EXPECT_EQ(saved_.version(), kVersionWin8_1);
  EXPECT_EQ(saved_.negotiation_state(), 3u);  // Ready.

  for (size_t channel = 0; channel < guest_->channel_count(); ++channel) {
    std::map<uint64_t, int> answered;
    for (uint32_t i = 0; i < kWritesPerChannel; ++i) {
      uint64_t id = 0;
      auto done = guest_->Wait(channel, &id);
      ASSERT_TRUE(done.ok()) << "channel " << channel << ": " << done.status();
      EXPECT_EQ(done->srb_status, kSrbSuccess);
      ++answered[id];
    }
    for (uint32_t i = 0; i < kWritesPerChannel; ++i) {
      EXPECT_EQ(answered[IdOf(channel, i)], 1) << "channel " << channel << " write " << i;
      EXPECT_EQ(FileBytes(LbaOf(channel, i) * 512, 4096), Pattern(channel, i))
          << "channel " << channel << " write " << i;
    }
  }
  // The restored channels go on: a read on each returns what the file holds.
  for (size_t channel = 0; channel < guest_->channel_count(); ++channel) {
    auto read =
        guest_->Execute(channel, Read16Cdb(LbaOf(channel, 1), 8), true, 4096, BufferOf(channel, 9));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->srb_status, kSrbSuccess);
    std::vector<uint8_t> got(4096);
    ASSERT_TRUE(Private().Read(BufferOf(channel, 9).gpns[0] * 4096, absl::MakeSpan(got)).ok());
    EXPECT_EQ(got, Pattern(channel, 1));
  }
  EXPECT_EQ(Stats().restores, 1u + kMaxSubchannels);
  EXPECT_TRUE(vm_->guest().NothingArrives(protocol::MessageType::kRescindChannelOffer, 100ms));
}

// Servicing again and again at random moments while the guest writes and reads on all four
// channels, two requests in flight on each: every request answered once with success, every
// read returns the last write to its sectors, and the file holds every channel's last writes.
TEST_F(StorvspServicingTest, TwoHundredServicingsUnderReadsAndWritesLoseNothing) {
  constexpr int kServicings = 200;
  constexpr uint32_t kSlots = 8;  // Per channel: 4 KiB each, written in turn.
  const auto slot_lba = [](size_t channel, uint32_t slot) { return 8 * (channel * 64 + slot); };
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> rounds{0};
  absl::Status guest_error;
  // The guest: in each round, on each channel, a write of the round's pattern to one slot and
  // a read of another, both in flight at once; then both answers.
  std::thread guest([&] {
    const size_t channels = guest_->channel_count();
    // The round whose pattern each slot holds (-1: never written, zeros).
    std::vector<std::vector<int64_t>> written(channels, std::vector<int64_t>(kSlots, -1));
    for (uint32_t round = 0; !stop.load(); ++round) {
      const uint32_t write_slot = round % kSlots, read_slot = (round + 3) % kSlots;
      const auto fail = [&](size_t channel, const std::string& what) {
        guest_error =
            absl::DataLossError(fmt::format("round {} channel {}: {}", round, channel, what));
      };
      for (size_t channel = 0; channel < channels; ++channel) {
        const GuestBuffer write_buffer = BufferOf(channel, write_slot);
        const GuestBuffer read_buffer = BufferOf(channel, kSlots + read_slot);
        absl::Status status = Private().Write(write_buffer.gpns[0] * 4096, Pattern(channel, round));
        if (status.ok()) {
          status = guest_->Submit(channel, 2 * round, Write16Cdb(slot_lba(channel, write_slot), 8),
                                  false, 4096, write_buffer);
        }
        if (status.ok()) {
          status =
              guest_->Submit(channel, 2 * round + 1, Read16Cdb(slot_lba(channel, read_slot), 8),
                             true, 4096, read_buffer);
        }
        if (!status.ok()) return fail(channel, std::string(status.message()));
      }
      for (size_t channel = 0; channel < channels; ++channel) {
        bool answered[2] = {false, false};
        for (int i = 0; i < 2; ++i) {
          uint64_t id = 0;
          absl::StatusOr<StorvscCompletion> done = guest_->Wait(channel, &id);
          if (!done.ok()) return fail(channel, std::string(done.status().message()));
          if ((id != 2 * round && id != 2 * round + 1) || answered[id - 2 * round]) {
            return fail(channel, fmt::format("answer {} repeated or not asked for", id));
          }
          answered[id - 2 * round] = true;
          if (done->srb_status != kSrbSuccess) {
            return fail(channel, fmt::format("request {}: SRB status {:#x}", id, done->srb_status));
          }
        }
        std::vector<uint8_t> got(4096);
        if (!Private()
                 .Read(BufferOf(channel, kSlots + read_slot).gpns[0] * 4096, absl::MakeSpan(got))
                 .ok()) {
          return fail(channel, "the read's buffer is unreadable");
        }
        const int64_t last = written[channel][read_slot];
        const std::vector<uint8_t> want = last < 0 ? std::vector<uint8_t>(4096, 0)
                                                   : Pattern(channel, static_cast<uint32_t>(last));
        if (got != want) {
          return fail(channel, fmt::format("slot {} read back other than round {}'s write",
                                           read_slot, last));
        }
        written[channel][write_slot] = round;
      }
      rounds.fetch_add(1);
    }
    // What the file must hold: each slot's last write.
    for (size_t channel = 0; channel < channels; ++channel) {
      for (uint32_t slot = 0; slot < kSlots; ++slot) {
        const int64_t last = written[channel][slot];
        if (last >= 0 && FileBytes(slot_lba(channel, slot) * 512, 4096) !=
                             Pattern(channel, static_cast<uint32_t>(last))) {
          guest_error = absl::DataLossError(fmt::format(
              "channel {} slot {}: the file does not hold round {}'s write", channel, slot, last));
          return;
        }
      }
    }
  });
  std::mt19937 random(20261208);
  std::uniform_int_distribution<int> gap_us(0, 3000);
  int serviced = 0, with_traffic = 0;
  uint64_t rounds_before = 0;
  for (; serviced < kServicings && guest_error.ok(); ++serviced) {
    std::this_thread::sleep_for(std::chrono::microseconds(gap_us(random)));
    ASSERT_TRUE(PauseAndDrain()) << "servicing " << serviced << ": the disk did not drain";
    absl::Status status = Service();
    ASSERT_TRUE(status.ok()) << "servicing " << serviced << ": " << status;
    const uint64_t rounds_now = rounds.load();
    with_traffic += rounds_now > rounds_before ? 1 : 0;
    rounds_before = rounds_now;
  }
  stop = true;
  guest.join();
  EXPECT_TRUE(guest_error.ok()) << "after " << serviced << " servicings: " << guest_error;
  EXPECT_EQ(serviced, kServicings);
  // The I/O ran through the servicings: rounds finished between many of them (176 of 200 in
  // a plain build here, 33-122 under ASan, where each servicing's drain takes longer).
  EXPECT_GE(with_traffic, kServicings / 10);
  std::printf(
      "%d servicings (%d after rounds since the last): %llu rounds of 4 channels x "
      "(a write and a read)\n",
      serviced, with_traffic, static_cast<unsigned long long>(rounds.load()));
}

// A guest that does not read its completions: the host -> guest ring fills, the device keeps
// what does not fit, and the saved state carries those completions to the new device.
TEST_F(StorvspServicingTest, CompletionsThatDidNotFitInTheRingAreSavedAndDelivered) {
  const std::vector<uint8_t> test_unit_ready(6, 0);
  uint64_t submitted = 0;
  for (int refused = 0; refused < 50 && submitted < 10000;) {
    if (guest_->Submit(0, submitted + 1, test_unit_ready, false, 0, {}).ok()) {
      ++submitted;
      refused = 0;
    } else {
      ++refused;
      std::this_thread::sleep_for(1ms);  // Give the device time to read what it can.
    }
  }
  ASSERT_TRUE(PauseAndDrain());
  absl::Status serviced = Service();
  ASSERT_TRUE(serviced.ok()) << serviced;
  EXPECT_GE(saved_.pending_size(), 1) << "the host -> guest ring never filled";
  std::vector<int> answered(submitted + 1, 0);
  for (uint64_t i = 0; i < submitted; ++i) {
    uint64_t id = 0;
    auto done = guest_->Wait(0, &id);
    ASSERT_TRUE(done.ok()) << "after " << i << " of " << submitted << ": " << done.status();
    ASSERT_GE(id, 1u);
    ASSERT_LE(id, submitted);
    ++answered[id];
  }
  for (uint64_t id = 1; id <= submitted; ++id) EXPECT_EQ(answered[id], 1) << "request " << id;
}

TEST_F(StorvspServicingTest, APausedDeviceRefusesToSaveUntilDrainedAndResumesServing) {
  vm_->OnServer([&] { EXPECT_FALSE(device_->Save().ok()) << "saved without a pause"; });
  ASSERT_TRUE(PauseAndDrain());
  ASSERT_TRUE(guest_->Submit(2, 42, Read16Cdb(0, 8), true, 4096, BufferOf(2)).ok());
  EXPECT_EQ(Stats().srbs, 0u) << "a paused device took a request";
  vm_->OnServer([&] { device_->Resume(); });  // The servicing was called off.
  uint64_t id = 0;
  auto done = guest_->Wait(2, &id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(id, 42u);
  EXPECT_EQ(done->srb_status, kSrbSuccess);
}

// Each saved state below is one this device could not have written; StartRestored names the
// field and offers nothing.
TEST_F(StorvspServicingTest, ImpossibleSavedStatesAreRefusedNamingTheField) {
  ASSERT_TRUE(PauseAndDrain());
  saved::Storvsp good;
  vm_->OnServer([&] { good = *device_->Save(); });
  const auto refused = [&](saved::Storvsp state, const std::string& field) {
    vm_->OnServer([&] {
      std::unique_ptr<StorvspDevice> device = NewDevice();
      absl::Status status = device->StartRestored(state, [](uint16_t index) { return index == 0; });
      EXPECT_FALSE(status.ok()) << field;
      EXPECT_NE(std::string(status.message()).find(field), std::string::npos) << status;
      EXPECT_EQ(device->stats().subchannels_offered, 0u);
    });
  };
  saved::Storvsp state = good;
  state.set_instance_id("0123456789abcdef");
  refused(state, "instance_id");
  state = good;
  state.set_subchannels(kMaxSubchannels + 1);
  refused(state, "subchannels");
  state = good;
  state.set_negotiation_state(7);
  refused(state, "negotiation_state");
  state = good;
  state.set_version(0x1234);
  refused(state, "version");
  state = good;
  state.set_negotiation_state(0);  // Awaiting BEGIN_INITIALIZATION, yet a version.
  refused(state, "negotiation_state");
  state = good;
  saved::StorvspCompletion* pending = state.add_pending();
  pending->set_channel(2);  // was_open says only the primary was.
  refused(state, "pending[0]");
  state = good;
  pending = state.add_pending();
  pending->set_channel(0);
  pending->set_payload(std::string(65, 'x'));
  refused(state, "pending[0]");
  vm_->OnServer([&] { device_->Resume(); });
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp
