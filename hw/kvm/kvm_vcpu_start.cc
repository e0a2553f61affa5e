// KvmVm's vCPU at start: creating it and setting it up in real mode or in 64-bit long mode
// (tables, CPUID, Hyper-V MSR exits), then starting its run thread.
#include <errno.h>
#include <fmt/format.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <memory>
#include <mutex>

#include "base/format.h"
#include "guestmem/guest_memory.h"
#include "hw/kvm/kvm_internal.h"
#include "hw/kvm/kvm_uapi.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/kvm/long_mode.h"

namespace cvmbus::hw::kvm {
namespace {

using internal::CodeFor;
using internal::Errno;
using internal::KvmError;
using internal::RequireCapability;

// Control and mode bits of a long-mode vCPU (SDM Vol. 3A 2.5, 2.2.1).
constexpr uint64_t kCr0Pe = 1 << 0, kCr0Mp = 1 << 1, kCr0Et = 1 << 4, kCr0Ne = 1 << 5,
                   kCr0Wp = 1 << 16, kCr0Pg = uint64_t{1} << 31;
constexpr uint64_t kCr4Pae = 1 << 5;
constexpr uint64_t kEferLme = 1 << 8, kEferLma = 1 << 10;

// How many CPUID entries KVM_GET_SUPPORTED_CPUID may return: KVM_MAX_CPUID_ENTRIES (KVM answers
// E2BIG for fewer than it has, ~60 today).
constexpr uint32_t kMaxCpuidEntries = 256;

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

// A flat 4 GiB segment of the long-mode GDT (long_mode.h).
kvm_segment FlatSegment(uint16_t selector, uint8_t type, bool code) {
  kvm_segment segment{};
  segment.base = 0;
  segment.limit = 0xffffffff;
  segment.selector = selector;
  segment.type = type;
  segment.present = 1;
  segment.dpl = 0;
  segment.db = code ? 0 : 1;  // A 64-bit code segment has D = 0 and L = 1.
  segment.s = 1;
  segment.l = code ? 1 : 0;
  segment.g = 1;
  return segment;
}

// A struct kvm_cpuid2 in its C layout (kvm_uapi.h): the header, then the entries at offset 8.
struct CpuidBuffer {
  explicit CpuidBuffer(uint32_t entries)
      : storage((sizeof(uapi::Cpuid2Header) + entries * sizeof(kvm_cpuid_entry2) + 7) / 8, 0) {
    header()->nent = entries;
  }
  uapi::Cpuid2Header* header() { return reinterpret_cast<uapi::Cpuid2Header*>(storage.data()); }
  kvm_cpuid_entry2* entries() {
    return reinterpret_cast<kvm_cpuid_entry2*>(reinterpret_cast<uint8_t*>(storage.data()) +
                                               sizeof(uapi::Cpuid2Header));
  }
  std::vector<uint64_t> storage;
};

}  // namespace

// --- Starting the vCPU -------------------------------------------------------------------------

absl::Status KvmVm::SetHypervExitHandler(HypervExitHandler* handler) {
  MutexLock lock(&control_mu_);
  if (started_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(fmt::format(
        "kvm '{}': setting the Hyper-V exit handler: vCPU 0 was already started", device_path_));
  }
  handler_ = handler;
  return absl::OkStatus();
}

absl::Status KvmVm::StartVcpu(const RealModeEntry& entry) {
  MutexLock lock(&control_mu_);
  return Start(Ports{.exit_port = entry.exit_port, .debug_port = entry.debug_port},
               [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_) { return SetUpRealMode(entry); });
}

absl::Status KvmVm::StartVcpu(const LongModeEntry& entry) {
  MutexLock lock(&control_mu_);
  for (const uint16_t port : {entry.exit_port, entry.debug_port}) {
    if (port == hypercall_port_ || port == signal_port_) {
      return absl::InvalidArgumentError(fmt::format(
          "kvm '{}': long-mode entry: port {:#x} is the hypercall page's", device_path_, port));
    }
  }
  return Start(Ports{.exit_port = entry.exit_port, .debug_port = entry.debug_port},
               [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(control_mu_) { return SetUpLongMode(entry); });
}

template <typename SetUp>
absl::Status KvmVm::Start(const Ports& ports, SetUp set_up) {
  if (started_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        fmt::format("kvm '{}': vCPU 0 was already started", device_path_));
  }
  if (absl::Status status = InstallKickHandler(); !status.ok()) return status;
  // On a failure the vCPU stays created (KVM destroys vCPUs only with their VM) and a later
  // start sets all of its state again.
  if (absl::Status status = CreateVcpu(); !status.ok()) return status;
  if (absl::Status status = set_up(); !status.ok()) return status;
  ports_ = ports;
  // release: WaitForExit may then wait on the result, which the thread will publish.
  started_.store(true, std::memory_order_release);
  // The thread reads run_, run_fd_, ports_ and handler_, all written above: std::thread's
  // start synchronizes-with the new thread.
  thread_ = std::thread([this] { RunVcpu(); });
  return absl::OkStatus();
}

absl::Status KvmVm::CreateVcpu() {
  if (!vcpu_fd_.valid()) {  // Else made by an earlier, failed start.
    vcpu_fd_.Reset(ioctl(vm_fd_.get(), KVM_CREATE_VCPU, 0));
    if (!vcpu_fd_.valid()) {
      return KvmError(absl::StatusCode::kInternal, device_path_, "KVM_CREATE_VCPU 0", errno);
    }
  }
  if (run_ == nullptr) {
    void* run = mmap(nullptr, run_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd_.get(),
                     /*offset=*/0);
    if (run == MAP_FAILED) {
      return KvmError(absl::StatusCode::kInternal, device_path_,
                      fmt::format("mapping vCPU 0's kvm_run ({} bytes)", run_bytes_), errno);
    }
    run_ = static_cast<kvm_run*>(run);
  }
  run_fd_ = vcpu_fd_.get();
  return absl::OkStatus();
}

absl::Status KvmVm::SetUpRealMode(const RealModeEntry& entry) {
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
  return absl::OkStatus();
}

uint64_t KvmVm::LongModeTablesBytes() const {
  uint64_t end = 0;
  for (const guestmem::RegionMapping& region : backing_->regions()) {
    end = std::max(end, region.gpa + region.size_bytes);
  }
  return kvm::LongModeTablesBytes(IdentityMapBytesFor(end));
}

absl::Status KvmVm::SetUpLongMode(const LongModeEntry& entry) {
  uint64_t memory_end = 0;
  for (const guestmem::RegionMapping& region : backing_->regions()) {
    memory_end = std::max(memory_end, region.gpa + region.size_bytes);
  }
  absl::StatusOr<LongModeTables> tables =
      BuildLongModeTables(entry.tables_gpa, IdentityMapBytesFor(memory_end));
  if (!tables.ok()) {
    return absl::Status(
        tables.status().code(),
        fmt::format("kvm '{}': long-mode start: {}", device_path_, tables.status().message()));
  }
  if (absl::Status written =
          guestmem::GuestMemory::Private(backing_).Write(tables->gpa, tables->bytes);
      !written.ok()) {
    return absl::Status(
        written.code(),
        fmt::format("kvm '{}': long-mode start: writing the GDT and page tables "
                    "at gpa {:#x} (+{:#x}): {}",
                    device_path_, tables->gpa, tables->bytes.size(), written.message()));
  }
  if (absl::Status status = SetCpuid(entry.cpuid); !status.ok()) return status;
  if (absl::Status status = EnableHypervMsrExits(); !status.ok()) return status;

  kvm_sregs sregs{};
  if (ioctl(vcpu_fd_.get(), KVM_GET_SREGS, &sregs) != 0) {
    return KvmError(absl::StatusCode::kInternal, device_path_, "KVM_GET_SREGS", errno);
  }
  sregs.cs = FlatSegment(kLongModeCodeSelector, /*type=*/0xb, /*code=*/true);
  const kvm_segment data = FlatSegment(kLongModeDataSelector, /*type=*/0x3, /*code=*/false);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = kvm_segment{};
  sregs.tr.base = tables->tss_base;
  sregs.tr.limit = kLongModeTssLimit;
  sregs.tr.selector = kLongModeTssSelector;
  sregs.tr.type = 0xb;  // Busy 64-bit TSS.
  sregs.tr.present = 1;
  sregs.ldt = kvm_segment{};
  sregs.ldt.type = 0x2;
  sregs.ldt.unusable = 1;
  sregs.gdt.base = tables->gdt_base;
  sregs.gdt.limit = kLongModeGdtLimit;
  sregs.idt.base = 0;
  sregs.idt.limit = 0;
  sregs.cr0 = kCr0Pe | kCr0Mp | kCr0Et | kCr0Ne | kCr0Wp | kCr0Pg;
  sregs.cr3 = tables->cr3;
  sregs.cr4 = kCr4Pae;
  sregs.efer = kEferLme | kEferLma;
  if (ioctl(vcpu_fd_.get(), KVM_SET_SREGS, &sregs) != 0) {
    return KvmError(absl::StatusCode::kInternal, device_path_,
                    fmt::format("KVM_SET_SREGS (long mode, cr3 {:#x})", sregs.cr3), errno);
  }
  kvm_regs regs{};
  regs.rip = entry.rip;
  regs.rsp = entry.rsp;
  regs.rflags = 0x2;  // IF = 0 until the guest's STI.
  if (ioctl(vcpu_fd_.get(), KVM_SET_REGS, &regs) != 0) {
    return KvmError(
        absl::StatusCode::kInternal, device_path_,
        fmt::format("KVM_SET_REGS (long mode, rip {:#x}, rsp {:#x})", entry.rip, entry.rsp), errno);
  }
  return absl::OkStatus();
}

absl::Status KvmVm::SetCpuid(const std::vector<CpuidLeaf>& extra) {
  absl::StatusOr<int> ext =
      RequireCapability(kvm_fd_.get(), device_path_, KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID");
  if (!ext.ok()) return ext.status();
  CpuidBuffer supported_buffer(kMaxCpuidEntries);
  if (ioctl(kvm_fd_.get(), uapi::kGetSupportedCpuid, supported_buffer.header()) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("KVM_GET_SUPPORTED_CPUID ({} entries)", kMaxCpuidEntries), error);
  }
  std::vector<CpuidLeaf> supported;
  const uint32_t got = supported_buffer.header()->nent;
  for (uint32_t i = 0; i < got && i < kMaxCpuidEntries; ++i) {
    const kvm_cpuid_entry2& e = supported_buffer.entries()[i];
    supported.push_back(CpuidLeaf{.function = e.function,
                                  .index = e.index,
                                  .indexed = (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0,
                                  .eax = e.eax,
                                  .ebx = e.ebx,
                                  .ecx = e.ecx,
                                  .edx = e.edx});
  }
  absl::StatusOr<std::vector<CpuidLeaf>> merged = MergeCpuid(supported, extra);
  if (!merged.ok()) {
    return absl::Status(
        merged.status().code(),
        fmt::format("kvm '{}': long-mode start: {}", device_path_, merged.status().message()));
  }
  CpuidBuffer table(static_cast<uint32_t>(merged->size()));
  for (size_t i = 0; i < merged->size(); ++i) {
    const CpuidLeaf& leaf = (*merged)[i];
    kvm_cpuid_entry2& e = table.entries()[i];
    e = kvm_cpuid_entry2{};
    e.function = leaf.function;
    e.index = leaf.indexed ? leaf.index : 0;
    e.flags = leaf.indexed ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
    e.eax = leaf.eax;
    e.ebx = leaf.ebx;
    e.ecx = leaf.ecx;
    e.edx = leaf.edx;
  }
  if (ioctl(vcpu_fd_.get(), uapi::kSetCpuid2, table.header()) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("KVM_SET_CPUID2 ({} entries)", merged->size()), error);
  }
  return absl::OkStatus();
}

absl::Status KvmVm::EnableHypervMsrExits() {
  absl::StatusOr<int> user_msr = RequireCapability(
      vm_fd_.get(), device_path_, KVM_CAP_X86_USER_SPACE_MSR, "KVM_CAP_X86_USER_SPACE_MSR");
  if (!user_msr.ok()) return user_msr.status();
  // UNKNOWN: MSRs KVM does not emulate at all exit (here: all of Hyper-V's, KVM_CAP_HYPERV is
  // 0). FILTER: the filter below sends the Hyper-V range to us even on a KVM that emulates
  // Hyper-V itself. The x2APIC MSRs are KVM's (and not filterable).
  const bool filter = ioctl(vm_fd_.get(), KVM_CHECK_EXTENSION, KVM_CAP_X86_MSR_FILTER) > 0;
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_X86_USER_SPACE_MSR;
  cap.args[0] = KVM_MSR_EXIT_REASON_UNKNOWN | (filter ? KVM_MSR_EXIT_REASON_FILTER : 0);
  if (ioctl(vm_fd_.get(), KVM_ENABLE_CAP, &cap) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("KVM_ENABLE_CAP KVM_CAP_X86_USER_SPACE_MSR {:#x}", cap.args[0]),
                    error);
  }
  if (!filter) return absl::OkStatus();
  // One range, every bit 0 = denied (for reads and writes): exits with reason FILTER.
  static_assert((kHypervMsrEnd - kHypervMsrFirst) % 8 == 0);
  std::vector<uint8_t> denied((kHypervMsrEnd - kHypervMsrFirst) / 8, 0);
  kvm_msr_filter msr_filter{};
  msr_filter.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
  msr_filter.ranges[0].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
  msr_filter.ranges[0].nmsrs = kHypervMsrEnd - kHypervMsrFirst;
  msr_filter.ranges[0].base = kHypervMsrFirst;
  msr_filter.ranges[0].bitmap = denied.data();
  if (ioctl(vm_fd_.get(), KVM_X86_SET_MSR_FILTER, &msr_filter) != 0) {
    const int error = errno;
    return KvmError(CodeFor(error), device_path_,
                    fmt::format("KVM_X86_SET_MSR_FILTER denying [{:#x}, {:#x})", kHypervMsrFirst,
                                kHypervMsrEnd),
                    error);
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::hw::kvm
