#include "paravisor/daemon/in_process_guest.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "base/format.h"
#include "paravisor/devices/demo_devices.h"
#include "paravisor/protocol/header.h"
#include "paravisor/testing/guest_channel.h"

namespace cvmbus::paravisor::daemon {
namespace {

using namespace std::chrono_literals;

// Newest first, as Linux's vmbus_versions[] (drivers/hv/connection.c) is searched.
constexpr uint32_t kVersionsNewestFirst[] = {
    protocol::kVersionWin10V6_0, protocol::kVersionWin10V5_3, protocol::kVersionWin10V5_2,
    protocol::kVersionWin10V5_1, protocol::kVersionWin10V5,   protocol::kVersionWin10V4_1,
    protocol::kVersionWin10,     protocol::kVersionWin8_1,    protocol::kVersionWin8,
    protocol::kVersionWin7,      protocol::kVersionWs2008,
};

// Ring pages: channel i's two 16-page rings at gpn kFirstRingGpn + 32 i (below 16 MiB for the
// 64 channels the configuration allows), GPADL ids from kFirstGpadlId.
constexpr uint64_t kFirstRingGpn = 0x100;
constexpr uint32_t kRingPages = 16;
constexpr uint32_t kFirstGpadlId = 100;

}  // namespace

void InProcessGuest::Start() {
  thread_ = std::thread([this] { Run(); });
}

void InProcessGuest::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

InProcessGuestStats InProcessGuest::stats() const {
  MutexLock lock(&mu_);
  return stats_;
}

void InProcessGuest::Fail(const std::string& what, const absl::Status& status) {
  MutexLock lock(&mu_);
  stats_.state = "failed";
  stats_.last_error = fmt::format("{}: {}", what, status);
}

void InProcessGuest::SetState(const std::string& state) {
  MutexLock lock(&mu_);
  stats_.state = state;
}

void InProcessGuest::Run() {
  GuestClient& guest = vm_->guest();
  const uint32_t features =
      options_.confidential
          ? protocol::kFeatureConfidentialChannels | protocol::kFeatureServerSpecifiedMonitorPages
          : 0;
  absl::StatusOr<protocol::VersionResponse> contact = absl::UnavailableError("no version tried");
  uint32_t version = 0;
  for (const uint32_t candidate : kVersionsNewestFirst) {
    if (candidate > options_.max_version) continue;
    GuestMonitorSetup monitor;
    if (options_.confidential) monitor.server_pages = guestmem::GuestMemory::Private(vm_->memory());
    contact =
        guest.Connect(candidate, candidate >= protocol::kVersionWin10V6_0 ? features : 0, monitor);
    if (contact.ok() || !absl::IsUnavailable(contact.status())) {
      version = candidate;
      break;
    }
  }
  if (!contact.ok()) return Fail("INITIATE_CONTACT", contact.status());
  {
    MutexLock lock(&mu_);
    stats_.version = version;
    stats_.features = contact->supported_features;
  }
  absl::StatusOr<std::vector<protocol::OfferChannel>> offers = guest.RequestOffers();
  if (!offers.ok()) return Fail("REQUESTOFFERS", offers.status());
  const bool confidential_rings =
      (contact->supported_features & protocol::kFeatureConfidentialChannels) != 0;
  std::vector<std::unique_ptr<testing::GuestChannel>> channels;
  for (const protocol::OfferChannel& offer : *offers) {
    Guid interface;  // The wire's byte order is the in-memory one of Guid on x86.
    std::memcpy(&interface, offer.interface_type.bytes, sizeof(interface));
    if (interface != kDemoInterfaceId) continue;
    const uint32_t i = static_cast<uint32_t>(channels.size());
    absl::StatusOr<std::unique_ptr<testing::GuestChannel>> channel = testing::GuestChannel::Open(
        vm_, {.relid = offer.child_relid,
              .gpadl_id = kFirstGpadlId + i,
              .first_gpn = kFirstRingGpn + 2 * kRingPages * i,
              .ring_pages = kRingPages,
              .confidential = confidential_rings &&
                              (offer.channel_flags & protocol::kOfferConfidentialRingBuffer) != 0,
              .discard_signal_status = true});
    if (!channel.ok())
      return Fail(fmt::format("opening channel {}", offer.child_relid), channel.status());
    channels.push_back(*std::move(channel));
    MutexLock lock(&mu_);
    stats_.channels_open = static_cast<uint32_t>(channels.size());
  }
  SetState("running");
  const std::vector<uint8_t> payload(64, 0x5a);
  ring::PacketBuffer buffer;
  const auto start = std::chrono::steady_clock::now();
  uint64_t rounds = 0;
  uint64_t transaction = 0;
  while (!stop_) {
    if (options_.packets_per_second == 0 || channels.empty()) {
      std::this_thread::sleep_for(20ms);
      continue;
    }
    for (const auto& channel : channels) {
      ++transaction;
      if (absl::Status status = channel->Send(payload, transaction); !status.ok()) {
        return Fail("send", status);
      }
      if (absl::Status status = channel->Receive(&buffer, 5000ms); !status.ok()) {
        return Fail("receive", status);
      }
      if (buffer.packet().transaction_id != transaction) {
        return Fail("receive",
                    absl::DataLossError(fmt::format("answer carries transaction {}, expected {}",
                                                    buffer.packet().transaction_id, transaction)));
      }
      MutexLock lock(&mu_);
      ++stats_.round_trips;
    }
    ++rounds;
    // Paced: round n starts no earlier than n / rate seconds after the first.
    const auto due =
        start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                    std::chrono::duration<double>(double(rounds) / options_.packets_per_second));
    while (!stop_ && std::chrono::steady_clock::now() < due) {
      std::this_thread::sleep_until(std::min(due, std::chrono::steady_clock::now() + 20ms));
    }
  }
  SetState("stopped");
}

}  // namespace cvmbus::paravisor::daemon
