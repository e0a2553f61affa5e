#include "paravisor/replay/machine.h"

#include <fmt/format.h>

#include <future>

#include "base/format.h"
#include "paravisor/devices/demo_devices.h"

namespace cvmbus::paravisor::replay {

absl::StatusOr<std::unique_ptr<Machine>> Machine::Create() {
  std::unique_ptr<Machine> machine(new Machine());
  guestmem::MemoryOptions memory;
  memory.name = "replay";
  memory.regions = {{0, kMachineMemoryBytes}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory);
  if (!backing.ok()) return backing.status();
  machine->backing_ = *std::move(backing);
  // Isolation none: the paravisor's SynIC sees the guest's pages through the untrusted view,
  // the only one there is; it is still the paravisor's own (trusted) SynIC.
  absl::StatusOr<std::shared_ptr<synic::Synic>> synic = synic::Synic::Create(
      {.name = "paravisor", .memory = machine->guest_memory(), .vp_count = 1, .trusted = true});
  if (!synic.ok()) return synic.status();
  machine->synic_ = *std::move(synic);
  if (absl::Status status = machine->StartServer(); !status.ok()) return status;
  if (absl::Status status = machine->StartGuest(); !status.ok()) return status;
  return machine;
}

absl::Status Machine::StartServer() {
  std::promise<absl::Status> started;
  server_thread_ = std::thread([this, &started] {
    absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
    if (!loop.ok()) {
      started.set_value(loop.status());
      return;
    }
    server_loop_ = *std::move(loop);
    ServerOptions options;  // Defaults, but for the memory and where the log goes.
    options.untrusted_memory = guest_memory();
    options.log = [this](const std::string& line) { ServerLog(line); };
    server_ = std::make_unique<VmbusServer>(server_loop_.get(), synic_.get(), std::move(options));
    bus_ = server_->Bus();
    // The devices start on the running loop, as the demo's do.
    bool reported = false;
    server_loop_->Post([this, &started, &reported] {
      absl::Status offered = absl::OkStatus();
      for (OfferParams& params : DemoDeviceParams(kDemoDeviceCount)) {
        devices_.push_back(
            std::make_unique<EchoDevice>(server_loop_.get(), bus_.get(), std::move(params)));
        if (absl::Status status = devices_.back()->Start(); !status.ok() && offered.ok()) {
          offered = status;
        }
      }
      started.set_value(offered);
      reported = true;
    });
    absl::Status ran = server_loop_->Run();
    if (!reported) {
      started.set_value(ran.ok() ? absl::InternalError("replay machine: the server loop stopped")
                                 : ran);
    }
    devices_.clear();
    bus_.reset();
    server_.reset();
  });
  absl::Status status = started.get_future().get();
  if (!status.ok()) return status;
  // The offers register on the loop after Start returns (AddChild posts them): wait for them,
  // so the guest's first message finds every device offered.
  size_t channels = 0;
  OnServer([&] { channels = server_->channel_count(); });
  if (channels != static_cast<size_t>(kDemoDeviceCount)) {
    return absl::InternalError(fmt::format("replay machine: {} of the {} demo devices offered",
                                           channels, kDemoDeviceCount));
  }
  return absl::OkStatus();
}

absl::Status Machine::StartGuest() {
  std::promise<absl::Status> started;
  guest_thread_ = std::thread([this, &started] {
    absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
    if (!loop.ok()) {
      started.set_value(loop.status());
      return;
    }
    guest_loop_ = *std::move(loop);
    GuestSynicOptions options;
    options.synic = synic_;
    options.memory = guest_memory();
    options.pages = kReplayGuestPages;
    options.on_message = [this](std::vector<uint8_t> payload) {
      OnGuestMessage(std::move(payload));
    };
    options.on_event = [this](uint16_t flag) { OnGuestEvent(flag); };
    absl::StatusOr<std::unique_ptr<GuestSynic>> guest =
        GuestSynic::Create(std::move(options), guest_loop_.get());
    if (!guest.ok()) {
      started.set_value(guest.status());
      return;
    }
    guest_ = *std::move(guest);
    started.set_value(absl::OkStatus());
    (void)guest_loop_->Run();
    guest_.reset();  // On the loop's thread, after its last drain: no more deliveries.
  });
  return started.get_future().get();
}

Machine::~Machine() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (guest_loop_) guest_loop_->Stop();
  if (guest_thread_.joinable()) guest_thread_.join();
  if (server_loop_) server_loop_->Stop();
  if (server_thread_.joinable()) server_thread_.join();
  // After the joins: no thread can be inside Stop() or Post() any more.
  guest_loop_.reset();
  server_loop_.reset();
}

void Machine::OnServer(std::function<void()> fn) {
  std::promise<void> done;
  server_loop_->Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

uint64_t Machine::PostMessage(uint32_t connection_id, absl::Span<const uint8_t> payload) {
  return guest_->PostMessage(connection_id, payload);
}

uint64_t Machine::SignalEvent(uint32_t connection_id) { return guest_->SignalEvent(connection_id); }

void Machine::OnGuestMessage(std::vector<uint8_t> payload) {
  MutexLock lock(&mu_);
  // Room first: while the inbox is full the guest stops taking messages (see the header).
  changed_.wait(mu_, [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return stopping_ || inbox_.size() < kMaxInboxMessages;
  });
  if (stopping_) return;
  inbox_.push_back(std::move(payload));
  changed_.notify_all();
}

void Machine::OnGuestEvent(uint16_t flag) {
  {
    MutexLock lock(&mu_);
    if (flag < events_.size()) events_.set(flag);
  }
  changed_.notify_all();
}

std::optional<std::vector<uint8_t>> Machine::NextMessage(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  if (!changed_.wait_until(mu_, deadline,
                           [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !inbox_.empty(); })) {
    return std::nullopt;
  }
  std::vector<uint8_t> message = std::move(inbox_.front());
  inbox_.pop_front();
  changed_.notify_all();  // A guest waiting for room.
  return message;
}

bool Machine::TakeEvent(uint16_t flag, std::chrono::milliseconds timeout) {
  if (flag >= synic::kEventFlagCount) return false;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  if (!changed_.wait_until(mu_, deadline,
                           [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return events_.test(flag); })) {
    return false;
  }
  events_.reset(flag);
  return true;
}

void Machine::ServerLog(const std::string& line) {
  MutexLock lock(&mu_);
  if (log_.size() >= kMaxServerLogLines) {
    ++log_dropped_;
    return;
  }
  log_.push_back(line);
}

std::vector<std::string> Machine::TakeServerLog() {
  MutexLock lock(&mu_);
  std::vector<std::string> out;
  out.swap(log_);
  if (log_dropped_ > 0) {
    out.push_back(fmt::format("({} more lines not kept)", log_dropped_));
    log_dropped_ = 0;
  }
  return out;
}

}  // namespace cvmbus::paravisor::replay
