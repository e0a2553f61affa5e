#include "paravisor/kvm/kvm_echo_guest.h"

#include <fmt/format.h>

#include <cstring>

#include "hw/kvm/hyperv.h"
#include "paravisor/kvm/vmbus_guest.h"
#include "paravisor/synic/hv_abi.h"

namespace cvmbus::paravisor {

absl::StatusOr<std::unique_ptr<KvmEchoGuest>> KvmEchoGuest::Load(hw::kvm::KvmVm* vm,
                                                                 guestmem::GuestMemory memory,
                                                                 KvmEchoGuestOptions options) {
  if (options.payload_bytes == 0 || options.payload_bytes > 1024) {
    return absl::InvalidArgumentError(
        fmt::format("kvm guest: payload of {} bytes (1..1024)", options.payload_bytes));
  }
  if (absl::Status status = memory.Write(vmbus_guest::kLoadGpa, vmbus_guest::Image());
      !status.ok()) {
    return status;
  }
  vmbus_guest_config config{};
  config.magic = VMBUS_GUEST_CONFIG_MAGIC;
  config.version = options.version;
  config.features = options.features;
  config.require_confidential = options.require_confidential ? 1 : 0;
  config.warmup = options.warmup;
  config.iterations = options.iterations;
  config.payload_bytes = options.payload_bytes;
  static_assert(sizeof(config.interface_id) == sizeof(options.interface_id));
  std::memcpy(config.interface_id, &options.interface_id, sizeof(options.interface_id));
  if (absl::Status status = memory.Write(
          VMBUS_GUEST_CONFIG,
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&config), sizeof(config)));
      !status.ok()) {
    return status;
  }
  return std::unique_ptr<KvmEchoGuest>(new KvmEchoGuest(vm, std::move(memory)));
}

absl::Status KvmEchoGuest::Start() {
  hw::kvm::LongModeEntry entry;
  entry.rip = vmbus_guest::kEntryGpa;
  entry.rsp = VMBUS_GUEST_STACK_TOP;
  hw::kvm::HypervCpuidFeatures features;
  features.recommendations = synic::kRecommendExplicitEoi;
  entry.cpuid = hw::kvm::HypervCpuidLeaves(features);
  return vm_->StartVcpu(entry);
}

absl::StatusOr<hw::kvm::VcpuExit> KvmEchoGuest::WaitForExit(absl::Duration timeout) {
  return vm_->WaitForExit(timeout);
}

absl::StatusOr<vmbus_guest_result> KvmEchoGuest::Result() const {
  vmbus_guest_result result{};
  if (absl::Status status = memory_.Read(
          VMBUS_GUEST_RESULT, absl::MakeSpan(reinterpret_cast<uint8_t*>(&result), sizeof(result)));
      !status.ok()) {
    return status;
  }
  return result;
}

std::string KvmEchoGuest::StepName(uint32_t code) {
  switch (code) {
    case VMBUS_GUEST_OK:
      return "ok";
    case VMBUS_GUEST_FAIL_CONFIG:
      return "config";
    case VMBUS_GUEST_FAIL_CPUID:
      return "CPUID";
    case VMBUS_GUEST_FAIL_SYNIC:
      return "SynIC";
    case VMBUS_GUEST_FAIL_POST:
      return "HvPostMessage";
    case VMBUS_GUEST_FAIL_VERSION:
      return "version";
    case VMBUS_GUEST_FAIL_OFFER:
      return "offer";
    case VMBUS_GUEST_FAIL_GPADL:
      return "GPADL";
    case VMBUS_GUEST_FAIL_OPEN:
      return "open";
    case VMBUS_GUEST_FAIL_RING:
      return "ring";
    case VMBUS_GUEST_FAIL_ECHO:
      return "echo";
    case VMBUS_GUEST_FAIL_SIGNAL:
      return "HvSignalEvent";
    case VMBUS_GUEST_FAIL_TEARDOWN:
      return "teardown";
    case VMBUS_GUEST_FAIL_UNLOAD:
      return "unload";
    default:
      return fmt::format("code {}", code);
  }
}

}  // namespace cvmbus::paravisor
