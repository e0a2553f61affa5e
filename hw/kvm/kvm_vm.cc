#include "hw/kvm/kvm_vm.h"

#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <array>
#include <cstring>

#include "base/format.h"
#include "guestmem/guest_memory.h"
#include "hw/kvm/hypercall_page.h"
#include "hw/kvm/kvm_internal.h"
#include "hw/kvm/kvm_uapi.h"

namespace cvmbus::hw::kvm {
namespace {

using internal::CodeFor;
using internal::Errno;
using internal::KvmError;
using internal::RequireCapability;

constexpr int kKvmApiVersion = 12;  // The only version KVM has ever reported (api.rst 4.1).

// Intel CPUs without "unrestricted guest" run real mode in vm86 and need a 3-page TSS outside
// guest memory (api.rst KVM_SET_TSS_ADDR); QEMU uses the same address. Harmless elsewhere.
constexpr uint64_t kTssGpa = 0xfffbd000;
constexpr uint64_t kTssBytes = 3 * 4096;

// The in-kernel irqchip's ports (PIC pair, ELCR): an OUT to them never exits to user space.
constexpr uint16_t kIrqchipPorts[] = {0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1};

absl::Status CheckHypercallPorts(std::string_view device, const KvmOptions& options) {
  if (options.hypercall_port == options.signal_port) {
    return absl::InvalidArgumentError(fmt::format(
        "kvm '{}': the hypercall and signal ports are both {:#x}", device, options.hypercall_port));
  }
  for (const uint16_t port : kIrqchipPorts) {
    if (options.hypercall_port == port || options.signal_port == port) {
      return absl::InvalidArgumentError(fmt::format(
          "kvm '{}': hypercall port {:#x} / signal port {:#x}: {:#x} belongs to the in-kernel "
          "irqchip",
          device, options.hypercall_port, options.signal_port, port));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// --- Creation ----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<KvmVm>> KvmVm::Create(
    std::shared_ptr<guestmem::MemoryBacking> backing, KvmOptions options) {
  const std::string& device = options.device_path;
  if (backing == nullptr) {
    return absl::InvalidArgumentError(fmt::format("kvm '{}': no memory backing", device));
  }
  if (absl::Status status = CheckHypercallPorts(device, options); !status.ok()) return status;
  UniqueFd kvm_fd(open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (!kvm_fd.valid()) {
    const int error = errno;
    const absl::StatusCode code = error == EACCES || error == EPERM
                                      ? absl::StatusCode::kPermissionDenied
                                      : absl::StatusCode::kUnavailable;
    return KvmError(code, device, "KVM is not available here: opening the device", error);
  }
  const int version = ioctl(kvm_fd.get(), KVM_GET_API_VERSION, 0);
  if (version < 0) {
    return KvmError(absl::StatusCode::kFailedPrecondition, device,
                    "not a KVM device: KVM_GET_API_VERSION", errno);
  }
  if (version != kKvmApiVersion) {
    return absl::FailedPreconditionError(fmt::format(
        "kvm '{}': API version {}, this code speaks {}", device, version, kKvmApiVersion));
  }
  struct Capability {
    long id;
    const char* name;
  };
  for (const Capability& capability : {
           Capability{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
           Capability{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
           Capability{KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
           Capability{KVM_CAP_IOEVENTFD_ANY_LENGTH, "KVM_CAP_IOEVENTFD_ANY_LENGTH"},
           Capability{KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
           Capability{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
       }) {
    absl::StatusOr<int> value =
        RequireCapability(kvm_fd.get(), device, capability.id, capability.name);
    if (!value.ok()) return value.status();
  }
  // api.rst: without KVM_CAP_NR_MEMSLOTS, 32 slots may be assumed.
  int slots = ioctl(kvm_fd.get(), KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
  if (slots <= 0) slots = 32;
  const std::vector<guestmem::RegionMapping>& regions = backing->regions();
  if (regions.size() > static_cast<size_t>(slots)) {
    return absl::ResourceExhaustedError(
        fmt::format("kvm '{}': guest memory '{}' has {} regions, KVM has {} memory slots", device,
                    backing->name(), regions.size(), slots));
  }
  const int run_bytes = ioctl(kvm_fd.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_bytes < 0) {
    return KvmError(absl::StatusCode::kInternal, device, "KVM_GET_VCPU_MMAP_SIZE", errno);
  }
  if (static_cast<size_t>(run_bytes) < sizeof(kvm_run)) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': the vCPU mapping is {} bytes, smaller than struct kvm_run ({})",
                    device, run_bytes, sizeof(kvm_run)));
  }

  UniqueFd vm_fd(ioctl(kvm_fd.get(), KVM_CREATE_VM, 0));
  if (!vm_fd.valid()) {
    return KvmError(absl::StatusCode::kInternal, device, "KVM_CREATE_VM (type 0)", errno);
  }
  if (ioctl(kvm_fd.get(), KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0) {
    for (const guestmem::RegionMapping& region : regions) {
      if (region.gpa < kTssGpa + kTssBytes && kTssGpa < region.gpa + region.size_bytes) {
        return absl::InvalidArgumentError(fmt::format(
            "kvm '{}': guest memory '{}' region [{:#x}, +{:#x}) overlaps the real-mode TSS at "
            "[{:#x}, +{:#x})",
            device, backing->name(), region.gpa, region.size_bytes, kTssGpa, kTssBytes));
      }
    }
    if (ioctl(vm_fd.get(), KVM_SET_TSS_ADDR, kTssGpa) != 0) {
      return KvmError(absl::StatusCode::kInternal, device,
                      fmt::format("KVM_SET_TSS_ADDR {:#x}", kTssGpa), errno);
    }
  }
  for (size_t slot = 0; slot < regions.size(); ++slot) {
    const guestmem::RegionMapping& region = regions[slot];
    kvm_userspace_memory_region memory_region{};
    memory_region.slot = static_cast<uint32_t>(slot);
    memory_region.flags = 0;
    memory_region.guest_phys_addr = region.gpa;
    memory_region.memory_size = region.size_bytes;
    memory_region.userspace_addr = reinterpret_cast<uint64_t>(region.host_address);
    if (ioctl(vm_fd.get(), KVM_SET_USER_MEMORY_REGION, &memory_region) != 0) {
      const int error = errno;
      return KvmError(
          CodeFor(error), device,
          fmt::format("KVM_SET_USER_MEMORY_REGION slot {} for guest memory '{}' "
                      "[{:#x}, +{:#x}) at host {}",
                      slot, backing->name(), region.gpa, region.size_bytes, region.host_address),
          error);
    }
  }
  if (ioctl(vm_fd.get(), KVM_CREATE_IRQCHIP, 0) != 0) {
    return KvmError(absl::StatusCode::kInternal, device, "KVM_CREATE_IRQCHIP", errno);
  }
  // 0 (no routing changes: AddMsiIrqFd fails) if KVM lacks KVM_CAP_IRQ_ROUTING.
  const int max_routes = ioctl(vm_fd.get(), KVM_CHECK_EXTENSION, KVM_CAP_IRQ_ROUTING);
  return std::unique_ptr<KvmVm>(new KvmVm(std::move(backing), device, std::move(kvm_fd),
                                          std::move(vm_fd), static_cast<size_t>(run_bytes), options,
                                          max_routes > 0 ? max_routes : 0));
}

KvmVm::~KvmVm() {
  (void)Stop();  // kFailedPrecondition when no vCPU was started: nothing to stop.
  MutexLock lock(&control_mu_);
  // The kvm_run mapping and the vCPU descriptor each hold the VM; release them first so that
  // closing vm_fd_ destroys it (its slots, irqchip and eventfd registrations) now.
  if (run_ != nullptr) munmap(run_, run_bytes_);
  run_ = nullptr;
  vcpu_fd_.Reset();
  vm_fd_.Reset();
  MutexLock devices(&devices_mu_);
  event_fds_.clear();
  signal_events_.clear();
  kvm_fd_.Reset();
}

// --- Doorbells ---------------------------------------------------------------------------------

absl::StatusOr<int> KvmVm::AddIoEventFd(PioAddress address, IoEventOptions options) {
  return AddIoEventFdAt(/*pio=*/true, address.port, options);
}

absl::StatusOr<int> KvmVm::AddIoEventFd(MmioAddress address, IoEventOptions options) {
  return AddIoEventFdAt(/*pio=*/false, address.gpa, options);
}

absl::StatusOr<int> KvmVm::AddIoEventFdAt(bool pio, uint64_t address,
                                          const IoEventOptions& options) {
  const std::string where =
      pio ? fmt::format("port {:#x}", address) : fmt::format("MMIO gpa {:#x}", address);
  const auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        fmt::format("kvm '{}': ioeventfd at {}: {}", device_path_, where, why));
  };
  if (options.len != 0 && options.len != 1 && options.len != 2 && options.len != 4 &&
      options.len != 8) {
    return invalid(fmt::format("len {} is not 0, 1, 2, 4 or 8", options.len));
  }
  if (options.datamatch.has_value() && options.len == 0) {
    return invalid("datamatch needs a len");
  }
  if (pio && (address == hypercall_port_ || address == signal_port_)) {
    return invalid("the port belongs to the hypercall page");
  }
  if (!pio) {
    const uint64_t span = options.len == 0 ? 1 : options.len;
    for (const guestmem::RegionMapping& region : backing_->regions()) {
      if (address < region.gpa + region.size_bytes && region.gpa < address + span) {
        return invalid(
            fmt::format("inside guest memory region [{:#x}, +{:#x}), whose writes "
                        "never trap",
                        region.gpa, region.size_bytes));
      }
    }
  }
  UniqueFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event.valid()) {
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("eventfd for the ioeventfd at {}", where), errno);
  }
  kvm_ioeventfd request{};
  request.addr = address;
  request.len = options.len;
  request.fd = event.get();
  request.flags = pio ? KVM_IOEVENTFD_FLAG_PIO : 0;
  if (options.datamatch.has_value()) {
    request.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    request.datamatch = *options.datamatch;
  }
  MutexLock lock(&devices_mu_);
  if (ioctl(vm_fd_.get(), KVM_IOEVENTFD, &request) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("KVM_IOEVENTFD at {} (len {})", where, options.len), error);
  }
  const int fd = event.get();
  event_fds_.push_back(std::move(event));
  return fd;
}

absl::StatusOr<int> KvmVm::AddIrqFd(uint32_t gsi) {
  UniqueFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event.valid()) {
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("eventfd for the irqfd of GSI {}", gsi), errno);
  }
  kvm_irqfd request{};
  request.fd = static_cast<uint32_t>(event.get());
  request.gsi = gsi;
  request.flags = 0;
  MutexLock lock(&devices_mu_);
  if (ioctl(vm_fd_.get(), KVM_IRQFD, &request) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_, fmt::format("KVM_IRQFD for GSI {}", gsi), error);
  }
  const int fd = event.get();
  event_fds_.push_back(std::move(event));
  return fd;
}

absl::Status KvmVm::SetRoutingLocked(std::string_view why) {
  std::vector<uint64_t> table = routing_.Encode();
  if (ioctl(vm_fd_.get(), uapi::kSetGsiRouting, table.data()) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("KVM_SET_GSI_ROUTING ({} routes) {}", routing_.size(), why), error);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> KvmVm::AddMsiIrqFd(uint8_t vector, uint32_t apic_id) {
  const std::string what = fmt::format("MSI irqfd for vector {:#x} to APIC {}", vector, apic_id);
  MutexLock lock(&devices_mu_);
  if (ioctl(vm_fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_IRQ_ROUTING) <= 0) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': {}: lacks KVM_CAP_IRQ_ROUTING", device_path_, what));
  }
  absl::StatusOr<uint32_t> gsi = routing_.AddMsi(vector, apic_id);
  if (!gsi.ok()) {
    return absl::Status(gsi.status().code(), fmt::format("kvm '{}': {}: {}", device_path_, what,
                                                         gsi.status().message()));
  }
  UniqueFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event.valid()) {
    const int error = errno;
    routing_.Remove(*gsi);
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("eventfd for the {}", what), error);
  }
  if (absl::Status status = SetRoutingLocked(fmt::format("adding GSI {} for the {}", *gsi, what));
      !status.ok()) {
    routing_.Remove(*gsi);
    // KVM keeps its old table when KVM_SET_GSI_ROUTING fails: routing_ matches it again.
    return status;
  }
  kvm_irqfd request{};
  request.fd = static_cast<uint32_t>(event.get());
  request.gsi = *gsi;
  request.flags = 0;
  if (ioctl(vm_fd_.get(), KVM_IRQFD, &request) != 0) {
    const int error = errno;
    routing_.Remove(*gsi);
    absl::Status restored = SetRoutingLocked(fmt::format("dropping GSI {} again", *gsi));
    absl::Status status =
        KvmError(CodeFor(error), device_path_,
                 fmt::format("KVM_IRQFD on GSI {} for the {}", *gsi, what), error);
    if (!restored.ok()) {
      return absl::Status(status.code(),
                          fmt::format("{}; then {}", status.message(), restored.message()));
    }
    return status;
  }
  const int fd = event.get();
  event_fds_.push_back(std::move(event));
  return fd;
}

// --- The hypercall page and signal events ------------------------------------------------------

absl::Status KvmVm::BindSignalEvent(uint32_t connection_id, int eventfd) {
  const std::string what =
      fmt::format("binding signal event connection id {:#x} to fd {}", connection_id, eventfd);
  if (eventfd < 0) {
    return absl::InvalidArgumentError(
        fmt::format("kvm '{}': {}: not a descriptor", device_path_, what));
  }
  MutexLock lock(&devices_mu_);
  if (signal_events_.count(connection_id) != 0) {
    return absl::AlreadyExistsError(
        fmt::format("kvm '{}': {}: the id is already bound", device_path_, what));
  }
  UniqueFd duplicate(fcntl(eventfd, F_DUPFD_CLOEXEC, 0));
  if (!duplicate.valid()) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_, fmt::format("{}: dup", what), error);
  }
  kvm_ioeventfd request{};
  request.addr = signal_port_;
  request.len = 4;
  request.fd = duplicate.get();
  request.flags = KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DATAMATCH;
  request.datamatch = connection_id;
  if (ioctl(vm_fd_.get(), KVM_IOEVENTFD, &request) != 0) {
    const int error = errno;  // EINVAL: not an eventfd.
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("{}: KVM_IOEVENTFD at port {:#x}", what, signal_port_), error);
  }
  signal_events_.emplace(connection_id, std::move(duplicate));
  return absl::OkStatus();
}

absl::Status KvmVm::UnbindSignalEvent(uint32_t connection_id) {
  MutexLock lock(&devices_mu_);
  auto it = signal_events_.find(connection_id);
  if (it == signal_events_.end()) {
    return absl::NotFoundError(
        fmt::format("kvm '{}': unbinding signal event connection id {:#x}: not bound", device_path_,
                    connection_id));
  }
  kvm_ioeventfd request{};
  request.addr = signal_port_;
  request.len = 4;
  request.fd = it->second.get();
  request.flags =
      KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DATAMATCH | KVM_IOEVENTFD_FLAG_DEASSIGN;
  request.datamatch = connection_id;
  if (ioctl(vm_fd_.get(), KVM_IOEVENTFD, &request) != 0) {
    const int error = errno;
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("unbinding signal event connection id {:#x}: KVM_IOEVENTFD "
                                "deassign at port {:#x}",
                                connection_id, signal_port_),
                    error);
  }
  signal_events_.erase(it);
  return absl::OkStatus();
}

absl::Status KvmVm::WriteHypercallPage(uint64_t gpa) {
  if (gpa % kHypercallPageBytes != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "kvm '{}': writing the hypercall page at gpa {:#x}: not 4 KiB-aligned", device_path_, gpa));
  }
  const std::array<uint8_t, kHypercallPageBytes> page =
      HypercallPage(hypercall_port_, signal_port_);
  absl::Status status = guestmem::GuestMemory::Private(backing_).Write(gpa, page);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        fmt::format("kvm '{}': writing the hypercall page at gpa {:#x}: {}",
                                    device_path_, gpa, status.message()));
  }
  return absl::OkStatus();
}

ExitCounts KvmVm::exit_counts() const {
  return ExitCounts{
      .msr = msr_exits_.load(std::memory_order_relaxed),
      .hypercall = hypercall_exits_.load(std::memory_order_relaxed),
      .signal_fallback = signal_fallback_exits_.load(std::memory_order_relaxed),
      .other = other_exits_.load(std::memory_order_relaxed),
  };
}

std::string KvmVm::debug_output() const {
  MutexLock lock(&result_mu_);
  return debug_output_;
}

}  // namespace cvmbus::hw::kvm
