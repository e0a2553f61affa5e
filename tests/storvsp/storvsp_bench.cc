// storvsp_bench: reads through the storvsp channel against fio on the same file, in one run. A
// benchmark program (it prints figures), not a test.
//
// Our row: an emulated SEV-SNP VM, VMBus 6.0 with confidential channels; a guest thread (the
// in-process guest client, driving the channel as storvsc does: one GPA-direct EXECUTE_SRB
// per read, the buffer in private guest pages) keeps `qd` reads outstanding; the device's
// io_uring loop thread (the server's) runs each as an O_DIRECT readv straight into the guest's
// pages. fio's row: Debian's fio, ioengine=io_uring, direct=1, one job at the same iodepth and
// block size on the same file. Sizes: 4 KiB random reads, and 256 KiB sequential reads (the
// device's max_transfer_bytes: Linux splits larger requests into these).
//
// Two threads against fio's one; the file's page cache is bypassed by both (O_DIRECT). Run it
// on an otherwise idle machine:
//   bazel run -c opt //tests/storvsp:storvsp_bench -- --seconds=3
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "hw/storage/file_backing.h"
#include "paravisor/devices/storvsp/file_block_backend.h"
#include "paravisor/devices/storvsp/srb.h"
#include "paravisor/devices/storvsp/storvsp_device.h"
#include "paravisor/devices/storvsp/vstor_protocol.h"
#include "paravisor/protocol/header.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/testing/vm_fixture.h"

namespace cvmbus::paravisor::storvsp {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kFileBytes = 256ull << 20;
constexpr uint64_t kBufferGpn = 0x1000;  // 32 slots of 64 pages (256 KiB) each, private.
constexpr uint32_t kSlotPages = 64;
constexpr uint32_t kMaxDepth = 32;

std::vector<uint8_t> Packet(VstorOperation operation, uint16_t value = 0) {
  std::vector<uint8_t> packet(64, 0);
  const uint32_t op = static_cast<uint32_t>(operation);
  std::memcpy(packet.data(), &op, 4);
  std::memcpy(packet.data() + 4, &kRequestCompletionFlag, 4);
  std::memcpy(packet.data() + 12, &value, 2);
  return packet;
}

std::vector<uint8_t> Read16(uint64_t lba, uint32_t blocks) {
  std::vector<uint8_t> packet = Packet(VstorOperation::kExecuteSrb);
  uint8_t* srb = packet.data() + 12;
  srb[0] = 0x34;
  srb[8] = 16;
  srb[9] = 0x14;
  srb[10] = 1;  // READ_TYPE
  const uint32_t bytes = blocks * 512;
  std::memcpy(srb + 0x0c, &bytes, 4);
  uint8_t* cdb = srb + 0x10;
  cdb[0] = 0x88;
  for (int i = 0; i < 8; ++i) cdb[2 + i] = static_cast<uint8_t>(lba >> (56 - 8 * i));
  for (int i = 0; i < 4; ++i) cdb[10 + i] = static_cast<uint8_t>(blocks >> (24 - 8 * i));
  return packet;
}

struct Row {
  double iops = 0;
  double mib_per_s = 0;
};

class Bench {
 public:
  absl::Status Setup(const std::string& path) {
    auto vm = testing::VirtualMachine::Create();
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
                                           .disk = {.sectors = kFileBytes / 512, .read_only = true},
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
    auto channel = testing::GuestChannel::Open(vm_.get(), {.relid = (*offers)[0].child_relid,
                                                           .gpadl_id = 1,
                                                           .first_gpn = 0x100,
                                                           .ring_pages = 64,
                                                           .confidential = true});
    if (!channel.ok()) return channel.status();
    channel_ = *std::move(channel);
    if (absl::Status s = vm_->MakePrivate(kBufferGpn * 4096, kMaxDepth * kSlotPages * 4096ull);
        !s.ok()) {
      return s;
    }
    for (const auto& [operation, value] : std::vector<std::pair<VstorOperation, uint16_t>>{
             {VstorOperation::kBeginInitialization, 0},
             {VstorOperation::kQueryProtocolVersion, kVersionWin8_1},
             {VstorOperation::kQueryProperties, 0},
             {VstorOperation::kEndInitialization, 0}}) {
      absl::StatusOr<std::vector<uint8_t>> answer = Control(Packet(operation, value));
      if (!answer.ok()) return answer.status();
    }
    return absl::OkStatus();
  }

  ~Bench() {
    channel_.reset();
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
    std::vector<uint64_t> pages(kSlotPages);
    const auto submit = [&](uint32_t slot) -> absl::Status {
      for (uint32_t i = 0; i < kSlotPages; ++i) pages[i] = kBufferGpn + slot * kSlotPages + i;
      const std::vector<uint8_t> packet = Read16(lba(), blocks);
      const ring::GpaRange range{
          .byte_count = blocks * 512,
          .byte_offset = 0,
          .gpns = absl::MakeConstSpan(pages).subspan(0, (blocks * 512 + 4095) / 4096)};
      ++outstanding;
      return channel_->SendPacket({.type = ring::PacketType::kDataUsingGpaDirect,
                                   .flags = ring::kFlagCompletionRequested,
                                   .transaction_id = slot + 1,
                                   .payload = packet,
                                   .gpa_ranges = absl::MakeConstSpan(&range, 1)});
    };
    for (uint32_t slot = 0; slot < depth; ++slot) {
      if (absl::Status s = submit(slot); !s.ok()) return s;
    }
    ring::PacketBuffer buffer;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds);
    while (true) {
      if (absl::Status s = channel_->Receive(&buffer, std::chrono::seconds(5)); !s.ok()) return s;
      --outstanding;
      const ring::Packet& packet = buffer.packet();
      if (packet.payload.size() < 16 || packet.payload[12 + 2] != kSrbSuccess) {
        return absl::InternalError("a read failed");
      }
      ++done;
      if (Clock::now() >= deadline) break;
      if (absl::Status s = submit(static_cast<uint32_t>(packet.transaction_id - 1)); !s.ok()) {
        return s;
      }
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    while (outstanding > 0) {  // Drain before the next row.
      if (absl::Status s = channel_->Receive(&buffer, std::chrono::seconds(5)); !s.ok()) return s;
      --outstanding;
    }
    return Row{done / elapsed, done * blocks * 512.0 / elapsed / (1 << 20)};
  }

 private:
  absl::StatusOr<std::vector<uint8_t>> Control(const std::vector<uint8_t>& packet) {
    if (absl::Status s = channel_->Send(packet, ~0ull - 2); !s.ok()) return s;
    ring::PacketBuffer buffer;
    if (absl::Status s = channel_->Receive(&buffer, std::chrono::seconds(5)); !s.ok()) return s;
    return std::vector<uint8_t>(buffer.packet().payload.begin(), buffer.packet().payload.end());
  }

  std::unique_ptr<testing::VirtualMachine> vm_;
  std::unique_ptr<FileBlockBackend> backend_;
  std::unique_ptr<StorvspDevice> device_;
  std::unique_ptr<testing::GuestChannel> channel_;
};

// fio's IOPS for the same job, from its JSON output ("read" : { ... "iops" : N ...}).
absl::StatusOr<Row> Fio(const std::string& path, uint32_t bytes, uint32_t depth, bool random,
                        double seconds) {
  const std::string command = fmt::format(
      "fio --name=peer --filename={} --readonly --ioengine=io_uring --direct=1 --rw={} --bs={} "
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

int Main(int argc, char** argv) {
  double seconds = 3;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--seconds=", 0) == 0) {
      seconds = std::strtod(arg.c_str() + 10, nullptr);
    } else if (arg.rfind("--file=", 0) == 0) {
      path = arg.substr(7);
    } else {
      std::fprintf(stderr, "unknown flag %s (--seconds=S --file=PATH)\n", arg.c_str());
      return 2;
    }
  }
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
  std::printf("storvsp_bench: %s (%llu MiB), %.1f s per row, O_DIRECT both\n", path.c_str(),
              static_cast<unsigned long long>(kFileBytes >> 20), seconds);
  std::printf("%-22s %3s %12s %10s %12s %10s %8s\n", "job", "qd", "storvsp IOPS", "MiB/s",
              "fio IOPS", "MiB/s", "ratio");
  struct Job {
    const char* name;
    uint32_t bytes;
    bool random;
  };
  int status = 0;
  for (const Job job :
       {Job{"4 KiB random read", 4096, true}, Job{"256 KiB seq read", 262144, false}}) {
    for (const uint32_t depth : {1u, 32u}) {
      absl::StatusOr<Row> ours = bench.Run(job.bytes / 512, depth, job.random, seconds);
      absl::StatusOr<Row> fio = Fio(path, job.bytes, depth, job.random, seconds);
      if (!ours.ok() || !fio.ok()) {
        std::printf("%-22s %3u failed: %s / %s\n", job.name, depth,
                    ours.ok() ? "ok" : ours.status().ToString().c_str(),
                    fio.ok() ? "ok" : fio.status().ToString().c_str());
        status = 1;
        continue;
      }
      std::printf("%-22s %3u %12.0f %10.1f %12.0f %10.1f %8.2f\n", job.name, depth, ours->iops,
                  ours->mib_per_s, fio->iops, fio->mib_per_s, ours->iops / fio->iops);
      std::fflush(stdout);
    }
  }
  return status;
}

}  // namespace
}  // namespace cvmbus::paravisor::storvsp

int main(int argc, char** argv) { return cvmbus::paravisor::storvsp::Main(argc, argv); }
