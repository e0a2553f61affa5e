// kvm_vmbus_bench: the VMBus request/answer round trip of a real KVM vCPU through the
// paravisor's SynIC, server and echo device, and the VM exits it costs. A benchmark program
// (it prints figures), not a test.
//
// One round trip: the guest writes a request into its ring and, on the empty -> non-empty
// edge, rings the doorbell (fast HvSignalEvent through the hypercall page: an ioeventfd bound
// to the echo device's eventfd, no exit); the device's io_uring loop wakes, reads the packet,
// writes the completion and raises the channel's event (the SynIC sets the SIEFP flag and
// writes the SINT's MSI irqfd); the guest, halted in STI; HLT, takes the interrupt, EOIs its
// x2APIC, and checks the answer byte for byte. Timed between two guest reads of
// TIME_REF_COUNT (100 ns units); the exits between them are counted by kind.
//
//   bazel run -c opt //tests/kvm_vmbus:kvm_vmbus_bench -- --iterations=20000 --reps=3
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tests/kvm_vmbus/kvm_vmbus_machine.h"

namespace cvmbus::tests {
namespace {

struct Flags {
  uint32_t iterations = 20000;
  uint32_t reps = 3;
  uint32_t payload = 64;
};

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&](const char* name) -> const char* {
      const std::string prefix = std::string("--") + name + "=";
      return arg.rfind(prefix, 0) == 0 ? arg.c_str() + prefix.size() : nullptr;
    };
    if (const char* v = value("iterations")) {
      flags.iterations = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else if (const char* v = value("reps")) {
      flags.reps = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else if (const char* v = value("payload")) {
      flags.payload = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
    } else {
      std::fprintf(stderr, "unknown flag %s (--iterations=N --reps=N --payload=BYTES)\n",
                   arg.c_str());
      std::exit(2);
    }
  }
  return flags;
}

int Main(int argc, char** argv) {
  const Flags flags = ParseFlags(argc, argv);
  std::printf("VMBus round trip, KVM vCPU guest <-> paravisor SynIC + server + echo device\n");
  std::printf("%u timed round trips per run, %u-byte requests\n\n", flags.iterations,
              flags.payload);
  std::printf("%-13s %10s %12s %10s %10s %10s %10s\n", "mode", "us/rt", "exits/rt", "msr",
              "hypercall", "fallback", "signals");
  for (uint32_t rep = 0; rep < flags.reps; ++rep) {
    for (const bool confidential : {false, true}) {
      auto machine = KvmVmbusMachine::Create({.confidential = confidential,
                                              .warmup = 100,
                                              .iterations = flags.iterations,
                                              .payload_bytes = flags.payload});
      if (!machine.ok()) {
        std::printf("%s\n", machine.status().ToString().c_str());
        return 1;
      }
      absl::StatusOr<KvmVmbusRun> run = (*machine)->Run(absl::Seconds(600));
      if (!run.ok() || run->exit_code != VMBUS_GUEST_OK || run->marks.size() != 2) {
        std::printf("run failed: %s\n%s\n",
                    run.ok() ? fmt::format("exit {}", run->exit_code).c_str()
                             : run.status().ToString().c_str(),
                    run.ok() ? run->debug_output.c_str() : "");
        return 1;
      }
      const auto& [start, end] = std::pair{run->marks[0], run->marks[1]};
      const double us = (end.time_ref_100ns - start.time_ref_100ns) / 10.0 / flags.iterations;
      // The second TIME_REF_COUNT read is itself one MSR exit: not the round trips'.
      const double exits = (end.exits.total() - start.exits.total() - 1.0) / flags.iterations;
      std::printf("%-13s %10.2f %12.4f %10lu %10lu %10lu %10lu\n",
                  confidential ? "6.0 SNP" : "5.3 plain", us, exits,
                  end.exits.msr - start.exits.msr - 1, end.exits.hypercall - start.exits.hypercall,
                  end.exits.signal_fallback - start.exits.signal_fallback, run->result.signals);
    }
  }
  return 0;
}

}  // namespace
}  // namespace cvmbus::tests

int main(int argc, char** argv) { return cvmbus::tests::Main(argc, argv); }
