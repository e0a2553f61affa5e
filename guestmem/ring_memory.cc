#include "guestmem/ring_memory.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <cstring>

#include "guestmem/errors.h"
#include "guestmem/racy_copy.h"

namespace cvmbus::guestmem {
namespace {

// The offset of page `gpn` in the backing's file, or -1 if it is in no fd-backed region.
int64_t FileOffsetOf(const MemoryBacking& backing, uint64_t gpn) {
  const uint64_t gpa = gpn << kPageShift;
  for (const RegionMapping& region : backing.regions()) {
    if (region.fd >= 0 && gpa >= region.gpa && gpa - region.gpa < region.size_bytes) {
      return static_cast<int64_t>(region.fd_offset + (gpa - region.gpa));
    }
  }
  return -1;
}

}  // namespace

absl::StatusOr<RingMemory> RingMemory::Create(const GuestMemory& memory,
                                              absl::Span<const uint64_t> gpns,
                                              RingMemoryOptions options) {
  if (gpns.size() < 2 || gpns.size() - 1 > (kMaxRingDataBytes >> kPageShift)) {
    return MakeError(ErrorKind::kInvalidArgument,
                     fmt::format("ring memory: {} pages; a ring needs a control page and 1 to {} "
                                 "data pages",
                                 gpns.size(), kMaxRingDataBytes >> kPageShift));
  }
  absl::StatusOr<PinnedPages> pinned = memory.Pin(gpns, Access::kReadWrite);
  if (!pinned.ok()) return pinned.status();
  RingMemory ring(*std::move(pinned), static_cast<uint32_t>((gpns.size() - 1) << kPageShift));
  ring.control_ = ring.pinned_.page_host_address(0);
  bool contiguous = true;
  for (size_t i = 1; i < gpns.size(); ++i) {
    ring.data_pages_.push_back(ring.pinned_.page_host_address(i));
    contiguous = contiguous && gpns[i] == gpns[1] + (i - 1);
  }
  if (contiguous) ring.contiguous_data_ = ring.data_pages_[0];
  ring.MapTwice(options);
  return ring;
}

void RingMemory::MapTwice(const RingMemoryOptions& options) {
  const MemoryBacking& backing = *pinned_.backing();
  if (!options.allow_double_mapping || backing.fd() < 0) return;
  std::vector<int64_t> file_offsets;
  for (size_t i = 1; i < pinned_.page_count(); ++i) {
    file_offsets.push_back(FileOffsetOf(backing, pinned_.gpns()[i]));
    if (file_offsets.back() < 0) return;
  }
  void* reservation = mmap(nullptr, 2 * uint64_t{data_size_}, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reservation == MAP_FAILED) return;  // Fall back to split copies.
  auto* base = static_cast<uint8_t*>(reservation);
  // Map runs of file-contiguous pages with one mmap each, at both copies.
  for (size_t first = 0; first < file_offsets.size();) {
    size_t end = first + 1;
    while (end < file_offsets.size() &&
           file_offsets[end] == file_offsets[first] + static_cast<int64_t>((end - first) << 12)) {
      ++end;
    }
    for (uint64_t copy : {uint64_t{0}, uint64_t{data_size_}}) {
      void* at = base + copy + (first << kPageShift);
      if (mmap(at, (end - first) << kPageShift, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
               backing.fd(), file_offsets[first]) == MAP_FAILED) {
        munmap(reservation, 2 * uint64_t{data_size_});
        return;  // Fall back to split copies.
      }
    }
    first = end;
  }
  double_mapping_ = base;
}

RingMemory::RingMemory(RingMemory&& other) noexcept
    : pinned_(std::move(other.pinned_)),
      data_size_(other.data_size_),
      control_(other.control_),
      double_mapping_(other.double_mapping_),
      contiguous_data_(other.contiguous_data_),
      data_pages_(std::move(other.data_pages_)) {
  other.double_mapping_ = nullptr;
}

RingMemory& RingMemory::operator=(RingMemory&& other) noexcept {
  if (this != &other) {
    if (double_mapping_ != nullptr) munmap(double_mapping_, 2 * uint64_t{data_size_});
    pinned_ = std::move(other.pinned_);
    data_size_ = other.data_size_;
    control_ = other.control_;
    double_mapping_ = other.double_mapping_;
    contiguous_data_ = other.contiguous_data_;
    data_pages_ = std::move(other.data_pages_);
    other.double_mapping_ = nullptr;
  }
  return *this;
}

RingMemory::~RingMemory() {
  if (double_mapping_ != nullptr) munmap(double_mapping_, 2 * uint64_t{data_size_});
}

template <typename Fn>
void RingMemory::ForEachPiece(uint32_t offset, size_t len, Fn&& fn) const {
  if (double_mapping_ != nullptr) {
    fn(double_mapping_ + offset, 0, len);
    return;
  }
  size_t done = 0;
  uint64_t position = offset;
  while (done < len) {
    if (position == data_size_) position = 0;  // The wrap.
    size_t piece;
    uint8_t* host;
    if (contiguous_data_ != nullptr) {
      host = contiguous_data_ + position;
      piece = std::min<uint64_t>(len - done, data_size_ - position);
    } else {
      host = data_pages_[position >> kPageShift] + (position & kPageMask);
      piece = std::min<uint64_t>(len - done, kPageSize - (position & kPageMask));
    }
    fn(host, done, piece);
    done += piece;
    position += piece;
  }
}

bool RingMemory::ReadDataSlow(uint32_t offset, void* out, size_t len) const {
  if (offset >= data_size_ || len > data_size_) return false;
  if (len == 0) return true;  // `out` may be null for an empty span; memcpy must not see it.
  auto* bytes = static_cast<uint8_t*>(out);
  ForEachPiece(offset, len, [&](const uint8_t* host, size_t at, size_t piece) {
    internal::RacyCopy(bytes + at, host, piece);
  });
  return true;
}

bool RingMemory::WriteDataSlow(uint32_t offset, const void* in, size_t len) const {
  if (offset >= data_size_ || len > data_size_) return false;
  if (len == 0) return true;  // `in` may be null for an empty span; memcpy must not see it.
  auto* bytes = static_cast<const uint8_t*>(in);
  ForEachPiece(offset, len, [&](uint8_t* host, size_t at, size_t piece) {
    internal::RacyStore(host, bytes + at, piece);
  });
  return true;
}

}  // namespace cvmbus::guestmem
