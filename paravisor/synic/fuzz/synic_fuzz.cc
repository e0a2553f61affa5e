// libFuzzer target for the SynIC boundary a guest drives: synthetic MSR writes and reads,
// HvPostMessage and HvSignalEvent hypercalls (their control words, input GPAs and input-page
// contents), the SIMP and SIEFP pages' contents (which the guest may rewrite at any time),
// EOM, interleaved with what the server does (post messages, set event flags, stop and start
// accepting, detach and attach) on a real EventLoop.
//
// Input: byte 0 picks the VP count (1..4); then operations, each an opcode byte and its
// arguments (missing argument bytes read as zero). Besides ASan/UBSan findings, these must
// hold and a violation aborts:
//   - every handler call names a connection id the server registered and a payload of at most
//     240 bytes;
//   - interrupts are asserted only on VPs that exist;
//   - statuses are one of the HV_STATUS codes the SynIC documents;
//   - the server is handed no more messages than HvPostMessage accepted.
//
//   paravisor/synic/fuzz/build_fuzzer.sh /tmp/synic_fuzz && /tmp/synic_fuzz CORPUS
#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "base/testing/fuzz_input.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/signal.h"
#include "paravisor/synic/hv_abi.h"
#include "paravisor/synic/synic.h"

namespace cvmbus::paravisor::synic {
namespace {

void Check(bool holds) {
  if (!holds) std::abort();
}

constexpr uint64_t kGuestPages = 16;
constexpr uint32_t kServerIds[] = {1, 4};
constexpr uint32_t kEventId = 5;

// The MSRs a guest kernel touches, then raw indexes.
constexpr uint32_t kMsrs[] = {kMsrGuestOsId,    kMsrHypercall, kMsrVpIndex,  kMsrTimeRefCount,
                              kMsrVpAssistPage, kMsrScontrol,  kMsrSversion, kMsrSiefp,
                              kMsrSimp,         kMsrEom,       kMsrSint0,    kMsrSint0 + 2,
                              kMsrSint15,       kMsrSint15 + 1};

using Input = ::cvmbus::testing::FuzzInput;

struct CountingSink : InterruptSink {
  uint32_t vp_count = 1;
  uint64_t asserted = 0;
  void Assert(uint32_t vp, uint8_t) override {
    Check(vp < vp_count);
    ++asserted;
  }
};

struct CountingSignal : hw::Signal {
  uint64_t raised = 0;
  absl::Status Raise() override {
    ++raised;
    return absl::OkStatus();
  }
};

bool IsDocumentedStatus(uint64_t status) {
  switch (status) {
    case kStatusSuccess:
    case kStatusInvalidHypercallCode:
    case kStatusInvalidHypercallInput:
    case kStatusInvalidAlignment:
    case kStatusInvalidParameter:
    case kStatusAccessDenied:
    case kStatusInvalidConnectionId:
    case kStatusInsufficientBuffers:
      return true;
    default:
      return false;
  }
}

hw::EventLoop& Loop() {
  static hw::EventLoop* const loop = [] {
    absl::StatusOr<std::unique_ptr<hw::EventLoop>> created = hw::EventLoop::Create();
    Check(created.ok());
    return created->release();
  }();
  return *loop;
}

void RunLoop() {
  for (int i = 0; i < 4; ++i) (void)Loop().RunOnce(std::chrono::nanoseconds(0));
}

void FuzzOne(Input& input) {
  const uint32_t vp_count = 1 + input.Take<uint8_t>() % 4;
  guestmem::MemoryOptions memory_options;
  memory_options.regions = {{0, kGuestPages * guestmem::kPageSize}};
  memory_options.type = guestmem::BackingType::kAnonymous;
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory_options);
  Check(backing.ok());
  guestmem::GuestMemory memory = guestmem::GuestMemory::Private(*backing);
  SynicOptions options;
  options.name = "fuzz";
  options.memory = memory;
  options.vp_count = vp_count;
  options.max_queued_per_sint = 4;
  options.max_inbound = 4;
  absl::StatusOr<std::shared_ptr<Synic>> created = Synic::Create(options);
  Check(created.ok());
  std::shared_ptr<Synic> synic = *created;
  auto sink = std::make_shared<CountingSink>();
  sink->vp_count = vp_count;
  synic->SetInterruptSink(sink);
  auto target = std::make_shared<CountingSignal>();
  uint64_t handled = 0;
  const auto on_message = [&handled](uint32_t connection_id, std::vector<uint8_t> payload) {
    Check(connection_id == kServerIds[0] || connection_id == kServerIds[1]);
    Check(payload.size() <= kMessagePayloadBytes);
    ++handled;
  };
  bool attached =
      synic->AttachServer(&Loop(), {kServerIds[0], kServerIds[1]}, on_message, [] {}).ok();
  Check(attached);

  for (int steps = 0; !input.done() && steps < 512; ++steps) {
    const uint8_t op = input.Take<uint8_t>();
    const uint32_t vp = input.Take<uint8_t>() % (vp_count + 1);  // One past: a VP that is not.
    switch (op % 12) {
      case 0: {  // WriteMsr, with page GPAs kept mostly inside guest memory.
        const uint8_t which = input.Take<uint8_t>();
        const uint32_t msr =
            which < 2 * std::size(kMsrs) ? kMsrs[which % std::size(kMsrs)] : input.Take<uint32_t>();
        uint64_t value = input.Take<uint64_t>();
        // Page GPAs (bit 0 enables) up to 256 KiB, past the 64 KiB of memory, and the SINT bits.
        if ((which & 0x80) == 0) value &= 0x3ffff;
        (void)synic->WriteMsr(vp, msr, value);
        break;
      }
      case 1: {
        const uint8_t which = input.Take<uint8_t>();
        (void)synic->ReadMsr(vp, kMsrs[which % std::size(kMsrs)]);
        break;
      }
      case 2: {  // A hypercall as the guest makes it.
        uint64_t control = input.Take<uint16_t>();
        const uint8_t shape = input.Take<uint8_t>();
        if (shape & 1) control |= kControlFast;
        if (shape & 2) control |= input.Take<uint64_t>() & ~kControlCodeMask;
        if (shape & 4) control = (control & ~kControlCodeMask) | kCallPostMessage;
        if (shape & 8) control = (control & ~kControlCodeMask) | kCallSignalEvent;
        uint64_t in = input.Take<uint64_t>();
        if ((shape & 16) == 0) in &= (kGuestPages << 12) - 1;
        if (shape & 32) in = (in & ~uint64_t{kConnectionIdMask}) | (input.Take<uint8_t>() % 8);
        const uint64_t status = synic->Hypercall(vp, control, in, input.Take<uint64_t>());
        Check(IsDocumentedStatus(status & 0xffff));
        break;
      }
      case 3: {  // The guest writes its own pages (input page, SIMP slots, SIEFP flags).
        const uint64_t gpa = (input.Take<uint16_t>() % (kGuestPages * 4096));
        const std::vector<uint8_t> bytes = input.TakeBytes(input.Take<uint8_t>() % 64);
        (void)memory.Write(gpa, bytes);
        break;
      }
      case 4: {  // A hypercall input message: connection id, type, size, payload.
        const uint64_t gpa = (input.Take<uint8_t>() % kGuestPages) << 12;
        PostMessageInput head{};
        head.connection_id = input.Take<uint8_t>() % 8u;
        head.reserved = input.Take<uint8_t>() % 2u;
        head.message_type = input.Take<uint8_t>() % 3u;
        head.payload_size = input.Take<uint8_t>();
        (void)memory.Write(gpa, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&head),
                                                    offsetof(PostMessageInput, payload)));
        const uint64_t status = synic->Hypercall(vp, kCallPostMessage, gpa, 0);
        Check(IsDocumentedStatus(status & 0xffff));
        break;
      }
      case 5: {
        const uint8_t sint = input.Take<uint8_t>() % 17;
        const std::vector<uint8_t> payload = input.TakeBytes(input.Take<uint8_t>() % 250);
        (void)synic->PostToGuest(vp, sint, payload);
        break;
      }
      case 6: {
        const uint8_t sint = input.Take<uint8_t>() % 17;
        (void)synic->SetEvent(vp, sint, input.Take<uint16_t>() % 2100);
        break;
      }
      case 7:
        synic->SetAccepting(input.Take<uint8_t>() & 1);
        break;
      case 8:
        RunLoop();
        break;
      case 9:
        if (attached) {
          synic->DetachServer();
          attached = false;
        } else {
          attached =
              synic->AttachServer(&Loop(), {kServerIds[0], kServerIds[1]}, on_message, [] {}).ok();
          Check(attached);
        }
        break;
      case 10:
        synic->SetEventTarget(kEventId, (input.Take<uint8_t>() & 1) ? target : nullptr);
        break;
      case 11: {
        std::shared_ptr<hw::Signal> event =
            synic->GuestEvent(vp, input.Take<uint8_t>() % 17, input.Take<uint16_t>() % 2100);
        if (event != nullptr) (void)event->Raise();
        break;
      }
    }
    (void)synic->CanReceive(vp, input.Take<uint8_t>() % 17);
  }
  RunLoop();
  // The server saw only messages the hypercall accepted.
  Check(handled <= synic->stats().messages_posted);
  if (attached) synic->DetachServer();
  RunLoop();
}

}  // namespace
}  // namespace cvmbus::paravisor::synic

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cvmbus::paravisor::synic::Input input(data, size);
  cvmbus::paravisor::synic::FuzzOne(input);
  return 0;
}
