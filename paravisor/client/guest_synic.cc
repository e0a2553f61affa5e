#include "paravisor/client/guest_synic.h"

#include <fmt/format.h>

#include <array>
#include <cstring>

#include "base/format.h"

namespace cvmbus::paravisor {
namespace {

using namespace synic;  // NOLINT: the ABI constants.

// Linux's guest OS id: vendor 0x8100 (Linux) in bits 63:48, kernel 6.1.0 in bits 47:16.
constexpr uint64_t kLinuxGuestOsId = (uint64_t{0x8100} << 48) | (uint64_t{0x060100} << 16);

absl::Status Program(synic::Synic& synic, uint32_t vp, uint32_t msr, uint64_t value) {
  absl::Status status = synic.WriteMsr(vp, msr, value);
  if (!status.ok()) {
    return absl::Status(status.code(), fmt::format("guest SynIC setup: {}", status.message()));
  }
  return absl::OkStatus();
}

}  // namespace

// Forwards the SynIC's interrupts to a GuestSynic until it is gone.
class GuestSynic::Sink : public synic::InterruptSink {
 public:
  Sink(GuestSynic* owner, uint32_t vp) : owner_(owner), vp_(vp) {}
  void Assert(uint32_t vp, uint8_t) override {
    MutexLock lock(&mu_);
    if (owner_ != nullptr && vp == vp_) owner_->OnInterrupt();
  }
  void Detach() {
    MutexLock lock(&mu_);  // Waits for an interrupt being handled.
    owner_ = nullptr;
  }

 private:
  Mutex mu_;
  GuestSynic* owner_ ABSL_GUARDED_BY(mu_);
  const uint32_t vp_;
};

absl::StatusOr<std::unique_ptr<GuestSynic>> GuestSynic::Create(GuestSynicOptions options,
                                                               hw::EventLoop* loop) {
  if (options.synic == nullptr || loop == nullptr) {
    return absl::InvalidArgumentError("guest SynIC: needs a SynIC and a loop");
  }
  if (options.sint >= kSintCount || options.vector < kFirstValidVector) {
    return absl::InvalidArgumentError(
        fmt::format("guest SynIC: SINT {} vector {} is not usable", options.sint, options.vector));
  }
  for (uint64_t page :
       {options.pages.simp, options.pages.siefp, options.pages.hypercall, options.pages.input}) {
    if (page % 4096 != 0) {
      return absl::InvalidArgumentError(
          fmt::format("guest SynIC: page {:#x} is not page aligned", page));
    }
  }
  std::unique_ptr<GuestSynic> guest(new GuestSynic(std::move(options), loop));
  const GuestSynicOptions& o = guest->options_;
  guest->sink_ = std::make_shared<Sink>(guest.get(), o.vp);
  o.synic->SetInterruptSink(guest->sink_);
  synic::Synic& synic = *o.synic;
  // hv_init: the OS id, then the hypercall page; hv_synic_enable_regs: SIMP, SIEFP, the
  // SINT, SCONTROL.
  for (const auto& [msr, value] : std::initializer_list<std::pair<uint32_t, uint64_t>>{
           {kMsrGuestOsId, kLinuxGuestOsId},
           {kMsrHypercall, o.pages.hypercall | kHypercallEnable},
           {kMsrSimp, o.pages.simp | kPageEnable},
           {kMsrSiefp, o.pages.siefp | kPageEnable},
           {kMsrSint0 + o.sint, o.vector},
           {kMsrScontrol, kScontrolEnable},
       }) {
    if (absl::Status status = Program(synic, o.vp, msr, value); !status.ok()) return status;
  }
  return guest;
}

GuestSynic::~GuestSynic() {
  sink_->Detach();
  *alive_ = false;
  // A kernel going down masks its SINT and turns the SynIC off; the SynIC keeps what it
  // could not deliver for the next kernel.
  (void)options_.synic->WriteMsr(options_.vp, kMsrSint0 + options_.sint, kSintMasked);
  (void)options_.synic->WriteMsr(options_.vp, kMsrScontrol, 0);
  options_.synic->SetInterruptSink(nullptr);
}

uint64_t GuestSynic::PostMessage(uint32_t connection_id, absl::Span<const uint8_t> payload) {
  PostMessageInput input{};
  input.connection_id = connection_id;
  input.message_type = kMessageTypeVmbus;
  input.payload_size = static_cast<uint32_t>(payload.size());
  if (!payload.empty()) {  // memcpy from an empty span's null pointer is undefined.
    std::memcpy(input.payload, payload.data(), std::min(payload.size(), sizeof(input.payload)));
  }
  MutexLock lock(&post_mu_);
  if (!options_.memory
           .Write(options_.pages.input,
                  absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&input), sizeof(input)))
           .ok()) {
    return kStatusInvalidParameter;  // Our own page is gone: the hypercall could not read it.
  }
  return options_.synic->Hypercall(options_.vp, kCallPostMessage, options_.pages.input, 0);
}

uint64_t GuestSynic::SignalEvent(uint32_t connection_id, uint16_t flag_number) {
  const uint64_t input = uint64_t{connection_id} | (uint64_t{flag_number} << kFlagNumberShift);
  return options_.synic->Hypercall(options_.vp, kCallSignalEvent | kControlFast, input, 0);
}

void GuestSynic::OnInterrupt() {
  const guestmem::GuestMemory& memory = options_.memory;
  // Event flags: one copy of the block, then each set word taken with a compare-exchange so a
  // flag the host sets meanwhile is never lost.
  const uint64_t block = options_.pages.siefp + uint64_t{options_.sint} * kEventFlagsBlockBytes;
  std::array<uint32_t, kEventFlagsBlockBytes / 4> words{};
  if (memory.Read(block, absl::MakeSpan(reinterpret_cast<uint8_t*>(words.data()), sizeof(words)))
          .ok()) {
    for (size_t i = 0; i < words.size(); ++i) {
      uint32_t seen = words[i];
      while (seen != 0) {
        absl::StatusOr<uint32_t> before = memory.CompareExchange32(block + 4 * i, seen, 0);
        if (!before.ok()) break;
        if (*before == seen) break;
        seen = *before;
      }
      for (uint32_t bits = seen; bits != 0; bits &= bits - 1) {
        events_taken_.fetch_add(1, std::memory_order_relaxed);
        if (options_.on_event) {
          options_.on_event(static_cast<uint16_t>(i * 32 + __builtin_ctz(bits)));
        }
      }
    }
  }
  // The message slot: on the loop, once per burst of interrupts.
  const uint64_t slot = options_.pages.simp + uint64_t{options_.sint} * kMessageSlotBytes;
  absl::StatusOr<uint32_t> type = memory.ReadPlain<uint32_t>(slot);
  if (type.ok() && *type != kMessageTypeNone && !drain_posted_.exchange(true)) {
    std::shared_ptr<std::atomic<bool>> alive = alive_;
    loop_->Post([this, alive] {
      if (*alive) DrainSlot();
    });
  }
}

void GuestSynic::DrainSlot() {
  drain_posted_.store(false);
  const guestmem::GuestMemory& memory = options_.memory;
  const uint64_t slot = options_.pages.simp + uint64_t{options_.sint} * kMessageSlotBytes;
  while (true) {
    // The type with a compare-exchange that changes nothing: an acquire read (the payload was
    // written before it) that ThreadSanitizer models, unlike a fence.
    absl::StatusOr<uint32_t> type =
        memory.CompareExchange32(slot, kMessageTypeNone, kMessageTypeNone);
    if (!type.ok() || *type == kMessageTypeNone) return;
    absl::StatusOr<uint8_t> size = memory.ReadPlain<uint8_t>(slot + 4);
    if (!size.ok()) return;
    std::vector<uint8_t> payload(std::min<size_t>(*size, kMessagePayloadBytes));
    if (!memory.Read(slot + kMessagePayloadOffset, absl::MakeSpan(payload)).ok()) return;
    // vmbus_signal_eom: empty the slot, full barrier, then EOM only if more are pending.
    // (A locked compare-exchange is the full barrier: message_pending is read after it.)
    if (!memory.CompareExchange32(slot, *type, kMessageTypeNone).ok()) return;
    absl::StatusOr<uint8_t> flags = memory.ReadPlain<uint8_t>(slot + 5);
    if (flags.ok() && (*flags & kMessageFlagPending) != 0) {
      (void)options_.synic->WriteMsr(options_.vp, kMsrEom, 0);
    }
    messages_taken_.fetch_add(1, std::memory_order_relaxed);
    if (type.value() == kMessageTypeVmbus && options_.on_message) {
      options_.on_message(std::move(payload));
    }
  }
}

}  // namespace cvmbus::paravisor
