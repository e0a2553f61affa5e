// libFuzzer target for the VMBus server as a whole: a guest's control messages and its devices'
// behaviour, interleaved, against a fresh VmbusServer on an isolated VM (session.h), with the
// server's invariants checked after every step and its answers at every settle point.
//
// Input: byte 0 picks the options (bit 0: small ServerLimits); then up to kMaxSteps actions,
// each an opcode byte (taken modulo kActions) and its argument bytes; a byte past the end reads
// as zero, so every byte string is a program. Zero bytes mean the common, valid choice:
// version 6.0 with every grantable feature, VP 0 and SINT 2, the first offered relid, the
// first GPADL the guest created for it, whole GPADLs of one valid range.
//
//   guest: 0 INITIATE_CONTACT (any version, features, VP, SINT, monitor pages)
//          1 REQUESTOFFERS          2 GPADL_HEADER (+ bodies: all, none or one)
//          3 GPADL_BODY (the next words of a GPADL left unfinished, or a stray one)
//          4 GPADL_TEARDOWN         5 OPENCHANNEL (with or without its tail)
//          6 CLOSECHANNEL           7 MODIFYCHANNEL        8 RELID_RELEASED
//          9 UNLOAD                 10 PAUSE               11 RESUME
//          12 MODIFY_CONNECTION     13 TL_CONNECT_REQUEST (a listener accepts or not)
//          14 a signal on a channel's connection id
//          15 reads its messages; bounds its SINT queue (backpressure)
//          16 a raw message of any bytes
//   devices: 17 offer a slot's channel   18 revoke it (RevokeChannel, or drop the offer)
//          19 script a device (answer now, hold, drop; accept or refuse; revoke on open; a
//             throwing signal)   20 answer a held request   21 raise a device's interrupt
//   server: 22 servicing: save, to bytes and back, restore into a fresh server, devices back
//          23 settle: every device answers, the guest reads; the answers are checked
// After the program: a settle, then a well-behaved guest unloads, connects at 6.0, asks for
// the offers (one per device), and creates, opens, closes and tears down a ring.
//
//   paravisor/server/fuzz/build_fuzzer.sh /tmp/server_fuzz && /tmp/server_fuzz CORPUS
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <vector>

#include "base/testing/fuzz_input.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/server/fuzz/invariant.h"
#include "paravisor/server/fuzz/session.h"

namespace cvmbus::paravisor::fuzz {
namespace {

using protocol::MessageType;
using testing::Answer;
using testing::DeviceScript;

// Bounds on what one input costs: a step is tens of microseconds, a servicing a few hundred.
constexpr int kMaxSteps = 128;
constexpr int kMaxServicings = 8;
constexpr int kActions = 24;
// What a guest asks for when it asks for everything the server can grant (not client ids).
constexpr uint32_t kAllFeatures = protocol::kKnownFeatures & ~protocol::kFeatureClientId;

using Input = ::cvmbus::testing::FuzzInput;

class Program {
 public:
  Program(Input& input, Session& session) : in_(input), s_(session) {}

  void Step() {
    const uint8_t op = in_.Byte() % kActions;
    switch (op) {
      case 0:
        return Contact();
      case 1:
        return s_.Send(protocol::Encode(protocol::RequestOffers{}));
      case 2:
        return GpadlHeader();
      case 3:
        return GpadlBody();
      case 4: {
        protocol::GpadlTeardown teardown{};
        teardown.child_relid = Relid();
        teardown.gpadl = GpadlOf(teardown.child_relid);
        return s_.Send(protocol::Encode(teardown));
      }
      case 5:
        return Open();
      case 6: {
        protocol::CloseChannel close{};
        close.child_relid = Relid();
        return s_.Send(protocol::Encode(close));
      }
      case 7: {
        protocol::ModifyChannel modify{};
        modify.child_relid = Relid();
        modify.target_vp = Vp();
        return s_.Send(protocol::Encode(modify));
      }
      case 8: {
        protocol::RelIdReleased released{};
        released.child_relid = Relid();
        return s_.Send(protocol::Encode(released));
      }
      case 9:
        return s_.Send(protocol::Encode(protocol::Unload{}));
      case 10:
        return s_.Send(protocol::Encode(protocol::Pause{}));
      case 11:
        return s_.Send(protocol::Encode(protocol::Resume{}));
      case 12: {
        protocol::ModifyConnection modify{};
        MonitorPages(&modify.monitor_page1, &modify.monitor_page2);
        return s_.Send(protocol::Encode(modify));
      }
      case 13:
        return TlConnect();
      case 14:
        return GuestSignal();
      case 15: {
        const uint8_t choice = in_.Byte();
        s_.port().ReadAll();
        if (choice & 0x80) {
          s_.port().SetQueueLimit(choice % 8 == 0 ? std::nullopt
                                                  : std::optional<size_t>(choice % 8));
        }
        return;
      }
      case 16: {
        std::vector<uint8_t> bytes(in_.Byte() % 241);
        for (uint8_t& byte : bytes) byte = in_.Byte();
        if (bytes.size() >= 4) {
          bytes[0] %= 32;  // Mostly a known type, to get past the parser.
          bytes[1] = bytes[2] = bytes[3] = 0;
        }
        return s_.Send(bytes, in_.Byte() & 1 ? 1 : 4);
      }
      case 17: {
        const size_t slot = in_.Byte() % kSlots;
        return s_.Offer(slot, Script());
      }
      case 18: {
        const uint8_t choice = in_.Byte();
        return s_.Revoke(choice % kSlots, (choice & 0x80) != 0);
      }
      case 19: {
        Session::Slot& slot = s_.slot(in_.Byte() % kSlots);
        slot.script = Script();
        if (slot.device != nullptr) slot.device->script() = slot.script;
        return;
      }
      case 20:
        return Release();
      case 21:
        return DeviceInterrupt();
      case 22:
        if (servicings_ < kMaxServicings) {
          ++servicings_;
          s_.SaveAndRestore();
        }
        return;
      case 23:
        return s_.Settle((in_.Byte() & 1) == 0);
    }
  }

 private:
  // A relid: mostly one the guest holds, else a small raw one.
  uint32_t Relid() {
    const uint8_t choice = in_.Byte();
    const auto& offers = s_.model().offers();
    if ((choice & 0xc0) == 0xc0 || offers.empty()) return choice & 0x3f;
    auto it = offers.begin();
    std::advance(it, choice % offers.size());
    return it->first;
  }
  // A GPADL id from a small space (so that they collide), or any.
  uint32_t GpadlId() {
    const uint8_t choice = in_.Byte();
    if (choice & 0x80) return in_.Take<uint32_t>();
    return 1 + choice % 6;
  }
  // Mostly a GPADL the server created for `relid`.
  uint32_t GpadlOf(uint32_t relid) {
    const auto& created = s_.model().created();
    auto found = created.find(relid);
    const uint8_t choice = in_.Byte();
    if ((choice & 0x80) || found == created.end() || found->second.empty()) return GpadlId();
    auto it = found->second.begin();
    std::advance(it, choice % found->second.size());
    return *it;
  }
  // Mostly a VP that exists; else one past the last, or "no interrupt".
  uint32_t Vp() {
    const uint8_t choice = in_.Byte();
    if (choice < 0xf0) return choice % FuzzPort::kVpCount;
    return choice & 1 ? protocol::kTargetVpDisableInterrupt : FuzzPort::kVpCount;
  }
  void MonitorPages(uint64_t* parent_to_child, uint64_t* child_to_parent) {
    switch (in_.Byte() % 6) {
      case 0:
        *parent_to_child = *child_to_parent = 0;
        return;
      case 1:
        *parent_to_child = 0x3d000;
        *child_to_parent = 0x3e000;
        return;
      case 2:  // Only one of them.
        *parent_to_child = 0;
        *child_to_parent = 0x3e000;
        return;
      case 3:  // Not page aligned.
        *parent_to_child = 0x3d001;
        *child_to_parent = 0x3e000;
        return;
      case 4:  // Not guest memory.
        *parent_to_child = 0x7ffff000;
        *child_to_parent = 0x7fffe000;
        return;
      case 5:  // The server's own page.
        *parent_to_child = 0x3d000;
        *child_to_parent = kServerMonitorPage;
        return;
    }
  }

  void Contact() {
    protocol::InitiateContact contact{};
    const uint8_t version = in_.Byte() % 14;
    if (version < std::size(protocol::kKnownVersions)) {
      // Newest first: zero is 6.0.
      contact.vmbus_version_requested =
          protocol::kKnownVersions[std::size(protocol::kKnownVersions) - 1 - version];
    } else if (version == 11) {
      contact.vmbus_version_requested = protocol::MakeVersion(6, 1);
    } else {
      contact.vmbus_version_requested = in_.Take<uint32_t>();
    }
    const uint32_t requested = contact.vmbus_version_requested;
    const uint8_t features = in_.Byte();
    const uint8_t vp = in_.Byte() % 6;
    contact.target_vcpu = vp == 5 ? 0xffffffff : vp;  // 4 and 5: no such VP.
    const uint8_t sint = in_.Byte() % 20;
    if (requested >= protocol::kVersionWin10V5) {
      contact.interrupt_page_or_target.target.message_sint =
          sint == 0 ? protocol::kMessageSint : sint;  // 16..19: no such SINT.
      contact.interrupt_page_or_target.target.message_vtl = 0;
      contact.interrupt_page_or_target.target.feature_flags =
          (features & 0x80) ? in_.Take<uint32_t>() : (features ^ kAllFeatures) & 0x7f;
    } else {
      contact.interrupt_page_or_target.interrupt_page = 0x3c000;
    }
    MonitorPages(&contact.monitor_page1, &contact.monitor_page2);
    for (uint8_t& byte : contact.client_id.bytes) byte = 0xc1;
    uint32_t connection_id = requested >= protocol::kVersionWin10V5
                                 ? protocol::kMessageConnectionId4
                                 : protocol::kMessageConnectionId;
    if (sint >= 18) connection_id ^= 5;  // The other one: the server takes both.
    s_.Send(protocol::EncodeInitiateContact(contact), connection_id);
  }

  void GpadlHeader() {
    const uint32_t relid = Relid();
    const uint32_t id = GpadlId();
    const uint8_t shape = in_.Byte();
    const uint8_t size = in_.Byte();
    const uint32_t pages = (shape & 0x40) ? 1 + size * 2u : 1 + size % 24u;
    const uint16_t ranges = (shape & 1) && pages >= 2 ? 2 : 1;
    std::vector<uint64_t> words;
    const auto add_range = [&](uint32_t n, uint64_t first_gpn) {
      const uint64_t offset = (shape & 2) ? 0x80 : 0;
      const uint64_t count = n * uint64_t{4096} - offset - ((shape & 4) ? 0x100 : 0);
      words.push_back(count | (offset << 32));
      for (uint32_t i = 0; i < n; ++i) words.push_back(first_gpn + i);
    };
    const uint32_t first = ranges == 2 ? pages / 2 : pages;
    add_range(first, 0x100);
    if (ranges == 2) add_range(pages - first, 0x400);
    if (((shape >> 3) & 7) == 7) {  // A word of the guest's choosing anywhere.
      const size_t at = in_.Byte() % words.size();
      words[at] = in_.Take<uint64_t>();
    }
    size_t buflen = words.size() * 8;
    if (shape & 0x80) buflen += 8 * (1 + in_.Byte() % 2);  // Promises words it does not send.
    protocol::GpadlHeader header{};
    header.child_relid = relid;
    header.gpadl = id;
    header.range_buflen = static_cast<uint16_t>(buflen);
    header.range_count = ranges;
    const size_t in_header = std::min<size_t>(27, words.size());
    absl::StatusOr<std::vector<uint8_t>> encoded =
        protocol::EncodeGpadlHeader(header, absl::MakeConstSpan(words.data(), in_header));
    FUZZ_REQUIRE(encoded.ok(), "the fuzzer's GPADL_HEADER does not encode: {}", encoded.status());
    s_.Send(*encoded);
    std::deque<uint64_t> rest(words.begin() + in_header, words.end());
    switch (in_.Byte() % 4) {
      case 0:
      case 1:  // The whole GPADL, as Linux sends it.
        while (!rest.empty()) SendBody(id, rest, 28);
        return;
      case 2:  // The bodies later (GPADL_BODY), or never.
        break;
      case 3:
        if (!rest.empty()) SendBody(id, rest, 28);
        break;
    }
    if (!rest.empty()) unfinished_[id] = std::move(rest);
  }

  void SendBody(uint32_t id, std::deque<uint64_t>& rest, size_t most) {
    std::vector<uint64_t> words;
    while (!rest.empty() && words.size() < most) {
      words.push_back(rest.front());
      rest.pop_front();
    }
    protocol::GpadlBody body{};
    body.gpadl = id;
    absl::StatusOr<std::vector<uint8_t>> encoded = protocol::EncodeGpadlBody(body, words);
    FUZZ_REQUIRE(encoded.ok(), "the fuzzer's GPADL_BODY does not encode: {}", encoded.status());
    s_.Send(*encoded);
  }

  void GpadlBody() {
    const uint8_t choice = in_.Byte();
    if (!unfinished_.empty() && (choice & 0x80) == 0) {
      auto it = unfinished_.begin();
      std::advance(it, choice % unfinished_.size());
      SendBody(it->first, it->second, 1 + in_.Byte() % 28);
      if (it->second.empty()) unfinished_.erase(it);
      return;
    }
    std::deque<uint64_t> stray = {0x500, 0x501, 0x502};
    SendBody(GpadlId(), stray, 1 + choice % 3);
  }

  void Open() {
    protocol::OpenChannel open{};
    open.child_relid = Relid();
    open.open_id = next_open_id_++;
    open.ring_buffer_gpadl = GpadlOf(open.child_relid);
    open.target_vp = Vp();
    const uint8_t shape = in_.Byte();
    open.downstream_page_offset = (shape & 0x20) ? in_.Byte() % 8 : 1;
    switch (in_.Byte() % 8) {
      case 0:
        open.connection_id = 0x10000 + open.child_relid;
        break;
      case 1:
        open.connection_id = 0x2000 + open.child_relid;
        break;
      case 2:  // One for every channel: the second open collides.
        open.connection_id = 0x4000;
        break;
      case 3:
        open.connection_id = 0;
        break;
      case 4:
        open.connection_id = protocol::kMessageConnectionId;
        break;
      case 5:
        open.connection_id = protocol::kMessageConnectionId4;
        break;
      case 6:
        open.connection_id = 0x1000000;  // Past the 24 bits.
        break;
      case 7:
        open.connection_id = in_.Take<uint32_t>();
        break;
    }
    open.event_flag = in_.Byte();
    open.flags = (shape & 0x10) ? protocol::kOpenChannelRedirectInterrupt : 0;
    // The tail when the connection needs it (features 0x1 or 0x2), unless the guest errs.
    const bool needs_tail =
        (s_.model().features() & (protocol::kFeatureGuestSpecifiedSignalParameters |
                                  protocol::kFeatureChannelInterruptRedirection)) != 0;
    const bool with_tail = (shape & 0x40) ? !needs_tail : needs_tail;
    s_.Send(protocol::EncodeOpenChannel(open, with_tail));
  }

  void TlConnect() {
    const uint8_t shape = in_.Byte();
    protocol::TlConnectRequest request{};
    if (shape & 4) {
      for (uint8_t& byte : request.guest_endpoint_id.bytes) byte = in_.Byte();
      for (uint8_t& byte : request.host_service_id.bytes) byte = in_.Byte();
    } else {
      request.guest_endpoint_id.bytes[0] = static_cast<uint8_t>(0xe0 + (shape >> 4));
      request.host_service_id.bytes[0] = 0x5e;
    }
    if (shape & 8) request.silo_id.bytes[15] = 0x51;
    s_.SetListenerAccepts((shape & 1) == 0);
    s_.Send(protocol::EncodeTlConnectRequest(request, (shape & 2) != 0));
  }

  void GuestSignal() {
    const uint8_t choice = in_.Byte();
    const ServerSnapshot before = s_.server().Snapshot();
    std::vector<uint32_t> ids;
    for (const ChannelSnapshot& channel : before.channels) {
      if (channel.open.has_value()) ids.push_back(channel.open->connection_id);
    }
    const uint32_t connection_id =
        ids.empty() || (choice & 0x80) ? 0x10000 + (choice & 0x3f) : ids[choice % ids.size()];
    std::array<uint64_t, kSlots> raised{};
    for (size_t i = 0; i < kSlots; ++i) {
      const auto* device = s_.slot(i).device.get();
      if (device != nullptr && device->last_signal()) raised[i] = device->last_signal()->raised();
    }
    (void)s_.port().Signal(connection_id);
    s_.RunToIdle();
    // Only the device of the channel open on that connection id hears it.
    const ServerSnapshot after = s_.server().Snapshot();
    for (size_t i = 0; i < kSlots; ++i) {
      const auto* device = s_.slot(i).device.get();
      if (device == nullptr || !device->last_signal() ||
          device->last_signal()->raised() == raised[i]) {
        continue;
      }
      const OfferKey key = s_.slot(i).params.key();
      bool open_there = false;
      for (const ChannelSnapshot& channel : after.channels) {
        open_there |= channel.state == "open" && channel.interface_id == key.interface_id &&
                      channel.instance_id == key.instance_id &&
                      channel.subchannel_index == key.subchannel_index &&
                      channel.open->connection_id == connection_id;
      }
      FUZZ_REQUIRE(open_there,
                   "a guest signal on connection id {:#x} reached slot {}'s device, whose channel "
                   "is not open on it",
                   connection_id, i);
    }
  }

  DeviceScript Script() {
    const uint8_t modes = in_.Byte();
    const uint8_t flags = in_.Byte();
    constexpr Answer kAnswers[] = {Answer::kNow, Answer::kHold, Answer::kDrop, Answer::kNow};
    constexpr int32_t kStatuses[] = {0, static_cast<int32_t>(0xc0000001), 1,
                                     static_cast<int32_t>(protocol::kStatusUnsuccessful)};
    return DeviceScript{.open = kAnswers[modes & 3],
                        .close = kAnswers[(modes >> 2) & 3],
                        .gpadl = kAnswers[(modes >> 4) & 3],
                        .teardown = kAnswers[(modes >> 6) & 3],
                        .modify = kAnswers[flags & 3],
                        .accept_open = (flags & 4) == 0,
                        .accept_gpadl = (flags & 8) == 0,
                        .modify_status = kStatuses[(flags >> 6) & 3],
                        .revoke_on_open = (flags & 0x30) == 0x30,
                        .throwing_signal = (flags & 0x30) == 0x10};
  }

  void Release() {
    const uint8_t choice = in_.Byte();
    auto* device = s_.slot(choice % kSlots).device.get();
    if (device == nullptr) return;
    const bool accept = (choice & 0x80) == 0;
    switch ((choice >> 3) % 5) {
      case 0:
        (void)device->ReleaseOpen(accept);
        return;
      case 1:
        (void)device->ReleaseClose();
        return;
      case 2:
        (void)device->ReleaseGpadl(accept);
        return;
      case 3:
        (void)device->ReleaseTeardown();
        return;
      case 4:
        (void)device->ReleaseModify(accept ? 0 : static_cast<int32_t>(0xc0000001));
        return;
    }
  }

  void DeviceInterrupt() {
    const size_t index = in_.Byte() % kSlots;
    const auto* device = s_.slot(index).device.get();
    if (device == nullptr || !device->last_open().has_value()) return;
    const uint64_t before = s_.port().guest_events();
    (void)device->last_open()->interrupt.Deliver();
    s_.RunToIdle();
    if (s_.port().guest_events() == before) return;
    // The interrupt of the device's latest open reaches the guest only while that open lasts.
    const OfferKey key = s_.slot(index).params.key();
    bool current = false;
    for (const ChannelSnapshot& channel : s_.server().Snapshot().channels) {
      current |= (channel.state == "open" || channel.state == "opening") &&
                 channel.interface_id == key.interface_id &&
                 channel.instance_id == key.instance_id &&
                 channel.subchannel_index == key.subchannel_index;
    }
    FUZZ_REQUIRE(current,
                 "slot {}'s device raised the interrupt of an open that is over, and it reached "
                 "the guest",
                 index);
  }

  Input& in_;
  Session& s_;
  uint32_t next_open_id_ = 1;
  int servicings_ = 0;
  std::map<uint32_t, std::deque<uint64_t>> unfinished_;  // GPADL id -> words not sent yet.
};

// The well-behaved guest at the end: whatever came before, the server still serves it. The
// devices answer at once and accept; each message waits for the answer it needs, as Linux's.
void WellBehavedGuest(Session& s) {
  s.Settle(/*accept=*/true);
  size_t devices = 0;
  for (size_t i = 0; i < kSlots; ++i) {
    Session::Slot& slot = s.slot(i);
    slot.script = DeviceScript{};
    if (slot.device != nullptr) {
      slot.device->script() = slot.script;
      ++devices;
    }
  }
  s.Send(protocol::Encode(protocol::Unload{}));
  s.RunToIdle();
  FUZZ_REQUIRE(s.model().phase() == GuestModel::Phase::kDisconnected,
               "a clean UNLOAD did not disconnect");
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = protocol::kVersionWin10V6_0;
  contact.interrupt_page_or_target.target.message_sint = protocol::kMessageSint;
  contact.interrupt_page_or_target.target.feature_flags = kAllFeatures;
  s.Send(protocol::EncodeInitiateContact(contact));
  s.Send(protocol::Encode(protocol::RequestOffers{}));
  s.RunToIdle();
  FUZZ_REQUIRE(s.model().phase() == GuestModel::Phase::kConnected && s.model().offers_requested(),
               "a clean INITIATE_CONTACT at 6.0 did not connect");
  FUZZ_REQUIRE(s.model().offers().size() == devices,
               "{} offers for {} devices after a clean connect", s.model().offers().size(),
               devices);
  if (devices > 0) {
    const uint32_t relid = s.model().offers().begin()->first;
    constexpr uint32_t kRing = 0xfeed;
    const std::vector<uint64_t> words = {4 * 4096, 0x700, 0x701, 0x702, 0x703};
    absl::StatusOr<std::vector<std::vector<uint8_t>>> gpadl =
        protocol::EncodeGpadl(relid, kRing, 1, words);
    FUZZ_REQUIRE(gpadl.ok(), "the ring GPADL does not encode");
    for (const std::vector<uint8_t>& message : *gpadl) s.Send(message);
    s.RunToIdle();
    FUZZ_REQUIRE(
        s.model().created().contains(relid) && s.model().created().at(relid).contains(kRing),
        "a clean GPADL for channel {} was not created", relid);
    protocol::OpenChannel open{};
    open.child_relid = relid;
    open.open_id = 0x0be1;
    open.ring_buffer_gpadl = kRing;
    open.downstream_page_offset = 2;
    open.connection_id = 0x2000 + relid;
    open.event_flag = 7;
    s.model().StartLog();
    s.Send(protocol::EncodeOpenChannel(open, /*with_tail=*/true));
    s.RunToIdle();
    bool opened = false;
    for (const protocol::ParsedMessage& message : s.model().TakeLog()) {
      if (const auto* result = message.As<protocol::OpenResult>()) {
        opened |= result->open_id == open.open_id && result->status == protocol::kStatusSuccess;
      }
    }
    FUZZ_REQUIRE(opened, "a clean OPENCHANNEL of channel {} did not succeed", relid);
    protocol::CloseChannel close{};
    close.child_relid = relid;
    s.Send(protocol::Encode(close));
    protocol::GpadlTeardown teardown{};
    teardown.child_relid = relid;
    teardown.gpadl = kRing;
    s.Send(protocol::Encode(teardown));
    s.RunToIdle();
    FUZZ_REQUIRE(!s.model().created().at(relid).contains(kRing),
                 "the ring GPADL of channel {} was not torn down after its close", relid);
  }
  s.Settle(true);
}

void FuzzOne(Input& input) {
  const uint8_t config = input.Byte();
  Session session(SessionOptions{.small_limits = (config & 1) != 0});
  Program program(input, session);
  for (int step = 0; step < kMaxSteps && !input.done(); ++step) {
    program.Step();
    session.RunToIdle();
    if (!session.port().queue_limit().has_value()) session.port().ReadAll();
    session.CheckStep();
  }
  WellBehavedGuest(session);
}

}  // namespace
}  // namespace cvmbus::paravisor::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cvmbus::paravisor::fuzz::Input input(data, size);
  cvmbus::paravisor::fuzz::FuzzOne(input);
  return 0;
}
