#include "paravisor/kvm/kvm_synic.h"

#include <fmt/format.h>
#include <unistd.h>

#include "base/format.h"
#include "hw/uring/signal.h"

namespace cvmbus::paravisor {

namespace {

// Forwards interrupts to a KvmSynic while it lives.
class WeakSink : public synic::InterruptSink {
 public:
  explicit WeakSink(std::weak_ptr<KvmSynic> target) : target_(std::move(target)) {}
  void Assert(uint32_t vp, uint8_t vector) override {
    if (std::shared_ptr<KvmSynic> target = target_.lock()) target->Assert(vp, vector);
  }

 private:
  std::weak_ptr<KvmSynic> target_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<KvmSynic>> KvmSynic::Create(hw::kvm::KvmVm* vm,
                                                           synic::SynicOptions options) {
  if (vm == nullptr) return absl::InvalidArgumentError("kvm synic: no VM");
  if (options.vp_count != 1) {
    return absl::InvalidArgumentError(
        fmt::format("kvm synic: {} VPs asked, the KVM VM has one vCPU", options.vp_count));
  }
  std::shared_ptr<KvmSynic> binding(new KvmSynic(vm));
  std::weak_ptr<KvmSynic> weak = binding;
  options.on_hypercall_page = [vm](uint64_t gpa) { return vm->WriteHypercallPage(gpa); };
  options.on_event_port = [weak](uint32_t connection_id,
                                 const std::shared_ptr<hw::Signal>& target) {
    if (std::shared_ptr<KvmSynic> self = weak.lock()) self->OnEventPort(connection_id, target);
  };
  absl::StatusOr<std::shared_ptr<synic::Synic>> synic = synic::Synic::Create(std::move(options));
  if (!synic.ok()) return synic.status();
  binding->synic_ = *std::move(synic);
  // The SynIC keeps its sink alive; a sink that owned the binding would make a cycle
  // (binding -> SynIC -> binding) that nothing frees.
  binding->synic_->SetInterruptSink(std::make_shared<WeakSink>(weak));
  if (absl::Status status = vm->SetHypervExitHandler(binding.get()); !status.ok()) {
    return status;
  }
  return binding;
}

std::vector<KvmSynic::Mark> KvmSynic::marks() const {
  MutexLock lock(&mu_);
  return marks_;
}

size_t KvmSynic::bound_event_ports() const {
  MutexLock lock(&mu_);
  return bound_.size();
}

absl::StatusOr<uint64_t> KvmSynic::ReadMsr(uint32_t index) {
  absl::StatusOr<uint64_t> value = synic_->ReadMsr(0, index);
  if (value.ok() && index == synic::kMsrTimeRefCount) {
    MutexLock lock(&mu_);
    if (marks_.size() < 1024) marks_.push_back(Mark{*value, vm_->exit_counts()});
  }
  return value;
}

absl::Status KvmSynic::WriteMsr(uint32_t index, uint64_t value) {
  return synic_->WriteMsr(0, index, value);
}

uint64_t KvmSynic::Hypercall(uint64_t control, uint64_t input, uint64_t output) {
  return synic_->Hypercall(0, control, input, output);
}

void KvmSynic::Assert(uint32_t vp, uint8_t vector) {
  if (vp != 0) return;
  int fd;
  {
    MutexLock lock(&mu_);
    auto it = irq_fds_.find(vector);
    if (it == irq_fds_.end()) {
      absl::StatusOr<int> made = vm_->AddMsiIrqFd(vector);
      if (!made.ok()) return;  // A vector KVM refuses: the SynIC refused it already (< 16).
      it = irq_fds_.emplace(vector, *made).first;
    }
    fd = it->second;
  }
  const uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}

void KvmSynic::OnEventPort(uint32_t connection_id, const std::shared_ptr<hw::Signal>& target) {
  MutexLock lock(&mu_);
  if (bound_.erase(connection_id) > 0) (void)vm_->UnbindSignalEvent(connection_id);
  // Only an eventfd can be signalled by KVM itself; any other target (a latch, a callback) is
  // raised by the SynIC from the exit.
  auto* eventfd = dynamic_cast<hw::EventFdSignal*>(target.get());
  if (eventfd == nullptr) return;
  if (vm_->BindSignalEvent(connection_id, eventfd->fd()).ok()) bound_.insert(connection_id);
}

}  // namespace cvmbus::paravisor
