// RingImage: one VMBus ring (control page + data area) as a file holds it, loaded into private
// memfd-backed guest memory so that the production ring code can run over it.
//
// The image is a copy: nothing done to it reaches the file it was loaded from until SaveImage.
// Not thread-safe; ringtool uses it from one thread.
#ifndef CVMBUS_RING_TOOLS_RING_IMAGE_H_
#define CVMBUS_RING_TOOLS_RING_IMAGE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "guestmem/guest_memory.h"
#include "guestmem/memory_backing.h"
#include "guestmem/ring_memory.h"

namespace cvmbus::ring::tools {

// GPA page 0 is the control page, pages 1..data_size/4096 the data area.
struct RingImage {
  std::shared_ptr<guestmem::MemoryBacking> backing;
  uint32_t data_size = 0;

  uint64_t total_bytes() const { return 4096 + uint64_t{data_size}; }
  guestmem::GuestMemory memory() const { return guestmem::GuestMemory::Private(backing); }
  // A new RingMemory over the whole ring (each ring end gets its own); it keeps the memory
  // alive and pinned while it lives.
  absl::StatusOr<guestmem::RingMemory> Open() const;
};

// A zeroed ring with a `data_size`-byte data area (a nonzero multiple of 4096, at most
// guestmem::kMaxRingDataBytes).
absl::StatusOr<RingImage> NewImage(uint64_t data_size);

// Copies the ring file at `path` into a new image. kInvalidArgument, with a message that does
// not repeat the path, if the file is missing, not a regular file, shorter than two pages, not
// a multiple of 4096 bytes, or larger than the largest ring.
absl::StatusOr<RingImage> LoadImage(const std::string& path);

// Copies a live ring out of guest memory: the control page at gpns[0], the data area on the rest
// (at least one page). The pages are read once, each through `memory`'s checks; the copy is
// then what a dump reads, however the guest or host rewrites the ring meanwhile.
absl::StatusOr<RingImage> CopyImage(const guestmem::GuestMemory& memory,
                                    absl::Span<const uint64_t> gpns);

// Writes the image to `path`, creating or truncating it. kInvalidArgument naming the path.
absl::Status SaveImage(const RingImage& image, const std::string& path);

}  // namespace cvmbus::ring::tools

#endif  // CVMBUS_RING_TOOLS_RING_IMAGE_H_
