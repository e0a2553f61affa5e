#include "hw/kvm/testing/long_mode_guest.h"

#include <fmt/format.h>

#include <utility>

#include "hw/kvm/testing/guests/layout.h"

namespace cvmbus::hw::kvm::testing {

uint64_t LongModeGuest::Mailbox(uint32_t i) const {
  absl::StatusOr<uint64_t> word = memory.ReadPlain<uint64_t>(TEST_MAILBOX_GPA + 8 * uint64_t{i});
  return word.ok() ? *word : ~uint64_t{0};
}

absl::Status LongModeGuest::SetMailbox(uint32_t i, uint64_t value) const {
  return memory.WritePlain<uint64_t>(TEST_MAILBOX_GPA + 8 * uint64_t{i}, value);
}

absl::StatusOr<LongModeGuest> MakeLongModeGuest(const GuestProgram& program, KvmOptions options) {
  if (program.load_gpa != TEST_LOAD_GPA || program.entry_gpa < program.load_gpa ||
      program.end_gpa > TEST_STACK_TOP_GPA - 0x10000 ||
      program.load_gpa + program.image.size() > program.end_gpa) {
    return absl::InvalidArgumentError(
        fmt::format("guest program [{:#x}, {:#x}) entry {:#x} does not fit layout.h's machine",
                    program.load_gpa, program.end_gpa, program.entry_gpa));
  }
  guestmem::MemoryOptions memory_options;
  memory_options.name = "kvm-long-mode-test";
  memory_options.type = guestmem::BackingType::kMemfd;
  memory_options.regions = {{0, TEST_MEMORY_BYTES}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory_options);
  if (!backing.ok()) return backing.status();
  LongModeGuest guest;
  guest.backing = *std::move(backing);
  guest.memory = guestmem::GuestMemory::Private(guest.backing);
  if (absl::Status status = guest.memory.Write(program.load_gpa, program.image); !status.ok()) {
    return status;
  }
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(guest.backing, std::move(options));
  if (!vm.ok()) return vm.status();
  guest.vm = *std::move(vm);
  if (TEST_TABLES_GPA + guest.vm->LongModeTablesBytes() > TEST_HYPERCALL_PAGE_GPA) {
    return absl::InternalError("layout.h: the long-mode tables overlap the hypercall page");
  }
  return guest;
}

LongModeEntry TestEntry(const GuestProgram& program) {
  LongModeEntry entry;
  entry.rip = program.entry_gpa;
  entry.rsp = TEST_STACK_TOP_GPA;
  entry.tables_gpa = TEST_TABLES_GPA;
  entry.cpuid = HypervCpuidLeaves();
  return entry;
}

void FakeHyperv::SetMsr(uint32_t index, uint64_t value) {
  MutexLock lock(&mu_);
  msrs_[index] = value;
}

void FakeHyperv::RefuseMsr(uint32_t index) {
  MutexLock lock(&mu_);
  refused_.insert(index);
}

void FakeHyperv::SetResponder(Responder responder) {
  MutexLock lock(&mu_);
  responder_ = std::move(responder);
}

std::vector<FakeHyperv::MsrAccess> FakeHyperv::msr_log() const {
  MutexLock lock(&mu_);
  return msr_log_;
}

std::vector<FakeHyperv::Call> FakeHyperv::calls() const {
  MutexLock lock(&mu_);
  return calls_;
}

absl::StatusOr<uint64_t> FakeHyperv::ReadMsr(uint32_t index) {
  MutexLock lock(&mu_);
  auto it = msrs_.find(index);
  if (refused_.count(index) != 0 || it == msrs_.end()) {
    msr_log_.push_back(MsrAccess{.write = false, .index = index, .value = 0, .ok = false});
    return absl::NotFoundError(fmt::format("fake Hyper-V: no MSR {:#x}", index));
  }
  msr_log_.push_back(MsrAccess{.write = false, .index = index, .value = it->second, .ok = true});
  return it->second;
}

absl::Status FakeHyperv::WriteMsr(uint32_t index, uint64_t value) {
  MutexLock lock(&mu_);
  if (refused_.count(index) != 0) {
    msr_log_.push_back(MsrAccess{.write = true, .index = index, .value = value, .ok = false});
    return absl::PermissionDeniedError(fmt::format("fake Hyper-V: MSR {:#x} refused", index));
  }
  absl::Status status;
  if (index == kHvMsrHypercall && (value & kHvHypercallEnable) != 0 && vm_ != nullptr) {
    status = vm_->WriteHypercallPage(value & ~uint64_t{0xfff});
  }
  msr_log_.push_back(MsrAccess{.write = true, .index = index, .value = value, .ok = status.ok()});
  if (status.ok()) msrs_[index] = value;
  return status;
}

uint64_t FakeHyperv::Hypercall(uint64_t control, uint64_t input, uint64_t output) {
  Responder responder;
  {
    MutexLock lock(&mu_);
    calls_.push_back(Call{.control = control, .input = input, .output = output});
    responder = responder_;
  }
  // Outside mu_: a responder may use the KvmVm, or this fake's accessors.
  return responder ? responder(Call{.control = control, .input = input, .output = output})
                   : kHvStatusInvalidHypercallCode;
}

}  // namespace cvmbus::hw::kvm::testing
