#include "tests/personalities/personality_vm.h"

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <future>

#include "base/format.h"
#include "guestmem/ring_memory.h"

namespace cvmbus::paravisor::testing {

absl::StatusOr<std::unique_ptr<PersonalityVm>> PersonalityVm::Create(PersonalityVmOptions options) {
  std::unique_ptr<PersonalityVm> vm(new PersonalityVm());
  guestmem::MemoryOptions memory;
  memory.name = "personality-vm";
  memory.regions = {{0, kVmMemoryBytes}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory);
  if (!backing.ok()) return backing.status();
  vm->backing_ = *backing;
  if (options.isolated) {
    absl::StatusOr<std::unique_ptr<hw::isolation::SnpModel>> snp =
        hw::isolation::SnpModel::Create(vm->backing_);
    if (!snp.ok()) return snp.status();
    vm->snp_ = *std::move(snp);
  }
  const uint64_t top = kVmMemoryBytes;
  vm->synic_pages_ = GuestSynicPages{.simp = top - 4 * 4096,
                                     .siefp = top - 3 * 4096,
                                     .hypercall = top - 2 * 4096,
                                     .input = top - 4096};
  // The paravisor's SynIC reaches the guest's SynIC pages through the private view on an
  // isolated VM (the guest makes them private first).
  if (absl::Status status = vm->SetPagesPrivate(vm->synic_pages_.simp / 4096, 4, true);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<std::shared_ptr<synic::Synic>> synic = synic::Synic::Create(
      {.name = "paravisor", .memory = vm->View(vm->isolated()), .vp_count = 2, .trusted = true});
  if (!synic.ok()) return synic.status();
  vm->synic_ = *std::move(synic);

  std::promise<absl::Status> started;
  PersonalityVm* raw = vm.get();
  vm->thread_ = std::thread([raw, &started, max_version = options.max_version] {
    absl::StatusOr<std::unique_ptr<hw::EventLoop>> loop = hw::EventLoop::Create();
    if (!loop.ok()) {
      started.set_value(loop.status());
      return;
    }
    raw->loop_ = *std::move(loop);
    ServerOptions server_options;
    server_options.untrusted_memory = guestmem::GuestMemory::Untrusted(raw->backing_);
    if (raw->isolated()) {
      server_options.private_memory = guestmem::GuestMemory::Private(raw->backing_);
    }
    server_options.max_version = max_version;
    server_options.log = [raw](const std::string& line) {
      MutexLock lock(&raw->log_mu_);
      raw->log_.push_back(line);
    };
    raw->server_ = std::make_unique<VmbusServer>(raw->loop_.get(), raw->synic_.get(),
                                                 std::move(server_options));
    raw->bus_ = raw->server_->Bus();
    started.set_value(absl::OkStatus());
    (void)raw->loop_->Run();
    raw->bus_.reset();
    raw->server_.reset();
  });
  if (absl::Status status = started.get_future().get(); !status.ok()) {
    vm->thread_.join();
    return status;
  }
  return vm;
}

PersonalityVm::~PersonalityVm() {
  if (loop_) loop_->Stop();
  if (thread_.joinable()) thread_.join();
  loop_.reset();  // After the join: no thread can be in Stop() or Post() any more.
}

void PersonalityVm::OnServer(const std::function<void()>& fn) {
  std::promise<void> done;
  loop_->Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

bool PersonalityVm::WaitUntil(const std::function<bool()>& condition,
                              std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    bool met = false;
    OnServer([&] { met = condition(); });
    if (met) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

PersonalityGuestOptions PersonalityVm::KernelOptions() const {
  PersonalityGuestOptions options;
  options.client.synic = synic_;
  options.client.memory = View(isolated());
  options.client.pages = synic_pages_;
  // Linux makes its monitor pages host-visible on a CVM: shared memory.
  options.monitor_pages_gpa = kMonitorPagesGpa;
  options.monitor_memory = View(false);
  return options;
}

absl::StatusOr<std::unique_ptr<PersonalityGuest>> PersonalityVm::StartKernel(
    GuestPersonality personality) {
  return PersonalityGuest::Create(std::move(personality), KernelOptions());
}

absl::Status PersonalityVm::SetPagesPrivate(uint64_t first_gpn, uint64_t count, bool make_private) {
  if (snp_ == nullptr) return absl::OkStatus();
  for (uint64_t gpn = first_gpn; gpn < first_gpn + count; ++gpn) {
    if (private_gpns_.contains(gpn) == make_private) continue;
    absl::Status status = make_private ? snp_->ConvertToPrivate(gpn * 4096, 4096)
                                       : snp_->ConvertToShared(gpn * 4096, 4096);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          fmt::format("making GPN {:#x} {}: {}", gpn,
                                      make_private ? "private" : "shared", status.message()));
    }
    if (make_private) {
      private_gpns_.insert(gpn);
    } else {
      private_gpns_.erase(gpn);
    }
  }
  return absl::OkStatus();
}

guestmem::GuestMemory PersonalityVm::View(bool private_view) const {
  return private_view ? guestmem::GuestMemory::Private(backing_)
                      : guestmem::GuestMemory::Untrusted(backing_);
}

std::vector<std::string> PersonalityVm::TakeLog() {
  MutexLock lock(&log_mu_);
  std::vector<std::string> out;
  out.swap(log_);
  return out;
}

// --- GuestRing ---

absl::StatusOr<std::unique_ptr<GuestRing>> GuestRing::Open(PersonalityVm* vm,
                                                           PersonalityGuest* guest,
                                                           const protocol::OfferChannel& offer,
                                                           uint64_t first_gpn, uint32_t ring_pages,
                                                           uint32_t target_vp) {
  const uint32_t relid = offer.child_relid;
  const uint64_t pages = 2 * uint64_t{ring_pages};
  // Linux puts the ring in private memory exactly when the offer says it must (is_co_ring_
  // buffer); otherwise a CVM guest decrypts (shares) its ring pages.
  const bool confidential =
      vm->isolated() && (offer.channel_flags & protocol::kOfferConfidentialRingBuffer) != 0;
  if (absl::Status status = vm->SetPagesPrivate(first_gpn, pages, confidential); !status.ok()) {
    return status;
  }
  const guestmem::GuestMemory view = vm->View(confidential);
  if (absl::Status status = view.Zero(first_gpn * 4096, pages * 4096); !status.ok()) {
    return status;
  }
  std::vector<uint64_t> gpns;
  for (uint64_t i = 0; i < pages; ++i) gpns.push_back(first_gpn + i);
  absl::StatusOr<uint32_t> gpadl = guest->CreateGpadl(relid, gpns);
  if (!gpadl.ok()) return gpadl.status();
  auto out_memory = guestmem::RingMemory::Create(view, absl::MakeSpan(gpns).subspan(0, ring_pages));
  if (!out_memory.ok()) return out_memory.status();
  auto in_memory = guestmem::RingMemory::Create(view, absl::MakeSpan(gpns).subspan(ring_pages));
  if (!in_memory.ok()) return in_memory.status();
  auto out = ring::OutgoingRing::Create(*std::move(out_memory));
  if (!out.ok()) return out.status();
  auto in = ring::IncomingRing::Create(*std::move(in_memory));
  if (!in.ok()) return in.status();
  (void)guest->client()->ChannelEventFd(relid);  // Listening before the host can signal.
  if (absl::Status opened = guest->Open(relid, *gpadl, ring_pages, target_vp); !opened.ok()) {
    return opened;
  }
  return std::unique_ptr<GuestRing>(
      new GuestRing(guest, relid, *gpadl, confidential, *std::move(out), *std::move(in)));
}

absl::Status GuestRing::Echo(uint64_t first_id, int count, std::chrono::milliseconds timeout) {
  const std::vector<uint8_t> payload = {1, 2, 3, 4};
  ring::PacketBuffer buffer;
  for (uint64_t id = first_id; id < first_id + count; ++id) {
    absl::StatusOr<bool> signal = out_.Write(
        {.flags = ring::kFlagCompletionRequested, .transaction_id = id, .payload = payload});
    if (!signal.ok()) return signal.status();
    if (*signal) {
      if (absl::Status status = guest_->client()->SignalHost(relid_); !status.ok()) return status;
    }
    if (absl::Status status = Receive(&buffer, timeout); !status.ok()) {
      return absl::Status(status.code(), fmt::format("channel {}: the echo of packet {}: {}",
                                                     relid_, id, status.message()));
    }
    if (buffer.packet().transaction_id != id) {
      return absl::DataLossError(fmt::format("channel {}: packet {} came back as {}", relid_, id,
                                             buffer.packet().transaction_id));
    }
  }
  return absl::OkStatus();
}

absl::Status GuestRing::Receive(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout) {
  const int fd = guest_->client()->ChannelEventFd(relid_);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    absl::StatusOr<bool> got = in_.Read(buffer);
    if (!got.ok()) return got.status();
    if (*got) {
      if (in_.Commit()) return guest_->client()->SignalHost(relid_);
      return absl::OkStatus();
    }
    absl::StatusOr<bool> pending = in_.Unmask();  // Re-check after unmasking: no lost wake-up.
    if (!pending.ok()) return pending.status();
    if (*pending) continue;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return absl::DeadlineExceededError(
          fmt::format("no packet and no interrupt within {} ms", timeout.count()));
    }
    // Only the channel's interrupt wakes the guest: a host that never signals is a failure.
    pollfd wait{fd, POLLIN, 0};
    poll(&wait, 1, static_cast<int>(left.count()));
    uint64_t count;
    (void)!read(fd, &count, sizeof(count));
  }
}

absl::Status GuestRing::Close() {
  if (absl::Status status = guest_->Close(relid_); !status.ok()) return status;
  return guest_->TeardownGpadl(relid_, gpadl_id_);
}

}  // namespace cvmbus::paravisor::testing
