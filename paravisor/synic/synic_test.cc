// The paravisor's SynIC, one test per rule. Sources: the Hyper-V TLFS (synthetic MSRs, the SIMP
// message slot protocol, SIEFP event flags, HvPostMessage and HvSignalEvent) as Linux uses it
// (drivers/hv/hv.c, drivers/hv/vmbus_drv.c vmbus_signal_eom); shared/docs/linux-guest.md.
//
// The guest is the test itself (or, in the concurrency test, a thread) calling the guest-side
// members as a vCPU's MSR and hypercall exits would, and reading its SIMP and SIEFP pages
// through guest memory. Interrupts go to a RecordingSink; the server side is a real EventLoop.
#include "paravisor/synic/synic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/testing/status_testing.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "paravisor/synic/hv_abi.h"

namespace cvmbus::paravisor::synic {
namespace {

using guestmem::Access;
using guestmem::GuestMemory;
using guestmem::MemoryBacking;

constexpr uint64_t kMemoryBytes = 16 << 20;
constexpr uint64_t kPage = 4096;
// VP 0's pages.
constexpr uint64_t kSimpGpa = 0x10000;
constexpr uint64_t kSiefpGpa = 0x11000;
constexpr uint64_t kHypercallGpa = 0x12000;
constexpr uint64_t kInputGpa = 0x13000;
// VP 1's pages.
constexpr uint64_t kVp1SimpGpa = 0x20000;
constexpr uint64_t kVp1SiefpGpa = 0x21000;

constexpr uint8_t kVmbusSint = 2;
constexpr uint8_t kVector = 0xf3;                        // HYPERVISOR_CALLBACK_VECTOR.
constexpr uint64_t kGuestOsId = uint64_t{0x8100} << 48;  // HV_LINUX_VENDOR_ID.
constexpr uint64_t kSintMaskedReset = 0x10000;           // SINTx reset: masked, vector 0.
constexpr uint64_t kPostMessage = kCallPostMessage;      // A slow, simple call.
constexpr uint64_t kSignalEventFast = kCallSignalEvent | kControlFast;
constexpr auto kTimeout = std::chrono::seconds(30);

// (vp, vector) of one InterruptSink::Assert call.
using Interrupt = std::pair<uint32_t, uint32_t>;

// Records every interrupt; lets a thread wait for the n-th.
class RecordingSink : public InterruptSink {
 public:
  void Assert(uint32_t vp, uint8_t vector) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.emplace_back(vp, vector);
    }
    cv_.notify_all();
  }
  std::vector<Interrupt> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  // True once at least `count` interrupts were recorded; false after `kTimeout`.
  bool WaitForCount(size_t count) const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] { return calls_.size() >= count; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<Interrupt> calls_;
};

// What the attached server saw: messages and on_space calls, with the thread of each.
class ServerRecord {
 public:
  void OnMessage(uint32_t connection_id, std::vector<uint8_t> payload) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      messages_.emplace_back(connection_id, std::move(payload));
      threads_.push_back(std::this_thread::get_id());
    }
    cv_.notify_all();
  }
  void OnSpace() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++spaces_;
      threads_.push_back(std::this_thread::get_id());
    }
    cv_.notify_all();
  }
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> messages() const {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_;
  }
  std::vector<std::thread::id> threads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_;
  }
  uint64_t spaces() const {
    std::lock_guard<std::mutex> lock(mu_);
    return spaces_;
  }
  bool WaitForMessages(size_t count) const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] { return messages_.size() >= count; });
  }
  bool WaitForSpaces(uint64_t count) const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] { return spaces_ >= count; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> messages_;
  std::vector<std::thread::id> threads_;
  uint64_t spaces_ = 0;
};

// An EventLoop running on its own thread (the server's).
class ServerLoop {
 public:
  ServerLoop() {
    std::promise<void> started;
    thread_ = std::thread([this, &started] {
      absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
      if (!loop.ok()) {
        ADD_FAILURE() << loop.status();
        started.set_value();
        return;
      }
      loop_ = *std::move(loop);
      started.set_value();
      (void)loop_->Run();
    });
    started.get_future().wait();
  }
  ~ServerLoop() {
    if (loop_) loop_->Stop();
    thread_.join();
    loop_.reset();  // After the join: no thread is in Run, Stop or Post any more.
  }
  hw::EventLoop* loop() const { return loop_.get(); }
  std::thread::id thread_id() const { return thread_.get_id(); }
  // Returns once the loop has run everything posted before the call.
  void Sync() {
    std::promise<void> done;
    loop_->Post([&done] { done.set_value(); });
    done.get_future().wait();
  }

 private:
  std::unique_ptr<hw::EventLoop> loop_;
  std::thread thread_;
};

std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> bytes(len);
  for (size_t i = 0; i < len; ++i) bytes[i] = static_cast<uint8_t>(seed + i * 7);
  return bytes;
}

// The 16-byte slot header a delivered VMBus message must have.
std::vector<uint8_t> ExpectedHeader(size_t payload_size, uint8_t flags) {
  std::vector<uint8_t> header(sizeof(MessageSlotHeader), 0);
  header[0] = kMessageTypeVmbus;  // message_type 1, little-endian.
  header[4] = static_cast<uint8_t>(payload_size);
  header[5] = flags;
  return header;  // Reserved and sender (bytes 6..15) are 0.
}

class SynicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::shared_ptr<MemoryBacking>> backing = MemoryBacking::Create(
        guestmem::MemoryOptions{.name = "synic-test", .regions = {{0, kMemoryBytes}}});
    ASSERT_OK(backing.status());
    backing_ = *backing;
    memory_ = GuestMemory::Untrusted(backing_);
    ASSERT_NO_FATAL_FAILURE(Init(SynicOptions()));
  }

  // (Re)creates synic_ with `options`; their memory defaults to the untrusted view.
  void Init(SynicOptions options) {
    if (!options.memory.has_backing()) options.memory = memory_;
    options.name = "test";
    absl::StatusOr<std::shared_ptr<Synic>> synic = Synic::Create(std::move(options));
    ASSERT_OK(synic.status());
    synic_ = *synic;
    synic_->SetInterruptSink(sink_);
  }

  // Starts a server loop and attaches record_ to it for `connection_ids`.
  void StartServer(std::vector<uint32_t> connection_ids) {
    server_ = std::make_unique<ServerLoop>();
    ASSERT_NE(server_->loop(), nullptr);
    ASSERT_OK(synic_->AttachServer(
        server_->loop(), std::move(connection_ids),
        [this](uint32_t id, std::vector<uint8_t> payload) {
          record_.OnMessage(id, std::move(payload));
        },
        [this] { record_.OnSpace(); }));
  }

  // Writes a sequence of MSRs, stopping at the first error.
  absl::Status WriteMsrs(uint32_t vp, std::initializer_list<std::pair<uint32_t, uint64_t>> msrs) {
    for (const auto& [msr, value] : msrs) {
      if (absl::Status status = synic_->WriteMsr(vp, msr, value); !status.ok()) return status;
    }
    return absl::OkStatus();
  }

  // What Linux's hv_synic_enable_regs does: SIMP, SIEFP, SINT2 unmasked, then SCONTROL.
  absl::Status EnableVp(uint32_t vp, uint64_t simp_gpa, uint64_t siefp_gpa,
                        uint8_t vector = kVector) {
    return WriteMsrs(vp, {{kMsrSimp, simp_gpa | kPageEnable},
                          {kMsrSiefp, siefp_gpa | kPageEnable},
                          {kMsrSint0 + kVmbusSint, vector},
                          {kMsrScontrol, kScontrolEnable}});
  }

  // What Linux's hyperv_init does: the guest OS id, then the hypercall page.
  absl::Status EnableHypercalls() {
    return WriteMsrs(0, {{kMsrGuestOsId, kGuestOsId}, {kMsrHypercall, kHypercallGpa | 1}});
  }

  uint64_t Msr(uint32_t vp, uint32_t msr) {
    absl::StatusOr<uint64_t> value = synic_->ReadMsr(vp, msr);
    EXPECT_OK(value.status());
    return value.value_or(~uint64_t{0});
  }

  std::vector<uint8_t> Bytes(uint64_t gpa, size_t len) {
    std::vector<uint8_t> bytes(len);
    EXPECT_OK(memory_.Read(gpa, absl::MakeSpan(bytes)));
    return bytes;
  }
  std::vector<uint8_t> SlotHeader(uint64_t simp_gpa, uint8_t sint) {
    return Bytes(simp_gpa + sint * kMessageSlotBytes, sizeof(MessageSlotHeader));
  }
  std::vector<uint8_t> SlotPayload(uint64_t simp_gpa, uint8_t sint, size_t len) {
    return Bytes(simp_gpa + sint * kMessageSlotBytes + kMessagePayloadOffset, len);
  }
  uint32_t SlotType(uint64_t simp_gpa, uint8_t sint) {
    absl::StatusOr<uint32_t> type =
        memory_.ReadPlain<uint32_t>(simp_gpa + sint * kMessageSlotBytes);
    EXPECT_OK(type.status());
    return type.value_or(~uint32_t{0});
  }
  uint32_t FlagWord(uint64_t siefp_gpa, uint8_t sint, uint16_t flag) {
    absl::StatusOr<uint32_t> word =
        memory_.ReadPlain<uint32_t>(siefp_gpa + sint * kEventFlagsBlockBytes + flag / 32 * 4);
    EXPECT_OK(word.status());
    return word.value_or(~uint32_t{0});
  }

  // Linux's vmbus_signal_eom: empty the slot, full barrier, then EOM only if message_pending.
  absl::Status ConsumeSlot(uint32_t vp, uint64_t simp_gpa, uint8_t sint) {
    const uint64_t slot = simp_gpa + sint * kMessageSlotBytes;
    if (absl::Status cleared = memory_.WritePlain<uint32_t>(slot, kMessageTypeNone);
        !cleared.ok()) {
      return cleared;
    }
    // virt_mb() then the message_pending read, as one seq_cst RMW (OR 0) of the flags word: the
    // clear is visible before the flags are read (pairs with the SynIC's set-pending-then-look-
    // again). An RMW rather than atomic_thread_fence, which ThreadSanitizer does not model.
    absl::StatusOr<uint32_t> flags_word = memory_.FetchOr32(slot + 4, 0);
    if (!flags_word.ok()) return flags_word.status();
    const uint8_t flags = static_cast<uint8_t>(*flags_word >> 8);  // message_flags is byte 5.
    if ((flags & kMessageFlagPending) != 0) return synic_->WriteMsr(vp, kMsrEom, 0);
    return absl::OkStatus();
  }

  // The guest's HvPostMessage: the input page at `gpa`, then the call.
  uint64_t PostMessage(uint32_t connection_id, absl::Span<const uint8_t> payload,
                       uint32_t message_type = kMessageTypeVmbus, uint64_t gpa = kInputGpa,
                       uint64_t control = kPostMessage) {
    PostMessageInput input{};
    input.connection_id = connection_id;
    input.message_type = message_type;
    input.payload_size = static_cast<uint32_t>(payload.size());
    if (!payload.empty()) {  // memcpy from an empty span's null pointer is undefined.
      std::memcpy(input.payload, payload.data(), std::min(payload.size(), sizeof(input.payload)));
    }
    const absl::Status written = memory_.Write(
        gpa, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&input), sizeof(input)));
    if (!written.ok() && gpa < kMemoryBytes) ADD_FAILURE() << written;
    return synic_->Hypercall(0, control, gpa, 0);
  }

  std::shared_ptr<MemoryBacking> backing_;
  GuestMemory memory_;
  std::shared_ptr<RecordingSink> sink_ = std::make_shared<RecordingSink>();
  ServerRecord record_;
  std::unique_ptr<ServerLoop> server_;  // Stopped after synic_ is gone.
  std::shared_ptr<Synic> synic_;
};

void ExpectGp(const absl::Status& status) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

// --- MSRs ---------------------------------------------------------------------------------------

TEST_F(SynicTest, MsrResetValues) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.vp_count = 3}));
  for (uint32_t vp = 0; vp < 3; ++vp) {
    SCOPED_TRACE(vp);
    EXPECT_EQ(Msr(vp, kMsrGuestOsId), 0u);
    EXPECT_EQ(Msr(vp, kMsrHypercall), 0u);
    EXPECT_EQ(Msr(vp, kMsrVpAssistPage), 0u);
    EXPECT_EQ(Msr(vp, kMsrScontrol), 0u);
    EXPECT_EQ(Msr(vp, kMsrSimp), 0u);
    EXPECT_EQ(Msr(vp, kMsrSiefp), 0u);
    for (uint32_t sint = 0; sint < kSintCount; ++sint) {
      EXPECT_EQ(Msr(vp, kMsrSint0 + sint), kSintMaskedReset) << "SINT" << sint;
    }
    EXPECT_EQ(Msr(vp, kMsrSversion), 1u);
    EXPECT_EQ(Msr(vp, kMsrVpIndex), vp);
    EXPECT_EQ(Msr(vp, kMsrEom), 0u);
  }
}

TEST_F(SynicTest, EomReadsZeroAfterWrite) {
  ASSERT_OK(synic_->WriteMsr(0, kMsrEom, 0));
  EXPECT_EQ(Msr(0, kMsrEom), 0u);
}

TEST_F(SynicTest, TimeRefCountIncreases) {
  const uint64_t first = Msr(0, kMsrTimeRefCount);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const uint64_t second = Msr(0, kMsrTimeRefCount);
  // 100 ns units: 2 ms is at least 20000 ticks.
  EXPECT_GE(second - first, 20000u) << first << " -> " << second;
}

TEST_F(SynicTest, ScontrolReservedBitsFault) {
  ExpectGp(synic_->WriteMsr(0, kMsrScontrol, kScontrolEnable | 2));
  EXPECT_EQ(Msr(0, kMsrScontrol), 0u);
}

TEST_F(SynicTest, SimpReservedBitsFault) {
  ExpectGp(synic_->WriteMsr(0, kMsrSimp, kSimpGpa | kPageEnable | 0x800));
  EXPECT_EQ(Msr(0, kMsrSimp), 0u);
}

TEST_F(SynicTest, SiefpReservedBitsFault) {
  ExpectGp(synic_->WriteMsr(0, kMsrSiefp, kSiefpGpa | kPageEnable | 0x2));
  EXPECT_EQ(Msr(0, kMsrSiefp), 0u);
}

TEST_F(SynicTest, VpAssistReservedBitsFault) {
  ExpectGp(synic_->WriteMsr(0, kMsrVpAssistPage, 0x30000 | kPageEnable | 0x10));
  EXPECT_EQ(Msr(0, kMsrVpAssistPage), 0u);
  ASSERT_OK(synic_->WriteMsr(0, kMsrVpAssistPage, 0x30000 | kPageEnable));  // Accepted.
  EXPECT_EQ(Msr(0, kMsrVpAssistPage), 0x30000 | kPageEnable);
}

TEST_F(SynicTest, HypercallReservedBitsFault) {
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, kGuestOsId));
  ExpectGp(synic_->WriteMsr(0, kMsrHypercall, kHypercallGpa | kHypercallEnable | 0x4));
  EXPECT_EQ(Msr(0, kMsrHypercall), 0u);
}

TEST_F(SynicTest, SintReservedBitsFault) {
  ExpectGp(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kVector | (uint64_t{1} << 19)));
  EXPECT_EQ(Msr(0, kMsrSint0 + kVmbusSint), kSintMaskedReset);
}

TEST_F(SynicTest, UnmaskedSintWithReservedVectorFaults) {
  ExpectGp(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, 15));
  EXPECT_EQ(Msr(0, kMsrSint0 + kVmbusSint), kSintMaskedReset);
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, 16));  // The first valid vector.
  EXPECT_EQ(Msr(0, kMsrSint0 + kVmbusSint), 16u);
}

TEST_F(SynicTest, MaskedSintWithReservedVectorAccepted) {
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kSintMasked | 15));
  EXPECT_EQ(Msr(0, kMsrSint0 + kVmbusSint), kSintMasked | 15);
}

TEST_F(SynicTest, ReadOnlyMsrWritesFault) {
  for (uint32_t msr : {kMsrVpIndex, kMsrSversion, kMsrTimeRefCount}) {
    SCOPED_TRACE(msr);
    ExpectGp(synic_->WriteMsr(0, msr, 5));
  }
  EXPECT_EQ(Msr(0, kMsrVpIndex), 0u);
  EXPECT_EQ(Msr(0, kMsrSversion), 1u);
}

TEST_F(SynicTest, MsrOutsideTheSetFaults) {
  for (uint32_t msr : {0x40000003u, 0x40000085u, 0x400000a0u, 0x40000074u}) {
    SCOPED_TRACE(msr);
    ExpectGp(synic_->ReadMsr(0, msr).status());
    ExpectGp(synic_->WriteMsr(0, msr, 0));
  }
}

TEST_F(SynicTest, VpOutOfRangeFails) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.vp_count = 2}));
  ExpectGp(synic_->ReadMsr(2, kMsrVpIndex).status());
  ExpectGp(synic_->WriteMsr(2, kMsrScontrol, kScontrolEnable));
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(synic_->Hypercall(2, kSignalEventFast, 1, 0), kStatusInvalidParameter);
}

TEST_F(SynicTest, HypercallEnableIgnoredWithoutGuestOsId) {
  std::vector<uint64_t> overlays;
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.on_hypercall_page = [&](uint64_t gpa) {
    overlays.push_back(gpa);
    return absl::OkStatus();
  }}));
  ASSERT_OK(synic_->WriteMsr(0, kMsrHypercall, kHypercallGpa | kHypercallEnable));
  EXPECT_EQ(Msr(0, kMsrHypercall), kHypercallGpa);  // The enable bit did not stick (as KVM).
  EXPECT_TRUE(overlays.empty());
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 1, 0), kStatusAccessDenied);
}

TEST_F(SynicTest, HypercallEnableAfterGuestOsIdCallsOverlay) {
  std::vector<uint64_t> overlays;
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.on_hypercall_page = [&](uint64_t gpa) {
    overlays.push_back(gpa);
    return absl::OkStatus();
  }}));
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, kGuestOsId));
  EXPECT_EQ(Msr(0, kMsrGuestOsId), kGuestOsId);
  ASSERT_OK(synic_->WriteMsr(0, kMsrHypercall, kHypercallGpa | kHypercallEnable));
  EXPECT_EQ(Msr(0, kMsrHypercall), kHypercallGpa | kHypercallEnable);
  EXPECT_EQ(overlays, std::vector<uint64_t>{kHypercallGpa});
  EXPECT_EQ(synic_->Hypercall(0, 0x0099, 0, 0), kStatusInvalidHypercallCode);  // Not denied.
}

TEST_F(SynicTest, HypercallOverlayFailureRefusesWrite) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.on_hypercall_page = [](uint64_t) {
    return absl::InternalError("the VMM could not write the stub");
  }}));
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, kGuestOsId));
  ExpectGp(synic_->WriteMsr(0, kMsrHypercall, kHypercallGpa | kHypercallEnable));
  EXPECT_EQ(Msr(0, kMsrHypercall), 0u);  // Unchanged.
  // Nor may a refused write leave the register locked.
  ExpectGp(synic_->WriteMsr(0, kMsrHypercall, kHypercallGpa | kHypercallEnable | kHypercallLocked));
  EXPECT_EQ(Msr(0, kMsrHypercall), 0u);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 1, 0), kStatusAccessDenied);
}

TEST_F(SynicTest, HypercallPageOutsideMemoryFaults) {
  bool overlaid = false;
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.on_hypercall_page = [&](uint64_t) {
    overlaid = true;
    return absl::OkStatus();
  }}));
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, kGuestOsId));
  ExpectGp(synic_->WriteMsr(0, kMsrHypercall, kMemoryBytes | kHypercallEnable));
  EXPECT_EQ(Msr(0, kMsrHypercall), 0u);
  EXPECT_FALSE(overlaid);
}

TEST_F(SynicTest, ZeroGuestOsIdDisablesHypercallPage) {
  ASSERT_OK(EnableHypercalls());
  ASSERT_EQ(synic_->Hypercall(0, 0x0099, 0, 0), kStatusInvalidHypercallCode);
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, 0));
  EXPECT_EQ(Msr(0, kMsrHypercall) & kHypercallEnable, 0u);
  EXPECT_EQ(synic_->Hypercall(0, 0x0099, 0, 0), kStatusAccessDenied);
}

TEST_F(SynicTest, LockedHypercallRefusesChange) {
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, kGuestOsId));
  const uint64_t locked = kHypercallGpa | kHypercallEnable | kHypercallLocked;
  ASSERT_OK(synic_->WriteMsr(0, kMsrHypercall, locked));
  ExpectGp(synic_->WriteMsr(0, kMsrHypercall, 0));
  ExpectGp(synic_->WriteMsr(0, kMsrHypercall, (kHypercallGpa + kPage) | kHypercallEnable));
  EXPECT_EQ(Msr(0, kMsrHypercall), locked);
  EXPECT_OK(synic_->WriteMsr(0, kMsrHypercall, locked));  // Writing the same value is no change.
}

TEST_F(SynicTest, EnablingSimpZeroesPage) {
  ASSERT_OK(memory_.Fill(kSimpGpa, kPage, 0xa5));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSimp, kSimpGpa | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSimp), kSimpGpa | kPageEnable);
  EXPECT_EQ(Bytes(kSimpGpa, kPage), std::vector<uint8_t>(kPage, 0));
}

TEST_F(SynicTest, EnablingSiefpZeroesPage) {
  ASSERT_OK(memory_.Fill(kSiefpGpa, kPage, 0xa5));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSiefp, kSiefpGpa | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSiefp), kSiefpGpa | kPageEnable);
  EXPECT_EQ(Bytes(kSiefpGpa, kPage), std::vector<uint8_t>(kPage, 0));
}

TEST_F(SynicTest, SimpOutsideMemoryFaults) {
  ExpectGp(synic_->WriteMsr(0, kMsrSimp, kMemoryBytes | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSimp), 0u);
  ExpectGp(synic_->WriteMsr(0, kMsrSiefp, (kMemoryBytes + kPage) | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSiefp), 0u);
}

// The paravisor's SynIC on a confidential VM works on the private view: a guest may not point
// it at a page the host can see.
class PrivateViewTest : public SynicTest {
 protected:
  static constexpr uint64_t kSharedGpa = 0x40000;
  static constexpr uint64_t kPrivateGpa = 0x41000;
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(SynicTest::SetUp());
    ASSERT_OK(backing_->SetAccess(kSharedGpa, kPage, Access::kNone, Access::kReadWrite));
    ASSERT_OK(backing_->SetAccess(kPrivateGpa, kPage, Access::kReadWrite, Access::kNone));
    private_ = GuestMemory::Private(backing_);
    ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.memory = private_}));
  }
  GuestMemory private_;
};

TEST_F(PrivateViewTest, SimpOnSharedPageFaults) {
  ExpectGp(synic_->WriteMsr(0, kMsrSimp, kSharedGpa | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSimp), 0u);
}

TEST_F(PrivateViewTest, SiefpOnSharedPageFaults) {
  ExpectGp(synic_->WriteMsr(0, kMsrSiefp, kSharedGpa | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSiefp), 0u);
}

TEST_F(PrivateViewTest, SimpAndSiefpOnPrivatePagesAccepted) {
  const uint64_t private_siefp = kPrivateGpa + kPage;
  ASSERT_OK(backing_->SetAccess(private_siefp, kPage, Access::kReadWrite, Access::kNone));
  ASSERT_OK(private_.Fill(kPrivateGpa, 2 * kPage, 0xa5));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSimp, kPrivateGpa | kPageEnable));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSiefp, private_siefp | kPageEnable));
  EXPECT_EQ(Msr(0, kMsrSimp), kPrivateGpa | kPageEnable);
  EXPECT_EQ(Msr(0, kMsrSiefp), private_siefp | kPageEnable);
  std::vector<uint8_t> pages(2 * kPage, 0xff);
  ASSERT_OK(private_.Read(kPrivateGpa, absl::MakeSpan(pages)));
  EXPECT_EQ(pages, std::vector<uint8_t>(2 * kPage, 0));  // Zeroed through the private view.
}

// --- The message slot ---------------------------------------------------------------------------

TEST_F(SynicTest, MessageWrittenWithHeaderAndPayload) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  // Stale bytes in the slot (but message_type 0): the header must be written in full.
  const uint64_t slot = kSimpGpa + kVmbusSint * kMessageSlotBytes;
  ASSERT_OK(memory_.Fill(slot + 4, kMessageSlotBytes - 4, 0xee));
  const std::vector<uint8_t> payload = Pattern(37, 1);
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, payload));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(37, 0));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 37), payload);
  // Slot sint * 256 only: the neighbours stay empty.
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint - 1), kMessageTypeNone);
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint + 1), kMessageTypeNone);
  EXPECT_EQ(synic_->stats().messages_delivered, 1u);
}

TEST_F(SynicTest, PostToGuestRejectsBadArguments) {
  EXPECT_EQ(synic_->PostToGuest(0, kVmbusSint, Pattern(241, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(synic_->PostToGuest(1, kVmbusSint, Pattern(8, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(synic_->PostToGuest(0, kSintCount, Pattern(8, 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(240, 0)));  // The largest payload.
}

TEST_F(SynicTest, MessageWaitsForScontrol) {
  ASSERT_OK(WriteMsrs(0, {{kMsrSimp, kSimpGpa | kPageEnable}, {kMsrSint0 + kVmbusSint, kVector}}));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 3)));
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);
  EXPECT_TRUE(sink_->calls().empty());
  ASSERT_OK(synic_->WriteMsr(0, kMsrScontrol, kScontrolEnable));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(8, 0));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 3));
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}}));
}

TEST_F(SynicTest, MessageWaitsForSimp) {
  ASSERT_OK(WriteMsrs(0, {{kMsrSint0 + kVmbusSint, kVector}, {kMsrScontrol, kScontrolEnable}}));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 3)));
  EXPECT_EQ(Bytes(kSimpGpa, kPage), std::vector<uint8_t>(kPage, 0));
  EXPECT_TRUE(sink_->calls().empty());
  ASSERT_OK(synic_->WriteMsr(0, kMsrSimp, kSimpGpa | kPageEnable));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(8, 0));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 3));
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}}));
}

TEST_F(SynicTest, MessageWaitsForUnmaskedSint) {
  ASSERT_OK(WriteMsrs(0, {{kMsrSimp, kSimpGpa | kPageEnable},
                          {kMsrSint0 + kVmbusSint, kSintMasked | kVector},
                          {kMsrScontrol, kScontrolEnable}}));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 3)));
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);
  EXPECT_TRUE(sink_->calls().empty());
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kVector));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(8, 0));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 3));
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}}));
}

TEST_F(SynicTest, BusySlotSetsPendingAndWaitsForClearAndEom) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 1)));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(9, 2)));
  // The first message stays; its flags now ask for an EOM.
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(8, kMessageFlagPending));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 1));
  EXPECT_EQ(synic_->stats().messages_waited, 1u);
  // An EOM while the slot is still full delivers nothing.
  ASSERT_OK(synic_->WriteMsr(0, kMsrEom, 0));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 1));
  // Emptying the slot without an EOM delivers nothing either.
  ASSERT_OK(memory_.WritePlain<uint32_t>(kSimpGpa + kVmbusSint * kMessageSlotBytes, 0));
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);
  EXPECT_EQ(synic_->stats().messages_delivered, 1u);
  // The EOM does.
  ASSERT_OK(synic_->WriteMsr(0, kMsrEom, 0));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(9, 0));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 9), Pattern(9, 2));
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}, {0, kVector}}));
}

TEST_F(SynicTest, PendingFlagTellsWhetherMoreAreQueued) {
  ASSERT_OK(WriteMsrs(0, {{kMsrSimp, kSimpGpa | kPageEnable}, {kMsrSint0 + kVmbusSint, kVector}}));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 1)));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 2)));
  ASSERT_OK(synic_->WriteMsr(0, kMsrScontrol, kScontrolEnable));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(8, kMessageFlagPending));
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 1));
  ASSERT_OK(ConsumeSlot(0, kSimpGpa, kVmbusSint));
  EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint), ExpectedHeader(8, 0));  // The last one.
  EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, 2));
}

TEST_F(SynicTest, OrderKeptAcrossTenMessages) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  for (uint8_t i = 0; i < 10; ++i) {
    ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(10 + i, i)));
  }
  for (uint8_t i = 0; i < 10; ++i) {
    SCOPED_TRACE(i);
    // Message 0 went into the empty slot and got message_pending when message 1 found it
    // busy; 1..8 were delivered with more queued behind them; 9 was the last.
    const uint8_t flags = i == 9 ? 0 : kMessageFlagPending;
    ASSERT_EQ(SlotHeader(kSimpGpa, kVmbusSint)[0], kMessageTypeVmbus);
    EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 10 + i), Pattern(10 + i, i));
    EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint)[4], 10 + i);
    EXPECT_EQ(SlotHeader(kSimpGpa, kVmbusSint)[5], flags);
    ASSERT_OK(ConsumeSlot(0, kSimpGpa, kVmbusSint));
  }
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);
  EXPECT_EQ(synic_->stats().messages_delivered, 10u);
  EXPECT_EQ(sink_->calls().size(), 10u);
}

TEST_F(SynicTest, QueueBoundAndOnSpace) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.max_queued_per_sint = 2}));
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 1)));  // Into the slot.
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 2)));  // Queued: 1.
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 3)));  // Queued: 2.
  EXPECT_EQ(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 4)).code(),
            absl::StatusCode::kResourceExhausted);
  server_->Sync();
  EXPECT_EQ(record_.spaces(), 0u);
  ASSERT_OK(ConsumeSlot(0, kSimpGpa, kVmbusSint));  // Message 2 moves into the slot.
  ASSERT_TRUE(record_.WaitForSpaces(1));
  EXPECT_EQ(record_.threads(), std::vector<std::thread::id>{server_->thread_id()});
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 4)));  // Room again.
  for (uint8_t i = 2; i <= 4; ++i) {
    EXPECT_EQ(SlotPayload(kSimpGpa, kVmbusSint, 8), Pattern(8, i));
    ASSERT_OK(ConsumeSlot(0, kSimpGpa, kVmbusSint));
  }
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);
}

TEST_F(SynicTest, InterruptGoesToTargetVpWithSintVector) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.vp_count = 2}));
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa, 0x30));
  ASSERT_OK(EnableVp(1, kVp1SimpGpa, kVp1SiefpGpa, 0xf3));
  ASSERT_OK(synic_->WriteMsr(1, kMsrSint0 + 5, 0x40));
  ASSERT_OK(synic_->PostToGuest(1, kVmbusSint, Pattern(8, 1)));
  ASSERT_OK(synic_->PostToGuest(1, 5, Pattern(8, 2)));
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{1, 0xf3}, {1, 0x40}}));
  EXPECT_EQ(SlotPayload(kVp1SimpGpa, kVmbusSint, 8), Pattern(8, 1));
  EXPECT_EQ(SlotPayload(kVp1SimpGpa, 5, 8), Pattern(8, 2));
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);  // Not VP 0's.
}

TEST_F(SynicTest, NoInterruptWhileMasked) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kSintMasked | kVector));
  ASSERT_OK(synic_->PostToGuest(0, kVmbusSint, Pattern(8, 1)));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 3)->Raise());
  EXPECT_TRUE(sink_->calls().empty());
  EXPECT_EQ(synic_->stats().interrupts, 0u);
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 3), 1u << 3);  // The flag itself is set.
}

TEST_F(SynicTest, NoInterruptWhileScontrolOff) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kSintMasked | kVector));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 3)->Raise());  // A flag waits for the unmask.
  ASSERT_OK(synic_->WriteMsr(0, kMsrScontrol, 0));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kVector));
  EXPECT_TRUE(sink_->calls().empty());
  EXPECT_EQ(synic_->stats().interrupts, 0u);
}

// --- Event flags --------------------------------------------------------------------------------

TEST_F(SynicTest, EventSetsItsBitInTheSintBlock) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 37)->Raise());
  // Bit 37 of SINT 2's block: bit 5 of the u32 at 2 * 256 + 4; nothing else anywhere.
  std::vector<uint8_t> expected(kPage, 0);
  expected[kVmbusSint * kEventFlagsBlockBytes + 4] = 1 << 5;
  EXPECT_EQ(Bytes(kSiefpGpa, kPage), expected);
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 37), 1u << 5);
}

TEST_F(SynicTest, EventInterruptsOnRisingEdge) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 37)->Raise());
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}}));
  EXPECT_EQ(synic_->stats().events_set, 1u);
}

TEST_F(SynicTest, EventInterruptsItsVpWithTheSintVector) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.vp_count = 2}));
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa, 0x30));
  ASSERT_OK(EnableVp(1, kVp1SimpGpa, kVp1SiefpGpa, 0xf3));
  ASSERT_OK(synic_->GuestEvent(1, kVmbusSint, 5)->Raise());
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{1, 0xf3}}));
  EXPECT_EQ(FlagWord(kVp1SiefpGpa, kVmbusSint, 5), 1u << 5);
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 5), 0u);  // Not VP 0's.
}

TEST_F(SynicTest, EventWhileSetCoalesces) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  std::shared_ptr<hw::Signal> event = synic_->GuestEvent(0, kVmbusSint, 37);
  ASSERT_OK(event->Raise());
  ASSERT_OK(event->Raise());
  EXPECT_EQ(sink_->calls().size(), 1u);
  EXPECT_EQ(synic_->stats().events_set, 1u);
  EXPECT_EQ(synic_->stats().events_coalesced, 1u);
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 37), 1u << 5);
}

TEST_F(SynicTest, EventAfterGuestClearedInterruptsAgain) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  std::shared_ptr<hw::Signal> event = synic_->GuestEvent(0, kVmbusSint, 37);
  ASSERT_OK(event->Raise());
  // The guest's vmbus_chan_sched: sync_test_and_clear_bit.
  ASSERT_OK(memory_.WritePlain<uint32_t>(kSiefpGpa + kVmbusSint * kEventFlagsBlockBytes + 4, 0));
  ASSERT_OK(event->Raise());
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}, {0, kVector}}));
  EXPECT_EQ(synic_->stats().events_set, 2u);
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 37), 1u << 5);
}

TEST_F(SynicTest, EventWithSiefpOffIsLost) {
  ASSERT_OK(WriteMsrs(0, {{kMsrSint0 + kVmbusSint, kVector}, {kMsrScontrol, kScontrolEnable}}));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 37)->Raise());
  EXPECT_EQ(synic_->stats().events_lost, 1u);
  EXPECT_TRUE(sink_->calls().empty());
  ASSERT_OK(synic_->WriteMsr(0, kMsrSiefp, kSiefpGpa | kPageEnable));
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 37), 0u);  // Not kept for later.
  EXPECT_TRUE(sink_->calls().empty());
}

TEST_F(SynicTest, EventWithScontrolOffIsLost) {
  ASSERT_OK(
      WriteMsrs(0, {{kMsrSiefp, kSiefpGpa | kPageEnable}, {kMsrSint0 + kVmbusSint, kVector}}));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 37)->Raise());
  EXPECT_EQ(synic_->stats().events_lost, 1u);
  EXPECT_EQ(FlagWord(kSiefpGpa, kVmbusSint, 37), 0u);
  EXPECT_TRUE(sink_->calls().empty());
}

TEST_F(SynicTest, UnmaskingSintWithFlagSetInterrupts) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kSintMasked | kVector));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint, 2047)->Raise());  // The last flag of the block.
  EXPECT_TRUE(sink_->calls().empty());
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kVector));
  EXPECT_EQ(sink_->calls(), (std::vector<Interrupt>{{0, kVector}}));
}

TEST_F(SynicTest, UnmaskingSintWithNoFlagSetDoesNotInterrupt) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kSintMasked | kVector));
  ASSERT_OK(synic_->GuestEvent(0, kVmbusSint + 1, 0)->Raise());  // Another SINT's block.
  ASSERT_OK(synic_->WriteMsr(0, kMsrSint0 + kVmbusSint, kVector));
  EXPECT_TRUE(sink_->calls().empty());
}

TEST_F(SynicTest, InvalidEventFails) {
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  EXPECT_EQ(synic_->GuestEvent(0, kVmbusSint, kEventFlagCount)->Raise().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(synic_->GuestEvent(1, kVmbusSint, 0)->Raise().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(synic_->GuestEvent(0, kSintCount, 0)->Raise().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Bytes(kSiefpGpa, kPage), std::vector<uint8_t>(kPage, 0));
  EXPECT_TRUE(sink_->calls().empty());
}

// --- Hypercalls ---------------------------------------------------------------------------------

TEST_F(SynicTest, HypercallsBeforePageAreDenied) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  synic_->SetEventTarget(7, std::make_shared<hw::CallbackSignal>());
  ASSERT_OK(synic_->WriteMsr(0, kMsrGuestOsId, kGuestOsId));  // An OS id is not enough.
  EXPECT_EQ(PostMessage(1, Pattern(8, 0)), kStatusAccessDenied);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusAccessDenied);
  EXPECT_EQ(synic_->Hypercall(0, 0x0099, 0, 0), kStatusAccessDenied);
  EXPECT_EQ(synic_->stats().messages_posted, 0u);
}

TEST_F(SynicTest, UnknownHypercallCode) {
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(synic_->Hypercall(0, 0x0099, kInputGpa, 0), kStatusInvalidHypercallCode);
  EXPECT_EQ(synic_->Hypercall(0, 0x0008, kInputGpa, 0), kStatusInvalidHypercallCode);
}

TEST_F(SynicTest, PostMessageFastOrRepIsInvalidInput) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(
      PostMessage(1, Pattern(8, 0), kMessageTypeVmbus, kInputGpa, kCallPostMessage | kControlFast),
      kStatusInvalidHypercallInput);
  EXPECT_EQ(PostMessage(1, Pattern(8, 0), kMessageTypeVmbus, kInputGpa,
                        kCallPostMessage | (uint64_t{1} << 32)),  // Rep count 1.
            kStatusInvalidHypercallInput);
  EXPECT_EQ(synic_->stats().messages_posted, 0u);
}

TEST_F(SynicTest, PostMessageMisalignedInput) {
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(PostMessage(1, Pattern(8, 0), kMessageTypeVmbus, kInputGpa + 4),
            kStatusInvalidAlignment);
  // 8-aligned but its 256 bytes cross into the next page.
  EXPECT_EQ(PostMessage(1, Pattern(8, 0), kMessageTypeVmbus, kInputGpa + kPage - 248),
            kStatusInvalidAlignment);
  // The last offset that fits passes the check (and fails later: nobody has id 1).
  EXPECT_EQ(PostMessage(1, Pattern(8, 0), kMessageTypeVmbus, kInputGpa + kPage - 256),
            kStatusInvalidConnectionId);
}

TEST_F(SynicTest, PostMessagePayloadTooLarge) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  PostMessageInput input{};
  input.connection_id = 1;
  input.message_type = kMessageTypeVmbus;
  input.payload_size = 241;
  ASSERT_OK(memory_.Write(
      kInputGpa, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&input), sizeof(input))));
  EXPECT_EQ(synic_->Hypercall(0, kPostMessage, kInputGpa, 0), kStatusInvalidParameter);
  EXPECT_EQ(PostMessage(1, Pattern(240, 0)), kStatusSuccess);  // 240 is the limit.
}

TEST_F(SynicTest, PostMessageBadMessageType) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(PostMessage(1, Pattern(8, 0), kMessageTypeNone), kStatusInvalidParameter);
  EXPECT_EQ(PostMessage(1, Pattern(8, 0), kMessageTypeHypervisorBit | 1), kStatusInvalidParameter);
  EXPECT_EQ(synic_->stats().messages_posted, 0u);
}

TEST_F(SynicTest, PostMessageInputOutsideMemory) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(synic_->Hypercall(0, kPostMessage, kMemoryBytes, 0), kStatusInvalidParameter);
  EXPECT_EQ(synic_->Hypercall(0, kPostMessage, uint64_t{1} << 40, 0), kStatusInvalidParameter);
}

TEST_F(SynicTest, PostMessageUnregisteredConnection) {
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(PostMessage(1, Pattern(8, 0)), kStatusInvalidConnectionId);  // No server at all.
  ASSERT_NO_FATAL_FAILURE(StartServer({1, 4}));
  EXPECT_EQ(PostMessage(2, Pattern(8, 0)), kStatusInvalidConnectionId);
  EXPECT_EQ(PostMessage(1 | (1u << 24), Pattern(8, 0)), kStatusInvalidConnectionId);  // Reserved.
  server_->Sync();
  EXPECT_TRUE(record_.messages().empty());
}

TEST_F(SynicTest, PostMessageToServerDeliversPayloadOnItsLoop) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1, 4}));
  ASSERT_OK(EnableHypercalls());
  EXPECT_EQ(PostMessage(4, Pattern(240, 9)), kStatusSuccess);
  EXPECT_EQ(PostMessage(1, Pattern(3, 5)), kStatusSuccess);
  ASSERT_TRUE(record_.WaitForMessages(2));
  using Message = std::pair<uint32_t, std::vector<uint8_t>>;
  EXPECT_EQ(record_.messages(), (std::vector<Message>{{4, Pattern(240, 9)}, {1, Pattern(3, 5)}}));
  EXPECT_EQ(record_.threads(), std::vector<std::thread::id>(2, server_->thread_id()));
  EXPECT_EQ(synic_->stats().messages_posted, 2u);
}

TEST_F(SynicTest, PostMessageAfterDetach) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1, 4}));
  ASSERT_OK(EnableHypercalls());
  ASSERT_EQ(PostMessage(1, Pattern(8, 0)), kStatusSuccess);
  ASSERT_TRUE(record_.WaitForMessages(1));
  synic_->DetachServer();
  EXPECT_EQ(PostMessage(1, Pattern(8, 1)), kStatusInvalidConnectionId);
  EXPECT_EQ(PostMessage(4, Pattern(8, 1)), kStatusInvalidConnectionId);
  server_->Sync();
  EXPECT_EQ(record_.messages().size(), 1u);
}

// Servicing: between HandOffServer and the successor's AttachServer the guest sees no gap:
// posts are taken and reach the successor, in order.
TEST_F(SynicTest, PostsDuringAHandOffReachTheNextServer) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1, 4}));
  ASSERT_OK(EnableHypercalls());
  ASSERT_EQ(PostMessage(1, Pattern(8, 0)), kStatusSuccess);
  ASSERT_TRUE(record_.WaitForMessages(1));
  synic_->HandOffServer();
  EXPECT_EQ(PostMessage(4, Pattern(8, 1)), kStatusSuccess);
  EXPECT_EQ(PostMessage(1, Pattern(8, 2)), kStatusSuccess);
  EXPECT_EQ(PostMessage(2, Pattern(8, 3)), kStatusInvalidConnectionId);  // Never the server's.
  server_->Sync();
  EXPECT_EQ(record_.messages().size(), 1u);  // Nothing runs the old handler.
  ServerRecord successor;
  ASSERT_OK(synic_->AttachServer(
      server_->loop(), {1, 4},
      [&](uint32_t id, std::vector<uint8_t> payload) {
        successor.OnMessage(id, std::move(payload));
      },
      [] {}));
  ASSERT_TRUE(successor.WaitForMessages(2));
  using Message = std::pair<uint32_t, std::vector<uint8_t>>;
  EXPECT_EQ(successor.messages(), (std::vector<Message>{{4, Pattern(8, 1)}, {1, Pattern(8, 2)}}));
  // After a plain detach the ids are gone again.
  synic_->DetachServer();
  EXPECT_EQ(PostMessage(1, Pattern(8, 4)), kStatusInvalidConnectionId);
  // The loop may still be inside successor.OnMessage (notifying, after WaitForMessages saw the
  // message): done with it before it goes (TSan saw the race).
  server_->Sync();
}

// A doorbell during a hand-off is held, not raised on the old target (its device may be
// gone), and raised once on the target set next; a port not signalled meanwhile stays quiet.
TEST_F(SynicTest, SignalsDuringAHandOffAreHeldForTheNextTarget) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  auto old_target = std::make_shared<hw::CallbackSignal>();
  auto quiet_old = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, old_target);
  synic_->SetEventTarget(9, quiet_old);
  synic_->HandOffServer();
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  EXPECT_EQ(old_target->raised(), 0u);
  auto new_target = std::make_shared<hw::CallbackSignal>();
  auto quiet_new = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, new_target);
  synic_->SetEventTarget(9, quiet_new);
  EXPECT_EQ(new_target->raised(), 1u);  // Once for the held doorbells.
  EXPECT_EQ(quiet_new->raised(), 0u);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  EXPECT_EQ(new_target->raised(), 2u);
  EXPECT_EQ(old_target->raised(), 0u);
}

TEST_F(SynicTest, NotAcceptingHoldsPostsThenInsufficientBuffers) {
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.max_inbound = 3}));
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  synic_->SetAccepting(false);
  for (uint8_t i = 0; i < 3; ++i) EXPECT_EQ(PostMessage(1, Pattern(8, i)), kStatusSuccess);
  server_->Sync();
  EXPECT_TRUE(record_.messages().empty());  // Held.
  EXPECT_EQ(PostMessage(1, Pattern(8, 3)), kStatusInsufficientBuffers);
  EXPECT_EQ(synic_->stats().insufficient_buffers, 1u);
  synic_->SetAccepting(true);
  ASSERT_TRUE(record_.WaitForMessages(3));
  server_->Sync();
  using Message = std::pair<uint32_t, std::vector<uint8_t>>;
  EXPECT_EQ(record_.messages(),
            (std::vector<Message>{{1, Pattern(8, 0)}, {1, Pattern(8, 1)}, {1, Pattern(8, 2)}}));
}

// SetAccepting(false) also holds a post whose hand-off to the server is already queued on its
// loop.
TEST_F(SynicTest, NotAcceptingHoldsPostsAlreadyHandedToTheLoop) {
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableHypercalls());
  std::promise<void> blocked;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  server_->loop()->Post([&blocked, released] {
    blocked.set_value();
    released.wait();
  });
  blocked.get_future().wait();
  EXPECT_EQ(PostMessage(1, Pattern(8, 0)), kStatusSuccess);  // Its drain waits behind the block.
  synic_->SetAccepting(false);
  release.set_value();
  server_->Sync();
  EXPECT_TRUE(record_.messages().empty());
  synic_->SetAccepting(true);
  ASSERT_TRUE(record_.WaitForMessages(1));
  using Message = std::pair<uint32_t, std::vector<uint8_t>>;
  EXPECT_EQ(record_.messages(), (std::vector<Message>{{1, Pattern(8, 0)}}));
}

TEST_F(SynicTest, SignalEventFastRaisesTarget) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  EXPECT_EQ(target->raised(), 1u);
}

TEST_F(SynicTest, SignalEventUnregisteredConnection) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 8, 0), kStatusInvalidConnectionId);
  EXPECT_EQ(target->raised(), 0u);
}

TEST_F(SynicTest, SignalsAreCountedPerPortUntilItsTargetIsRemoved) {
  ASSERT_OK(EnableHypercalls());
  synic_->SetEventTarget(7, std::make_shared<hw::CallbackSignal>());
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 9, 0), kStatusInvalidConnectionId);
  EXPECT_EQ(synic_->SignalsReceived(7), 3u);
  EXPECT_EQ(synic_->SignalsReceived(9), 0u);
  // Retargeted (the device's signal replacing the server's latch): the count carries on.
  synic_->SetEventTarget(7, std::make_shared<hw::CallbackSignal>());
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  EXPECT_EQ(synic_->SignalsReceived(7), 4u);
  EXPECT_EQ(synic_->stats().signals, 4u);
  EXPECT_EQ(synic_->stats().signals_refused, 1u);
  // Removed (a close): the next open starts from zero.
  synic_->SetEventTarget(7, nullptr);
  EXPECT_EQ(synic_->SignalsReceived(7), 0u);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusInvalidConnectionId);
  EXPECT_EQ(synic_->stats().signals_refused, 2u);
}

TEST_F(SynicTest, SignalEventFlagNumberNotZero) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7 | (uint64_t{1} << kFlagNumberShift), 0),
            kStatusInvalidParameter);
  EXPECT_EQ(target->raised(), 0u);
}

TEST_F(SynicTest, SignalEventReservedBits) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7 | (uint64_t{1} << 24), 0),
            kStatusInvalidParameter);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7 | (uint64_t{1} << 48), 0),
            kStatusInvalidParameter);
  EXPECT_EQ(target->raised(), 0u);
}

TEST_F(SynicTest, SignalEventRepOrVariableHeaderIsInvalidInput) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast | (uint64_t{1} << 32), 7, 0),  // Rep count 1.
            kStatusInvalidHypercallInput);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast | (uint64_t{1} << 17), 7, 0),  // Header size.
            kStatusInvalidHypercallInput);
  EXPECT_EQ(target->raised(), 0u);
}

TEST_F(SynicTest, SignalEventSlowReadsInputFromMemory) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  ASSERT_OK(memory_.WritePlain<uint64_t>(kInputGpa, 7));
  EXPECT_EQ(synic_->Hypercall(0, kCallSignalEvent, kInputGpa, 0), kStatusSuccess);
  EXPECT_EQ(target->raised(), 1u);
  ASSERT_OK(memory_.WritePlain<uint64_t>(kInputGpa, 8));
  EXPECT_EQ(synic_->Hypercall(0, kCallSignalEvent, kInputGpa, 0), kStatusInvalidConnectionId);
  EXPECT_EQ(target->raised(), 1u);
}

TEST_F(SynicTest, SetEventTargetNullUnregisters) {
  ASSERT_OK(EnableHypercalls());
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  ASSERT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusSuccess);
  synic_->SetEventTarget(7, nullptr);
  EXPECT_EQ(synic_->Hypercall(0, kSignalEventFast, 7, 0), kStatusInvalidConnectionId);
  EXPECT_EQ(target->raised(), 1u);
  EXPECT_EQ(target.use_count(), 1);  // The port let go of it.
}

TEST_F(SynicTest, OnEventPortSeesRegisterAndUnregister) {
  std::vector<std::pair<uint32_t, std::shared_ptr<hw::Signal>>> seen;
  ASSERT_NO_FATAL_FAILURE(Init(
      SynicOptions{.on_event_port = [&](uint32_t id, const std::shared_ptr<hw::Signal>& target) {
        seen.emplace_back(id, target);
      }}));
  auto target = std::make_shared<hw::CallbackSignal>();
  synic_->SetEventTarget(7, target);
  synic_->SetEventTarget(7, nullptr);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].first, 7u);
  EXPECT_EQ(seen[0].second, target);
  EXPECT_EQ(seen[1].first, 7u);
  EXPECT_EQ(seen[1].second, nullptr);
}

// --- Concurrency --------------------------------------------------------------------------------

// The server posts 10000 messages as fast as the SynIC takes them, waiting for on_space when
// the SINT's queue is full; a guest thread drains the slot as Linux's vmbus_on_msg_dpc does,
// one message per interrupt. Every message arrives once, intact, in order; no interrupt is lost
// (the guest waits for one before each message) and no message is left without an EOM.
TEST_F(SynicTest, TenThousandMessagesArriveInOrder) {
  constexpr uint32_t kCount = 10000;
  ASSERT_NO_FATAL_FAILURE(Init(SynicOptions{.max_queued_per_sint = 4}));
  ASSERT_NO_FATAL_FAILURE(StartServer({1}));
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  // Message i: its number, then 0..235 filler bytes derived from it.
  const auto message = [](uint32_t i) {
    std::vector<uint8_t> payload(4 + i % 237);
    std::memcpy(payload.data(), &i, 4);
    for (size_t j = 4; j < payload.size(); ++j) payload[j] = static_cast<uint8_t>(i + j);
    return payload;
  };

  std::vector<uint32_t> received;
  std::string guest_failure;
  std::thread guest([&] {
    const uint64_t slot = kSimpGpa + kVmbusSint * kMessageSlotBytes;
    for (size_t interrupts = 1; received.size() < kCount; ++interrupts) {
      if (!sink_->WaitForCount(interrupts)) {
        guest_failure = "no interrupt for message " + std::to_string(received.size());
        return;
      }
      // READ_ONCE(msg->header.message_type), then the rest of the slot. The type is read
      // with acquire (pairs with the SynIC's release of it), here as a seq_cst RMW (OR 0):
      // guestmem has no acquire load, and ThreadSanitizer does not model fences.
      absl::StatusOr<uint32_t> type = memory_.FetchOr32(slot, 0);
      if (!type.ok() || *type != kMessageTypeVmbus) {
        guest_failure = "interrupt " + std::to_string(interrupts) + " with an empty slot";
        return;
      }
      std::array<uint8_t, kMessageSlotBytes> copy;
      if (!memory_.Read(slot, absl::MakeSpan(copy)).ok()) {
        guest_failure = "slot read failed";
        return;
      }
      uint32_t number = 0;
      std::memcpy(&number, copy.data() + kMessagePayloadOffset, 4);
      const std::vector<uint8_t> expected = message(number);
      if (copy[4] != expected.size() ||
          !std::equal(expected.begin(), expected.end(), copy.begin() + kMessagePayloadOffset)) {
        guest_failure = "message " + std::to_string(number) + " is torn";
        return;
      }
      received.push_back(number);
      if (!ConsumeSlot(0, kSimpGpa, kVmbusSint).ok()) {
        guest_failure = "EOM failed";
        return;
      }
    }
  });

  uint64_t exhausted = 0;
  std::string server_failure;
  for (uint32_t i = 0; i < kCount && server_failure.empty(); ++i) {
    const std::vector<uint8_t> payload = message(i);
    while (true) {
      const uint64_t spaces = record_.spaces();
      const absl::Status posted = synic_->PostToGuest(0, kVmbusSint, payload);
      if (posted.ok()) break;
      if (posted.code() != absl::StatusCode::kResourceExhausted) {
        server_failure = posted.ToString();
        break;
      }
      ++exhausted;
      if (!record_.WaitForSpaces(spaces + 1)) {
        server_failure = "no on_space for message " + std::to_string(i);
        break;
      }
    }
  }
  if (!server_failure.empty()) sink_->Assert(0, 0);  // Wake the guest so that it gives up.
  guest.join();
  ASSERT_EQ(server_failure, "");
  ASSERT_EQ(guest_failure, "");
  ASSERT_EQ(received.size(), kCount);
  for (uint32_t i = 0; i < kCount; ++i) ASSERT_EQ(received[i], i) << "position " << i;
  EXPECT_EQ(SlotType(kSimpGpa, kVmbusSint), kMessageTypeNone);
  EXPECT_EQ(synic_->stats().messages_delivered, kCount);
  EXPECT_EQ(sink_->calls().size(), kCount);
  // The test exercised backpressure (a 4-deep queue against 10000 messages).
  EXPECT_GT(exhausted, 0u);
}

// Each post races the guest's drain of the message before it: the server posts message i as
// soon as the guest has copied message i - 1, so the SynIC may find the slot still full and set
// message_pending just as the guest empties the slot and reads message_pending. One of the two
// must move message i (the SynIC by looking at the slot once more), because no later post comes
// to push it out: a stranded message leaves the guest waiting for an interrupt that never comes.
TEST_F(SynicTest, PostRacingTheGuestsEmptyingIsNeverStranded) {
  constexpr uint32_t kCount = 5000;
  ASSERT_OK(EnableVp(0, kSimpGpa, kSiefpGpa));
  std::atomic<uint32_t> copied{0};  // Messages the guest has copied out of the slot.
  std::atomic<bool> guest_done{false};
  std::vector<uint32_t> received;
  std::string guest_failure;
  std::thread guest([&] {
    const uint64_t slot = kSimpGpa + kVmbusSint * kMessageSlotBytes;
    for (uint32_t n = 0; n < kCount; ++n) {
      if (!sink_->WaitForCount(n + 1)) {
        guest_failure = "message " + std::to_string(n) + " was stranded";
        break;
      }
      absl::StatusOr<uint32_t> type = memory_.FetchOr32(slot, 0);  // Acquire (see above).
      absl::StatusOr<uint32_t> number = memory_.ReadPlain<uint32_t>(slot + kMessagePayloadOffset);
      if (!type.ok() || *type != kMessageTypeVmbus || !number.ok()) {
        guest_failure = "interrupt " + std::to_string(n + 1) + " with an empty slot";
        break;
      }
      received.push_back(*number);
      copied.store(n + 1, std::memory_order_release);  // The server posts the next one now.
      // A varying delay before emptying the slot, so the post lands at every point of it.
      std::atomic<uint32_t> spin{0};
      while (spin.fetch_add(1, std::memory_order_relaxed) < (n * 7919) % 2048) {
      }
      if (!ConsumeSlot(0, kSimpGpa, kVmbusSint).ok()) {
        guest_failure = "EOM failed";
        break;
      }
    }
    guest_done.store(true, std::memory_order_release);
  });
  std::string server_failure;
  for (uint32_t i = 0; i < kCount; ++i) {
    while (copied.load(std::memory_order_acquire) < i && !guest_done.load()) {
      std::this_thread::yield();
    }
    if (guest_done.load()) break;
    const absl::Status posted = synic_->PostToGuest(
        0, kVmbusSint, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&i), 4));
    if (!posted.ok()) {
      server_failure = posted.ToString();
      break;
    }
  }
  guest.join();
  ASSERT_EQ(server_failure, "");
  ASSERT_EQ(guest_failure, "");
  ASSERT_EQ(received.size(), kCount);
  for (uint32_t i = 0; i < kCount; ++i) ASSERT_EQ(received[i], i) << "position " << i;
  // How often the race was run (the slot still full when the post came), for the log.
  RecordProperty("slot_busy_on_post", std::to_string(synic_->stats().messages_waited));
}

}  // namespace
}  // namespace cvmbus::paravisor::synic
