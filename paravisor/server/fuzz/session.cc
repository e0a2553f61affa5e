#include "paravisor/server/fuzz/session.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "base/format.h"
#include "guestmem/memory_backing.h"
#include "paravisor/server/fuzz/invariant.h"
#include "paravisor/server/saved_queries.h"

namespace cvmbus::paravisor::fuzz {
namespace {

using testing::ScriptedDevice;

std::unique_ptr<hw::EventLoop> NewLoop() {
  absl::StatusOr<std::unique_ptr<hw::EventLoop>> created = hw::EventLoop::Create();
  FUZZ_REQUIRE(created.ok(), "no event loop: {}", created.status());
  return *std::move(created);
}

// Guest memory as a confidential VM has it: shared with the host (the untrusted view) but for
// the server's monitor page, private to the paravisor. Only that page is ever touched (the
// scripted devices read no guest memory); it is zeroed for each session.
const std::shared_ptr<guestmem::MemoryBacking>& SharedMemory() {
  static const std::shared_ptr<guestmem::MemoryBacking> backing = [] {
    guestmem::MemoryOptions options;
    options.name = "server_fuzz";
    options.regions = {{0, kGuestMemoryBytes}};
    options.type = guestmem::BackingType::kAnonymous;
    absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> created =
        guestmem::MemoryBacking::Create(options);
    FUZZ_REQUIRE(created.ok(), "no guest memory: {}", created.status());
    using guestmem::Access;
    absl::Status shared =
        (*created)->SetAccess(0, kGuestMemoryBytes, Access::kNone, Access::kReadWrite);
    absl::Status page =
        (*created)->SetAccess(kServerMonitorPage, 4096, Access::kReadWrite, Access::kNone);
    FUZZ_REQUIRE(shared.ok() && page.ok(), "guest memory access: {} {}", shared, page);
    return *created;
  }();
  return backing;
}

OfferParams SlotParams(size_t index) {
  OfferParams params;
  params.interface_name = fmt::format("fuzz{}", index);
  params.interface_id.data1 = 0x1000 * static_cast<uint32_t>(1 + index);
  params.instance_id.data1 = static_cast<uint32_t>(1 + index);
  switch (index) {
    case 0:  // A primary channel with MNF, and (slot 1) its subchannel.
    case 1:
      params.interface_id.data1 = 0x1000;
      params.instance_id.data1 = 1;
      params.subchannel_index = static_cast<uint16_t>(index);
      // Longer than an input runs: the scanner never fires within a step.
      params.mnf_interrupt_latency = std::chrono::milliseconds(100);
      break;
    case 2:
      params.channel_type = InterfaceChannel{};
      params.allow_confidential_external_memory = true;
      params.offer_order = 1;
      break;
    case 3:
      params.channel_type = PipeChannel{.message_mode = true};
      break;
    case kHvSocketSlot:
      params.channel_type = HvSocketChannel{.is_connect = true};
      break;
  }
  return params;
}

// Whether `state` has a live (not revoked) channel of `key`: its device restores it.
bool SavedLive(const saved::Server& state, const OfferKey& key) {
  for (const saved::Channel& channel : state.channels()) {
    if (!channel.revoked() && channel.interface_id().size() == sizeof(Guid) &&
        channel.instance_id().size() == sizeof(Guid) &&
        std::memcmp(channel.interface_id().data(), &key.interface_id, sizeof(Guid)) == 0 &&
        std::memcmp(channel.instance_id().data(), &key.instance_id, sizeof(Guid)) == 0 &&
        channel.subchannel_index() == key.subchannel_index) {
      return true;
    }
  }
  return false;
}

}  // namespace

Session::Session(SessionOptions options) : loop_(NewLoop()), port_(loop_.get(), &model_) {
  const std::shared_ptr<guestmem::MemoryBacking>& memory = SharedMemory();
  FUZZ_REQUIRE(guestmem::GuestMemory::Private(memory).Zero(kServerMonitorPage, 4096).ok(),
               "the server monitor page is not private");
  options_.untrusted_memory = guestmem::GuestMemory::Untrusted(memory);
  options_.private_memory = guestmem::GuestMemory::Private(memory);
  options_.server_monitor_page = kServerMonitorPage;
  // SERVER_FUZZ_LOG=1 in the environment: the server's log on stderr, to follow a reproducer.
  static const bool verbose = std::getenv("SERVER_FUZZ_LOG") != nullptr;
  options_.log = [this](const std::string& line) {
    ++log_lines_;
    if (verbose) std::fprintf(stderr, "server: %s\n", line.c_str());
  };
  options_.on_hvsocket_connect = [this](const HvSocketConnect& connect) {
    return OnHvSocketConnect(connect);
  };
  if (options.small_limits) {
    options_.limits = ServerLimits{.gpadls_per_channel = 3,
                                   .gpadls = 6,
                                   .pages_per_gpadl = 40,
                                   .gpadl_pages = 100,
                                   .modifies_in_flight = 2};
  }
  for (size_t i = 0; i < kSlots; ++i) slots_[i].params = SlotParams(i);
  server_ = std::make_unique<VmbusServer>(loop_.get(), &port_, options_);
  bus_ = server_->Bus();
}

Session::~Session() {
  for (Slot& slot : slots_) slot.device.reset();
  bus_.reset();
  server_.reset();
  RunToIdle();  // The devices' and the server's tasks finish; then the loop goes.
}

void Session::Send(const std::vector<uint8_t>& bytes, uint32_t connection_id) {
  (void)port_.Post(connection_id, bytes);
}

void Session::Offer(size_t index, testing::DeviceScript script) {
  Slot& slot = slots_[index];
  if (slot.device != nullptr) return;
  slot.script = script;
  slot.device = std::make_unique<ScriptedDevice>(loop_.get(), bus_.get(), slot.params, script);
  FUZZ_REQUIRE(slot.device->Offer().ok(), "the server's bus refused an offer of slot {}", index);
}

void Session::Revoke(size_t index, bool drop) {
  Slot& slot = slots_[index];
  if (slot.device == nullptr) return;
  if (drop || !slot.device->Revoke().ok()) slot.device.reset();
}

bool Session::OnHvSocketConnect(const HvSocketConnect& connect) {
  Slot& slot = slots_[kHvSocketSlot];
  if (!listener_accepts_ || slot.device != nullptr) {
    model_.ExpectTlConnectResult();
    return false;
  }
  // A listener offers the channel: instance = the guest's endpoint, interface = the service.
  slot.params = SlotParams(kHvSocketSlot);
  slot.params.channel_type = HvSocketChannel{.is_connect = false, .silo_id = connect.silo_id};
  slot.params.instance_id = connect.endpoint_id;
  slot.params.interface_id = connect.service_id;
  Offer(kHvSocketSlot, slot.script);
  return true;
}

void Session::RunToIdle() {
  for (int round = 0; loop_->RunPostedWork(); ++round) {
    FUZZ_REQUIRE(round < 100000, "the server's loop never went idle ({} rounds)", round);
  }
}

void Session::DropDeadDevices() {
  bool dropped = false;
  for (Slot& slot : slots_) {
    if (slot.device != nullptr && slot.device->requests_closed()) {
      slot.device.reset();  // The server let go of it: revoked, refused, or its hvsocket closed.
      dropped = true;
    }
  }
  if (dropped) RunToIdle();
}

void Session::CheckStep() {
  DropDeadDevices();
  const ServerSnapshot snapshot = server_->Snapshot();
  model_.ResolveReleases(snapshot);
  CheckStructure(snapshot);
}

void Session::CheckStructure(const ServerSnapshot& s) {
  // The tables are small (a few channels, a few dozen GPADLs): linear scans, no allocation.
  const ServerLimits& limits = options_.limits;
  FUZZ_REQUIRE(s.channels.size() <= kMaxChannels, "{} channels", s.channels.size());
  size_t event_ports = 0;  // Of opening and open channels.
  for (size_t i = 0; i < s.channels.size(); ++i) {
    const ChannelSnapshot& c = s.channels[i];
    FUZZ_REQUIRE(
        c.relid >= 1 && c.relid <= kMaxChannels && (i == 0 || c.relid > s.channels[i - 1].relid),
        "relid {} after {}", c.relid, i == 0 ? 0 : s.channels[i - 1].relid);
    const bool live = c.state != "revoked";
    FUZZ_REQUIRE(!live || c.device_attached, "channel {} ({}) has no device once the step is over",
                 c.relid, c.state);
    const bool opening_or_open = c.state == "opening" || c.state == "open";
    FUZZ_REQUIRE(c.open.has_value() == (opening_or_open || c.state == "closing"),
                 "channel {} is {} with{} open data", c.relid, c.state,
                 c.open.has_value() ? "" : "out");
    for (size_t j = 0; j < i; ++j) {
      const ChannelSnapshot& other = s.channels[j];
      FUZZ_REQUIRE(!live || other.state == "revoked" || other.interface_id != c.interface_id ||
                       other.instance_id != c.instance_id ||
                       other.subchannel_index != c.subchannel_index,
                   "key {}-{}-{} is live as channels {} and {}", c.interface_id.ToString(),
                   c.instance_id.ToString(), c.subchannel_index, other.relid, c.relid);
      FUZZ_REQUIRE(!c.monitor_id.has_value() || other.monitor_id != c.monitor_id,
                   "monitor id {} is channel {}'s and channel {}'s", *c.monitor_id, other.relid,
                   c.relid);
      FUZZ_REQUIRE(!c.open.has_value() || !other.open.has_value() ||
                       other.open->connection_id != c.open->connection_id,
                   "connection id {:#x} is channel {}'s and channel {}'s", c.open->connection_id,
                   other.relid, c.relid);
    }
    FUZZ_REQUIRE(!c.monitor_id.has_value() || *c.monitor_id < 128, "channel {}: monitor id {}",
                 c.relid, *c.monitor_id);
    FUZZ_REQUIRE(c.gpadls <= limits.gpadls_per_channel, "channel {} holds {} GPADLs (at most {})",
                 c.relid, c.gpadls, limits.gpadls_per_channel);
    FUZZ_REQUIRE(c.pending_modifies <= limits.modifies_in_flight,
                 "channel {} has {} MODIFYCHANNELs in flight (at most {})", c.relid,
                 c.pending_modifies, limits.modifies_in_flight);
    size_t gpadls = 0;
    for (const GpadlSnapshot& g : s.gpadls) gpadls += g.relid == c.relid;
    FUZZ_REQUIRE(gpadls == c.gpadls, "channel {} counts {} GPADLs, the table {}", c.relid, c.gpadls,
                 gpadls);
    if (!c.open.has_value()) continue;
    if (opening_or_open) {
      ++event_ports;
      FUZZ_REQUIRE(port_.targets().contains(c.open->connection_id),
                   "channel {} is {} but its event port {:#x} is not registered", c.relid, c.state,
                   c.open->connection_id);
    }
    const GpadlSnapshot* ring = nullptr;
    for (const GpadlSnapshot& g : s.gpadls) {
      if (g.id == c.open->ring_gpadl_id) ring = &g;
    }
    FUZZ_REQUIRE(
        ring != nullptr && ring->relid == c.relid &&
            (ring->state == "accepted" || (c.state == "closing" && ring->state == "tearing down")),
        "channel {} is {} but its ring GPADL {:#x} is {}", c.relid, c.state, c.open->ring_gpadl_id,
        ring == nullptr ? "gone" : fmt::format("channel {}'s, {}", ring->relid, ring->state));
  }
  uint64_t pages = 0;
  for (size_t i = 0; i < s.gpadls.size(); ++i) {
    const GpadlSnapshot& g = s.gpadls[i];
    FUZZ_REQUIRE(i == 0 || g.id > s.gpadls[i - 1].id, "GPADL {:#x} listed twice", g.id);
    FUZZ_REQUIRE(FindChannel(s, g.relid) != nullptr, "GPADL {:#x} belongs to channel {}, gone",
                 g.id, g.relid);
    FUZZ_REQUIRE(g.ranges >= 1 && g.pages <= limits.pages_per_gpadl,
                 "GPADL {:#x}: {} ranges, {} pages (at most {})", g.id, g.ranges, g.pages,
                 limits.pages_per_gpadl);
    pages += g.pages;
  }
  FUZZ_REQUIRE(s.gpadls.size() <= limits.gpadls && pages <= limits.gpadl_pages,
               "{} GPADLs of {} pages (at most {} of {})", s.gpadls.size(), pages, limits.gpadls,
               limits.gpadl_pages);
  // The SynIC raises exactly the events of the channels that are opening or open (each of
  // those was found registered above), none of them still a predecessor's.
  FUZZ_REQUIRE(port_.targets().size() == event_ports,
               "{} event ports registered for {} opening and open channels: {:#x}",
               port_.targets().size(), event_ports,
               fmt::join(
                   [&] {
                     std::vector<uint32_t> ids;
                     for (const auto& [id, target] : port_.targets()) ids.push_back(id);
                     return ids;
                   }(),
                   ","));
  FUZZ_REQUIRE(port_.handed_off_targets().empty(),
               "event port {:#x} still raises the predecessor's target after servicing",
               *port_.handed_off_targets().begin());
  // Each device slot owns exactly the one live channel of its key, and every live channel is
  // a slot's.
  size_t live = 0;
  for (const ChannelSnapshot& c : s.channels) live += c.state != "revoked";
  size_t owners = 0;
  for (size_t i = 0; i < kSlots; ++i) {
    if (slots_[i].device == nullptr) continue;
    ++owners;
    const OfferKey key = slots_[i].params.key();
    bool found = false;
    for (const ChannelSnapshot& c : s.channels) {
      found |= c.state != "revoked" && c.interface_id == key.interface_id &&
               c.instance_id == key.instance_id && c.subchannel_index == key.subchannel_index;
    }
    FUZZ_REQUIRE(found, "slot {}'s device ({}) has no live channel", i, key.ToString());
  }
  // Keys are unique among live channels and among slots, so equal counts pair them all.
  FUZZ_REQUIRE(live == owners, "{} live channels for {} devices", live, owners);
}

void Session::SaveAndRestore() {
  absl::StatusOr<saved::Server> saved = server_->Save();
  if (!saved.ok()) {
    FUZZ_REQUIRE(absl::IsFailedPrecondition(saved.status()), "Save failed: {}", saved.status());
    return;  // A reset waits for devices: servicing waits too.
  }
  std::string bytes;
  FUZZ_REQUIRE(saved->SerializeToString(&bytes), "the saved state does not serialize");
  saved::Server state;
  FUZZ_REQUIRE(state.ParseFromString(bytes), "the saved state does not parse back");
  // The old paravisor goes: its server hands the port over, its devices stop.
  server_->HandOffOnDestruction();
  bus_.reset();
  server_.reset();
  std::array<bool, kSlots> had_device{};
  for (size_t i = 0; i < kSlots; ++i) {
    had_device[i] = slots_[i].device != nullptr;
    slots_[i].device.reset();
  }
  RunToIdle();
  // The new one: the server restored first, then the devices.
  server_ = std::make_unique<VmbusServer>(loop_.get(), &port_, options_);
  bus_ = server_->Bus();
  absl::Status restored = server_->Restore(state);
  FUZZ_REQUIRE(restored.ok(), "the server refused its own saved state: {}", restored);
  std::array<bool, kSlots> restoring{};
  for (size_t i = 0; i < kSlots; ++i) {
    if (!had_device[i]) continue;
    Slot& slot = slots_[i];
    slot.device =
        std::make_unique<ScriptedDevice>(loop_.get(), bus_.get(), slot.params, slot.script);
    const OfferKey key = slot.params.key();
    restoring[i] = SavedLive(state, key);
    absl::Status offered =
        restoring[i] ? slot.device->OfferRestored(SavedChannelOpen(
                           state, key.interface_id, key.instance_id, key.subchannel_index))
                     : slot.device->Offer();
    FUZZ_REQUIRE(offered.ok(), "slot {} could not offer after servicing: {}", i, offered);
  }
  RunToIdle();
  for (size_t i = 0; i < kSlots; ++i) {
    if (!restoring[i] || slots_[i].device == nullptr) continue;
    const auto& result = slots_[i].device->restore_result();
    FUZZ_REQUIRE(result.has_value() && result->ok(),
                 "slot {}'s device restoring its channel got {}", i,
                 result.has_value() ? fmt::format("{}", result->status()) : "no answer");
  }
}

void Session::Settle(bool accept) {
  port_.SetQueueLimit(std::nullopt);
  port_.ReadAll();
  // Every device answers at once from now on, and answers what it held.
  std::array<testing::DeviceScript, kSlots> scripts;
  const auto answer_all = [&] {
    for (size_t i = 0; i < kSlots; ++i) {
      if (slots_[i].device == nullptr) continue;
      testing::DeviceScript& script = slots_[i].device->script();
      scripts[i] = script;
      script = testing::DeviceScript{.accept_open = accept,
                                     .accept_gpadl = accept,
                                     .modify_status = script.modify_status,
                                     .throwing_signal = script.throwing_signal};
    }
  };
  answer_all();
  for (int round = 0;; ++round) {
    FUZZ_REQUIRE(round < 64, "the devices' requests never end");
    RunToIdle();
    DropDeadDevices();
    bool released = false;
    for (Slot& slot : slots_) {
      ScriptedDevice* device = slot.device.get();
      if (device == nullptr) continue;
      while (device->ReleaseOpen(accept) || device->ReleaseClose() ||
             device->ReleaseGpadl(accept) || device->ReleaseTeardown() ||
             device->ReleaseModify(device->script().modify_status)) {
        released = true;
      }
    }
    if (!released) break;
  }
  if (model_.phase() == GuestModel::Phase::kConnected && model_.paused()) {
    Send(protocol::Encode(protocol::Resume{}));
    RunToIdle();
  }
  for (size_t i = 0; i < kSlots; ++i) {
    if (slots_[i].device != nullptr) slots_[i].device->script() = scripts[i];
  }
  RunToIdle();
  DropDeadDevices();
  const ServerSnapshot snapshot = server_->Snapshot();
  model_.ResolveReleases(snapshot);
  CheckStructure(snapshot);
  model_.CheckSettled(snapshot);
}

}  // namespace cvmbus::paravisor::fuzz
