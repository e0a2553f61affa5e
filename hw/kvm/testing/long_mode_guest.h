// Host-side helpers for the long-mode tests: a VM with one of //hw/kvm/testing/guests's
// programs loaded on guests/layout.h's machine, and FakeHyperv, a scriptable HypervExitHandler
// that records what the guest asked for.
#ifndef CVMBUS_HW_KVM_TESTING_LONG_MODE_GUEST_H_
#define CVMBUS_HW_KVM_TESTING_LONG_MODE_GUEST_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/kvm_vm.h"

namespace cvmbus::hw::kvm::testing {

// A program made by guest_program(): CVMBUS_GUEST_PROGRAM(guest::boot_guest).
struct GuestProgram {
  absl::Span<const uint8_t> image;
  uint64_t load_gpa = 0;
  uint64_t entry_gpa = 0;
  uint64_t end_gpa = 0;
};
#define CVMBUS_GUEST_PROGRAM(ns) \
  (::cvmbus::hw::kvm::testing::GuestProgram{ns::Image(), ns::kLoadGpa, ns::kEntryGpa, ns::kEndGpa})

struct LongModeGuest {
  std::shared_ptr<guestmem::MemoryBacking> backing;
  guestmem::GuestMemory memory;  // The private view of `backing`.
  std::unique_ptr<KvmVm> vm;

  // Mailbox word `i` (layout.h), or ~0 if unreadable.
  uint64_t Mailbox(uint32_t i) const;
  absl::Status SetMailbox(uint32_t i, uint64_t value) const;
};

// A memfd backing of TEST_MEMORY_BYTES with `program` loaded (checked to lie between the
// tables and the stack), and a KvmVm over it (not started).
absl::StatusOr<LongModeGuest> MakeLongModeGuest(const GuestProgram& program,
                                                KvmOptions options = {});

// The entry every test guest uses: rip = its entry, rsp = TEST_STACK_TOP_GPA, the tables at
// TEST_TABLES_GPA, CPUID = HypervCpuidLeaves().
LongModeEntry TestEntry(const GuestProgram& program);

// A HypervExitHandler whose MSRs are a table: a read of an MSR in the table returns its value,
// one not in it (or refused) fails; a write succeeds unless refused, and stores the value. A
// write of HYPERCALL with the enable bit writes the hypercall page (KvmVm::WriteHypercallPage)
// at the GPA it names. Hypercalls go to a responder (default: HV_STATUS_INVALID_HYPERCALL_CODE).
// Every access is logged. Called on the vCPU thread; the accessors may be called from any.
class FakeHyperv : public HypervExitHandler {
 public:
  struct MsrAccess {
    bool write = false;
    uint32_t index = 0;
    uint64_t value = 0;  // Written, or returned.
    bool ok = false;
    bool operator==(const MsrAccess&) const = default;
  };
  struct Call {
    uint64_t control = 0;
    uint64_t input = 0;
    uint64_t output = 0;
    bool operator==(const Call&) const = default;
  };
  using Responder = std::function<uint64_t(const Call&)>;

  // `vm` (not owned) must outlive this; null: HYPERCALL writes only store the value.
  explicit FakeHyperv(KvmVm* vm) : vm_(vm) {}

  void SetMsr(uint32_t index, uint64_t value);
  void RefuseMsr(uint32_t index);
  void SetResponder(Responder responder);

  std::vector<MsrAccess> msr_log() const;
  std::vector<Call> calls() const;

  absl::StatusOr<uint64_t> ReadMsr(uint32_t index) override;
  absl::Status WriteMsr(uint32_t index, uint64_t value) override;
  uint64_t Hypercall(uint64_t control, uint64_t input, uint64_t output) override;

 private:
  KvmVm* const vm_;
  mutable Mutex mu_;
  std::map<uint32_t, uint64_t> msrs_ ABSL_GUARDED_BY(mu_);
  std::set<uint32_t> refused_ ABSL_GUARDED_BY(mu_);
  Responder responder_ ABSL_GUARDED_BY(mu_);
  std::vector<MsrAccess> msr_log_ ABSL_GUARDED_BY(mu_);
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cvmbus::hw::kvm::testing

#endif  // CVMBUS_HW_KVM_TESTING_LONG_MODE_GUEST_H_
