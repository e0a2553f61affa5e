#include "hw/kvm/testing/raw_round_trip.h"

#include <errno.h>
#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/bench/placement.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "hw/kvm/hyperv.h"
#include "hw/kvm/kvm_vm.h"
#include "hw/kvm/testing/guests/bench_guest.h"
#include "hw/kvm/testing/guests/layout.h"
#include "hw/kvm/testing/guests/tests.h"
#include "hw/kvm/unique_fd.h"

namespace cvmbus::hw::kvm {
namespace {

namespace program = guest::bench_guest;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kConnectionId = 0x3001;

// Just enough SynIC for the guest: GUEST_OS_ID and HYPERCALL (which writes the page).
class BenchHyperv : public HypervExitHandler {
 public:
  explicit BenchHyperv(KvmVm* vm) : vm_(vm) {}
  absl::StatusOr<uint64_t> ReadMsr(uint32_t index) override {
    return absl::NotFoundError(fmt::format("bench: no MSR {:#x}", index));
  }
  absl::Status WriteMsr(uint32_t index, uint64_t value) override {
    if (index == kHvMsrHypercall && (value & kHvHypercallEnable) != 0) {
      return vm_->WriteHypercallPage(value & ~uint64_t{0xfff});
    }
    return index == kHvMsrGuestOsId || index == kHvMsrHypercall
               ? absl::OkStatus()
               : absl::NotFoundError(fmt::format("bench: no MSR {:#x}", index));
  }
  // Only an unbound signal comes here (the "fallback" figure); it succeeds.
  uint64_t Hypercall(uint64_t control, uint64_t input, uint64_t) override {
    if (control == kHvSignalEventFastControl && input == kConnectionId) return kHvStatusSuccess;
    unexpected_hypercalls.fetch_add(1, std::memory_order_relaxed);
    return kHvStatusInvalidHypercallCode;
  }
  std::atomic<uint64_t> unexpected_hypercalls{0};

 private:
  KvmVm* const vm_;
};

// Waits for doorbells on `fd` (a blocking read(2), or spinning on a non-blocking one); returns
// how many arrived (the eventfd's count), 0 on an error.
uint64_t WaitDoorbell(int fd, bool spin) {
  uint64_t count = 0;
  for (;;) {
    const ssize_t got = read(fd, &count, sizeof(count));
    if (got == sizeof(count)) return count;
    if (got < 0 && (errno == EINTR || (spin && errno == EAGAIN))) continue;
    return 0;
  }
}

}  // namespace

// TSC ticks per nanosecond: the guest's TSC runs at the host's rate (PVM runs the guest on the
// same CPU, no TSC scaling); calibrated against steady_clock over 50 ms.
double TscPerNs() {
  const auto t0 = Clock::now();
  const uint64_t c0 = __rdtsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const uint64_t c1 = __rdtsc();
  const auto t1 = Clock::now();
  return static_cast<double>(c1 - c0) / std::chrono::duration<double, std::nano>(t1 - t0).count();
}

// One VM, one run of bench_guest. `bound`: the guest's id has an eventfd (else every signal
// falls back to user space, where the handler answers 0). `host_spins`: how the host waits.
absl::StatusOr<RawResult> RunRawBench(RawMode mode, uint64_t iterations, bool bound,
                                      bool host_spins, double tsc_per_ns) {
  const bool round_trips = mode == RawMode::kRoundTripHlt || mode == RawMode::kRoundTripSpin;
  guestmem::MemoryOptions options;
  options.name = "kvm-bench";
  options.type = guestmem::BackingType::kMemfd;
  options.regions = {{0, TEST_MEMORY_BYTES}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(options);
  if (!backing.ok()) return backing.status();
  const guestmem::GuestMemory memory = guestmem::GuestMemory::Private(*backing);
  if (absl::Status s = memory.Write(program::kLoadGpa, program::Image()); !s.ok()) return s;
  for (const auto& [word, value] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, kConnectionId}, {1, iterations}, {2, static_cast<uint64_t>(mode)}}) {
    if (absl::Status s = memory.WritePlain<uint64_t>(TEST_MAILBOX_GPA + 8 * word, value); !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(*backing);
  if (!vm.ok()) return vm.status();
  UniqueFd doorbell(eventfd(0, EFD_CLOEXEC | (host_spins ? EFD_NONBLOCK : 0)));
  if (!doorbell.valid()) return absl::InternalError("eventfd failed");
  if (bound) {
    if (absl::Status s = (*vm)->BindSignalEvent(kConnectionId, doorbell.get()); !s.ok()) return s;
  }
  absl::StatusOr<int> irq = (*vm)->AddMsiIrqFd(TEST_BENCH_VECTOR);
  if (!irq.ok()) return irq.status();
  BenchHyperv hyperv(vm->get());
  if (absl::Status s = (*vm)->SetHypervExitHandler(&hyperv); !s.ok()) return s;

  // The host thread: for round trips, answer each doorbell with the irqfd; for signals, count
  // them. Only when the guest's id is bound (else there is nothing to wait for).
  std::vector<Clock::time_point> wakes(iterations);  // When the host saw doorbell i.
  bool host_ok = true;
  std::atomic<bool> abort{false};  // Set (then the doorbell rung) to release the host thread.
  std::thread host;
  if (bound && mode != RawMode::kCpuid) {
    host = std::thread([&] {
      bench::PinToCpu(1);
      const uint64_t one = 1;
      for (uint64_t i = 0; i < iterations;) {
        const uint64_t got = WaitDoorbell(doorbell.get(), host_spins);
        if (got == 0) {
          host_ok = false;
          return;
        }
        if (abort.load(std::memory_order_acquire)) return;
        wakes[i] = Clock::now();
        for (uint64_t j = 1; j < got && i + j < iterations; ++j) wakes[i + j] = wakes[i];
        i += got;
        if (round_trips && write(*irq, &one, sizeof(one)) != sizeof(one)) {
          host_ok = false;
          return;
        }
      }
    });
  }
  const auto release_host = [&] {
    if (!host.joinable()) return;
    abort.store(true, std::memory_order_release);
    const uint64_t one = 1;
    (void)!write(doorbell.get(), &one, sizeof(one));
    host.join();
  };
  LongModeEntry entry;
  entry.rip = program::kEntryGpa;
  entry.rsp = TEST_STACK_TOP_GPA;
  entry.tables_gpa = TEST_TABLES_GPA;
  entry.cpuid = HypervCpuidLeaves();
  bench::PinToCpu(0);  // The vCPU thread inherits it.
  const ExitCounts at_start = (*vm)->exit_counts();
  if (absl::Status started = (*vm)->StartVcpu(entry); !started.ok()) {
    release_host();
    return started;
  }
  absl::StatusOr<VcpuExit> exit = (*vm)->WaitForExit(absl::Seconds(600));
  if (!exit.ok()) {
    (void)(*vm)->Stop();
    release_host();
    return exit.status();
  }
  if (host.joinable()) host.join();
  const ExitCounts at_end = (*vm)->exit_counts();
  if (exit->value != TEST_EXIT_OK || !host_ok) {
    return absl::InternalError(
        fmt::format("the guest exited with {:#x}, host thread {}; output: {}", exit->value,
                    host_ok ? "ok" : "failed", (*vm)->debug_output()));
  }
  absl::StatusOr<uint64_t> failures = memory.ReadPlain<uint64_t>(TEST_MAILBOX_GPA + 8 * 8);
  absl::StatusOr<uint64_t> ticks = memory.ReadPlain<uint64_t>(TEST_MAILBOX_GPA + 8 * 9);
  absl::StatusOr<uint64_t> turns = memory.ReadPlain<uint64_t>(TEST_MAILBOX_GPA + 8 * 10);
  if (!failures.ok() || !ticks.ok() || !turns.ok() || *failures != 0 ||
      (bound && hyperv.unexpected_hypercalls.load() != 0)) {
    return absl::InternalError("signals failed or fell back to user space");
  }
  RawResult result;
  result.operations = iterations;
  result.guest_ns = static_cast<double>(*ticks) / tsc_per_ns / static_cast<double>(iterations);
  if (round_trips) {
    result.doorbell_to_interrupt_ns =
        static_cast<double>(*turns) / tsc_per_ns / static_cast<double>(iterations);
  }
  // Exits over the loop: the whole run's, minus the guest's set-up (its GUEST_OS_ID and
  // HYPERCALL writes) and its exit-port write, which bench_guest.c makes once each.
  result.exits = ExitCounts{
      .msr = at_end.msr - at_start.msr - 2,
      .hypercall = at_end.hypercall - at_start.hypercall,
      .signal_fallback = at_end.signal_fallback - at_start.signal_fallback,
      .other = at_end.other - at_start.other - 1,
  };
  if (round_trips && bound) {
    std::vector<double> round_trips_ns;
    for (uint64_t i = 1; i < iterations; ++i) {
      round_trips_ns.push_back(
          std::chrono::duration<double, std::nano>(wakes[i] - wakes[i - 1]).count());
    }
    std::sort(round_trips_ns.begin(), round_trips_ns.end());
    result.median_ns = round_trips_ns[round_trips_ns.size() / 2];
    result.p99_ns = round_trips_ns[round_trips_ns.size() * 99 / 100];
  }
  return result;
}

}  // namespace cvmbus::hw::kvm
