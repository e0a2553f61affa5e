#include "paravisor/devices/storvsp/file_block_backend.h"

namespace cvmbus::paravisor::storvsp {

void FileBlockBackend::Read(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) {
  RunIo(/*write=*/false, offset, iovecs, std::move(done));
}

void FileBlockBackend::Write(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) {
  RunIo(/*write=*/true, offset, iovecs, std::move(done));
}

void FileBlockBackend::Flush(FlushDone done) { RunFlush(std::move(done)); }

hw::Task FileBlockBackend::RunIo(bool write, uint64_t offset, absl::Span<const iovec> iovecs,
                                 IoDone done) {
  // `iovecs` is the caller's (it keeps them alive until `done`).
  absl::StatusOr<size_t> moved = write ? co_await file_->Write(loop_, offset, iovecs)
                                       : co_await file_->Read(loop_, offset, iovecs);
  done(std::move(moved));
}

hw::Task FileBlockBackend::RunFlush(FlushDone done) {
  absl::Status synced = co_await file_->Flush(loop_);
  done(std::move(synced));
}

void FileBlockBackend::Discard(uint64_t offset, uint64_t bytes, FlushDone done) {
  RunDiscard(offset, bytes, std::move(done));
}

hw::Task FileBlockBackend::RunDiscard(uint64_t offset, uint64_t bytes, FlushDone done) {
  absl::Status discarded = co_await file_->Discard(loop_, offset, bytes);
  done(std::move(discarded));
}

}  // namespace cvmbus::paravisor::storvsp
