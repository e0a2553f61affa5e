#include "hw/kvm/kvm_vm.h"

#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <mutex>

#include "base/format.h"
#include "base/typed_error.h"

namespace cvmbus::hw::kvm {
namespace {

constexpr char kVcpuErrorUrl[] = "cvmbus.dev/hw.kvm.VcpuError";
constexpr int kKvmApiVersion = 12;  // The only version KVM has ever reported (api.rst 4.1).

// Intel CPUs without "unrestricted guest" run real mode in vm86 and need a 3-page TSS outside
// guest memory (api.rst KVM_SET_TSS_ADDR); QEMU uses the same address. Harmless elsewhere.
constexpr uint64_t kTssGpa = 0xfffbd000;
constexpr uint64_t kTssBytes = 3 * 4096;

// How often Stop re-sends the kick while waiting for KVM_RUN to return. One kick suffices
// (immediate_exit covers the race with entering KVM_RUN); re-sending only guards against a
// signal the process consumed some other way.
constexpr auto kKickInterval = std::chrono::milliseconds(20);

std::string Errno(int error) { return std::strerror(error); }

absl::Status KvmError(absl::StatusCode code, std::string_view device, std::string_view what,
                      int error) {
  return absl::Status(code, fmt::format("kvm '{}': {}: {}", device, what, Errno(error)));
}

// The absl code for a failed KVM ioctl whose errno says the arguments were wrong.
absl::StatusCode CodeFor(int error) {
  switch (error) {
    case EINVAL:
    case EFAULT:
      return absl::StatusCode::kInvalidArgument;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case ENOMEM:
    case ENOSPC:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

void IgnoreKick(int) {}

// Makes sure kKickSignal interrupts a thread instead of killing the process or vanishing.
absl::Status InstallKickHandler() {
  static std::once_flag once;
  static absl::Status* installed = nullptr;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(kKickSignal, nullptr, &current) != 0) {
      installed = new absl::Status(absl::InternalError(
          fmt::format("kvm: reading the action of signal {}: {}", kKickSignal, Errno(errno))));
      return;
    }
    const bool has_handler = (current.sa_flags & SA_SIGINFO) != 0 ||
                             (current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN);
    if (has_handler) {  // Any handler makes KVM_RUN return EINTR; keep the process's own.
      installed = new absl::Status();
      return;
    }
    struct sigaction action {};
    action.sa_handler = IgnoreKick;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // No SA_RESTART: a kicked system call returns EINTR.
    if (sigaction(kKickSignal, &action, nullptr) != 0) {
      installed = new absl::Status(absl::InternalError(
          fmt::format("kvm: installing the handler of signal {}: {}", kKickSignal, Errno(errno))));
      return;
    }
    installed = new absl::Status();
  });
  return *installed;
}

// Checks one KVM capability on the device; returns its value (> 0).
absl::StatusOr<int> RequireCapability(int kvm_fd, std::string_view device, long capability,
                                      std::string_view name) {
  const int value = ioctl(kvm_fd, KVM_CHECK_EXTENSION, capability);
  if (value <= 0) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': lacks capability {} ({})", device, name, capability));
  }
  return value;
}

}  // namespace

std::string_view VcpuErrorName(VcpuError error) {
  switch (error) {
    case VcpuError::kShutdown:
      return "shutdown";
    case VcpuError::kUnexpectedIo:
      return "unexpected port I/O";
    case VcpuError::kUnexpectedMmio:
      return "unexpected MMIO";
    case VcpuError::kInternalError:
      return "KVM internal error";
    case VcpuError::kFailEntry:
      return "entry failed";
    case VcpuError::kUnknownExit:
      return "unknown exit";
    case VcpuError::kRunFailed:
      return "KVM_RUN failed";
  }
  return "unknown";
}

std::optional<VcpuError> GetVcpuError(const absl::Status& status) {
  return GetTypedError<VcpuError>(kVcpuErrorUrl, status, VcpuError::kRunFailed);
}

// --- Creation ----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<KvmVm>> KvmVm::Create(
    std::shared_ptr<guestmem::MemoryBacking> backing, KvmOptions options) {
  const std::string& device = options.device_path;
  if (backing == nullptr) {
    return absl::InvalidArgumentError(fmt::format("kvm '{}': no memory backing", device));
  }
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
  return std::unique_ptr<KvmVm>(new KvmVm(std::move(backing), device, std::move(kvm_fd),
                                          std::move(vm_fd), static_cast<size_t>(run_bytes)));
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
  event_fds_.clear();
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
  MutexLock lock(&control_mu_);
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
  MutexLock lock(&control_mu_);
  if (ioctl(vm_fd_.get(), KVM_IRQFD, &request) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_, fmt::format("KVM_IRQFD for GSI {}", gsi), error);
  }
  const int fd = event.get();
  event_fds_.push_back(std::move(event));
  return fd;
}

// --- The vCPU ----------------------------------------------------------------------------------

absl::Status KvmVm::StartVcpu(const RealModeEntry& entry) {
  MutexLock lock(&control_mu_);
  if (started_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': vCPU 0 was already started", device_path_));
  }
  if (absl::Status status = InstallKickHandler(); !status.ok()) return status;
  if (absl::Status status = SetUpVcpu(entry); !status.ok()) {
    if (run_ != nullptr) munmap(run_, run_bytes_);
    run_ = nullptr;
    vcpu_fd_.Reset();
    return status;
  }
  // release: WaitForExit may then wait on the result, which the thread will publish.
  started_.store(true, std::memory_order_release);
  // The thread reads run_, run_fd_ and entry_, all written above: std::thread's start
  // synchronizes-with the new thread.
  thread_ = std::thread([this] { RunVcpu(); });
  return absl::OkStatus();
}

absl::Status KvmVm::SetUpVcpu(const RealModeEntry& entry) {
  vcpu_fd_.Reset(ioctl(vm_fd_.get(), KVM_CREATE_VCPU, 0));
  if (!vcpu_fd_.valid()) {
    return KvmError(absl::StatusCode::kInternal, device_path_, "KVM_CREATE_VCPU 0", errno);
  }
  void* run =
      mmap(nullptr, run_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd_.get(), /*offset=*/0);
  if (run == MAP_FAILED) {
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("mapping vCPU 0's kvm_run ({} bytes)", run_bytes_), errno);
  }
  run_ = static_cast<kvm_run*>(run);

  kvm_sregs sregs{};
  if (ioctl(vcpu_fd_.get(), KVM_GET_SREGS, &sregs) != 0) {
    return KvmError(absl::StatusCode::kInternal, device_path_, "KVM_GET_SREGS", errno);
  }
  // Real mode: a segment's base is its selector * 16; the reset state already has CR0.PE = 0
  // and 64 KiB limits.
  sregs.cs.selector = entry.cs;
  sregs.cs.base = uint64_t{entry.cs} << 4;
  for (kvm_segment* segment : {&sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss}) {
    segment->selector = entry.ds;
    segment->base = uint64_t{entry.ds} << 4;
  }
  if (ioctl(vcpu_fd_.get(), KVM_SET_SREGS, &sregs) != 0) {
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("KVM_SET_SREGS (cs {:#x}, ds {:#x})", entry.cs, entry.ds), errno);
  }
  kvm_regs regs{};
  regs.rip = entry.ip;
  regs.rsp = entry.sp;
  regs.rflags = 0x2;  // Bit 1 is reserved and always set; IF = 0 until the guest's STI.
  if (ioctl(vcpu_fd_.get(), KVM_SET_REGS, &regs) != 0) {
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("KVM_SET_REGS (ip {:#x}, sp {:#x})", entry.ip, entry.sp), errno);
  }
  run_fd_ = vcpu_fd_.get();
  entry_ = entry;
  return absl::OkStatus();
}

void KvmVm::RunVcpu() {
  pthread_setname_np(pthread_self(), "kvm-vcpu0");
  absl::StatusOr<VcpuExit> result = RunLoop();
  MutexLock lock(&result_mu_);
  result_ = std::move(result);
  finished_ = true;
  result_cv_.notify_all();
}

absl::StatusOr<VcpuExit> KvmVm::RunLoop() {
  for (;;) {
    // acquire: pairs with Stop's store; immediate_exit covers a Stop that lands after this load.
    if (stop_requested_.load(std::memory_order_acquire)) {
      return VcpuExit{.reason = VcpuExit::Reason::kStopped};
    }
    if (ioctl(run_fd_, KVM_RUN, 0) != 0) {
      const int error = errno;
      if (error == EINTR || error == EAGAIN) continue;  // A kick (or another signal).
      return Error(VcpuError::kRunFailed, fmt::format("KVM_RUN: {}", Errno(error)));
    }
    switch (run_->exit_reason) {
      case KVM_EXIT_IO: {
        absl::StatusOr<std::optional<VcpuExit>> io = HandleIo();
        if (!io.ok()) return io.status();
        if (io->has_value()) return **io;
        break;
      }
      case KVM_EXIT_HLT:
        return VcpuExit{.reason = VcpuExit::Reason::kHalted};
      case KVM_EXIT_INTR:
        break;  // A signal arrived while in the guest; the loop re-checks stop_requested_.
      case KVM_EXIT_SHUTDOWN:
        return Error(VcpuError::kShutdown, "KVM_EXIT_SHUTDOWN (triple fault)");
      case KVM_EXIT_MMIO:
        return Error(VcpuError::kUnexpectedMmio,
                     fmt::format("{} of {} bytes at gpa {:#x}, outside guest memory and every "
                                 "MMIO ioeventfd",
                                 run_->mmio.is_write ? "write" : "read", run_->mmio.len,
                                 run_->mmio.phys_addr));
      case KVM_EXIT_INTERNAL_ERROR: {
        std::string data;
        for (uint32_t i = 0; i < run_->internal.ndata && i < 16; ++i) {
          data += fmt::format(" {:#x}", run_->internal.data[i]);
        }
        return Error(VcpuError::kInternalError,
                     fmt::format("KVM_EXIT_INTERNAL_ERROR suberror {} (1: emulation failed), "
                                 "data [{} ]",
                                 run_->internal.suberror, data));
      }
      case KVM_EXIT_FAIL_ENTRY:
        return Error(VcpuError::kFailEntry,
                     fmt::format("KVM_EXIT_FAIL_ENTRY, hardware reason {:#x}",
                                 run_->fail_entry.hardware_entry_failure_reason));
      default:
        return Error(VcpuError::kUnknownExit,
                     fmt::format("unhandled exit reason {}", run_->exit_reason));
    }
  }
}

absl::StatusOr<std::optional<VcpuExit>> KvmVm::HandleIo() {
  const auto& io = run_->io;
  const bool out = io.direction == KVM_EXIT_IO_OUT;
  const uint64_t bytes = uint64_t{io.size} * io.count;
  // The kernel places the data inside the kvm_run mapping; check it rather than trust it.
  if (io.data_offset > run_bytes_ || bytes > run_bytes_ - io.data_offset) {
    return Error(VcpuError::kUnknownExit,
                 fmt::format("KVM_EXIT_IO data [{:#x}, +{:#x}) lies outside the {:#x}-byte "
                             "kvm_run mapping",
                             io.data_offset, bytes, run_bytes_));
  }
  const uint8_t* data = reinterpret_cast<const uint8_t*>(run_) + io.data_offset;
  if (out && io.port == entry_.exit_port && io.count == 1 && io.size <= 4) {
    uint32_t value = 0;
    for (uint32_t i = 0; i < io.size; ++i) value |= uint32_t{data[i]} << (8 * i);
    return VcpuExit{.reason = VcpuExit::Reason::kExitPort, .value = value};
  }
  if (out && io.port == entry_.debug_port) {
    MutexLock lock(&result_mu_);
    debug_output_.append(reinterpret_cast<const char*>(data), bytes);
    return std::nullopt;
  }
  return Error(VcpuError::kUnexpectedIo,
               fmt::format("{} of {} byte(s) x{} at port {:#x}, which no one handles",
                           out ? "OUT" : "IN", io.size, io.count, io.port));
}

std::string KvmVm::Where() const {
  kvm_regs regs{};
  kvm_sregs sregs{};
  if (ioctl(run_fd_, KVM_GET_REGS, &regs) != 0 || ioctl(run_fd_, KVM_GET_SREGS, &sregs) != 0) {
    return "(registers unreadable)";
  }
  return fmt::format("cs:ip {:04x}:{:04x} (rip {:#x}, cr0 {:#x})", sregs.cs.selector,
                     regs.rip & 0xffff, regs.rip, sregs.cr0);
}

absl::Status KvmVm::Error(VcpuError error, std::string_view detail) const {
  const absl::StatusCode code = error == VcpuError::kShutdown ||
                                        error == VcpuError::kUnexpectedIo ||
                                        error == VcpuError::kUnexpectedMmio
                                    ? absl::StatusCode::kAborted
                                    : absl::StatusCode::kInternal;
  return MakeTypedError(kVcpuErrorUrl, error, code,
                        fmt::format("kvm '{}' vCPU 0: {}: {} at {}", device_path_,
                                    VcpuErrorName(error), detail, Where()));
}

absl::StatusOr<VcpuExit> KvmVm::WaitForExit(absl::Duration timeout) {
  if (!started_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': no vCPU was started", device_path_));
  }
  std::unique_lock<Mutex> lock(result_mu_);
  if (!result_cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                           [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return finished_; })) {
    return absl::DeadlineExceededError(fmt::format("kvm '{}': vCPU 0 still running after {}",
                                                   device_path_, absl::FormatDuration(timeout)));
  }
  return result_;
}

absl::StatusOr<VcpuExit> KvmVm::Stop() {
  MutexLock control(&control_mu_);
  if (!started_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': no vCPU was started", device_path_));
  }
  if (thread_.joinable()) {
    // Order: the flag, then immediate_exit, then the signal. A KVM_RUN already running is
    // interrupted by the signal; one that starts later sees immediate_exit and returns EINTR
    // without entering the guest; the loop then sees the flag.
    stop_requested_.store(true, std::memory_order_release);
    std::atomic_ref<uint8_t>(run_->immediate_exit).store(1, std::memory_order_seq_cst);
    std::unique_lock<Mutex> lock(result_mu_);
    while (!finished_) {
      // The thread has not finished, so it has not been joined: its handle is valid.
      pthread_kill(thread_.native_handle(), kKickSignal);
      result_cv_.wait_for(lock, kKickInterval,
                          [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return finished_; });
    }
    lock.unlock();
    thread_.join();
  }
  MutexLock lock(&result_mu_);
  return result_;
}

std::string KvmVm::debug_output() const {
  MutexLock lock(&result_mu_);
  return debug_output_;
}

}  // namespace cvmbus::hw::kvm
