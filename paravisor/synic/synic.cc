#include "paravisor/synic/synic.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "base/format.h"

namespace cvmbus::paravisor::synic {
namespace {

constexpr uint64_t kPageReservedBits = 0xffe;       // Bits 11:1 of SIMP, SIEFP, VP assist.
constexpr uint64_t kHypercallReservedBits = 0xffc;  // Bits 11:2 of HYPERCALL.
constexpr uint64_t kPageBytes = 4096;

// message_flags is byte 5 of the slot: bit 8 of the u32 at offset 4.
constexpr uint64_t kFlagsWordOffset = 4;
constexpr uint32_t kPendingInFlagsWord = uint32_t{kMessageFlagPending} << 8;

// Raises one event flag through a Synic that may be gone.
class EventSignal : public hw::Signal {
 public:
  EventSignal(std::weak_ptr<Synic> synic, uint32_t vp, uint8_t sint, uint16_t flag)
      : synic_(std::move(synic)), vp_(vp), sint_(sint), flag_(flag) {}
  absl::Status Raise() override {
    std::shared_ptr<Synic> synic = synic_.lock();
    if (synic == nullptr) return absl::FailedPreconditionError("synic event: the SynIC is gone");
    return synic->SetEvent(vp_, sint_, flag_);
  }

 private:
  std::weak_ptr<Synic> synic_;
  uint32_t vp_;
  uint8_t sint_;
  uint16_t flag_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Synic>> Synic::Create(SynicOptions options) {
  if (!options.memory.has_backing()) {
    return absl::InvalidArgumentError(fmt::format("synic '{}': no guest memory", options.name));
  }
  if (options.vp_count == 0 || options.vp_count > 1024) {
    return absl::InvalidArgumentError(
        fmt::format("synic '{}': {} VPs (1..1024)", options.name, options.vp_count));
  }
  if (options.max_queued_per_sint == 0 || options.max_inbound == 0) {
    return absl::InvalidArgumentError(
        fmt::format("synic '{}': queue bounds must be at least 1", options.name));
  }
  return std::shared_ptr<Synic>(new Synic(std::move(options)));
}

Synic::Synic(SynicOptions options)
    : options_(std::move(options)), live_(new LiveVp[options_.vp_count]) {
  MutexLock lock(&mu_);
  vps_.resize(options_.vp_count);
  for (uint32_t vp = 0; vp < options_.vp_count; ++vp) {
    vps_[vp].sint.fill(kSintMasked);  // The TLFS reset value.
    PublishLive(vp);
  }
}

void Synic::PublishLive(uint32_t vp) {
  const Vp& state = vps_[vp];
  LiveVp& live = live_[vp];
  live.scontrol.store(state.scontrol, std::memory_order_relaxed);
  live.siefp.store(state.siefp, std::memory_order_relaxed);
  for (uint8_t sint = 0; sint < kSintCount; ++sint) {
    live.sint[sint].store(state.sint[sint], std::memory_order_relaxed);
  }
}

Synic::~Synic() = default;

void Synic::SetInterruptSink(std::shared_ptr<InterruptSink> sink) {
  MutexLock lock(&sink_mu_);
  sink_ = std::move(sink);
}

std::string Synic::Where(uint32_t vp) const {
  return fmt::format("synic '{}' VP {}", options_.name, vp);
}

absl::Status Synic::MsrError(uint32_t vp, uint32_t msr, std::string_view what) const {
  return absl::InvalidArgumentError(fmt::format("{}: MSR {:#x}: {} (#GP)", Where(vp), msr, what));
}

SynicStats Synic::stats() const {
  SynicStats stats;
  {
    MutexLock lock(&mu_);
    stats = stats_;
  }
  stats.events_set = events_set_.load(std::memory_order_relaxed);
  stats.events_coalesced = events_coalesced_.load(std::memory_order_relaxed);
  stats.events_lost = events_lost_.load(std::memory_order_relaxed);
  stats.interrupts = interrupts_.load(std::memory_order_relaxed);
  stats.signals = signals_.load(std::memory_order_relaxed);
  stats.signals_refused = signals_refused_.load(std::memory_order_relaxed);
  return stats;
}

uint64_t Synic::SignalsReceived(uint32_t connection_id) const {
  MutexLock lock(&ports_mu_);
  auto it = signals_by_port_.find(connection_id);
  return it == signals_by_port_.end() ? 0 : it->second;
}

// --- MSRs ---------------------------------------------------------------------------------------

absl::StatusOr<uint64_t> Synic::ReadMsr(uint32_t vp, uint32_t msr) {
  if (vp >= options_.vp_count) return MsrError(vp, msr, "no such VP");
  MutexLock lock(&mu_);
  const Vp& state = vps_[vp];
  switch (msr) {
    case kMsrGuestOsId:
      return guest_os_id_;
    case kMsrHypercall:
      return hypercall_;
    case kMsrVpIndex:
      return uint64_t{vp};
    case kMsrTimeRefCount:  // 100 ns units since the partition started.
      return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                       std::chrono::steady_clock::now() - created_)
                                       .count() /
                                   100);
    case kMsrVpAssistPage:
      return state.vp_assist_page;
    case kMsrScontrol:
      return state.scontrol;
    case kMsrSversion:
      return kSynicVersion;
    case kMsrSiefp:
      return state.siefp;
    case kMsrSimp:
      return state.simp;
    case kMsrEom:
      return uint64_t{0};  // Write-only; reads as zero (as KVM's and Hyper-V's do).
    default:
      if (msr >= kMsrSint0 && msr <= kMsrSint15) return state.sint[msr - kMsrSint0];
      return MsrError(vp, msr, "not a synthetic MSR this SynIC implements");
  }
}

absl::Status Synic::WriteMsr(uint32_t vp, uint32_t msr, uint64_t value) {
  if (vp >= options_.vp_count) return MsrError(vp, msr, "no such VP");
  std::vector<Interrupt> interrupts;
  absl::Status status;
  std::function<absl::Status(uint64_t)> overlay;
  uint64_t overlay_gpa = 0;
  uint64_t hypercall_before = 0;  // HYPERCALL as it was, should the overlay refuse the write.
  uint64_t hypercall_written = 0;
  {
    MutexLock lock(&mu_);
    Vp& state = vps_[vp];
    switch (msr) {
      case kMsrGuestOsId:
        guest_os_id_ = value;
        if (value == 0) hypercall_ &= ~kHypercallEnable;  // No page without a guest OS id.
        break;
      case kMsrHypercall: {
        if ((hypercall_ & kHypercallLocked) != 0 && value != hypercall_) {
          return MsrError(vp, msr, "the hypercall page is locked");
        }
        if ((value & kHypercallReservedBits) != 0) {
          return MsrError(vp, msr, fmt::format("reserved bits set in {:#x}", value));
        }
        // TLFS: the page cannot be enabled while the guest OS id is zero.
        if (guest_os_id_ == 0) value &= ~kHypercallEnable;
        if ((value & kHypercallEnable) != 0) {
          const uint64_t gpa = value & kPageGpaMask;
          if (absl::Status page = options_.memory.ReadPlain<uint64_t>(gpa).status(); !page.ok()) {
            return MsrError(
                vp, msr,
                fmt::format("hypercall page {:#x} is not guest memory: {}", gpa, page.message()));
          }
          overlay = options_.on_hypercall_page;
          overlay_gpa = gpa;
        }
        hypercall_before = hypercall_;
        hypercall_written = value;
        hypercall_ = value;
        break;
      }
      case kMsrVpAssistPage:
        if ((value & kPageReservedBits) != 0) {
          return MsrError(vp, msr, fmt::format("reserved bits set in {:#x}", value));
        }
        state.vp_assist_page = value;  // Accepted; nothing here uses it.
        break;
      case kMsrScontrol:
        if ((value & ~kScontrolEnable) != 0) {
          return MsrError(vp, msr, fmt::format("reserved bits set in {:#x}", value));
        }
        state.scontrol = value;
        TryDeliverAll(vp, &interrupts);
        break;
      case kMsrSiefp:
      case kMsrSimp:
        if (absl::Status enabled = EnablePage(vp, msr, value); !enabled.ok()) return enabled;
        if (msr == kMsrSimp) TryDeliverAll(vp, &interrupts);
        break;
      case kMsrEom:  // The guest emptied a slot: deliver what waits (any SINT of this VP).
        TryDeliverAll(vp, &interrupts);
        break;
      case kMsrVpIndex:
      case kMsrSversion:
      case kMsrTimeRefCount:
        return MsrError(vp, msr, "read-only");
      default:
        if (msr >= kMsrSint0 && msr <= kMsrSint15) {
          status = WriteSintMsr(vp, static_cast<uint8_t>(msr - kMsrSint0), value, &interrupts);
          if (!status.ok()) return status;
          break;
        }
        return MsrError(vp, msr, "not a synthetic MSR this SynIC implements");
    }
    PublishLive(vp);
    hypercall_enabled_.store((hypercall_ & kHypercallEnable) != 0, std::memory_order_relaxed);
  }
  if (overlay) {
    if (absl::Status written = overlay(overlay_gpa); !written.ok()) {
      MutexLock lock(&mu_);
      // A refused write leaves the register as it was (not disabled with the new GPA and lock
      // bit kept), unless another VP has written it since.
      if (hypercall_ == hypercall_written) hypercall_ = hypercall_before;
      hypercall_enabled_.store((hypercall_ & kHypercallEnable) != 0, std::memory_order_relaxed);
      return MsrError(vp, msr,
                      fmt::format("hypercall page {:#x}: {}", overlay_gpa, written.message()));
    }
  }
  Raise(interrupts);
  return absl::OkStatus();
}

absl::Status Synic::EnablePage(uint32_t vp, uint32_t msr, uint64_t value) {
  if ((value & kPageReservedBits) != 0) {
    return MsrError(vp, msr, fmt::format("reserved bits set in {:#x}", value));
  }
  Vp& state = vps_[vp];
  uint64_t& reg = msr == kMsrSimp ? state.simp : state.siefp;
  const bool was_on = (reg & kPageEnable) != 0;
  if ((value & kPageEnable) != 0 && (!was_on || (reg & kPageGpaMask) != (value & kPageGpaMask))) {
    // A newly enabled page starts empty (KVM clears it too), so stale slots and flags left by
    // an earlier kernel (kexec) are not taken for new ones.
    const uint64_t gpa = value & kPageGpaMask;
    if (absl::Status zeroed = options_.memory.Zero(gpa, kPageBytes); !zeroed.ok()) {
      return MsrError(
          vp, msr,
          fmt::format("{} page {:#x} is not guest memory in this SynIC's view: {}",
                      msr == kMsrSimp ? "message" : "event flags", gpa, zeroed.message()));
    }
  }
  reg = value;
  return absl::OkStatus();
}

absl::Status Synic::WriteSintMsr(uint32_t vp, uint8_t sint, uint64_t value,
                                 std::vector<Interrupt>* interrupts) {
  const uint32_t msr = kMsrSint0 + sint;
  if ((value & ~kSintDefinedBits) != 0) {
    return MsrError(vp, msr, fmt::format("reserved bits set in {:#x}", value));
  }
  if ((value & kSintMasked) == 0 && (value & kSintVectorMask) < kFirstValidVector) {
    return MsrError(vp, msr,
                    fmt::format("vector {} is reserved (an unmasked SINT needs 16..255)",
                                value & kSintVectorMask));
  }
  Vp& state = vps_[vp];
  const bool was_masked = (state.sint[sint] & kSintMasked) != 0;
  state.sint[sint] = value;
  // Published before the flags are looked at below, with a full barrier: a SetEvent that read
  // the SINT as masked set its flag first, so one of the two raises the interrupt.
  live_[vp].sint[sint].store(value, std::memory_order_seq_cst);
  if (was_masked && (value & kSintMasked) == 0) {
    // Unmasked: what waited goes out, and flags set while masked get their interrupt.
    TryDeliver(vp, sint, interrupts);
    if ((state.siefp & kPageEnable) != 0) {
      const uint64_t block = (state.siefp & kPageGpaMask) + uint64_t{sint} * kEventFlagsBlockBytes;
      std::array<uint8_t, kEventFlagsBlockBytes> flags{};
      if (options_.memory.Read(block, absl::MakeSpan(flags)).ok() &&
          std::any_of(flags.begin(), flags.end(), [](uint8_t b) { return b != 0; })) {
        QueueInterrupt(vp, sint, interrupts);
      }
    }
  }
  return absl::OkStatus();
}

// --- Delivery -----------------------------------------------------------------------------------

bool Synic::SintLive(const Vp& vp, uint8_t sint) const {
  return (vp.scontrol & kScontrolEnable) != 0 && (vp.sint[sint] & kSintMasked) == 0;
}

void Synic::QueueInterrupt(uint32_t vp, uint8_t sint, std::vector<Interrupt>* interrupts) {
  const Vp& state = vps_[vp];
  if (!SintLive(state, sint)) return;
  interrupts->push_back(Interrupt{vp, static_cast<uint8_t>(state.sint[sint] & kSintVectorMask)});
}

void Synic::TryDeliverAll(uint32_t vp, std::vector<Interrupt>* interrupts) {
  for (uint8_t sint = 0; sint < kSintCount; ++sint) TryDeliver(vp, sint, interrupts);
}

void Synic::TryDeliver(uint32_t vp, uint8_t sint, std::vector<Interrupt>* interrupts) {
  Vp& state = vps_[vp];
  std::deque<std::vector<uint8_t>>& queue = state.queued[sint];
  bool delivered = false;
  while (!queue.empty() && SintLive(state, sint) && (state.simp & kPageEnable) != 0) {
    const uint64_t slot = (state.simp & kPageGpaMask) + uint64_t{sint} * kMessageSlotBytes;
    const guestmem::GuestMemory& memory = options_.memory;
    absl::StatusOr<uint32_t> type = memory.ReadPlain<uint32_t>(slot);
    if (!type.ok()) break;  // The page became inaccessible: hold the messages.
    if (*type != kMessageTypeNone) {
      // Busy: ask for an EOM. If the guest emptied the slot meanwhile it may not have seen
      // the flag, so look once more before waiting.
      ++stats_.messages_waited;
      if (!memory.FetchOr32(slot + kFlagsWordOffset, kPendingInFlagsWord).ok()) break;
      absl::StatusOr<uint32_t> again = memory.ReadPlain<uint32_t>(slot);
      if (!again.ok() || *again != kMessageTypeNone) break;
    }
    const std::vector<uint8_t>& payload = queue.front();
    MessageSlotHeader header{};
    header.payload_size = static_cast<uint8_t>(payload.size());
    header.message_flags = queue.size() > 1 ? kMessageFlagPending : 0;
    std::array<uint8_t, kMessageSlotBytes> bytes{};
    std::memcpy(bytes.data(), &header, sizeof(header));
    if (!payload.empty()) {
      std::memcpy(bytes.data() + kMessagePayloadOffset, payload.data(), payload.size());
    }
    // Everything but message_type first, then message_type: the guest reads the slot only
    // once it sees a type.
    if (!memory.Write(slot + 4, absl::MakeConstSpan(bytes).subspan(4)).ok()) break;
    // message_type with a seq_cst compare-exchange: a release, so a guest that reads the type
    // (acquire) sees the bytes above. Not atomic_thread_fence plus a store: ThreadSanitizer
    // does not model fences (GCC refuses them under -fsanitize=thread). A type the guest wrote
    // meanwhile makes the slot busy: the message stays queued.
    absl::StatusOr<uint32_t> published =
        memory.CompareExchange32(slot, kMessageTypeNone, kMessageTypeVmbus);
    if (!published.ok() || *published != kMessageTypeNone) break;
    queue.pop_front();
    ++stats_.messages_delivered;
    delivered = true;
  }
  if (delivered) {
    QueueInterrupt(vp, sint, interrupts);
    if (space_wanted_) ScheduleSpace();
  }
}

void Synic::Raise(const std::vector<Interrupt>& interrupts) {
  if (interrupts.empty()) return;
  std::shared_ptr<InterruptSink> sink;
  {
    MutexLock lock(&sink_mu_);
    sink = sink_;
  }
  interrupts_.fetch_add(interrupts.size(), std::memory_order_relaxed);
  if (sink == nullptr) return;  // No guest listening: the interrupt is lost, as on hardware.
  for (const Interrupt& interrupt : interrupts) sink->Assert(interrupt.vp, interrupt.vector);
}

absl::Status Synic::SetEvent(uint32_t vp, uint8_t sint, uint16_t flag) {
  if (vp >= options_.vp_count || sint >= kSintCount || flag >= kEventFlagCount) {
    return absl::InvalidArgumentError(
        fmt::format("synic '{}': event flag {} of VP {} SINT {} does not exist", options_.name,
                    flag, vp, sint));
  }
  // The hot path of every channel interrupt: no lock, the registers' published copies.
  const LiveVp& live = live_[vp];
  const uint64_t siefp = live.siefp.load(std::memory_order_relaxed);
  if ((live.scontrol.load(std::memory_order_relaxed) & kScontrolEnable) == 0 ||
      (siefp & kPageEnable) == 0) {
    events_lost_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  const uint64_t word =
      (siefp & kPageGpaMask) + uint64_t{sint} * kEventFlagsBlockBytes + uint64_t{flag / 32u} * 4;
  const uint32_t bit = uint32_t{1} << (flag % 32);
  absl::StatusOr<uint32_t> before = options_.memory.FetchOr32(word, bit);
  if (!before.ok()) {
    events_lost_.fetch_add(1, std::memory_order_relaxed);
    return absl::FailedPreconditionError(
        fmt::format("{}: event flag {}: {}", Where(vp), flag, before.status().message()));
  }
  if ((*before & bit) != 0) {
    // The guest has not looked yet: it will see this one too.
    events_coalesced_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  events_set_.fetch_add(1, std::memory_order_relaxed);
  // A SINT masked (or SCONTROL turned off) after the check above: its unmask raises the
  // interrupt for the flag set here (WriteSintMsr looks at the flags).
  const uint64_t sint_reg = live.sint[sint].load(std::memory_order_seq_cst);
  if ((sint_reg & kSintMasked) == 0) {
    Raise({Interrupt{vp, static_cast<uint8_t>(sint_reg & kSintVectorMask)}});
  }
  return absl::OkStatus();
}

// --- Hypercalls ---------------------------------------------------------------------------------

uint64_t Synic::Hypercall(uint32_t vp, uint64_t control, uint64_t input, uint64_t output) {
  (void)output;  // Neither call has output.
  if (vp >= options_.vp_count) return kStatusInvalidParameter;
  if (!hypercall_enabled_.load(std::memory_order_relaxed)) return kStatusAccessDenied;
  switch (control & kControlCodeMask) {
    case kCallPostMessage:
      return PostMessage(vp, control, input);
    case kCallSignalEvent:
      return SignalEvent(vp, control, input);
    default:
      return kStatusInvalidHypercallCode;
  }
}

uint64_t Synic::PostMessage(uint32_t vp, uint64_t control, uint64_t input_gpa) {
  (void)vp;
  if ((control & (kControlFast | kControlNonSimpleMask)) != 0) {
    return kStatusInvalidHypercallInput;  // A slow, simple call only.
  }
  // The input may not cross a page (TLFS 3.x: parameters are 8-byte aligned, within a page).
  if (input_gpa % 8 != 0 || input_gpa % kPageBytes > kPageBytes - sizeof(PostMessageInput)) {
    return kStatusInvalidAlignment;
  }
  PostMessageInput message;  // One copy out of guest memory; only the copy is looked at.
  if (!options_.memory
           .Read(input_gpa, absl::MakeSpan(reinterpret_cast<uint8_t*>(&message), sizeof(message)))
           .ok()) {
    return kStatusInvalidParameter;
  }
  if (message.payload_size > kMessagePayloadBytes || message.message_type == kMessageTypeNone ||
      (message.message_type & kMessageTypeHypervisorBit) != 0) {
    return kStatusInvalidParameter;
  }
  MutexLock lock(&mu_);
  if ((message.connection_id & ~kConnectionIdMask) != 0 ||
      (server_loop_ == nullptr && !handing_off_) ||
      std::find(message_ids_.begin(), message_ids_.end(), message.connection_id) ==
          message_ids_.end()) {
    return kStatusInvalidConnectionId;
  }
  if (inbound_.size() >= options_.max_inbound) {
    ++stats_.insufficient_buffers;
    return kStatusInsufficientBuffers;  // The guest retries (Linux: vmbus_post_msg).
  }
  inbound_.push_back(
      Inbound{message.connection_id,
              std::vector<uint8_t>(message.payload, message.payload + message.payload_size)});
  ++stats_.messages_posted;
  ScheduleDrain();
  return kStatusSuccess;
}

uint64_t Synic::SignalEvent(uint32_t vp, uint64_t control, uint64_t input) {
  (void)vp;
  if ((control & kControlNonSimpleMask) != 0) return kStatusInvalidHypercallInput;
  uint64_t parameter = input;
  if ((control & kControlFast) == 0) {
    if (input % 8 != 0) return kStatusInvalidAlignment;
    absl::StatusOr<uint64_t> read = options_.memory.ReadPlain<uint64_t>(input);
    if (!read.ok()) return kStatusInvalidParameter;
    parameter = *read;
  }
  if ((parameter & kSignalEventReservedMask) != 0) return kStatusInvalidParameter;
  const uint32_t connection_id = static_cast<uint32_t>(parameter & kConnectionIdMask);
  const uint16_t flag_number = static_cast<uint16_t>(parameter >> kFlagNumberShift);
  std::shared_ptr<hw::Signal> target;
  {
    MutexLock lock(&ports_mu_);
    auto it = event_ports_.find(connection_id);
    if (it == event_ports_.end()) {
      signals_refused_.fetch_add(1, std::memory_order_relaxed);
      return kStatusInvalidConnectionId;
    }
    if (flag_number != 0) return kStatusInvalidParameter;  // Each port has one flag.
    target = it->second;
    ++signals_by_port_[connection_id];
  }
  signals_.fetch_add(1, std::memory_order_relaxed);
  (void)target->Raise();  // A device's doorbell; its failure is the device's to report.
  return kStatusSuccess;
}

// --- The server's side --------------------------------------------------------------------------

absl::Status Synic::AttachServer(hw::EventLoop* loop, std::vector<uint32_t> connection_ids,
                                 MessageHandler on_message, std::function<void()> on_space) {
  if (loop == nullptr || !on_message) {
    return absl::InvalidArgumentError(
        fmt::format("synic '{}': a server needs a loop and a handler", options_.name));
  }
  for (uint32_t id : connection_ids) {
    if (id == 0 || id > kConnectionIdMask) {
      return absl::InvalidArgumentError(
          fmt::format("synic '{}': connection id {:#x} is outside 1..0xffffff", options_.name, id));
    }
  }
  MutexLock lock(&mu_);
  if (server_loop_ != nullptr) {
    return absl::AlreadyExistsError(
        fmt::format("synic '{}': a server is already attached", options_.name));
  }
  server_loop_ = loop;
  handing_off_ = false;
  ++attach_epoch_;
  message_ids_ = std::move(connection_ids);
  on_message_ = std::move(on_message);
  on_space_ = std::move(on_space);
  accepting_ = true;
  drain_scheduled_ = false;
  space_wanted_ = false;
  if (!inbound_.empty()) ScheduleDrain();
  return absl::OkStatus();
}

void Synic::DetachServer() {
  MutexLock lock(&mu_);
  server_loop_ = nullptr;
  handing_off_ = false;
  ++attach_epoch_;
  message_ids_.clear();
  on_message_ = nullptr;
  on_space_ = nullptr;
  // Posts already taken stay queued for the next server (servicing): the guest was told
  // they arrived.
}

// Stands in for an event port's target during a hand-off: remembers that the guest signalled.
class Synic::HeldEvent : public hw::Signal {
 public:
  absl::Status Raise() override {
    raised_.store(true, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  bool raised() const { return raised_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> raised_{false};
};

void Synic::HandOffServer() {
  {
    MutexLock lock(&mu_);
    server_loop_ = nullptr;
    handing_off_ = true;  // message_ids_ stay: posts to them queue for the successor.
    ++attach_epoch_;
    on_message_ = nullptr;
    on_space_ = nullptr;
  }
  std::vector<std::pair<uint32_t, std::shared_ptr<hw::Signal>>> held;
  {
    MutexLock lock(&ports_mu_);
    for (auto& [connection_id, target] : event_ports_) {
      if (held_ports_.contains(connection_id)) continue;  // Held since an earlier hand-off.
      auto holder = std::make_shared<HeldEvent>();
      target = holder;
      held_ports_[connection_id] = holder;
      held.emplace_back(connection_id, std::move(holder));
    }
  }
  // A VMM that bound a port to the old device's doorbell unbinds it (the doorbell may close).
  if (options_.on_event_port) {
    for (const auto& [connection_id, holder] : held) options_.on_event_port(connection_id, holder);
  }
}

void Synic::SetAccepting(bool accepting) {
  MutexLock lock(&mu_);
  accepting_ = accepting;
  if (accepting && !inbound_.empty()) ScheduleDrain();
}

void Synic::ScheduleDrain() {
  if (drain_scheduled_ || !accepting_ || server_loop_ == nullptr) return;
  drain_scheduled_ = true;
  std::weak_ptr<Synic> weak = weak_from_this();
  const uint64_t epoch = attach_epoch_;
  server_loop_->Post([weak, epoch] {
    if (std::shared_ptr<Synic> synic = weak.lock()) synic->Drain(epoch);
  });
}

void Synic::Drain(uint64_t epoch) {
  while (true) {
    MessageHandler handler;
    Inbound next;
    {
      MutexLock lock(&mu_);
      if (epoch != attach_epoch_) return;  // Detached (or replaced) since this was posted.
      if (!accepting_ || inbound_.empty()) {
        drain_scheduled_ = false;
        return;
      }
      next = std::move(inbound_.front());
      inbound_.pop_front();
      handler = on_message_;
    }
    handler(next.connection_id, std::move(next.payload));
  }
}

void Synic::ScheduleSpace() {
  if (server_loop_ == nullptr || !on_space_) return;
  space_wanted_ = false;
  std::weak_ptr<Synic> weak = weak_from_this();
  const uint64_t epoch = attach_epoch_;
  server_loop_->Post([weak, epoch] {
    std::shared_ptr<Synic> synic = weak.lock();
    if (synic == nullptr) return;
    std::function<void()> on_space;
    {
      MutexLock lock(&synic->mu_);
      if (epoch != synic->attach_epoch_) return;
      on_space = synic->on_space_;
    }
    if (on_space) on_space();
  });
}

absl::Status Synic::PostToGuest(uint32_t vp, uint8_t sint, absl::Span<const uint8_t> payload) {
  if (payload.size() > kMessagePayloadBytes) {
    return absl::InvalidArgumentError(
        fmt::format("synic '{}': a {}-byte message exceeds the 240-byte payload", options_.name,
                    payload.size()));
  }
  if (vp >= options_.vp_count || sint >= kSintCount) {
    return absl::InvalidArgumentError(
        fmt::format("synic '{}': VP {} SINT {} does not exist ({} VPs)", options_.name, vp, sint,
                    options_.vp_count));
  }
  std::vector<Interrupt> interrupts;
  {
    MutexLock lock(&mu_);
    std::deque<std::vector<uint8_t>>& queue = vps_[vp].queued[sint];
    if (queue.size() >= options_.max_queued_per_sint) {
      space_wanted_ = true;
      return absl::ResourceExhaustedError(
          fmt::format("{} SINT {}: {} messages wait for the guest", Where(vp), sint, queue.size()));
    }
    queue.emplace_back(payload.begin(), payload.end());
    TryDeliver(vp, sint, &interrupts);
  }
  Raise(interrupts);
  return absl::OkStatus();
}

bool Synic::CanReceive(uint32_t vp, uint8_t sint) const {
  if (vp >= options_.vp_count || sint >= kSintCount) return false;
  MutexLock lock(&mu_);
  const Vp& state = vps_[vp];
  return SintLive(state, sint) && (state.simp & kPageEnable) != 0;
}

std::shared_ptr<hw::Signal> Synic::GuestEvent(uint32_t vp, uint8_t sint, uint16_t flag) {
  return std::make_shared<EventSignal>(weak_from_this(), vp, sint, flag);
}

void Synic::SetEventTarget(uint32_t connection_id, std::shared_ptr<hw::Signal> target) {
  bool signalled_while_held = false;
  {
    MutexLock lock(&ports_mu_);
    if (auto held = held_ports_.find(connection_id); held != held_ports_.end()) {
      signalled_while_held = held->second->raised();
      held_ports_.erase(held);
    }
    if (target) {
      event_ports_[connection_id] = target;
    } else {
      event_ports_.erase(connection_id);
      signals_by_port_.erase(connection_id);
    }
  }
  if (options_.on_event_port) options_.on_event_port(connection_id, target);
  // The guest's doorbell during a hand-off reaches the successor's target, once.
  if (signalled_while_held && target) (void)target->Raise();
}

}  // namespace cvmbus::paravisor::synic
