// storvsp_bench: reads through the storvsp channel against fio on the same file, in one run. A
// benchmark program (it prints figures), not a test.
//
// Our row: an emulated SEV-SNP VM, VMBus 6.0 with confidential channels; a guest thread runs
// the storvsc guest (paravisor/testing/storvsc_guest.h: Linux's initialization, then one GPA-direct
// EXECUTE_SRB with a READ(16) per request, the buffer in private guest pages) and keeps `qd`
// reads outstanding on the primary channel; the device's io_uring loop thread (the server's)
// runs each as one O_DIRECT readv straight into the guest's pages. The guest sleeps in poll(2)
// on its channel's eventfd between completions. Two device rows: "sleeping", the device loop
// sleeps in io_uring_enter whenever it has nothing to do (two thread wake-ups per request that
// fio, completing in its own thread, does not pay); "polling", the loop spins up to 50 us for
// completions before it sleeps (EventLoop::Options::busy_poll, as QEMU's iothread
// poll-max-ns), which spends the device thread's CPU to save its wake-ups.
// fio's row: Debian's fio, ioengine=io_uring with registered files and fixed buffers, direct=1,
// one job at the same iodepth and block size on the same file. Sizes: 4 KiB random reads, and
// 1 MiB sequential reads (the device offers max_transfer_bytes = 1 MiB, so Linux would send
// these whole).
//
// Run it on an otherwise idle machine:
//   bazel run -c opt //tests/storvsp:storvsp_bench -- --seconds=3 [--rounds=N] [--file=PATH]
// Each row runs its three jobs in turn `rounds` times (default 3) and prints each job's median,
// so a backing whose speed drifts over the run (a throttled cloud disk) skews all three alike.
// --file may name a block device (at least 256 MiB, read only here), for instance a loop device
// over a file in /dev/shm, whose speed shows the channel's own cost.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "hw/storage/file_backing.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/protocol/header.h"
#include "paravisor/testing/storvsc_guest.h"
#include "paravisor/vm/virtual_machine.h"

ABSL_FLAG(double, seconds, 3, "Seconds each job runs, per round.");
ABSL_FLAG(int64_t, rounds, 3,
          "Rounds of each row's three jobs, run in turn; each job's median is printed (1 to 99).");
ABSL_FLAG(std::string, file, "",
          "The file or block device to read (at least 256 MiB; read only); by default "
          "/var/tmp/storvsp_bench.img, written first.");

namespace cvmbus::paravisor::storvsp {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kFileBytes = 256ull << 20;
constexpr uint32_t kMaxTransfer = 1 << 20;
constexpr uint64_t kBufferGpn = 0x1000;  // 32 slots of 256 pages (1 MiB) each, private.
constexpr uint32_t kSlotPages = kMaxTransfer / 4096;
constexpr uint32_t kMaxDepth = 32;
// The polling rows' budget: long enough to span a guest's turnaround between a completion and
// its next request at queue depth 1, and a 4 KiB read's device time.
constexpr std::chrono::microseconds kDevicePoll{50};

struct Row {
  double iops = 0;
  double mib_per_s = 0;
};

// The row whose IOPS is the median of `rows` (nullopt if empty).
std::optional<Row> Median(std::vector<Row> rows) {
  if (rows.empty()) return std::nullopt;
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.iops < b.iops; });
  return rows[rows.size() / 2];
}

class Bench {
 public:
  absl::Status Setup(const std::string& path) {
    auto vm = vm::VirtualMachine::Create({.memory_bytes = 128ull << 20});
    if (!vm.ok()) return vm.status();
    vm_ = *std::move(vm);
    auto file = hw::FileBacking::Open(path, {.read_only = true, .direct = true});
    if (!file.ok()) return file.status();
    if (!(*file)->direct()) return absl::FailedPreconditionError("O_DIRECT refused here");
    backend_ = std::make_unique<FileBlockBackend>(vm_->server_loop(), *std::move(file));
    absl::Status started;
    vm_->OnServer([&] {
      auto device = StorvspDevice::Create(vm_->server_loop(), &vm_->bus(),
                                          {.instance_id = Guid{0xbe7c, 0, 0, {}},
                                           .disk = {.sectors = kFileBytes / 512,
                                                    .read_only = true,
                                                    .max_transfer_bytes = kMaxTransfer},
                                           .allow_confidential_external_memory = true},
                                          backend_.get());
      if (!device.ok()) {
        started = device.status();
        return;
      }
      device_ = *std::move(device);
      started = device_->Start();
    });
    if (!started.ok()) return started;
    auto version =
        vm_->guest().Connect(protocol::kVersionWin10V6_0, protocol::kFeatureConfidentialChannels);
    if (!version.ok()) return version.status();
    auto offers = vm_->guest().RequestOffers();
    if (!offers.ok() || offers->size() != 1) return absl::InternalError("no storvsp offer");
    if (absl::Status s = vm_->MakePrivate(kBufferGpn * 4096, kMaxDepth * kSlotPages * 4096ull);
        !s.ok()) {
      return s;
    }
    auto guest = StorvscGuest::Attach(vm_.get(), {.relid = (*offers)[0].child_relid});
    if (!guest.ok()) return guest.status();
    guest_ = *std::move(guest);
    if (guest_->properties().max_transfer_bytes < kMaxTransfer) {
      return absl::InternalError("the device offered less than 1 MiB per transfer");
    }
    for (uint32_t slot = 0; slot < kMaxDepth; ++slot) {
      GuestBuffer& buffer = buffers_[slot];
      for (uint32_t i = 0; i < kSlotPages; ++i) {
        buffer.gpns.push_back(kBufferGpn + slot * kSlotPages + i);
      }
    }
    return absl::OkStatus();
  }

  // How the device's reads went to the kernel, and why not as fixed buffers if they did not.
  std::string FileIoSummary() {
    hw::EventLoop::FileIoStats stats;
    vm_->OnServer([&] { stats = vm_->server_loop()->file_io_stats(); });
    std::string out = fmt::format("{} as READ_FIXED into registered guest memory, {} as readv",
                                  stats.fixed, stats.vector);
    if (!vm_->fixed_buffer_error().empty()) out += " (" + vm_->fixed_buffer_error() + ")";
    return out;
  }

  // The device loop's spin-then-sleep budget (EventLoop::Options::busy_poll).
  void SetDevicePolling(std::chrono::nanoseconds budget) {
    vm_->OnServer([&] { vm_->server_loop()->SetBusyPoll(budget); });
  }

  ~Bench() {
    guest_.reset();
    if (vm_) vm_->OnServer([&] { device_.reset(); });
    vm_.reset();
  }

  // `depth` reads of `blocks` outstanding for `seconds`; random or sequential LBAs.
  absl::StatusOr<Row> Run(uint32_t blocks, uint32_t depth, bool random, double seconds) {
    std::mt19937_64 rng(42);
    const uint64_t last = kFileBytes / 512 - blocks;
    uint64_t next_lba = 0;
    const auto lba = [&] {
      if (random) return (rng() % (last / blocks)) * blocks;
      const uint64_t at = next_lba;
      next_lba = next_lba + blocks > last ? 0 : next_lba + blocks;
      return at;
    };
    uint64_t done = 0;
    uint32_t outstanding = 0;
    const auto submit = [&](uint32_t slot) -> absl::Status {
      ++outstanding;
      return guest_->Submit(0, slot + 1, Read16Cdb(lba(), blocks), /*data_in=*/true, blocks * 512,
                            buffers_[slot]);
    };
    for (uint32_t slot = 0; slot < depth; ++slot) {
      if (absl::Status s = submit(slot); !s.ok()) return s;
    }
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    uint64_t transaction_id = 0;
    while (true) {
      absl::StatusOr<StorvscCompletion> completion = guest_->Wait(0, &transaction_id);
      if (!completion.ok()) return completion.status();
      --outstanding;
      if (completion->srb_status != kSrbSuccess || transaction_id == 0 || transaction_id > depth) {
        return absl::InternalError("a read failed");
      }
      ++done;
      if (Clock::now() >= deadline) break;
      if (absl::Status s = submit(static_cast<uint32_t>(transaction_id - 1)); !s.ok()) return s;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    while (outstanding > 0) {  // Drain before the next row.
      absl::StatusOr<StorvscCompletion> completion = guest_->Wait(0, &transaction_id);
      if (!completion.ok()) return completion.status();
      --outstanding;
    }
    return Row{done / elapsed, done * blocks * 512.0 / elapsed / (1 << 20)};
  }

 private:
  std::unique_ptr<vm::VirtualMachine> vm_;
  std::unique_ptr<FileBlockBackend> backend_;
  std::unique_ptr<StorvspDevice> device_;
  std::unique_ptr<StorvscGuest> guest_;
  GuestBuffer buffers_[kMaxDepth];
};

// fio's IOPS for the same job, from its JSON output ("read" : { ... "iops" : N ...}).
absl::StatusOr<Row> Fio(const std::string& path, uint32_t bytes, uint32_t depth, bool random,
                        double seconds) {
  const std::string command = fmt::format(
      "fio --name=peer --filename={} --readonly --ioengine=io_uring --registerfiles --fixedbufs "
      "--direct=1 --rw={} --bs={} "
      "--iodepth={} --runtime={} --time_based --output-format=json 2>/dev/null",
      path, random ? "randread" : "read", bytes, depth, seconds);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::UnavailableError("fio did not start");
  std::string output;
  char chunk[4096];
  size_t got;
  while ((got = fread(chunk, 1, sizeof(chunk), pipe)) > 0) output.append(chunk, got);
  if (pclose(pipe) != 0) return absl::UnavailableError("fio failed (is it installed?)");
  const size_t read = output.find("\"read\" :");
  const size_t iops = read == std::string::npos ? read : output.find("\"iops\" :", read);
  if (iops == std::string::npos) return absl::InternalError("no read iops in fio's output");
  const double value = std::strtod(output.c_str() + iops + 8, nullptr);
  return Row{value, value * bytes / (1 << 20)};
}

int Main() {
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int64_t rounds_flag = absl::GetFlag(FLAGS_rounds);
  if (rounds_flag < 1 || rounds_flag > 99) {
    std::fprintf(stderr, "storvsp_bench: --rounds=%lld needs a whole number from 1 to 99\n",
                 static_cast<long long>(rounds_flag));
    return 2;
  }
  const long rounds = static_cast<long>(rounds_flag);
  std::string path = absl::GetFlag(FLAGS_file);
  if (path.empty()) {
    path = "/var/tmp/storvsp_bench.img";
    const int fd = open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    std::vector<uint8_t> block(1 << 20);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<uint8_t>(i * 31);
    for (uint64_t at = 0; fd >= 0 && at < kFileBytes; at += block.size()) {
      if (pwrite(fd, block.data(), block.size(), at) != static_cast<ssize_t>(block.size())) break;
    }
    if (fd >= 0) {
      fsync(fd);
      close(fd);
    }
  }
  Bench bench;
  if (absl::Status s = bench.Setup(path); !s.ok()) {
    std::printf("storvsp_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf(
      "storvsp_bench: %s (%llu MiB), %.1f s per job, medians of %ld interleaved rounds, "
      "O_DIRECT both\n",
      path.c_str(), static_cast<unsigned long long>(kFileBytes >> 20), seconds, rounds);
  std::printf("%-18s %3s %11s %11s %11s %7s %7s  (IOPS; MiB/s for 1 MiB)\n", "job", "qd",
              "sleeping", "polling", "fio", "sleep/f", "poll/f");
  struct Job {
    const char* name;
    uint32_t bytes;
    bool random;
  };
  int status = 0;
  for (const Job job :
       {Job{"4 KiB random read", 4096, true}, Job{"1 MiB seq read", kMaxTransfer, false}}) {
    for (const uint32_t depth : {1u, 32u}) {
      std::vector<Row> sleeping_rounds, polling_rounds, fio_rounds;
      absl::Status failed;
      for (long round = 0; round < rounds && failed.ok(); ++round) {
        bench.SetDevicePolling(std::chrono::nanoseconds(0));
        absl::StatusOr<Row> sleeping = bench.Run(job.bytes / 512, depth, job.random, seconds);
        bench.SetDevicePolling(kDevicePoll);
        absl::StatusOr<Row> polling = bench.Run(job.bytes / 512, depth, job.random, seconds);
        bench.SetDevicePolling(std::chrono::nanoseconds(0));
        absl::StatusOr<Row> fio = Fio(path, job.bytes, depth, job.random, seconds);
        for (const absl::Status& s : {sleeping.status(), polling.status(), fio.status()}) {
          if (failed.ok()) failed = s;
        }
        if (!failed.ok()) break;
        sleeping_rounds.push_back(*sleeping);
        polling_rounds.push_back(*polling);
        fio_rounds.push_back(*fio);
      }
      if (!failed.ok()) {
        std::printf("%-18s %3u failed: %s\n", job.name, depth, failed.ToString().c_str());
        status = 1;
        continue;
      }
      const std::optional<Row> sleeping = Median(sleeping_rounds);
      const std::optional<Row> polling = Median(polling_rounds);
      const std::optional<Row> fio = Median(fio_rounds);
      const bool iops = job.bytes == 4096;
      const auto figure = [&](const Row& row) { return iops ? row.iops : row.mib_per_s; };
      std::printf("%-18s %3u %11.0f %11.0f %11.0f %7.2f %7.2f\n", job.name, depth,
                  figure(*sleeping), figure(*polling), figure(*fio),
                  figure(*sleeping) / figure(*fio), figure(*polling) / figure(*fio));
      std::fflush(stdout);
    }
  }
  std::printf("device reads: %s\n", bench.FileIoSummary().c_str());
  return status;
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "storvsp_bench [--seconds=S] [--rounds=N] [--file=PATH]: reads through the storvsp "
      "channel against fio on the same file");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr,
                 "storvsp_bench: unexpected argument '%s' (--seconds=S --rounds=N --file=PATH)\n",
                 rest[1]);
    return 2;
  }
  return cvmbus::paravisor::storvsp::Main();
}
