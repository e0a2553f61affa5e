#include "paravisor/daemon/kvm_guest_side.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "paravisor/devices/demo_devices.h"

namespace cvmbus::paravisor::daemon {

absl::StatusOr<std::unique_ptr<KvmGuestSide>> KvmGuestSide::Start(vm::VirtualMachine* vm,
                                                                  KvmGuestSideOptions options) {
  if (vm->kvm() == nullptr) {
    return absl::FailedPreconditionError("kvm guest: the VM has no KVM vCPU");
  }
  if (options.confidential) {
    // As an SNP launch leaves it: everything the guest uses is validated private memory,
    // around the paravisor's own page (already private, and not the guest's).
    std::vector<std::pair<uint64_t, uint64_t>> ranges{
        {KvmEchoGuest::kLaunchFirst, KvmEchoGuest::kLaunchEnd}};
    if (options.paravisor_page.has_value()) {
      const uint64_t page = *options.paravisor_page;
      if (page >= KvmEchoGuest::kLaunchFirst && page < KvmEchoGuest::kLaunchEnd) {
        ranges = {{KvmEchoGuest::kLaunchFirst, page}, {page + 4096, KvmEchoGuest::kLaunchEnd}};
      }
    }
    for (const auto& [first, end] : ranges) {
      if (end <= first) continue;
      if (absl::Status status = vm->MakePrivate(first, end - first); !status.ok()) {
        return absl::Status(status.code(),
                            "kvm guest: launch validation: " + std::string(status.message()));
      }
    }
  }
  const guestmem::GuestMemory memory = options.confidential
                                           ? guestmem::GuestMemory::Private(vm->memory())
                                           : guestmem::GuestMemory::Untrusted(vm->memory());
  constexpr uint32_t kWarmup = 10;
  const uint32_t round_trips =
      options.round_trips != 0 ? options.round_trips : UINT32_MAX - kWarmup - 1;
  absl::StatusOr<std::unique_ptr<KvmEchoGuest>> guest = KvmEchoGuest::Load(
      vm->kvm(), memory,
      {.version = options.version,
       .features = options.confidential && options.version >= 0x60000 ? 0x10u : 0u,
       .require_confidential = options.confidential,
       .warmup = kWarmup,
       .iterations = round_trips,
       .payload_bytes = options.payload_bytes,
       .interface_id = kDemoInterfaceId});
  if (!guest.ok()) return guest.status();
  std::unique_ptr<KvmGuestSide> side(new KvmGuestSide(vm, *std::move(guest)));
  if (absl::Status status = side->guest_->Start(); !status.ok()) return status;
  side->waiter_ = std::thread([raw = side.get()] { raw->Wait(); });
  return side;
}

void KvmGuestSide::Wait() {
  // An hour at a time: wait_for(2^63 ns) would overflow the clock.
  absl::StatusOr<hw::kvm::VcpuExit> exit = guest_->WaitForExit(absl::Hours(1));
  while (absl::IsDeadlineExceeded(exit.status())) exit = guest_->WaitForExit(absl::Hours(1));
  MutexLock lock(&mu_);
  exit_ = std::move(exit);
}

void KvmGuestSide::Stop() {
  {
    MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  (void)vm_->kvm()->Stop();
  if (waiter_.joinable()) waiter_.join();
}

KvmGuestSideStats KvmGuestSide::stats() const {
  KvmGuestSideStats stats;
  absl::StatusOr<vmbus_guest_result> result = guest_->Result();
  if (result.ok()) stats.result = *result;
  stats.exits = vm_->kvm()->exit_counts();
  MutexLock lock(&mu_);
  if (!exit_.has_value()) {
    stats.state = stopping_ ? "stopping" : "running";
    return stats;
  }
  if (!exit_->ok()) {
    stats.state = "failed";
    stats.last_error = exit_->status().ToString();
    return stats;
  }
  const hw::kvm::VcpuExit& exit = **exit_;
  if (exit.reason == hw::kvm::VcpuExit::Reason::kStopped) {
    stats.state = "stopped";
  } else if (exit.reason == hw::kvm::VcpuExit::Reason::kExitPort && exit.value == VMBUS_GUEST_OK) {
    stats.state = "exited";
  } else {
    stats.state = "failed";
    stats.last_error =
        exit.reason == hw::kvm::VcpuExit::Reason::kExitPort
            ? fmt::format("the guest failed at its {} step (it saw {:#x})",
                          KvmEchoGuest::StepName(exit.value), stats.result.failed_value)
            : "the vCPU stopped without the guest's exit code";
  }
  return stats;
}

}  // namespace cvmbus::paravisor::daemon
