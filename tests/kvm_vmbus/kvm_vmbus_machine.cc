#include "tests/kvm_vmbus/kvm_vmbus_machine.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <future>

#include "base/format.h"

namespace cvmbus::tests {
namespace {

constexpr uint64_t kMemoryBytes = 64ull << 20;
// What a confidential guest's launch validates: the VMM's tables at 0x1000 up to its rings.
constexpr uint64_t kLaunchFirst = paravisor::KvmEchoGuest::kLaunchFirst;
constexpr uint64_t kLaunchEnd = paravisor::KvmEchoGuest::kLaunchEnd;

}  // namespace

paravisor::Guid EchoInterfaceId() {
  return *paravisor::Guid::Parse("6a1e6c0e-7b2d-4c4e-9f3a-0c5e1d2b3a40");
}

absl::StatusOr<std::unique_ptr<KvmVmbusMachine>> KvmVmbusMachine::Create(KvmVmbusOptions options) {
  std::unique_ptr<KvmVmbusMachine> machine(new KvmVmbusMachine());
  machine->options_ = options;
  guestmem::MemoryOptions memory;
  memory.name = "kvm-vmbus";
  memory.regions = {{0, kMemoryBytes}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory);
  if (!backing.ok()) return backing.status();
  machine->backing_ = *backing;
  if (options.confidential) {
    absl::StatusOr<std::unique_ptr<hw::isolation::SnpModel>> snp =
        hw::isolation::SnpModel::Create(machine->backing_);
    if (!snp.ok()) return snp.status();
    machine->snp_ = *std::move(snp);
    // The guest's launch-validated memory, as an SNP launch leaves it: everything the guest
    // uses, from the VMM's tables to its rings, is private; the rest stays shared.
    if (absl::Status status =
            machine->snp_->ConvertToPrivate(kLaunchFirst, kLaunchEnd - kLaunchFirst);
        !status.ok()) {
      return status;
    }
  }
  absl::StatusOr<std::unique_ptr<hw::kvm::KvmVm>> vm = hw::kvm::KvmVm::Create(machine->backing_);
  if (!vm.ok()) return vm.status();
  machine->vm_ = *std::move(vm);

  const guestmem::GuestMemory untrusted = guestmem::GuestMemory::Untrusted(machine->backing_);
  // The guest's own view of its memory (its loader's, too): private on a confidential VM.
  const guestmem::GuestMemory guest_view =
      options.confidential ? guestmem::GuestMemory::Private(machine->backing_) : untrusted;
  const guestmem::GuestMemory& synic_view = guest_view;
  absl::StatusOr<std::shared_ptr<paravisor::KvmSynic>> kvm_synic = paravisor::KvmSynic::Create(
      machine->vm_.get(), {.name = "paravisor", .memory = synic_view, .trusted = true});
  if (!kvm_synic.ok()) return kvm_synic.status();
  machine->kvm_synic_ = *std::move(kvm_synic);

  // The server and the echo device on one io_uring loop thread (the loop is made there: it
  // is single-issuer).
  KvmVmbusMachine* raw = machine.get();
  std::promise<absl::Status> started;
  machine->loop_thread_ = std::thread([raw, &started, confidential = options.confidential] {
    absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
    if (!loop.ok()) {
      started.set_value(loop.status());
      return;
    }
    raw->loop_ = *std::move(loop);
    paravisor::ServerOptions server;
    server.untrusted_memory = guestmem::GuestMemory::Untrusted(raw->backing_);
    if (confidential) server.private_memory = guestmem::GuestMemory::Private(raw->backing_);
    // As a deployment runs it: both ring directions signalled again 100 ms after the open.
    server.resignal_after_open = std::chrono::milliseconds(100);
    server.log = [raw](const std::string& line) {
      MutexLock lock(&raw->log_mu_);
      raw->log_.push_back(line);
    };
    raw->server_ = std::make_unique<paravisor::VmbusServer>(
        raw->loop_.get(), raw->kvm_synic_->synic().get(), std::move(server));
    raw->bus_ = raw->server_->Bus();
    paravisor::OfferParams params;
    params.interface_id = EchoInterfaceId();
    params.instance_id.data1 = 1;
    params.allow_confidential_external_memory = true;
    raw->device_ =
        std::make_unique<paravisor::EchoDevice>(raw->loop_.get(), raw->bus_.get(), params);
    started.set_value(raw->device_->Start());
    (void)raw->loop_->Run();
    raw->device_.reset();
    raw->bus_.reset();
    raw->server_.reset();
  });
  if (absl::Status status = started.get_future().get(); !status.ok()) {
    machine->loop_thread_.join();
    return status;
  }

  // The guest program and its config block, as its loader would write them.
  absl::StatusOr<std::unique_ptr<paravisor::KvmEchoGuest>> guest =
      paravisor::KvmEchoGuest::Load(machine->vm_.get(), guest_view,
                                    {.version = options.confidential ? 0x60000u : 0x50003u,
                                     .features = options.confidential ? 0x10u : 0u,
                                     .require_confidential = options.confidential,
                                     .warmup = options.warmup,
                                     .iterations = options.iterations,
                                     .payload_bytes = options.payload_bytes,
                                     .interface_id = EchoInterfaceId()});
  if (!guest.ok()) return guest.status();
  machine->guest_ = *std::move(guest);
  return machine;
}

KvmVmbusMachine::~KvmVmbusMachine() {
  if (vm_) (void)vm_->Stop();
  if (loop_) loop_->Stop();
  if (loop_thread_.joinable()) loop_thread_.join();
  loop_.reset();
  kvm_synic_.reset();
  vm_.reset();
}

absl::StatusOr<KvmVmbusRun> KvmVmbusMachine::Run(absl::Duration timeout) {
  if (absl::Status status = guest_->Start(); !status.ok()) return status;
  absl::StatusOr<hw::kvm::VcpuExit> exit = vm_->WaitForExit(timeout);
  KvmVmbusRun run;
  run.debug_output = vm_->debug_output();
  if (!exit.ok()) {
    std::string log;
    {
      MutexLock lock(&log_mu_);
      for (const std::string& line : log_) log += "  " + line + "\n";
    }
    return absl::Status(exit.status().code(),
                        fmt::format("{}; the guest said:\n{}the server logged:\n{}",
                                    exit.status().message(), run.debug_output, log));
  }
  run.exit_code = exit->value;
  run.exits = vm_->exit_counts();
  run.marks = kvm_synic_->marks();
  absl::StatusOr<vmbus_guest_result> result = guest_->Result();
  if (!result.ok()) return result.status();
  run.result = *result;
  std::promise<uint64_t> echoed;
  loop_->Post([&] { echoed.set_value(device_->stats().packets_echoed); });
  run.echoed = echoed.get_future().get();
  MutexLock lock(&log_mu_);
  run.server_log = log_;
  return run;
}

}  // namespace cvmbus::tests
