// GuestPersonality, and PersonalityGuest's lifecycle (vmbus_connect, vmbus_initiate_unload,
// vmbus_bus_suspend/resume) and its account of the host's messages. The channels are in
// personality_channels.cc.
#include "paravisor/client/guest_personality.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "base/format.h"
#include "base/status_macros.h"

namespace cvmbus::paravisor {
namespace {

using protocol::MessageType;

// Linux 6.1 vmbus_versions, newest first (max_version defaults to the first).
constexpr uint32_t kLinux61Versions[] = {
    protocol::kVersionWin10V5_3, protocol::kVersionWin10V5_2, protocol::kVersionWin10V5_1,
    protocol::kVersionWin10V5,   protocol::kVersionWin10V4_1, protocol::kVersionWin10,
    protocol::kVersionWin8_1,    protocol::kVersionWin8,
};

// vmbus_devs[].allowed_in_isolated.
constexpr Guid kIsolatedAllowedClasses[] = {kScsiClassId,     kNetworkClassId,   kPcieClassId,
                                            kTimeSyncClassId, kHeartbeatClassId, kShutdownClassId};

constexpr char kKexecPrefix[] = "kexec'd ";

// "OPENCHANNEL_RESULT for channel 3", "GPADL_CREATED for GPADL 0xe1e10", "UNLOAD_RESPONSE".
std::string Describe(MessageType type, uint32_t id) {
  switch (type) {
    case MessageType::kOpenChannelResult:
    case MessageType::kModifyChannelResponse:
    case MessageType::kOfferChannel:
    case MessageType::kRescindChannelOffer:
      return fmt::format("{} for channel {}", protocol::MessageTypeName(type), id);
    case MessageType::kGpadlCreated:
    case MessageType::kGpadlTorndown:
      return fmt::format("{} for GPADL {:#x}", protocol::MessageTypeName(type), id);
    default:
      return std::string(protocol::MessageTypeName(type));
  }
}

// The id an answer names (see Expected).
uint32_t AnswerId(const protocol::ParsedMessage& message) {
  if (const auto* m = message.As<protocol::OpenResult>()) return m->child_relid;
  if (const auto* m = message.As<protocol::GpadlCreated>()) return m->gpadl;
  if (const auto* m = message.As<protocol::GpadlTorndown>()) return m->gpadl;
  if (const auto* m = message.As<protocol::ModifyChannelResponse>()) return m->child_relid;
  if (const auto* m = message.As<protocol::OfferChannel>()) return m->child_relid;
  if (const auto* m = message.As<protocol::RescindChannelOffer>()) return m->child_relid;
  return 0;
}

}  // namespace

std::string VersionText(uint32_t version) {
  return fmt::format("{}.{}", protocol::VersionMajor(version), protocol::VersionMinor(version));
}

Guid OfferInterface(const protocol::OfferChannel& offer) {
  Guid guid;
  std::memcpy(&guid, offer.interface_type.bytes, sizeof(guid));
  return guid;
}

Guid OfferInstance(const protocol::OfferChannel& offer) {
  Guid guid;
  std::memcpy(&guid, offer.interface_instance.bytes, sizeof(guid));
  return guid;
}

// --- GuestPersonality ---

GuestPersonality GuestPersonality::Linux61() {
  GuestPersonality p;
  p.name = "Linux 6.1";
  p.versions.assign(std::begin(kLinux61Versions), std::end(kLinux61Versions));
  p.max_version = protocol::kVersionWin10V5_3;
  return p;
}

GuestPersonality GuestPersonality::Linux619Cvm() {
  GuestPersonality p;
  p.name = "Linux 6.19 CVM";
  // 6.19 puts 6.0 in front of 6.1's list; on an isolated VM vmbus_connect still walks the
  // whole list and then refuses what it got if that is below 5.2.
  p.versions.push_back(protocol::kVersionWin10V6_0);
  p.versions.insert(p.versions.end(), std::begin(kLinux61Versions), std::end(kLinux61Versions));
  p.max_version = protocol::kVersionWin10V6_0;
  p.min_version = protocol::kVersionWin10V5_2;
  p.features = protocol::kFeatureConfidentialChannels;  // vmbus_is_confidential().
  p.isolated = true;
  return p;
}

GuestPersonality GuestPersonality::Kexec(GuestPersonality of) {
  if (of.kexec) return of;
  of.kexec = true;
  of.name = kKexecPrefix + of.name;
  return of;
}

GuestPersonality GuestPersonality::WithMaxVersion(uint32_t version) const {
  GuestPersonality p = *this;
  p.max_version = version;
  p.name += fmt::format(" (max_version {})", VersionText(version));
  return p;
}

GuestPersonality GuestPersonality::Base() const {
  GuestPersonality p = *this;
  if (p.kexec) {
    p.kexec = false;
    p.name = p.name.substr(sizeof(kKexecPrefix) - 1);
  }
  return p;
}

uint32_t GuestPersonality::FeaturesFor(uint32_t version) const {
  return version >= protocol::kVersionWin10V6_0 ? features : 0;
}

bool GuestPersonality::SendsUnloadAt(uint32_t version) const {
  return unload_on_shutdown && version >= protocol::kVersionWin8_1;
}

bool GuestPersonality::Keeps(const protocol::OfferChannel& offer) const {
  if (!isolated) return true;
  if ((offer.channel_flags & protocol::kOfferTlnpiProvider) != 0) return true;  // hvsocket.
  const Guid interface = OfferInterface(offer);
  return std::find(std::begin(kIsolatedAllowedClasses), std::end(kIsolatedAllowedClasses),
                   interface) != std::end(kIsolatedAllowedClasses);
}

// --- PersonalityGuest: creation and the account of messages ---

absl::StatusOr<std::unique_ptr<PersonalityGuest>> PersonalityGuest::Create(
    GuestPersonality personality, PersonalityGuestOptions options) {
  std::unique_ptr<PersonalityGuest> guest(
      new PersonalityGuest(std::move(personality), std::move(options)));
  GuestClientOptions client = guest->options_.client;
  for (const uint64_t page : {client.pages.simp, client.pages.siefp}) {
    if (absl::Status zeroed = client.memory.Zero(page, 4096); !zeroed.ok()) {
      return guest->Error(zeroed, fmt::format("zeroing its SynIC page {:#x}", page));
    }
  }
  client.timeout = guest->options_.timeout;
  PersonalityGuest* raw = guest.get();
  client.on_message = [raw](const protocol::ParsedMessage& message) { raw->Observe(message); };
  absl::StatusOr<std::unique_ptr<GuestClient>> created = GuestClient::Create(std::move(client));
  if (!created.ok()) return guest->Error(created.status(), "starting its SynIC");
  guest->client_ = *std::move(created);
  return guest;
}

absl::StatusOr<std::unique_ptr<PersonalityGuest>> PersonalityGuest::Reboot(
    std::unique_ptr<PersonalityGuest> running, GuestPersonality next) {
  if (running == nullptr) return absl::InvalidArgumentError("reboot: no running kernel");
  PersonalityGuestOptions options = running->options_;
  if (next.kexec) {
    running->Crash();
  } else {
    CVMBUS_RETURN_IF_ERROR(running->Shutdown());
  }
  running.reset();
  return Create(std::move(next), std::move(options));
}

PersonalityGuest::~PersonalityGuest() {
  // First: the client's loop thread calls Observe, which uses the members below.
  client_.reset();
}

absl::Status PersonalityGuest::Error(absl::Status status, const std::string& operation) const {
  return absl::Status(status.code(),
                      fmt::format("{}: {}: {}", personality_.name, operation, status.message()));
}

absl::Status PersonalityGuest::Require(State state, const char* operation) const {
  if (state_ == state) return absl::OkStatus();
  const auto name = [](State s) {
    switch (s) {
      case State::kStarted:
        return "not booted";
      case State::kRunning:
        return "running";
      case State::kRefused:
        return "without VMBus (it refused the host)";
      case State::kHibernated:
        return "hibernated";
      case State::kGone:
        return "gone";
    }
    return "?";
  };
  return absl::FailedPreconditionError(fmt::format(
      "{}: {}: the kernel is {}, not {}", personality_.name, operation, name(state_), name(state)));
}

void PersonalityGuest::Expect(MessageType type, uint32_t id) {
  MutexLock lock(&mu_);
  expected_.push_back(Expected{type, id});
}

void PersonalityGuest::StartConnection() {
  MutexLock lock(&mu_);
  expected_.clear();
  connected_ = false;
  offers_requested_ = false;
  offered_.clear();
  rescinded_.clear();
  expected_.push_back(Expected{MessageType::kVersionResponse, 0});
}

void PersonalityGuest::Observe(const protocol::ParsedMessage& message) {
  MutexLock lock(&mu_);
  ++received_[static_cast<uint32_t>(message.type)];
  const uint32_t id = AnswerId(message);
  const auto take = [&](MessageType type) {
    auto it = std::find_if(expected_.begin(), expected_.end(),
                           [&](const Expected& e) { return e.type == type && e.id == id; });
    if (it == expected_.end()) return false;
    expected_.erase(it);
    return true;
  };
  if (const auto* response = message.As<protocol::VersionResponse>()) {
    if (take(MessageType::kVersionResponse)) {
      connected_ = response->version_supported != 0 &&
                   response->connection_state == protocol::kConnectionSuccessful;
      answered_ = answered_ || connected_;
    } else if (!answered_) {
      ++stale_;
    } else {
      unsolicited_.push_back("VERSION_RESPONSE, with no INITIATE_CONTACT waiting");
    }
    return;
  }
  if (!answered_) {  // The kernel before this one left it.
    ++stale_;
    return;
  }
  switch (message.type) {
    case MessageType::kOpenChannelResult:
    case MessageType::kGpadlCreated:
    case MessageType::kGpadlTorndown:
    case MessageType::kModifyChannelResponse:
    case MessageType::kAllOffersDelivered:
      if (!take(message.type)) {
        unsolicited_.push_back(
            fmt::format("{}, which this connection did not ask for", Describe(message.type, id)));
      }
      return;
    case MessageType::kUnloadResponse:
      if (!take(message.type)) {
        unsolicited_.push_back("UNLOAD_RESPONSE, with no UNLOAD waiting");
        return;
      }
      // The connection is over: what it still waited for will not be answered.
      connected_ = false;
      offers_requested_ = false;
      expected_.clear();
      return;
    case MessageType::kOfferChannel:
      if (!connected_ || !offers_requested_) {
        unsolicited_.push_back(
            fmt::format("{} {}", Describe(message.type, id),
                        connected_ ? "before REQUESTOFFERS" : "while not connected"));
      }
      offered_.insert(id);
      return;
    case MessageType::kRescindChannelOffer:
      if (!offered_.contains(id)) {
        unsolicited_.push_back(
            fmt::format("{}, which this connection was never offered", Describe(message.type, id)));
      }
      rescinded_.insert(id);
      return;
    default:
      unsolicited_.push_back(
          fmt::format("{}, which this guest never asks for", Describe(message.type, id)));
      return;
  }
}

size_t PersonalityGuest::Received(MessageType type) const {
  MutexLock lock(&mu_);
  auto it = received_.find(static_cast<uint32_t>(type));
  return it == received_.end() ? 0 : it->second;
}

std::vector<std::string> PersonalityGuest::Unsolicited() const {
  MutexLock lock(&mu_);
  return unsolicited_;
}

std::vector<std::string> PersonalityGuest::Outstanding() const {
  MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const Expected& e : expected_) out.push_back(Describe(e.type, e.id));
  return out;
}

size_t PersonalityGuest::stale_messages() const {
  MutexLock lock(&mu_);
  return stale_;
}

bool PersonalityGuest::Rescinded(uint32_t relid) const {
  MutexLock lock(&mu_);
  return rescinded_.contains(relid);
}

// --- The lifecycle ---

GuestMonitorSetup PersonalityGuest::MonitorSetup() const {
  GuestMonitorSetup setup;
  if (personality_.own_monitor_pages && options_.monitor_pages_gpa != 0) {
    setup.parent_to_child = options_.monitor_pages_gpa;
    setup.child_to_parent = options_.monitor_pages_gpa + 4096;
    setup.own_pages = options_.monitor_memory;
  }
  return setup;
}

absl::StatusOr<protocol::VersionResponse> PersonalityGuest::Contact(uint32_t version) {
  StartConnection();
  client_->DiscardInbox();  // Whatever waits there belongs to an earlier connection.
  versions_tried_.push_back(version);
  absl::StatusOr<protocol::VersionResponse> response =
      client_->Connect(version, personality_.FeaturesFor(version), MonitorSetup());
  if (response.ok() && response->version_supported) {
    client_->DiscardInbox();  // Anything before the answer was the earlier connection's.
  }
  return response;
}

absl::Status PersonalityGuest::Boot() {
  CVMBUS_RETURN_IF_ERROR(Require(State::kStarted, "boot"));
  const GuestMonitorSetup monitor = MonitorSetup();
  if (monitor.own_pages.has_value()) {  // vmbus_connect clears both pages.
    if (absl::Status zeroed = monitor.own_pages->Zero(monitor.parent_to_child, 2 * 4096);
        !zeroed.ok()) {
      return Error(zeroed, "clearing its monitor pages");
    }
  }
  std::vector<std::string> tried;
  absl::Status last_refusal;
  std::optional<uint32_t> accepted;
  for (const uint32_t version : personality_.versions) {
    if (version > personality_.max_version) continue;
    tried.push_back(VersionText(version));
    absl::StatusOr<protocol::VersionResponse> response = Contact(version);
    // Refused (version_supported 0), or a post the SynIC refused (INVALID_CONNECTION_ID):
    // Linux tries the next version either way.
    if (absl::IsUnavailable(response.status())) {
      last_refusal = response.status();
      continue;
    }
    if (!response.ok()) {
      return Error(response.status(), fmt::format("INITIATE_CONTACT {}", VersionText(version)));
    }
    if (response->connection_state != protocol::kConnectionSuccessful) {
      state_ = State::kRefused;
      return Error(absl::UnknownError(fmt::format("the host accepted the version but reports "
                                                  "connection state {}",
                                                  response->connection_state)),
                   fmt::format("INITIATE_CONTACT {}", VersionText(version)));
    }
    accepted = version;
    break;
  }
  if (!accepted.has_value()) {
    state_ = State::kRefused;
    return absl::UnavailableError(
        fmt::format("{}: the host accepted none of the versions {} (the last: {})",
                    personality_.name, fmt::join(tried, ", "), last_refusal.message()));
  }
  version_ = *accepted;
  features_ = client_->features();
  if (version_ < personality_.min_version) {
    // vmbus_connect: "Invalid VMBus version ... from the host supporting isolation"; it marks
    // itself disconnected first, so no UNLOAD follows.
    state_ = State::kRefused;
    return absl::FailedPreconditionError(fmt::format(
        "{}: the host accepted VMBus version {}, below {}, the minimum on an isolated VM: "
        "refused",
        personality_.name, VersionText(version_), VersionText(personality_.min_version)));
  }
  CVMBUS_RETURN_IF_ERROR(RequestOffers());
  state_ = State::kRunning;
  return absl::OkStatus();
}

absl::Status PersonalityGuest::RequestOffers() {
  {
    MutexLock lock(&mu_);
    offers_requested_ = true;
    expected_.push_back(Expected{MessageType::kAllOffersDelivered, 0});
  }
  absl::StatusOr<std::vector<protocol::OfferChannel>> offers = client_->RequestOffers();
  if (!offers.ok()) return Error(offers.status(), "REQUESTOFFERS");
  offers_.clear();
  for (const protocol::OfferChannel& offer : *offers) {
    if (personality_.Keeps(offer)) {
      offers_.push_back(offer);
    } else {
      ++dropped_offers_;  // Silently: no RELID_RELEASED.
    }
  }
  return absl::OkStatus();
}

absl::Status PersonalityGuest::Unload() {
  Expect(MessageType::kUnloadResponse, 0);
  if (absl::Status sent = client_->SendRaw(protocol::Encode(protocol::Unload{})); !sent.ok()) {
    return Error(sent, "UNLOAD");
  }
  if (absl::Status answered =
          client_->WaitFor(MessageType::kUnloadResponse, options_.timeout).status();
      !answered.ok()) {
    return Error(answered, "UNLOAD");
  }
  open_.clear();
  gpadls_.clear();
  return absl::OkStatus();
}

absl::Status PersonalityGuest::Shutdown() {
  if (state_ == State::kGone) return Require(State::kRunning, "shutdown");
  absl::Status status;
  if (state_ == State::kRunning && personality_.SendsUnloadAt(version_)) status = Unload();
  Crash();  // And then the kernel is gone, however the unload went.
  return status;
}

void PersonalityGuest::Crash() {
  client_.reset();
  state_ = State::kGone;
}

absl::Status PersonalityGuest::Hibernate() {
  CVMBUS_RETURN_IF_ERROR(Require(State::kRunning, "hibernate"));
  if (!personality_.SendsUnloadAt(version_)) {
    // vmbus_initiate_unload says nothing below 3.0: such a host cannot reconnect.
    return absl::FailedPreconditionError(
        fmt::format("{}: hibernate: no UNLOAD at version {}, so no reconnect after resume",
                    personality_.name, VersionText(version_)));
  }
  // The drivers' suspend: vmbus_close (CLOSECHANNEL, then the ring's teardown) per channel.
  std::vector<std::pair<uint32_t, uint32_t>> open(open_.begin(), open_.end());
  std::sort(open.begin(), open.end());
  for (const auto& [relid, ring] : open) {
    CVMBUS_RETURN_IF_ERROR(Close(relid));
    if (gpadls_.contains(ring)) CVMBUS_RETURN_IF_ERROR(TeardownGpadl(relid, ring));
  }
  std::vector<std::pair<uint32_t, uint32_t>> rest(gpadls_.begin(), gpadls_.end());
  std::sort(rest.begin(), rest.end());
  for (const auto& [id, relid] : rest) CVMBUS_RETURN_IF_ERROR(TeardownGpadl(relid, id));
  CVMBUS_RETURN_IF_ERROR(Unload());
  state_ = State::kHibernated;
  return absl::OkStatus();
}

absl::Status PersonalityGuest::Resume() {
  CVMBUS_RETURN_IF_ERROR(Require(State::kHibernated, "resume"));
  // vmbus_bus_resume: the version it had, nothing else.
  absl::StatusOr<protocol::VersionResponse> response = Contact(version_);
  if (!response.ok()) {
    return Error(response.status(),
                 fmt::format("resume: INITIATE_CONTACT {}", VersionText(version_)));
  }
  if (response->connection_state != protocol::kConnectionSuccessful) {
    return Error(absl::UnknownError(fmt::format("connection state {}", response->connection_state)),
                 "resume");
  }
  features_ = client_->features();
  const std::vector<protocol::OfferChannel> before = offers_;
  CVMBUS_RETURN_IF_ERROR(RequestOffers());
  // Primaries are matched by class and instance (find_primary_channel_by_offer).
  for (const protocol::OfferChannel& old : before) {
    if (old.sub_channel_index != 0) continue;
    const bool back = std::any_of(offers_.begin(), offers_.end(), [&](const auto& offer) {
      return offer.sub_channel_index == 0 && OfferInterface(offer) == OfferInterface(old) &&
             OfferInstance(offer) == OfferInstance(old);
    });
    if (!back) {
      return absl::NotFoundError(fmt::format(
          "{}: resume: device {} of class {} (channel {} before hibernation) was not offered "
          "again",
          personality_.name, OfferInstance(old).ToString(), OfferInterface(old).ToString(),
          old.child_relid));
    }
  }
  state_ = State::kRunning;
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
