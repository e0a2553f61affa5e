#include "paravisor/server/testing/scripted_device.h"

#include <fmt/format.h>

#include <stdexcept>

namespace cvmbus::paravisor::testing {

absl::Status CountingSignal::Raise() {
  raised_.fetch_add(1);
  if (throws_) throw std::runtime_error("scripted device: this signal throws");
  return absl::OkStatus();
}

ScriptedDevice::~ScriptedDevice() { *alive_ = false; }

absl::Status ScriptedDevice::MakeOffer() {
  auto [request_send, request_recv] = MakeChannel<ChannelRequest>();
  auto [server_send, server_recv] = MakeChannel<ChannelServerRequest>();
  absl::StatusOr<OfferResources> resources =
      bus_->AddChild(OfferInput{params_, std::move(request_send), std::move(server_recv)});
  if (!resources.ok()) return resources.status();
  ++generation_;
  requests_ = std::make_unique<Receiver<ChannelRequest>>(std::move(request_recv));
  to_server_ = std::move(server_send);
  requests_closed_ = false;
  return absl::OkStatus();
}

absl::Status ScriptedDevice::Offer() {
  if (absl::Status status = MakeOffer(); !status.ok()) return status;
  Serve();
  return absl::OkStatus();
}

absl::Status ScriptedDevice::OfferRestored(bool open) {
  if (absl::Status status = MakeOffer(); !status.ok()) return status;
  std::optional<OpenResult> result;
  if (open) result = MakeOpenResult(true);
  auto [rpc, reply] =
      MakeRpc<std::optional<OpenResult>, absl::StatusOr<RestoreResult>>(std::move(result));
  if (absl::Status status = to_server_->Send(RestoreChannel{std::move(rpc)}); !status.ok()) {
    return status;
  }
  AwaitRestore(std::move(reply));
  Serve();
  return absl::OkStatus();
}

hw::Task ScriptedDevice::AwaitRestore(ReplyFuture<absl::StatusOr<RestoreResult>> reply) {
  std::shared_ptr<bool> alive = alive_;
  absl::StatusOr<RestoreResult> result = Flatten(co_await reply.On(loop_));
  if (!*alive) co_return;
  restore_result_ = std::move(result);
}

absl::Status ScriptedDevice::Revoke() {
  if (!to_server_.has_value()) return absl::FailedPreconditionError("scripted device: no offer");
  auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
  if (absl::Status status = to_server_->Send(RevokeChannel{std::move(rpc)}); !status.ok()) {
    return status;
  }
  AwaitRevoke(std::move(reply));
  return absl::OkStatus();
}

hw::Task ScriptedDevice::AwaitRevoke(ReplyFuture<Unit> reply) {
  std::shared_ptr<bool> alive = alive_;
  absl::StatusOr<Unit> done = co_await reply.On(loop_);
  if (!*alive) co_return;
  if (done.ok()) ++revokes_completed_;
}

void ScriptedDevice::DropOffer() {
  ++generation_;
  requests_.reset();
  to_server_.reset();
}

std::optional<OpenResult> ScriptedDevice::MakeOpenResult(bool accept) {
  if (!accept) return std::nullopt;
  if (script_.eventfd_signal) {
    absl::StatusOr<std::shared_ptr<hw::OwnedEventFdSignal>> signal =
        hw::OwnedEventFdSignal::Create();
    if (!signal.ok()) return std::nullopt;
    last_eventfd_ = *signal;
    return OpenResult{Interrupt(last_eventfd_)};
  }
  last_signal_ = std::make_shared<CountingSignal>(script_.throwing_signal);
  return OpenResult{Interrupt(last_signal_)};
}

hw::Task ScriptedDevice::Serve() {
  std::shared_ptr<bool> alive = alive_;
  const uint64_t generation = generation_;
  while (true) {
    // The receiver belongs to the device; once the device drops it (DropOffer, destruction)
    // the wait ends and the checks below end the task.
    std::optional<ChannelRequest> request = co_await requests_->Next(loop_);
    if (!*alive || generation != generation_ || requests_ == nullptr) co_return;
    if (!request.has_value()) {
      requests_closed_ = true;
      co_return;
    }
    if (auto* open = std::get_if<OpenChannel>(&*request)) {
      last_open_ = open->rpc.input();
      events_.push_back(fmt::format("open {}", open->rpc.input().open_data.ring_gpadl_id));
      if (script_.revoke_on_open) (void)Revoke();
      if (script_.open == Answer::kHold) {
        opens_.push_back(std::move(open->rpc));
      } else if (script_.open == Answer::kNow) {
        std::move(open->rpc).Reply(MakeOpenResult(script_.accept_open));
      }
    } else if (auto* close = std::get_if<CloseChannel>(&*request)) {
      events_.push_back("close");
      if (script_.close == Answer::kHold) {
        closes_.push_back(std::move(close->rpc));
      } else if (script_.close == Answer::kNow) {
        std::move(close->rpc).Reply(Unit{});
      }
    } else if (auto* gpadl = std::get_if<CreateGpadl>(&*request)) {
      events_.push_back(fmt::format("gpadl {}", gpadl->rpc.input().id));
      if (script_.gpadl == Answer::kHold) {
        gpadls_.push_back(std::move(gpadl->rpc));
      } else if (script_.gpadl == Answer::kNow) {
        std::move(gpadl->rpc).Reply(script_.accept_gpadl);
      }
    } else if (auto* teardown = std::get_if<TeardownGpadl>(&*request)) {
      events_.push_back(fmt::format("teardown {}", teardown->rpc.input()));
      if (script_.teardown == Answer::kHold) {
        teardowns_.push_back(std::move(teardown->rpc));
      } else if (script_.teardown == Answer::kNow) {
        std::move(teardown->rpc).Reply(Unit{});
      }
    } else if (auto* modify = std::get_if<ModifyChannel>(&*request)) {
      events_.push_back(
          fmt::format("modify {}", std::get<ModifyTargetVp>(modify->rpc.input()).target_vp));
      if (script_.modify == Answer::kHold) {
        modifies_.push_back(std::move(modify->rpc));
      } else if (script_.modify == Answer::kNow) {
        std::move(modify->rpc).Reply(script_.modify_status);
      }
    }
  }
}

template <typename T, typename F>
static bool ReleaseFront(std::deque<T>& held, F&& reply) {
  if (held.empty()) return false;
  T rpc = std::move(held.front());
  held.pop_front();
  reply(std::move(rpc));
  return true;
}

bool ScriptedDevice::ReleaseOpen(bool accept) {
  return ReleaseFront(opens_, [&](auto rpc) { std::move(rpc).Reply(MakeOpenResult(accept)); });
}
bool ScriptedDevice::ReleaseClose() {
  return ReleaseFront(closes_, [](auto rpc) { std::move(rpc).Reply(Unit{}); });
}
bool ScriptedDevice::ReleaseGpadl(bool accept) {
  return ReleaseFront(gpadls_, [&](auto rpc) { std::move(rpc).Reply(accept); });
}
bool ScriptedDevice::ReleaseTeardown() {
  return ReleaseFront(teardowns_, [](auto rpc) { std::move(rpc).Reply(Unit{}); });
}
bool ScriptedDevice::ReleaseModify(int32_t status) {
  return ReleaseFront(modifies_, [&](auto rpc) { std::move(rpc).Reply(status); });
}

std::string ScriptedDevice::EventsText() const {
  return fmt::format("{}", fmt::join(events_, ", "));
}

}  // namespace cvmbus::paravisor::testing
