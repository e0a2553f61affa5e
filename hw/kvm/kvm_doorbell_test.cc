// A real guest as a VMBus ring client: it writes a packet into its request ring and rings an
// ioeventfd doorbell; we read the packet with IncomingRing over the same memfd pages, answer
// with OutgoingRing on the response ring and raise its interrupt through an irqfd; its handler
// checks the answer and reports a result word. See testing/guest_programs.h for the guest.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "guestmem/ring_memory.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/kvm/testing/guest_programs.h"
#include "hw/kvm/testing/test_support.h"
#include "ring/packet.h"
#include "ring/protocol.h"
#include "ring/ring.h"

namespace cvmbus::hw::kvm {
namespace {

namespace programs = ::cvmbus::hw::kvm::testing;
using guestmem::GuestMemory;
using guestmem::MemoryBacking;
using guestmem::RingMemory;
using programs::ReadEventFd;

constexpr absl::Duration kGuestTimeout = absl::Seconds(10);

// The answer's payload; the guest's result word is the sum of its two u32 halves.
constexpr std::array<uint8_t, 8> kAnswerPayload = {0x10, 0x20, 0x30, 0x40, 0x01, 0x02, 0x03, 0x04};
constexpr uint32_t kExpectedResult = 0x40302010u + 0x04030201u;

// The page numbers of the ring at `gpa`: its control page, then its data pages.
std::vector<uint64_t> RingGpns(uint64_t gpa) {
  std::vector<uint64_t> gpns;
  for (uint64_t i = 0; i <= programs::kRingDataPages; ++i) gpns.push_back(gpa / 4096 + i);
  return gpns;
}

// The host side of one run of the VmbusRingClient guest.
struct Device {
  std::shared_ptr<MemoryBacking> backing;
  std::unique_ptr<KvmVm> vm;
  int doorbell = -1;
  int irq = -1;
  std::optional<ring::IncomingRing> requests;
  std::optional<ring::OutgoingRing> responses;
};

void MakeDevice(Device* device) {
  guestmem::MemoryOptions options;
  options.name = "kvm-doorbell";
  options.type = guestmem::BackingType::kMemfd;
  options.regions = {{0, programs::kGuestMemoryBytes}};
  absl::StatusOr<std::shared_ptr<MemoryBacking>> backing = MemoryBacking::Create(options);
  ASSERT_TRUE(backing.ok()) << backing.status();
  device->backing = *backing;
  ASSERT_OK(
      programs::LoadProgram(GuestMemory::Private(device->backing), programs::VmbusRingClient()));
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(device->backing);
  ASSERT_TRUE(vm.ok()) << vm.status();
  device->vm = *std::move(vm);
  absl::StatusOr<int> doorbell = device->vm->AddIoEventFd(PioAddress{programs::kDoorbellPort});
  ASSERT_TRUE(doorbell.ok()) << doorbell.status();
  device->doorbell = *doorbell;
  absl::StatusOr<int> irq = device->vm->AddIrqFd(programs::kIrqGsi);
  ASSERT_TRUE(irq.ok()) << irq.status();
  device->irq = *irq;
  // The rings see the guest's pages through the untrusted view, as a device would.
  const GuestMemory shared = GuestMemory::Untrusted(device->backing);
  absl::StatusOr<RingMemory> request_memory =
      RingMemory::Create(shared, RingGpns(programs::kRequestRingGpa));
  ASSERT_TRUE(request_memory.ok()) << request_memory.status();
  EXPECT_TRUE(request_memory->double_mapped());  // The memfd lets RingMemory map it twice.
  absl::StatusOr<ring::IncomingRing> requests =
      ring::IncomingRing::Create(*std::move(request_memory));
  ASSERT_TRUE(requests.ok()) << requests.status();
  device->requests.emplace(*std::move(requests));
  absl::StatusOr<RingMemory> response_memory =
      RingMemory::Create(shared, RingGpns(programs::kResponseRingGpa));
  ASSERT_TRUE(response_memory.ok()) << response_memory.status();
  absl::StatusOr<ring::OutgoingRing> responses =
      ring::OutgoingRing::Create(*std::move(response_memory));
  ASSERT_TRUE(responses.ok()) << responses.status();
  device->responses.emplace(*std::move(responses));
}

// Reads the guest's request and checks it is exactly what the guest program writes.
void ReadRequest(Device* device, uint64_t* transaction_id) {
  ring::PacketBuffer buffer;
  absl::StatusOr<bool> read = device->requests->Read(&buffer);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(*read) << "the request ring is empty";
  const ring::Packet& packet = buffer.packet();
  EXPECT_EQ(packet.type, ring::PacketType::kDataInBand);
  EXPECT_TRUE(packet.completion_requested());
  EXPECT_EQ(packet.transaction_id, programs::kRequestTransactionId);
  EXPECT_EQ(
      std::vector<uint8_t>(packet.payload.begin(), packet.payload.end()),
      std::vector<uint8_t>(programs::kRequestPayload.begin(), programs::kRequestPayload.end()));
  *transaction_id = packet.transaction_id;
  // The guest never asks for space (no pending_send_sz feature): no signal is due.
  EXPECT_FALSE(device->requests->Commit());
  // Nothing more: the guest wrote exactly one packet.
  absl::StatusOr<bool> more = device->requests->Read(&buffer);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_FALSE(*more);
}

// Writes the completion for `transaction_id`; signals the guest's interrupt if the ring rules
// say so. Returns whether it signalled.
bool Answer(Device* device, uint64_t transaction_id) {
  const ring::OutgoingPacket answer{
      .type = ring::PacketType::kCompletion,
      .transaction_id = transaction_id,
      .payload = absl::MakeConstSpan(kAnswerPayload),
  };
  absl::StatusOr<bool> signal = device->responses->Write(answer);
  EXPECT_TRUE(signal.ok()) << signal.status();
  if (!signal.ok() || !*signal) return false;
  const uint64_t one = 1;
  EXPECT_EQ(write(device->irq, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  return true;
}

// The guest consumed our answer and reported it: exit value, result word, read index.
void ExpectGuestDone(Device* device) {
  absl::StatusOr<VcpuExit> exit = device->vm->WaitForExit(kGuestTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->reason, VcpuExit::Reason::kExitPort);
  EXPECT_EQ(exit->value, programs::kExitOk) << "2 = the guest rejected our answer";
  absl::StatusOr<uint32_t> result =
      GuestMemory::Private(device->backing).ReadPlain<uint32_t>(programs::kResultGpa);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, kExpectedResult);
  // The guest published its read index past our packet: the response ring is empty again.
  absl::StatusOr<uint32_t> free_bytes = device->responses->FreeBytes();
  ASSERT_TRUE(free_bytes.ok()) << free_bytes.status();
  EXPECT_EQ(*free_bytes, device->responses->data_size());
}

TEST(KvmDoorbellTest, GuestRequestAndOurAnswerRoundTripThroughIoEventFdAndIrqFd) {
  CVMBUS_SKIP_WITHOUT_KVM();
  Device device;
  ASSERT_NO_FATAL_FAILURE(MakeDevice(&device));
  const absl::Time started = absl::Now();
  ASSERT_OK(device.vm->StartVcpu(programs::EntryFor()));

  absl::StatusOr<uint64_t> rings = ReadEventFd(device.doorbell, kGuestTimeout);
  ASSERT_TRUE(rings.ok()) << rings.status()
                          << "; guest debug output: " << device.vm->debug_output();
  const absl::Time doorbell = absl::Now();
  EXPECT_EQ(*rings, 1u);  // One packet, one doorbell.

  uint64_t transaction_id = 0;
  ASSERT_NO_FATAL_FAILURE(ReadRequest(&device, &transaction_id));
  // The guest's ring was empty and it never masks its interrupt: the rules say signal.
  EXPECT_TRUE(Answer(&device, transaction_id));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestDone(&device));
  const absl::Time done = absl::Now();
  std::printf("%s", fmt::format("start -> doorbell {}; doorbell -> our answer -> guest result {}\n",
                                absl::FormatDuration(doorbell - started),
                                absl::FormatDuration(done - doorbell))
                        .c_str());
}

// KVM_SET_GSI_ROUTING replaces the whole table: after AddMsiIrqFd added an MSI route, the PIC
// line of the irqfd made before it (GSI 4) still reaches the real-mode guest.
TEST(KvmDoorbellTest, PicLineStillWorksAfterAnMsiRouteReplacedTheRoutingTable) {
  CVMBUS_SKIP_WITHOUT_KVM();
  Device device;
  ASSERT_NO_FATAL_FAILURE(MakeDevice(&device));
  absl::StatusOr<int> msi = device.vm->AddMsiIrqFd(0x40);
  ASSERT_TRUE(msi.ok()) << msi.status();
  ASSERT_OK(device.vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<uint64_t> rings = ReadEventFd(device.doorbell, kGuestTimeout);
  ASSERT_TRUE(rings.ok()) << rings.status();
  uint64_t transaction_id = 0;
  ASSERT_NO_FATAL_FAILURE(ReadRequest(&device, &transaction_id));
  EXPECT_TRUE(Answer(&device, transaction_id));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestDone(&device));
}

// The guest's checks can fail: an answer for another transaction is rejected (kExitBadAnswer),
// no result word is written and the packet stays unconsumed.
TEST(KvmDoorbellTest, GuestRejectsAnAnswerForAnotherTransaction) {
  CVMBUS_SKIP_WITHOUT_KVM();
  Device device;
  ASSERT_NO_FATAL_FAILURE(MakeDevice(&device));
  ASSERT_OK(device.vm->StartVcpu(programs::EntryFor()));
  absl::StatusOr<uint64_t> rings = ReadEventFd(device.doorbell, kGuestTimeout);
  ASSERT_TRUE(rings.ok()) << rings.status();
  uint64_t transaction_id = 0;
  ASSERT_NO_FATAL_FAILURE(ReadRequest(&device, &transaction_id));
  EXPECT_TRUE(Answer(&device, transaction_id + 1));
  absl::StatusOr<VcpuExit> exit = device.vm->WaitForExit(kGuestTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->value, programs::kExitBadAnswer);
  absl::StatusOr<uint32_t> result =
      GuestMemory::Private(device.backing).ReadPlain<uint32_t>(programs::kResultGpa);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, 0u);
  absl::StatusOr<uint32_t> free_bytes = device.responses->FreeBytes();
  ASSERT_TRUE(free_bytes.ok()) << free_bytes.status();
  EXPECT_LT(*free_bytes, device.responses->data_size());
}

// The guest follows the writer's rule: with our interrupt_mask set it publishes its packet but
// does not ring the doorbell.
TEST(KvmDoorbellTest, GuestDoesNotRingWhileWeMaskTheRing) {
  CVMBUS_SKIP_WITHOUT_KVM();
  Device device;
  ASSERT_NO_FATAL_FAILURE(MakeDevice(&device));
  device.requests->Mask();
  ASSERT_OK(device.vm->StartVcpu(programs::EntryFor()));

  // Poll the ring instead of sleeping on the doorbell (bounded).
  const absl::Time deadline = absl::Now() + kGuestTimeout;
  bool has_packets = false;
  while (!has_packets && absl::Now() < deadline) {
    absl::StatusOr<bool> polled = device.requests->HasPackets();
    ASSERT_TRUE(polled.ok()) << polled.status();
    has_packets = *polled;
    if (!has_packets) absl::SleepFor(absl::Microseconds(100));
  }
  ASSERT_TRUE(has_packets) << "the guest wrote no packet in " << kGuestTimeout;
  uint64_t transaction_id = 0;
  ASSERT_NO_FATAL_FAILURE(ReadRequest(&device, &transaction_id));
  EXPECT_TRUE(Answer(&device, transaction_id));
  // Once the guest has exited it has long made its signalling decision.
  ASSERT_NO_FATAL_FAILURE(ExpectGuestDone(&device));
  EXPECT_EQ(programs::DrainEventFd(device.doorbell), 0u);
}

}  // namespace
}  // namespace cvmbus::hw::kvm
