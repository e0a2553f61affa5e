#include "paravisor/daemon/daemon.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <thread>

#include "base/format.h"
#include "paravisor/daemon/ring_inspect.h"
#include "paravisor/devices/demo_devices.h"
#include "paravisor/server/saved_queries.h"

namespace cvmbus::paravisor::daemon {
namespace {

// The paravisor's own page, handed to the guest as its monitor page (private on SNP).
constexpr uint64_t kServerMonitorPage = 0xff000;

absl::Status Named(const std::string& what, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), fmt::format("{}: {}", what, std::string(status.message())));
}

void AddIcChannel(const ic::IcDeviceStats& stats, Tree& node) {
  node["state"] = ic::IcChannelStateName(stats.state);
  node["opens"] = stats.opens;
  node["closes"] = stats.closes;
  node["negotiations"] = stats.negotiations;
  node["requests_sent"] = stats.requests_sent;
  node["responses"] = stats.responses;
  node["timeouts"] = stats.timeouts;
  node["late_responses"] = stats.late_responses;
  node["send_failures"] = stats.send_failures;
  node["bad_packets"] = stats.bad_packets;
  if (stats.versions.has_value()) {
    node["framework_version"] =
        fmt::format("{}.{}", stats.versions->framework.major, stats.versions->framework.minor);
    node["message_version"] =
        fmt::format("{}.{}", stats.versions->message.major, stats.versions->message.minor);
  }
  if (!stats.last_error.ok()) node["last_error"] = stats.last_error.ToString();
}

// A relid as a request names it: decimal, 1..kMaxChannels.
absl::StatusOr<uint32_t> ParseRelid(const std::string& text) {
  uint32_t relid = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), relid);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || relid == 0 ||
      relid > kMaxChannels) {
    return absl::InvalidArgumentError(
        fmt::format("'{}' is not a relid (1..{})", text, kMaxChannels));
  }
  return relid;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const Settings& settings,
                                                      Callbacks callbacks) {
  std::unique_ptr<Daemon> daemon(new Daemon(settings));
  daemon->callbacks_ = std::move(callbacks);
  Daemon* raw = daemon.get();
  absl::StatusOr<std::unique_ptr<vm::VirtualMachine>> vm = vm::VirtualMachine::Create(
      {.memory_bytes = settings.memory_bytes,
       .isolated = settings.isolated(),
       .tdx = settings.isolation == IsolationKind::kTdx,
       .server_monitor_page = kServerMonitorPage,
       .on_hvsocket_connect =
           [raw](const HvSocketConnect& connect) {
             return raw->relay_ != nullptr && raw->relay_->OnGuestConnect(connect);
           },
       .resignal_after_open = settings.resignal_after_open,
       .max_version = settings.max_version,
       .capture_log = false,
       .server_cpu = settings.loop_cpu,
       .server_busy_poll = settings.loop_busy_poll,
       .kvm_guest = settings.guest == GUEST_KVM});
  if (!vm.ok()) return Named("the VM", vm.status());
  daemon->vm_ = *std::move(vm);
  absl::Status started;
  daemon->vm_->OnServer([&] { started = daemon->StartDevices(); });
  if (!started.ok()) {
    daemon->Stop();
    return started;
  }
  if (settings.guest == GUEST_CLIENT) {
    daemon->guest_ = std::make_unique<InProcessGuest>(
        daemon->vm_.get(),
        InProcessGuestOptions{.confidential = settings.isolated(),
                              .packets_per_second = settings.echo_packets_per_second,
                              .max_version = settings.max_version});
    daemon->guest_->Start();
  }
  if (settings.guest == GUEST_KVM) {
    absl::StatusOr<std::unique_ptr<KvmGuestSide>> kvm = KvmGuestSide::Start(
        daemon->vm_.get(),
        {.confidential = settings.isolated(),
         .version = settings.max_version != 0
                        ? std::min<uint32_t>(settings.max_version, protocol::kVersionWin10V6_0)
                        : protocol::kVersionWin10V6_0,
         .round_trips = settings.kvm_round_trips,
         .payload_bytes = settings.kvm_payload_bytes,
         .paravisor_page = kServerMonitorPage});
    if (!kvm.ok()) {
      daemon->Stop();
      return Named("the KVM guest", kvm.status());
    }
    daemon->kvm_guest_ = *std::move(kvm);
  }
  return daemon;
}

Daemon::~Daemon() { Stop(); }

absl::Status Daemon::StartDevices() {
  hw::EventLoop* loop = vm_->server_loop();
  if (absl::Status status = StartEchoDevices(nullptr); !status.ok()) return status;
  for (size_t i = 0; i < settings_.disks.size(); ++i) {
    const Settings::DiskSettings& config = settings_.disks[i];
    const std::string what = fmt::format("disk[{}] {}", i, config.path);
    absl::StatusOr<std::unique_ptr<hw::FileBacking>> file = hw::FileBacking::Open(
        config.path, {.read_only = config.read_only, .direct = config.direct});
    if (!file.ok()) return Named(what, file.status());
    if ((*file)->size_bytes() < 512) {
      return Named(what, absl::InvalidArgumentError("smaller than one sector"));
    }
    Disk disk{.path = config.path};
    disk.backend = std::make_unique<storvsp::FileBlockBackend>(loop, *std::move(file));
    absl::StatusOr<std::unique_ptr<storvsp::StorvspDevice>> device = NewDiskDevice(i, disk);
    if (!device.ok()) return Named(what, device.status());
    disk.device = *std::move(device);
    if (absl::Status status = disk.device->Start(); !status.ok()) return Named(what, status);
    disks_.push_back(std::move(disk));
  }
  if (absl::Status status = StartIcs(nullptr); !status.ok()) return status;
  if (absl::Status status = StartRelay(); !status.ok()) return status;
  absl::StatusOr<std::unique_ptr<ControlServer>> control = ControlServer::Create(
      loop, settings_.control_socket,
      [this](const std::vector<std::string>& words) { return HandleRequest(words); });
  if (!control.ok()) return Named("control socket", control.status());
  control_ = *std::move(control);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<storvsp::StorvspDevice>> Daemon::NewDiskDevice(size_t index,
                                                                              const Disk& disk) {
  const Settings::DiskSettings& config = settings_.disks[index];
  return storvsp::StorvspDevice::Create(
      vm_->server_loop(), &vm_->bus(),
      {.instance_id = Guid{0xd15c0000u + static_cast<uint32_t>(index), 0, 0, {}},
       .disk = {.sectors = disk.backend->size_bytes() / 512,
                .read_only = config.read_only,
                .serial = fmt::format("cvmbusd-{}", index),
                .unmap = disk.backend->can_discard()},
       .allow_confidential_external_memory = settings_.isolated(),
       .max_subchannels = config.subchannels},
      disk.backend.get());
}

absl::Status Daemon::StartRelay() {
  if (settings_.hvsocket_prefix.empty()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<hvsocket::HvSocketRelay>> relay = hvsocket::HvSocketRelay::Create(
      vm_->server_loop(), &vm_->bus(),
      {.host_socket_base = settings_.hvsocket_prefix, .listener_path = settings_.hvsocket_prefix});
  if (!relay.ok()) return Named("hvsocket relay", relay.status());
  relay_ = *std::move(relay);
  return absl::OkStatus();
}

void Daemon::StopDevices() {
  control_.reset();
  relay_.reset();
  timesync_.reset();
  shutdown_.reset();
  heartbeat_.reset();
  while (!disks_.empty()) disks_.pop_back();
  while (!echo_.empty()) echo_.pop_back();
}

void Daemon::Stop() {
  if (stopped_ || vm_ == nullptr) return;
  stopped_ = true;
  if (guest_) guest_->Stop();
  if (kvm_guest_) kvm_guest_->Stop();
  vm_->OnServer([this] { StopDevices(); });
  // The server revokes from tasks that resume once the devices' channels closed: one more
  // round trip through the loop lets them run before it stops.
  vm_->OnServer([] {});
  log::Logger("cvmbusd").Info("devices stopped; their channels revoked");
}

absl::Status Daemon::RequestGuestShutdown(const ic::ShutdownRequest& request,
                                          ic::ShutdownIc::Done done) {
  absl::Status status;
  vm_->OnServer([&] {
    if (shutdown_ == nullptr) {
      status = absl::FailedPreconditionError("no shutdown IC is configured");
      return;
    }
    shutdown_->RequestShutdown(request, std::move(done));
  });
  return status;
}

absl::StatusOr<std::string> Daemon::SaveTo(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(fmt::format("save: '{}' is not an absolute path", path));
  }
  absl::StatusOr<saved::Server> state = vm_->server().Save();
  if (!state.ok()) return Named("save", state.status());
  const std::string bytes = state->SerializeAsString();
  // Never over another file: O_EXCL. Written whole or removed again.
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int error = errno;
    return absl::Status(
        error == EEXIST ? absl::StatusCode::kAlreadyExists : absl::StatusCode::kInvalidArgument,
        fmt::format("save: {}: {}", path, std::strerror(error)));
  }
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n <= 0) {
      const int error = n < 0 ? errno : EIO;
      close(fd);
      unlink(path.c_str());
      return absl::DataLossError(fmt::format("save: {}: {}", path, std::strerror(error)));
    }
    written += static_cast<size_t>(n);
  }
  if (close(fd) != 0) {
    const int error = errno;
    unlink(path.c_str());
    return absl::DataLossError(fmt::format("save: {}: {}", path, std::strerror(error)));
  }
  size_t gpadls = 0;
  for (const saved::Channel& channel : state->channels()) gpadls += channel.gpadls_size();
  return fmt::format("saved {} bytes to {}: version {}, {} channels, {} GPADLs\n", bytes.size(),
                     path, VersionName(state->version()), state->channels_size(), gpadls);
}

std::vector<OfferParams> Daemon::EchoOffers() const {
  if (settings_.echo_channels == 0) return {};
  return DemoDeviceParams(static_cast<int>(settings_.echo_channels));
}

absl::Status Daemon::PauseDisksAndDrain() {
  vm_->OnServer([this] {
    for (Disk& disk : disks_) disk.device->Pause();
  });
  const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
  while (true) {
    std::string busy;
    vm_->OnServer([&] {
      for (size_t i = 0; i < disks_.size() && busy.empty(); ++i) {
        if (!disks_[i].device->Quiesced()) busy = fmt::format("disk[{}] {}", i, disks_[i].path);
      }
    });
    if (busy.empty()) return absl::OkStatus();
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::DeadlineExceededError(fmt::format(
          "servicing: {}: I/O still in flight after {} ms", busy,
          std::chrono::duration_cast<std::chrono::milliseconds>(kDrainTimeout).count()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

absl::Status Daemon::Service() {
  const auto start = std::chrono::steady_clock::now();
  // A host socket cannot be saved: the relay's connections end here (the host end sees EOF,
  // the guest a rescind), before the save, so the saved state holds them as revoked. The
  // relay and its listener come back after the restore.
  vm_->OnServer([this] {
    if (relay_) servicing_.connections_reset += relay_->Connections().size();
    relay_.reset();
  });
  vm_->OnServer([] {});  // Lets the server take the relay's revokes before the save.
  absl::Status result = PauseDisksAndDrain();
  if (!result.ok()) {
    vm_->OnServer([this] {
      for (Disk& disk : disks_) disk.device->Resume();
      (void)StartRelay();
    });
  } else {
    vm_->OnServer([&] { result = ServiceOnLoop(start); });
  }
  if (result.ok()) {
    ++servicing_.done;
    servicing_.last_error.clear();
  } else {
    ++servicing_.failed;
    servicing_.last_error = result.ToString();
  }
  return result;
}

absl::Status Daemon::ServiceOnLoop(std::chrono::steady_clock::time_point start) {
  std::vector<saved::Storvsp> disk_states;
  for (size_t i = 0; i < disks_.size(); ++i) {
    absl::StatusOr<saved::Storvsp> state = disks_[i].device->Save();
    if (!state.ok()) {
      for (Disk& disk : disks_) disk.device->Resume();
      (void)StartRelay();
      return Named(fmt::format("servicing: disk[{}]", i), state.status());
    }
    disk_states.push_back(*std::move(state));
  }
  absl::StatusOr<saved::Server> state = vm_->ServiceServerOnLoop([this] {
    CarryCounters();
    echo_.clear();
    heartbeat_.reset();
    shutdown_.reset();
    timesync_.reset();
    for (Disk& disk : disks_) disk.device.reset();  // The backends stay: no file is reopened.
  });
  if (!state.ok()) {
    if (echo_.empty() && !heartbeat_ && !shutdown_ && !timesync_) {
      // The restore failed after the devices were dropped: the new server is empty and every
      // device offers afresh (the guest sees new offers, as after a reset).
      (void)StartSavableDevices(nullptr, {});
    } else {
      for (Disk& disk : disks_) disk.device->Resume();  // The save failed: nothing changed.
    }
    (void)StartRelay();
    return Named("servicing", state.status());
  }
  absl::Status restored = StartSavableDevices(&*state, disk_states);
  absl::Status relay = StartRelay();
  servicing_.last_microseconds =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  servicing_.last_state_bytes = state->ByteSizeLong();
  for (const saved::Storvsp& disk : disk_states) servicing_.last_state_bytes += disk.ByteSizeLong();
  return restored.ok() ? relay : restored;
}

void Daemon::CarryCounters() {
  carried_.echo.resize(std::max(carried_.echo.size(), echo_.size()));
  for (size_t i = 0; i < echo_.size(); ++i) {
    const EchoStats& now = echo_[i]->stats();
    EchoStats& total = carried_.echo[i];
    total.packets_echoed += now.packets_echoed;
    total.packets_consumed += now.packets_consumed;
    total.opens += now.opens;
    total.closes += now.closes;
  }
  carried_.disks.resize(std::max(carried_.disks.size(), disks_.size()));
  for (size_t i = 0; i < disks_.size(); ++i) {
    if (disks_[i].device == nullptr) continue;
    const storvsp::StorvspStats& now = disks_[i].device->stats();
    storvsp::StorvspStats& total = carried_.disks[i];
    total.packets += now.packets;
    total.srbs += now.srbs;
    total.bad_packets += now.bad_packets;
    total.opens += now.opens;
    total.closes += now.closes;
    total.subchannels_offered += now.subchannels_offered;
    total.subchannels_revoked += now.subchannels_revoked;
    total.restores += now.restores;
  }
}

namespace {

// Start() for a fresh offer, StartRestored(was it open?) after servicing.
template <typename Device>
absl::Status StartOrRestore(Device& device, const saved::Server* state, const Guid& interface_id,
                            const Guid& instance_id, uint16_t subchannel_index) {
  if (state == nullptr) return device.Start();
  return device.StartRestored(
      SavedChannelOpen(*state, interface_id, instance_id, subchannel_index));
}

}  // namespace

absl::Status Daemon::StartSavableDevices(const saved::Server* state,
                                         const std::vector<saved::Storvsp>& disk_states) {
  absl::Status echo = StartEchoDevices(state);
  absl::Status disks = RestartDisks(state, disk_states);
  absl::Status ics = StartIcs(state);
  absl::Status first = !echo.ok() ? echo : !disks.ok() ? disks : ics;
  if (state != nullptr && !first.ok()) first = Named("servicing", first);
  return first;
}

absl::Status Daemon::RestartDisks(const saved::Server* state,
                                  const std::vector<saved::Storvsp>& disk_states) {
  absl::Status first;
  for (size_t i = 0; i < disks_.size(); ++i) {
    const std::string what = fmt::format("disk[{}] {}", i, disks_[i].path);
    absl::StatusOr<std::unique_ptr<storvsp::StorvspDevice>> device = NewDiskDevice(i, disks_[i]);
    absl::Status status = device.status();
    if (device.ok()) {
      disks_[i].device = *std::move(device);
      if (state == nullptr || i >= disk_states.size()) {
        status = disks_[i].device->Start();
      } else {
        const Guid instance_id{0xd15c0000u + static_cast<uint32_t>(i), 0, 0, {}};
        status = disks_[i].device->StartRestored(disk_states[i], [&](uint16_t index) {
          return SavedChannelOpen(*state, storvsp::kScsiInterfaceId, instance_id, index);
        });
      }
    }
    if (first.ok() && !status.ok()) first = Named(what, status);
  }
  return first;
}

absl::Status Daemon::StartEchoDevices(const saved::Server* state) {
  hw::EventLoop* loop = vm_->server_loop();
  ParentBus* bus = &vm_->bus();
  absl::Status first;
  for (OfferParams& params : EchoOffers()) {
    const Guid interface_id = params.interface_id;
    const Guid instance_id = params.instance_id;
    const uint16_t subchannel = params.subchannel_index;
    echo_.push_back(std::make_unique<EchoDevice>(loop, bus, std::move(params)));
    absl::Status status =
        StartOrRestore(*echo_.back(), state, interface_id, instance_id, subchannel);
    if (first.ok() && !status.ok())
      first = Named(fmt::format("echo channel {}", echo_.size() - 1), status);
  }
  return first;
}

absl::Status Daemon::StartIcs(const saved::Server* state) {
  hw::EventLoop* loop = vm_->server_loop();
  ParentBus* bus = &vm_->bus();
  absl::Status first;
  const auto keep = [&first](const std::string& what, absl::Status status) {
    if (first.ok() && !status.ok()) first = Named(what, status);
  };
  if (settings_.heartbeat) {
    heartbeat_ = std::make_unique<ic::HeartbeatIc>(
        loop, bus, ic::HeartbeatOptions{.interval = settings_.heartbeat_interval});
    keep("heartbeat", StartOrRestore(*heartbeat_, state, heartbeat_->interface_id(),
                                     heartbeat_->instance_id(), 0));
  }
  if (settings_.shutdown) {
    shutdown_ = std::make_unique<ic::ShutdownIc>(loop, bus);
    keep("shutdown",
         StartOrRestore(*shutdown_, state, shutdown_->interface_id(), shutdown_->instance_id(), 0));
  }
  if (settings_.timesync) {
    timesync_ = std::make_unique<ic::TimeSyncIc>(loop, bus);
    keep("timesync",
         StartOrRestore(*timesync_, state, timesync_->interface_id(), timesync_->instance_id(), 0));
  }
  if (state != nullptr && !first.ok()) first = Named("servicing", first);
  return first;
}

Tree Daemon::Inspect() {
  Tree tree;
  vm_->OnServer([&] { tree = BuildTree(); });
  return tree;
}

absl::StatusOr<std::string> Daemon::HandleRequest(const std::vector<std::string>& words) {
  const std::string& command = words[0];
  if (command == "inspect") {
    if (words.size() > 2) return absl::InvalidArgumentError("usage: inspect [PATH]");
    absl::StatusOr<Tree> subtree = Subtree(BuildTree(), words.size() == 2 ? words[1] : "");
    if (!subtree.ok()) return subtree.status();
    return ToJson(*subtree, /*pretty=*/false) + "\n";
  }
  if (command == "ring" || command == "unstick") {
    if (words.size() != 2)
      return absl::InvalidArgumentError(fmt::format("usage: {} RELID", command));
    absl::StatusOr<uint32_t> relid = ParseRelid(words[1]);
    if (!relid.ok()) return relid.status();
    if (command == "unstick") {
      if (absl::Status status = vm_->server().Unstick(*relid); !status.ok()) return status;
      return fmt::format("channel {}: both directions signalled\n", *relid);
    }
    absl::StatusOr<RingPages> rings = vm_->server().RingPagesOf(*relid);
    if (!rings.ok()) return rings.status();
    return RingDumpText(*rings, *relid);
  }
  if (command == "save") {
    if (words.size() != 2) return absl::InvalidArgumentError("usage: save FILE");
    return SaveTo(words[1]);
  }
  if (command == "service") {
    if (words.size() != 1) return absl::InvalidArgumentError("usage: service");
    if (!callbacks_.on_service) return absl::UnimplementedError("servicing is not wired here");
    callbacks_.on_service();
    return std::string("servicing requested (see inspect daemon/servicing)\n");
  }
  if (command == "shutdown") {
    if (words.size() != 1) return absl::InvalidArgumentError("usage: shutdown");
    if (callbacks_.on_shutdown) callbacks_.on_shutdown();
    return std::string("shutting down\n");
  }
  return absl::InvalidArgumentError(
      fmt::format("unknown command '{}' (commands: inspect [PATH], ring RELID, unstick RELID, "
                  "save FILE, service, shutdown)",
                  command));
}

std::vector<ChannelTraffic> Daemon::DeviceTraffic() const {
  std::vector<ChannelTraffic> out;
  const auto add = [&out](std::optional<ChannelTraffic> traffic) {
    if (traffic.has_value()) out.push_back(*std::move(traffic));
  };
  for (const std::unique_ptr<EchoDevice>& echo : echo_) add(echo->traffic());
  for (const Disk& disk : disks_) {
    if (disk.device == nullptr) continue;
    for (ChannelTraffic& t : disk.device->traffic()) out.push_back(std::move(t));
  }
  if (heartbeat_) add(heartbeat_->traffic());
  if (shutdown_) add(shutdown_->traffic());
  if (timesync_) add(timesync_->traffic());
  return out;
}

Tree Daemon::BuildTree() const {
  Tree root;
  Tree& daemon = root["daemon"];
  daemon["pid"] = getpid();
  daemon["uptime_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  daemon["control_requests"] = control_ ? control_->requests() : 0;
  daemon["control_refused"] = control_ ? control_->refused() : 0;
  Tree& servicing = daemon["servicing"];
  servicing["done"] = servicing_.done;
  servicing["failed"] = servicing_.failed;
  servicing["last_microseconds"] = servicing_.last_microseconds;
  servicing["last_state_bytes"] = servicing_.last_state_bytes;
  servicing["hvsocket_connections_reset"] = servicing_.connections_reset;
  if (!servicing_.last_error.empty()) servicing["last_error"] = servicing_.last_error;
  Tree& machine = root["vm"];
  machine["memory_bytes"] = settings_.memory_bytes;
  machine["isolation"] = IsolationName(settings_.isolation);
  machine["max_version"] = VersionName(settings_.max_version);
  const guestmem::MemoryBacking::Stats memory = vm_->memory()->stats();
  Tree& isolation = root["isolation"];
  isolation["model"] = IsolationName(settings_.isolation);
  isolation["refused_private_accesses"] = memory.refused_private;
  isolation["refused_untrusted_accesses"] = memory.refused_untrusted;
  isolation["page_state_changes"] = memory.page_state_changes;
  Tree& loop = root["loop"];
  loop["cpu"] = settings_.loop_cpu.has_value() ? Tree(*settings_.loop_cpu) : Tree("any");
  loop["busy_poll_us"] = settings_.loop_busy_poll.count();
  const hw::EventLoop::FileIoStats& file_io = vm_->server_loop()->file_io_stats();
  loop["file_io_fixed"] = file_io.fixed;
  loop["file_io_vector"] = file_io.vector;
  if (!vm_->fixed_buffer_error().empty()) {
    loop["fixed_buffers_refused"] = vm_->fixed_buffer_error();
  }
  const ServerSnapshot server = vm_->server().Snapshot();
  AddServer(server, root);
  const std::vector<ChannelTraffic> traffic = DeviceTraffic();
  for (const ChannelSnapshot& channel : server.channels) {
    Tree& node = root["channels"][std::to_string(channel.relid)];
    if (channel.open.has_value()) {
      node["signals_from_guest"] = vm_->synic().SignalsReceived(channel.open->connection_id);
    }
    absl::StatusOr<RingPages> rings = vm_->server().RingPagesOf(channel.relid);
    if (rings.ok()) node["rings"] = RingSummary(*rings);
    for (const ChannelTraffic& t : traffic) {
      if (t.instance_id != channel.instance_id || t.subchannel_index != channel.subchannel_index) {
        continue;
      }
      Tree& packets = node["traffic"];
      packets["guest_to_host"] = {{"packets", t.packets_from_guest}, {"bytes", t.bytes_from_guest}};
      packets["host_to_guest"] = {{"packets", t.packets_to_guest},
                                  {"bytes", t.bytes_to_guest},
                                  {"full_refusals", t.full_refusals}};
      packets["error"] = t.error.empty() ? "none" : t.error;
    }
  }
  const synic::SynicStats synic = vm_->synic().stats();
  Tree& port = root["synic"];
  port["messages_posted"] = synic.messages_posted;
  port["messages_delivered"] = synic.messages_delivered;
  port["messages_waited"] = synic.messages_waited;
  port["events_set"] = synic.events_set;
  port["events_coalesced"] = synic.events_coalesced;
  port["events_lost"] = synic.events_lost;
  port["interrupts"] = synic.interrupts;
  port["insufficient_buffers"] = synic.insufficient_buffers;
  port["signals"] = synic.signals;
  port["signals_refused"] = synic.signals_refused;

  Tree& devices = root["devices"] = Tree::object();
  for (size_t i = 0; i < echo_.size(); ++i) {
    const EchoStats& stats = echo_[i]->stats();
    const EchoStats carried = i < carried_.echo.size() ? carried_.echo[i] : EchoStats{};
    Tree& echo = devices["echo"][std::to_string(i)];
    echo["packets_echoed"] = carried.packets_echoed + stats.packets_echoed;
    echo["packets_consumed"] = carried.packets_consumed + stats.packets_consumed;
    echo["opens"] = carried.opens + stats.opens;
    echo["closes"] = carried.closes + stats.closes;
    echo["gpadls"] = stats.gpadls;
    echo["ring_view"] = !stats.ring_view.has_value()                   ? "none"
                        : *stats.ring_view == guestmem::View::kPrivate ? "private"
                                                                       : "untrusted";
  }
  for (size_t i = 0; i < disks_.size(); ++i) {
    if (disks_[i].device == nullptr) continue;  // Its restore failed (daemon/servicing says).
    const storvsp::StorvspStats& stats = disks_[i].device->stats();
    const storvsp::StorvspStats carried =
        i < carried_.disks.size() ? carried_.disks[i] : storvsp::StorvspStats{};
    Tree& disk = devices["disks"][std::to_string(i)];
    disk["path"] = disks_[i].path;
    disk["size_bytes"] = disks_[i].backend->size_bytes();
    disk["read_only"] = disks_[i].backend->read_only();
    disk["vstor_version"] = fmt::format("{}.{}", stats.version >> 8, stats.version & 0xff);
    disk["packets"] = carried.packets + stats.packets;
    disk["srbs"] = carried.srbs + stats.srbs;
    disk["bad_packets"] = carried.bad_packets + stats.bad_packets;
    disk["opens"] = carried.opens + stats.opens;
    disk["closes"] = carried.closes + stats.closes;
    disk["subchannels_offered"] = carried.subchannels_offered + stats.subchannels_offered;
    disk["subchannels_revoked"] = carried.subchannels_revoked + stats.subchannels_revoked;
    disk["channels_restored"] = carried.restores + stats.restores;
    if (!stats.last_error.ok()) disk["last_error"] = stats.last_error.ToString();
  }
  if (heartbeat_) {
    const ic::HeartbeatStats stats = heartbeat_->stats();
    Tree& node = devices["heartbeat"];
    AddIcChannel(stats.channel, node["channel"]);
    node["health"] = ic::HeartbeatHealthName(stats.health);
    node["sent"] = stats.sent;
    node["answered"] = stats.answered;
    node["missed"] = stats.missed;
    node["consecutive_missed"] = stats.consecutive_missed;
  }
  if (shutdown_) {
    const ic::ShutdownStats stats = shutdown_->stats();
    Tree& node = devices["shutdown"];
    AddIcChannel(stats.channel, node["channel"]);
    node["requested"] = stats.requested;
    node["accepted"] = stats.accepted;
    node["refused"] = stats.refused;
    node["failed"] = stats.failed;
  }
  if (timesync_) {
    const ic::TimeSyncStats stats = timesync_->stats();
    Tree& node = devices["timesync"];
    AddIcChannel(stats.channel, node["channel"]);
    node["syncs_sent"] = stats.syncs_sent;
    node["samples_sent"] = stats.samples_sent;
    node["answered"] = stats.answered;
    node["unanswered"] = stats.unanswered;
  }
  if (relay_) {
    const hvsocket::RelayStats& stats = relay_->stats();
    Tree& node = devices["hvsocket"];
    node["guest_connects"] = stats.guest_connects;
    node["guest_refused"] = stats.guest_refused;
    node["host_connects"] = stats.host_connects;
    node["host_refused"] = stats.host_refused;
    node["finished"] = stats.finished;
    node["connections"] = Tree::object();
    for (const hvsocket::ConnectionStats& c : relay_->Connections()) {
      Tree& connection = node["connections"][std::to_string(c.id)];
      connection["host_initiated"] = c.host_initiated;
      connection["service_id"] = c.service_id.ToString();
      connection["socket_path"] = c.socket_path;
      connection["opened"] = c.opened;
      connection["bytes_to_host"] = c.bytes_to_host;
      connection["bytes_to_guest"] = c.bytes_to_guest;
    }
  }
  Tree& guest = root["guest"];
  guest["side"] = settings_.guest == GUEST_CLIENT ? "client"
                  : settings_.guest == GUEST_KVM  ? "kvm"
                                                  : "none";
  if (kvm_guest_) {
    const KvmGuestSideStats stats = kvm_guest_->stats();
    guest["state"] = stats.state;
    guest["version"] = stats.result.version == 0 ? "none" : VersionName(stats.result.version);
    guest["features"] = stats.result.features;
    guest["relid"] = stats.result.relid;
    guest["offers"] = stats.result.offers;
    guest["round_trips"] = stats.result.round_trips;
    guest["signals"] = stats.result.signals;
    guest["signals_refused"] = stats.result.signals_refused;
    Tree& exits = guest["vcpu_exits"];
    exits["msr"] = stats.exits.msr;
    exits["hypercall"] = stats.exits.hypercall;
    exits["signal_fallback"] = stats.exits.signal_fallback;
    exits["other"] = stats.exits.other;
    if (!stats.last_error.empty()) guest["last_error"] = stats.last_error;
  }
  if (guest_) {
    const InProcessGuestStats stats = guest_->stats();
    guest["state"] = stats.state;
    guest["version"] = stats.version == 0 ? "none" : VersionName(stats.version);
    guest["features"] = stats.features;
    guest["channels_open"] = stats.channels_open;
    guest["round_trips"] = stats.round_trips;
    if (!stats.last_error.empty()) guest["last_error"] = stats.last_error;
  }
  return root;
}

}  // namespace cvmbus::paravisor::daemon
