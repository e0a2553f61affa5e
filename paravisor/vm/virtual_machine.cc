#include "paravisor/vm/virtual_machine.h"

#include <fmt/format.h>

#include <atomic>

#include "hw/uring/thread_placement.h"

namespace cvmbus::paravisor::vm {

absl::StatusOr<std::unique_ptr<VirtualMachine>> VirtualMachine::Create(VmOptions options) {
  std::unique_ptr<VirtualMachine> vm(new VirtualMachine());
  guestmem::MemoryOptions memory;
  memory.name = "vm";
  memory.regions = {{0, options.memory_bytes}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory);
  if (!backing.ok()) return backing.status();
  vm->backing_ = *backing;
  if (options.isolated && options.tdx) {
    absl::StatusOr<std::unique_ptr<hw::isolation::TdxModel>> tdx =
        hw::isolation::TdxModel::Create(vm->backing_);
    if (!tdx.ok()) return tdx.status();
    vm->tdx_ = *std::move(tdx);
    if (absl::Status shared = vm->tdx_->ConvertToShared(0, options.memory_bytes); !shared.ok()) {
      return shared;
    }
  } else if (options.isolated) {
    absl::StatusOr<std::unique_ptr<hw::isolation::SnpModel>> snp =
        hw::isolation::SnpModel::Create(vm->backing_);
    if (!snp.ok()) return snp.status();
    vm->snp_ = *std::move(snp);
  }
  // The paravisor's SynIC sees the guest's pages through the private view on an isolated VM;
  // a SynIC that is not trusted (the host's) only through the untrusted one.
  const bool private_synic = options.isolated && options.trusted_port;
  const uint64_t top = options.memory_bytes;
  vm->synic_pages_ = GuestSynicPages{.simp = top - 4 * 4096,
                                     .siefp = top - 3 * 4096,
                                     .hypercall = top - 2 * 4096,
                                     .input = top - 4096};
  if (private_synic && !options.kvm_guest) {
    if (absl::Status status = vm->MakePrivate(top - 4 * 4096, 4 * 4096); !status.ok()) {
      return status;
    }
  }
  const guestmem::GuestMemory synic_view = private_synic
                                               ? guestmem::GuestMemory::Private(vm->backing_)
                                               : guestmem::GuestMemory::Untrusted(vm->backing_);
  const synic::SynicOptions synic_options{.name = options.trusted_port ? "paravisor" : "host",
                                          .memory = synic_view,
                                          .trusted = options.trusted_port};
  if (options.kvm_guest) {
    if (!options.trusted_port) {
      return absl::InvalidArgumentError("vm: a KVM guest needs the paravisor's (trusted) SynIC");
    }
    absl::StatusOr<std::unique_ptr<hw::kvm::KvmVm>> kvm = hw::kvm::KvmVm::Create(vm->backing_);
    if (!kvm.ok()) return kvm.status();
    vm->kvm_ = *std::move(kvm);
    absl::StatusOr<std::shared_ptr<KvmSynic>> kvm_synic =
        KvmSynic::Create(vm->kvm_.get(), synic_options);
    if (!kvm_synic.ok()) return kvm_synic.status();
    vm->kvm_synic_ = *std::move(kvm_synic);
    vm->synic_ = vm->kvm_synic_->synic();
  } else {
    absl::StatusOr<std::shared_ptr<synic::Synic>> synic = synic::Synic::Create(synic_options);
    if (!synic.ok()) return synic.status();
    vm->synic_ = *std::move(synic);
  }
  if (options.isolated && options.trusted_port) {
    absl::StatusOr<std::shared_ptr<synic::Synic>> host =
        synic::Synic::Create({.name = "host",
                              .memory = guestmem::GuestMemory::Untrusted(vm->backing_),
                              .trusted = false});
    if (!host.ok()) return host.status();
    vm->host_synic_ = *std::move(host);
  }
  std::promise<absl::Status> started;
  VirtualMachine* raw = vm.get();
  if (options.server_monitor_page.has_value() && options.isolated) {
    if (absl::Status status = vm->MakePrivate(*options.server_monitor_page, 4096); !status.ok()) {
      return status;
    }
  }
  vm->thread_ = std::thread([raw, &started, isolated = options.isolated,
                             monitor_page = options.server_monitor_page,
                             on_hvsocket_connect = options.on_hvsocket_connect,
                             resignal_after_open = options.resignal_after_open,
                             max_version = options.max_version, capture_log = options.capture_log,
                             cpu = options.server_cpu, busy_poll = options.server_busy_poll] {
    if (cpu.has_value()) {
      if (absl::Status pinned = hw::PinCurrentThreadToCpu(*cpu); !pinned.ok()) {
        started.set_value(absl::Status(
            pinned.code(), "the server loop's thread: " + std::string(pinned.message())));
        return;
      }
    }
    auto loop = hw::EventLoop::Create({.busy_poll = busy_poll});
    if (!loop.ok()) {
      started.set_value(loop.status());
      return;
    }
    raw->loop_ = *std::move(loop);
    // Guest memory as the loop's fixed buffers: a device's single-piece disk I/O into guest
    // pages then needs no per-request pinning. Registering pins (and so allocates) the whole
    // region, so only regions up to kMaxPinnedRegionBytes are; and without CAP_IPC_LOCK the
    // memlock limit may refuse it. Either way the I/O goes as readv/writev instead.
    for (const guestmem::RegionMapping& region : raw->backing_->regions()) {
      if (region.size_bytes > kMaxPinnedRegionBytes) {
        raw->fixed_buffer_error_ =
            fmt::format("a {} MiB guest memory region is over the {} MiB the loop pins",
                        region.size_bytes >> 20, kMaxPinnedRegionBytes >> 20);
        break;
      }
      if (absl::Status registered =
              raw->loop_->RegisterFixedBuffer(region.host_address, region.size_bytes);
          !registered.ok()) {
        raw->fixed_buffer_error_ = std::string(registered.message());
        break;
      }
    }
    ServerOptions server_options;
    server_options.untrusted_memory = guestmem::GuestMemory::Untrusted(raw->backing_);
    if (isolated) server_options.private_memory = guestmem::GuestMemory::Private(raw->backing_);
    server_options.server_monitor_page = monitor_page;
    server_options.on_hvsocket_connect = on_hvsocket_connect;
    server_options.resignal_after_open = resignal_after_open;
    server_options.max_version = max_version;
    if (capture_log) {
      server_options.log = [raw](const std::string& line) {
        MutexLock lock(&raw->log_mu_);
        raw->log_.push_back(line);
      };
    }
    raw->server_options_ = server_options;
    raw->server_ = std::make_unique<VmbusServer>(raw->loop_.get(), raw->synic_.get(),
                                                 std::move(server_options));
    raw->bus_ = raw->server_->Bus();
    started.set_value(absl::OkStatus());
    (void)raw->loop_->Run();
    raw->bus_.reset();
    raw->server_.reset();
  });
  if (absl::Status status = started.get_future().get(); !status.ok()) {
    vm->thread_.join();
    return status;
  }
  if (options.kvm_guest) return vm;
  absl::StatusOr<std::unique_ptr<GuestClient>> guest =
      GuestClient::Create({.synic = vm->synic_, .memory = synic_view, .pages = vm->synic_pages_});
  if (!guest.ok()) return guest.status();
  vm->guest_ = *std::move(guest);
  return vm;
}

VirtualMachine::~VirtualMachine() {
  if (kvm_) (void)kvm_->Stop();  // The vCPU first: it calls into the SynIC and the server.
  guest_.reset();
  if (loop_) loop_->Stop();
  if (thread_.joinable()) thread_.join();
  loop_.reset();  // After the join: no thread can be in Stop() or Post() any more.
}

void VirtualMachine::OnServer(std::function<void()> fn) {
  std::promise<void> done;
  loop_->Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

absl::Status VirtualMachine::MakePrivate(uint64_t gpa, uint64_t len) {
  if (tdx_ != nullptr) return tdx_->ConvertToPrivate(gpa, len);
  if (snp_ != nullptr) return snp_->ConvertToPrivate(gpa, len);
  return absl::OkStatus();
}

absl::StatusOr<saved::Server> VirtualMachine::SaveAndStopServer() {
  absl::StatusOr<saved::Server> state = absl::UnknownError("not run");
  OnServer([&] {
    state = server_->Save();
    if (state.ok()) server_->HandOffOnDestruction();
    bus_.reset();
    server_.reset();
  });
  return state;
}

absl::Status VirtualMachine::StartRestoredServer(const saved::Server& state) {
  absl::Status status;
  OnServer([&] { status = ReplaceServerOnLoop(state); });
  return status;
}

absl::Status VirtualMachine::ReplaceServerOnLoop(const saved::Server& state) {
  // A server from an earlier (failed) restore detaches from the port first: destroyed after
  // the new one attached, it would detach the new one.
  bus_.reset();
  server_.reset();
  server_ = std::make_unique<VmbusServer>(loop_.get(), synic_.get(), server_options_);
  bus_ = server_->Bus();
  return server_->Restore(state);
}

absl::StatusOr<saved::Server> VirtualMachine::ServiceServerOnLoop(
    const std::function<void()>& drop_devices) {
  absl::StatusOr<saved::Server> state = server_->Save();
  if (!state.ok()) return state.status();
  // What a new paravisor would read back: the bytes, not the object.
  saved::Server reloaded;
  if (!reloaded.ParseFromString(state->SerializeAsString())) {
    return absl::InternalError("servicing: the saved state does not parse back");
  }
  server_->HandOffOnDestruction();  // The guest sees no gap until the new server attaches.
  drop_devices();
  if (absl::Status restored = ReplaceServerOnLoop(reloaded); !restored.ok()) return restored;
  return reloaded;
}

std::vector<std::string> VirtualMachine::TakeLog() {
  MutexLock lock(&log_mu_);
  std::vector<std::string> out;
  out.swap(log_);
  return out;
}

}  // namespace cvmbus::paravisor::vm
