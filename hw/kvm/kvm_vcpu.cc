// KvmVm's vCPU at run time: the run thread, its exits (port I/O, the hypercall page, MSRs),
// errors, WaitForExit and Stop.
#include <errno.h>
#include <fmt/format.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <mutex>

#include "base/format.h"
#include "base/typed_error.h"
#include "hw/kvm/kvm_internal.h"
#include "hw/kvm/kvm_vm.h"

namespace cvmbus::hw::kvm {
namespace {

using internal::Errno;

constexpr char kVcpuErrorUrl[] = "cvmbus.dev/hw.kvm.VcpuError";

// How often Stop re-sends the kick while waiting for KVM_RUN to return. One kick suffices
// (immediate_exit covers the race with entering KVM_RUN); re-sending only guards against a
// signal the process consumed some other way.
constexpr auto kKickInterval = std::chrono::milliseconds(20);

constexpr uint64_t kEferLma = 1 << 10;  // Long mode active.

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

// --- The run loop ------------------------------------------------------------------------------

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
      other_exits_.fetch_add(1, std::memory_order_relaxed);
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
      case KVM_EXIT_X86_RDMSR:
      case KVM_EXIT_X86_WRMSR:
        msr_exits_.fetch_add(1, std::memory_order_relaxed);
        HandleMsr(run_->exit_reason == KVM_EXIT_X86_WRMSR);
        break;
      case KVM_EXIT_HLT:
        other_exits_.fetch_add(1, std::memory_order_relaxed);
        return VcpuExit{.reason = VcpuExit::Reason::kHalted};
      case KVM_EXIT_INTR:
        other_exits_.fetch_add(1, std::memory_order_relaxed);
        break;  // A signal arrived while in the guest; the loop re-checks stop_requested_.
      case KVM_EXIT_SHUTDOWN:
        other_exits_.fetch_add(1, std::memory_order_relaxed);
        return Error(VcpuError::kShutdown, "KVM_EXIT_SHUTDOWN (triple fault)");
      case KVM_EXIT_MMIO:
        other_exits_.fetch_add(1, std::memory_order_relaxed);
        return Error(VcpuError::kUnexpectedMmio,
                     fmt::format("{} of {} bytes at gpa {:#x}, outside guest memory and every "
                                 "MMIO ioeventfd",
                                 run_->mmio.is_write ? "write" : "read", run_->mmio.len,
                                 run_->mmio.phys_addr));
      case KVM_EXIT_INTERNAL_ERROR: {
        other_exits_.fetch_add(1, std::memory_order_relaxed);
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
        other_exits_.fetch_add(1, std::memory_order_relaxed);
        return Error(VcpuError::kFailEntry,
                     fmt::format("KVM_EXIT_FAIL_ENTRY, hardware reason {:#x}",
                                 run_->fail_entry.hardware_entry_failure_reason));
      default:
        other_exits_.fetch_add(1, std::memory_order_relaxed);
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
    other_exits_.fetch_add(1, std::memory_order_relaxed);
    return Error(VcpuError::kUnknownExit,
                 fmt::format("KVM_EXIT_IO data [{:#x}, +{:#x}) lies outside the {:#x}-byte "
                             "kvm_run mapping",
                             io.data_offset, bytes, run_bytes_));
  }
  const uint8_t* data = reinterpret_cast<const uint8_t*>(run_) + io.data_offset;
  const auto value = [&] {
    uint32_t v = 0;
    for (uint32_t i = 0; i < io.size && i < 4; ++i) v |= uint32_t{data[i]} << (8 * i);
    return v;
  };
  if (out && io.port == hypercall_port_ && io.count == 1) {
    hypercall_exits_.fetch_add(1, std::memory_order_relaxed);
    if (absl::Status status = HandleHypercallPort(); !status.ok()) return status;
    return std::nullopt;
  }
  if (out && io.port == signal_port_ && io.count == 1 && io.size == 4) {
    signal_fallback_exits_.fetch_add(1, std::memory_order_relaxed);
    if (absl::Status status = HandleSignalPort(value()); !status.ok()) return status;
    return std::nullopt;
  }
  other_exits_.fetch_add(1, std::memory_order_relaxed);
  if (out && io.port == ports_.exit_port && io.count == 1 && io.size <= 4) {
    return VcpuExit{.reason = VcpuExit::Reason::kExitPort, .value = value()};
  }
  if (out && io.port == ports_.debug_port) {
    MutexLock lock(&result_mu_);
    debug_output_.append(reinterpret_cast<const char*>(data), bytes);
    return std::nullopt;
  }
  return Error(VcpuError::kUnexpectedIo,
               fmt::format("{} of {} byte(s) x{} at port {:#x}, which no one handles",
                           out ? "OUT" : "IN", io.size, io.count, io.port));
}

// The stub (hypercall_page.h) saved the guest's RDX in R10; RAX is the result.
absl::Status KvmVm::HandleHypercallPort() {
  kvm_regs regs{};
  if (ioctl(run_fd_, KVM_GET_REGS, &regs) != 0) {
    return Error(VcpuError::kRunFailed,
                 fmt::format("KVM_GET_REGS at a hypercall: {}", Errno(errno)));
  }
  regs.rax = handler_ != nullptr ? handler_->Hypercall(regs.rcx, regs.r10, regs.r8)
                                 : kHvStatusInvalidHypercallCode;
  if (ioctl(run_fd_, KVM_SET_REGS, &regs) != 0) {
    return Error(VcpuError::kRunFailed,
                 fmt::format("KVM_SET_REGS after hypercall {:#x}: {}", regs.rcx, Errno(errno)));
  }
  return absl::OkStatus();
}

// A fast HvSignalEvent that no ioeventfd matched; the stub returns R9.
absl::Status KvmVm::HandleSignalPort(uint32_t connection_id) {
  kvm_regs regs{};
  if (ioctl(run_fd_, KVM_GET_REGS, &regs) != 0) {
    return Error(VcpuError::kRunFailed,
                 fmt::format("KVM_GET_REGS at a signal of connection id {:#x}: {}", connection_id,
                             Errno(errno)));
  }
  regs.r9 = handler_ != nullptr
                ? handler_->Hypercall(kHvSignalEventFastControl, connection_id, regs.r8)
                : kHvStatusInvalidHypercallCode;
  if (ioctl(run_fd_, KVM_SET_REGS, &regs) != 0) {
    return Error(VcpuError::kRunFailed,
                 fmt::format("KVM_SET_REGS after a signal of connection id {:#x}: {}",
                             connection_id, Errno(errno)));
  }
  return absl::OkStatus();
}

void KvmVm::HandleMsr(bool write) {
  auto& msr = run_->msr;
  const uint32_t index = msr.index;
  const bool hyperv = index >= kHypervMsrFirst && index < kHypervMsrEnd;
  if (!hyperv || handler_ == nullptr) {
    msr.error = 1;  // #GP, as KVM gives for an MSR it does not know.
    return;
  }
  if (write) {
    msr.error = handler_->WriteMsr(index, msr.data).ok() ? 0 : 1;
    return;
  }
  absl::StatusOr<uint64_t> value = handler_->ReadMsr(index);
  if (value.ok()) {
    msr.data = *value;
    msr.error = 0;
  } else {
    msr.error = 1;
  }
}

std::string KvmVm::Where() const {
  kvm_regs regs{};
  kvm_sregs sregs{};
  if (ioctl(run_fd_, KVM_GET_REGS, &regs) != 0 || ioctl(run_fd_, KVM_GET_SREGS, &sregs) != 0) {
    return "(registers unreadable)";
  }
  if ((sregs.efer & kEferLma) != 0) {
    return fmt::format("rip {:#x} (cs {:#x}, rsp {:#x}, cr0 {:#x})", regs.rip, sregs.cs.selector,
                       regs.rsp, sregs.cr0);
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

// --- Waiting and stopping ----------------------------------------------------------------------

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
  if (thread_.joinable() && thread_.get_id() == std::this_thread::get_id()) {
    return absl::FailedPreconditionError(fmt::format(
        "kvm '{}': Stop called on the vCPU thread (from a HypervExitHandler?)", device_path_));
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

}  // namespace cvmbus::hw::kvm
