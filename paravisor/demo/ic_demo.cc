#include "paravisor/demo/ic_demo.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <future>
#include <string>

#include "paravisor/testing/ic_guest.h"

namespace cvmbus::paravisor {
namespace {

using namespace std::chrono_literals;
using ic::testing::IcGuest;
using ic::testing::IcGuestEvent;
using ic::testing::IcService;

// Ring pages and GPADL ids of the demo's IC guests, clear of the echo and storage ones.
constexpr uint64_t kFirstRingGpn = 0x3000;
constexpr uint32_t kFirstGpadlId = 300;

absl::Status Step(const std::string& what, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      fmt::format("ic demo: {}: {}", what, std::string(status.message())));
}

std::string Versions(const std::optional<ic::IcVersions>& versions) {
  if (!versions.has_value()) return "none in common";
  return fmt::format("framework {}.{}, message {}.{}", versions->framework.major,
                     versions->framework.minor, versions->message.major, versions->message.minor);
}

// A time in 100 ns units since 1601 (the IC's clock) as UTC text.
std::string Utc(uint64_t windows_100ns) {
  const std::time_t unix_seconds =
      static_cast<std::time_t>((windows_100ns - ic::kWindowsToUnixEpoch100ns) / 10'000'000);
  return fmt::format("{:%Y-%m-%d %H:%M:%S} UTC", fmt::gmtime(unix_seconds));
}

}  // namespace

absl::Status IcDemo::Run(const std::vector<protocol::OfferChannel>& offers) {
  vm::VirtualMachine* vm = &daemon_->vm();
  struct Service {
    IcService service;
    const Guid& interface_id;
    const char* name;
  };
  const Service services[] = {{IcService::kHeartbeat, ic::kHeartbeatInterfaceId, "heartbeat"},
                              {IcService::kShutdown, ic::kShutdownInterfaceId, "shutdown"},
                              {IcService::kTimeSync, ic::kTimeSyncInterfaceId, "time sync"}};
  std::unique_ptr<IcGuest> guests[3];
  for (int i = 0; i < 3; ++i) {
    uint32_t relid = 0;
    for (const protocol::OfferChannel& offer : offers) {
      if (ic::testing::OfferIs(offer, services[i].interface_id)) relid = offer.child_relid;
    }
    if (relid == 0) {
      return absl::NotFoundError(fmt::format("ic demo: no {} offer", services[i].name));
    }
    absl::StatusOr<std::unique_ptr<IcGuest>> guest =
        IcGuest::Attach(vm, {.service = services[i].service,
                             .relid = relid,
                             .gpadl_id = kFirstGpadlId + i,
                             .first_gpn = kFirstRingGpn + 0x20 * i});
    if (!guest.ok())
      return Step(fmt::format("opening the {} channel", services[i].name), guest.status());
    guests[i] = *std::move(guest);
    absl::StatusOr<IcGuestEvent> negotiate = guests[i]->ServeOne(5s);
    if (!negotiate.ok())
      return Step(fmt::format("{} NEGOTIATE", services[i].name), negotiate.status());
    fmt::print("   {} IC (relid {}): negotiated as Linux's hv_utils picks: {}\n", services[i].name,
               relid, Versions(negotiate->negotiated));
  }

  // Heartbeat: the guest answers seq + 1, the device reports the guest healthy.
  for (int beat = 0; beat < 3; ++beat) {
    absl::StatusOr<IcGuestEvent> event = guests[0]->ServeOne(5s);
    if (!event.ok()) return Step("heartbeat", event.status());
    fmt::print("   heartbeat: host sequence {}, guest answered {}\n", event->sequence,
               event->sequence + 1);
  }

  // Time sync: the first message after negotiation is a SYNC (the guest sets its clock).
  absl::StatusOr<IcGuestEvent> sync = guests[2]->ServeOne(5s);
  if (!sync.ok()) return Step("time sync", sync.status());
  fmt::print("   time sync: {} with host time {}{}\n",
             sync->time_flags == ic::kTimeSyncFlagSync ? "SYNC" : "SAMPLE", Utc(sync->parent_time),
             sync->reference_format ? " and the guest's reference time (4.0 layout)" : "");

  // Shutdown: a reboot request, which Linux accepts (HV_S_OK) and then starts.
  auto result = std::make_shared<std::promise<absl::StatusOr<uint32_t>>>();
  std::future<absl::StatusOr<uint32_t>> answered = result->get_future();
  if (absl::Status requested = daemon_->RequestGuestShutdown(
          {.kind = ic::ShutdownKind::kReboot},
          [result](absl::StatusOr<uint32_t> status) { result->set_value(std::move(status)); });
      !requested.ok()) {
    return Step("shutdown request", requested);
  }
  absl::StatusOr<IcGuestEvent> request = guests[1]->ServeOne(5s);
  if (!request.ok()) return Step("shutdown request", request.status());
  if (answered.wait_for(10s) != std::future_status::ready) {
    return absl::DeadlineExceededError("ic demo: the shutdown request was never completed");
  }
  absl::StatusOr<uint32_t> status = answered.get();
  if (!status.ok()) return Step("shutdown answer", status.status());
  fmt::print("   shutdown: reboot requested (flags {:#x}), guest answered status {:#x}{}\n",
             request->shutdown_flags, *status,
             request->shutdown_started ? " and would start the reboot" : "");

  const daemon::Tree heartbeat = daemon_->Inspect()["devices"]["heartbeat"];
  fmt::print("   heartbeat health: {} ({} sent, {} answered, {} bad packets)\n",
             heartbeat.value("health", "?"), heartbeat.value("sent", 0),
             heartbeat.value("answered", 0), heartbeat["channel"].value("bad_packets", 0));
  for (int i = 0; i < 3; ++i) {
    if (absl::Status closed = guests[i]->Close(); !closed.ok()) {
      return Step(fmt::format("closing the {} channel", services[i].name), closed);
    }
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
