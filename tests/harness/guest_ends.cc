#include "tests/harness/guest_ends.h"

#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <future>

#include "base/bench/placement.h"
#include "base/status_macros.h"
#include "guestmem/ring_memory.h"
#include "hw/uring/ring_endpoint.h"
#include "hw/uring/signal.h"
#include "hw/uring/task.h"
#include "ring/errors.h"

namespace cvmbus::bench {
namespace {

// The device's serving loop, as EchoDevice::Echo does it: drain, answer what asks for an
// answer, release, flush; sleep when the ring is empty. Stops the loop when it ends (asked to
// by `stop` and a doorbell, or on a ring error).
hw::Task Echo(hw::EventLoop* loop, hw::RingReader* reader, hw::RingWriter* writer,
              const std::atomic<bool>* stop) {
  struct StopLoop {
    hw::EventLoop* loop;
    ~StopLoop() { loop->Stop(); }
  } stop_loop{loop};
  ring::PacketBuffer buffer;
  while (true) {
    if (!(co_await reader->Readable()).ok()) co_return;
    if (stop->load(std::memory_order_acquire)) co_return;
    uint32_t unreleased = 0;  // As EchoDevice: release every 1/8 ring while draining.
    while (true) {
      absl::StatusOr<bool> got = reader->ring().Read(&buffer);
      if (!got.ok() || !*got) break;
      const ring::Packet& packet = buffer.packet();
      unreleased += static_cast<uint32_t>(packet.payload.size()) + 24;
      if (unreleased >= reader->ring().data_size() / 8) {
        (void)reader->Release();
        unreleased = 0;
      }
      if ((packet.flags & ring::kFlagCompletionRequested) == 0) continue;
      const ring::OutgoingPacket answer{.type = ring::PacketType::kCompletion,
                                        .transaction_id = packet.transaction_id,
                                        .payload = packet.payload};
      while (true) {
        absl::Status appended = writer->ring().Append(answer);
        if (appended.ok()) break;
        if (!ring::IsRingError(appended, ring::RingError::kFull)) co_return;
        (void)writer->Flush();
        const uint32_t needed = static_cast<uint32_t>(packet.payload.size()) + 24;
        if (!(co_await writer->Writable(needed)).ok()) co_return;
      }
    }
    (void)reader->Release();
    (void)writer->Flush();
  }
}

absl::StatusOr<guestmem::RingMemory> Ring(const guestmem::GuestMemory& memory,
                                          const std::vector<uint64_t>& gpns) {
  return guestmem::RingMemory::Create(memory, gpns);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RawEnd>> RawEnd::Create(const guestmem::GuestMemory& memory,
                                                       const std::vector<uint64_t>& gpns_out,
                                                       const std::vector<uint64_t>& gpns_in,
                                                       int device_cpu) {
  CVMBUS_ASSIGN_OR_RETURN(guestmem::RingMemory guest_out, Ring(memory, gpns_out));
  CVMBUS_ASSIGN_OR_RETURN(guestmem::RingMemory guest_in, Ring(memory, gpns_in));
  CVMBUS_ASSIGN_OR_RETURN(guestmem::RingMemory device_in, Ring(memory, gpns_out));
  CVMBUS_ASSIGN_OR_RETURN(guestmem::RingMemory device_out, Ring(memory, gpns_in));
  // Fresh rings: every control word zero (the device's RingWriter reads them at creation).
  for (const guestmem::RingMemory* ring : {&guest_out, &guest_in}) {
    for (uint32_t offset = 0; offset < 0x50; offset += 4) {
      ring->StoreControl(offset, 0, std::memory_order_relaxed);
    }
  }
  CVMBUS_ASSIGN_OR_RETURN(ring::OutgoingRing out, ring::OutgoingRing::Create(std::move(guest_out)));
  CVMBUS_ASSIGN_OR_RETURN(ring::IncomingRing in, ring::IncomingRing::Create(std::move(guest_in)));
  const int to_device = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const int to_guest = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (to_device < 0 || to_guest < 0) {
    if (to_device >= 0) close(to_device);
    if (to_guest >= 0) close(to_guest);
    return absl::InternalError("raw ring: eventfd failed");
  }
  std::unique_ptr<RawEnd> end(new RawEnd(std::move(out), std::move(in), to_device, to_guest));
  std::promise<absl::Status> started;
  auto loop_ready = started.get_future();
  end->device_ = std::thread([&started, to_device, to_guest, device_cpu, stop = &end->stop_,
                              device_in = std::move(device_in),
                              device_out = std::move(device_out)]() mutable {
    PinToCpu(device_cpu);
    absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
    absl::StatusOr<ring::IncomingRing> in_ring = ring::IncomingRing::Create(std::move(device_in));
    absl::StatusOr<ring::OutgoingRing> out_ring = ring::OutgoingRing::Create(std::move(device_out));
    if (!loop.ok() || !in_ring.ok() || !out_ring.ok()) {
      started.set_value(!loop.ok()      ? loop.status()
                        : !in_ring.ok() ? in_ring.status()
                                        : out_ring.status());
      return;
    }
    hw::EventFdSignal wake_guest(to_guest);
    {
      hw::RingReader reader(loop->get(), *std::move(in_ring), to_device, &wake_guest);
      hw::RingWriter writer(loop->get(), *std::move(out_ring), to_device, &wake_guest);
      Echo(loop->get(), &reader, &writer, stop);
      started.set_value(absl::OkStatus());
      // Returns when Echo has ended (it stops the loop), before the endpoints go.
      (void)(*loop)->Run();
    }
  });
  if (absl::Status status = loop_ready.get(); !status.ok()) {
    end->device_.join();
    return status;
  }
  return end;
}

RawEnd::~RawEnd() {
  stop_.store(true, std::memory_order_release);
  SignalDevice();  // Echo wakes, sees stop_ and ends, which stops its loop.
  if (device_.joinable()) device_.join();
  close(to_device_fd_);
  close(to_guest_fd_);
}

void RawEnd::SignalDevice() {
  const uint64_t one = 1;
  (void)!write(to_device_fd_, &one, sizeof(one));
}

absl::StatusOr<bool> RawEnd::TrySend(const ring::OutgoingPacket& packet) {
  while (true) {
    absl::StatusOr<bool> signal = out_.Write(packet);
    if (signal.ok()) {
      if (*signal) SignalDevice();
      return true;
    }
    if (!ring::IsRingError(signal.status(), ring::RingError::kFull)) return signal.status();
    std::vector<uint64_t> header;
    CVMBUS_ASSIGN_OR_RETURN(uint32_t length, ring::EncodeHeader(packet, &header));
    CVMBUS_ASSIGN_OR_RETURN(bool fits, out_.RequestSpace(length + 8));
    if (!fits) return false;
  }
}

absl::StatusOr<bool> RawEnd::TrySendInBurst(const ring::OutgoingPacket& packet) {
  while (true) {
    absl::Status appended = out_.Append(packet);
    if (appended.ok()) {
      if (out_.CommitInBurst()) SignalDevice();
      return true;
    }
    if (!ring::IsRingError(appended, ring::RingError::kFull)) return appended;
    CVMBUS_RETURN_IF_ERROR(EndBurst());
    std::vector<uint64_t> header;
    CVMBUS_ASSIGN_OR_RETURN(uint32_t length, ring::EncodeHeader(packet, &header));
    CVMBUS_ASSIGN_OR_RETURN(bool fits, out_.RequestSpace(length + 8));
    if (!fits) return false;
  }
}

absl::Status RawEnd::EndBurst() {
  if (out_.EndBurst()) SignalDevice();
  return absl::OkStatus();
}

absl::StatusOr<bool> RawEnd::TryReceive(ring::PacketBuffer* buffer) {
  while (true) {
    CVMBUS_ASSIGN_OR_RETURN(bool got, in_.Read(buffer));
    if (got) {
      if (in_.Commit()) SignalDevice();
      return true;
    }
    CVMBUS_ASSIGN_OR_RETURN(bool pending, in_.Unmask());
    if (!pending) return false;
  }
}

}  // namespace cvmbus::bench
