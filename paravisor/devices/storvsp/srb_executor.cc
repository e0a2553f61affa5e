#include "paravisor/devices/storvsp/srb_executor.h"

#include <memory>
#include <utility>
#include <variant>

namespace cvmbus::paravisor::storvsp {
namespace {

constexpr uint8_t kMediumError = 0x03;
constexpr uint8_t kUnrecoveredReadError = 0x11;
constexpr uint8_t kWriteError = 0x0c;

// The guest's buffer could not be reached through the channel's view.
SrbResult Unreachable() {
  return SrbResult{.srb_status = kSrbInvalidRequest, .scsi_status = kScsiGood, .transferred = 0};
}

SrbResult MediumError(bool write) {
  return ScsiDisk::CheckCondition(kMediumError, write ? kWriteError : kUnrecoveredReadError, 0);
}

}  // namespace

void SrbExecutor::Execute(const ScsiRequest& request, const std::optional<SrbBuffer>& buffer,
                          const guestmem::GuestMemory& memory, Done done) {
  ScsiDisk::Outcome outcome = disk_->Execute(request);
  if (auto* immediate = std::get_if<ScsiDisk::Immediate>(&outcome)) {
    if (!immediate->data.empty()) {
      // ScsiDisk cut the data to data_transfer_length, which SrbBufferOf found a buffer for.
      if (!buffer.has_value()) return done(Unreachable());
      absl::StatusOr<guestmem::PinnedPages> pinned =
          memory.Pin(buffer->gpns, guestmem::Access::kReadWrite);
      if (!pinned.ok() || !pinned->Write(buffer->offset, immediate->data).ok()) {
        return done(Unreachable());
      }
    }
    return done(std::move(immediate->result));
  }
  if (std::holds_alternative<ScsiDisk::Flush>(outcome)) {
    backend_->Flush([done = std::move(done)](absl::Status status) {
      done(status.ok() ? ScsiDisk::Done(0) : MediumError(/*write=*/true));
    });
    return;
  }
  if (const auto* unmap = std::get_if<ScsiDisk::Unmap>(&outcome)) {
    if (!buffer.has_value()) return done(Unreachable());
    Unmap(*unmap, *buffer, memory, std::move(done));
    return;
  }
  const auto& transfer = std::get<ScsiDisk::Transfer>(outcome);
  if (!buffer.has_value()) return done(Unreachable());  // ScsiDisk checked the length.
  Transfer(transfer, *buffer, memory, std::move(done));
}

void SrbExecutor::Transfer(const ScsiDisk::Transfer& transfer, const SrbBuffer& buffer,
                           const guestmem::GuestMemory& memory, Done done) {
  // A disk read stores into the guest's pages; a disk write only reads them.
  absl::StatusOr<guestmem::PinnedPages> pinned = memory.Pin(
      buffer.gpns, transfer.write ? guestmem::Access::kRead : guestmem::Access::kReadWrite);
  if (!pinned.ok()) return done(Unreachable());
  absl::StatusOr<std::vector<iovec>> iovecs =
      pinned->IoVecs(buffer.offset, transfer.bytes, /*device_writes=*/!transfer.write);
  if (!iovecs.ok()) return done(Unreachable());
  // The pages stay pinned and the iovecs alive until the backing is done with them.
  auto held = std::make_shared<std::pair<guestmem::PinnedPages, std::vector<iovec>>>(
      *std::move(pinned), *std::move(iovecs));
  const absl::Span<const iovec> pieces = held->second;
  if (!transfer.write) {
    backend_->Read(
        transfer.offset, pieces,
        [held, bytes = transfer.bytes, done = std::move(done)](absl::StatusOr<size_t> moved) {
          done(moved.ok() && *moved == bytes ? ScsiDisk::Done(bytes)
                                             : MediumError(/*write=*/false));
        });
    return;
  }
  backend_->Write(transfer.offset, pieces,
                  [this, held, bytes = transfer.bytes, fua = transfer.force_unit_access,
                   done = std::move(done)](absl::StatusOr<size_t> moved) mutable {
                    if (!moved.ok() || *moved != bytes) return done(MediumError(/*write=*/true));
                    if (!fua) return done(ScsiDisk::Done(bytes));
                    // Force unit access: durable before it completes.
                    backend_->Flush([bytes, done = std::move(done)](absl::Status status) {
                      done(status.ok() ? ScsiDisk::Done(bytes) : MediumError(/*write=*/true));
                    });
                  });
}

void SrbExecutor::Unmap(const ScsiDisk::Unmap& unmap, const SrbBuffer& buffer,
                        const guestmem::GuestMemory& memory, Done done) {
  // The parameter list is the guest's: copied once, then parsed from the copy.
  absl::StatusOr<guestmem::PinnedPages> pinned = memory.Pin(buffer.gpns, guestmem::Access::kRead);
  if (!pinned.ok()) return done(Unreachable());
  std::vector<uint8_t> parameters(unmap.parameter_bytes);
  if (!pinned->Read(buffer.offset, absl::MakeSpan(parameters)).ok()) return done(Unreachable());
  auto parsed = disk_->ParseUnmap(parameters);
  if (auto* refused = std::get_if<SrbResult>(&parsed)) return done(std::move(*refused));
  auto ranges = std::make_shared<std::vector<ScsiDisk::ByteRange>>(
      std::get<std::vector<ScsiDisk::ByteRange>>(std::move(parsed)));
  DiscardNext(std::move(ranges), 0, std::move(done));
}

void SrbExecutor::DiscardNext(std::shared_ptr<std::vector<ScsiDisk::ByteRange>> ranges, size_t next,
                              Done done) {
  if (next == ranges->size()) return done(ScsiDisk::Done(0));
  const ScsiDisk::ByteRange range = (*ranges)[next];
  backend_->Discard(range.offset, range.bytes,
                    [this, ranges, next, done = std::move(done)](absl::Status status) mutable {
                      if (!status.ok()) return done(MediumError(/*write=*/true));
                      DiscardNext(std::move(ranges), next + 1, std::move(done));
                    });
}

}  // namespace cvmbus::paravisor::storvsp
