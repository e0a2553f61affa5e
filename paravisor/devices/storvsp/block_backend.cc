#include "paravisor/devices/storvsp/block_backend.h"

#include <algorithm>
#include <cstring>

namespace cvmbus::paravisor::storvsp {

absl::Status MemoryBackend::TakeFailure() { return std::exchange(fail_next_, absl::OkStatus()); }

void MemoryBackend::Read(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) {
  if (absl::Status failure = TakeFailure(); !failure.ok()) return done(failure);
  size_t moved = 0;
  for (const iovec& piece : iovecs) {
    if (offset >= bytes_.size()) break;
    const size_t chunk = std::min<uint64_t>(piece.iov_len, bytes_.size() - offset);
    if (chunk != 0) std::memcpy(piece.iov_base, bytes_.data() + offset, chunk);
    offset += chunk;
    moved += chunk;
  }
  done(moved);
}

void MemoryBackend::Write(uint64_t offset, absl::Span<const iovec> iovecs, IoDone done) {
  if (read_only_) return done(absl::FailedPreconditionError("memory backend: read-only"));
  if (absl::Status failure = TakeFailure(); !failure.ok()) return done(failure);
  size_t moved = 0;
  for (const iovec& piece : iovecs) {
    if (offset >= bytes_.size()) break;
    const size_t chunk = std::min<uint64_t>(piece.iov_len, bytes_.size() - offset);
    if (chunk != 0) std::memcpy(bytes_.data() + offset, piece.iov_base, chunk);
    offset += chunk;
    moved += chunk;
  }
  done(moved);
}

void MemoryBackend::Flush(FlushDone done) {
  if (absl::Status failure = TakeFailure(); !failure.ok()) return done(failure);
  ++flushes_;
  done(absl::OkStatus());
}

void MemoryBackend::Discard(uint64_t offset, uint64_t bytes, FlushDone done) {
  if (read_only_) return done(absl::FailedPreconditionError("memory backend: read-only"));
  if (absl::Status failure = TakeFailure(); !failure.ok()) return done(failure);
  if (offset > bytes_.size() || bytes > bytes_.size() - offset) {
    return done(absl::OutOfRangeError("memory backend: discard past the end"));
  }
  std::memset(bytes_.data() + offset, 0, bytes);
  done(absl::OkStatus());
}

}  // namespace cvmbus::paravisor::storvsp
