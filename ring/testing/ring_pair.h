// Test support: one ring (control page + data pages) in a memfd-backed guest memory, with a
// raw byte-level view for building corrupt rings by hand.
#ifndef CVMBUS_RING_TESTING_RING_PAIR_H_
#define CVMBUS_RING_TESTING_RING_PAIR_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "guestmem/guest_memory.h"
#include "guestmem/ring_memory.h"
#include "ring/protocol.h"

namespace cvmbus::ring::testing {

// One ring at GPA 0: page 0 is the control page, pages 1..data_pages the data area.
class TestRing {
 public:
  explicit TestRing(uint32_t data_pages = 4, bool double_map = true,
                    guestmem::View view = guestmem::View::kUntrusted)
      : data_pages_(data_pages), double_map_(double_map), view_(view) {
    guestmem::MemoryOptions options;
    options.name = "test-ring";
    options.regions = {{0, uint64_t{data_pages + 1 + kSparePages} * 4096}};
    backing_ = *guestmem::MemoryBacking::Create(options);
  }

  // A new RingMemory over the ring (each ring end gets its own).
  guestmem::RingMemory Memory() const {
    std::vector<uint64_t> gpns;
    for (uint64_t i = 0; i <= data_pages_; ++i) gpns.push_back(i);
    return *guestmem::RingMemory::Create(guestmem::GuestMemory(backing_, view_), gpns,
                                         {.allow_double_mapping = double_map_});
  }

  uint32_t data_size() const { return data_pages_ * 4096; }
  // The first of kSparePages pages after the ring, for tests that need other memory.
  uint64_t spare_gpn() const { return data_pages_ + 1; }
  static constexpr uint64_t kSparePages = 4;

  // Raw access, as the peer sees the bytes.
  uint32_t Control(uint32_t offset) const {
    return *guestmem::GuestMemory::Private(backing_).ReadPlain<uint32_t>(offset);
  }
  void SetControl(uint32_t offset, uint32_t value) const {
    (void)guestmem::GuestMemory::Private(backing_).WritePlain<uint32_t>(offset, value);
  }
  // Writes `bytes` into the data area at `offset`, wrapping.
  void PutData(uint32_t offset, const std::vector<uint8_t>& bytes) const {
    for (size_t i = 0; i < bytes.size(); ++i) {
      (void)guestmem::GuestMemory::Private(backing_).WritePlain<uint8_t>(
          4096 + (offset + i) % data_size(), bytes[i]);
    }
  }
  std::vector<uint8_t> GetData(uint32_t offset, uint32_t len) const {
    std::vector<uint8_t> bytes(len);
    for (uint32_t i = 0; i < len; ++i) {
      bytes[i] = *guestmem::GuestMemory::Private(backing_).ReadPlain<uint8_t>(
          4096 + (offset + i) % data_size());
    }
    return bytes;
  }
  const std::shared_ptr<guestmem::MemoryBacking>& backing() const { return backing_; }

 private:
  uint32_t data_pages_;
  bool double_map_;
  guestmem::View view_;
  std::shared_ptr<guestmem::MemoryBacking> backing_;
};

// Little-endian byte vector builders for known-answer and corrupt packets.
inline void Put16(std::vector<uint8_t>* out, uint16_t v) {
  out->push_back(v & 0xff);
  out->push_back(v >> 8);
}
inline void Put32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back((v >> (8 * i)) & 0xff);
}
inline void Put64(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back((v >> (8 * i)) & 0xff);
}
// A descriptor: type, data_offset8, length8, flags, transaction id.
inline std::vector<uint8_t> Descriptor(uint16_t type, uint16_t data_offset8, uint16_t length8,
                                       uint16_t flags, uint64_t transaction_id) {
  std::vector<uint8_t> out;
  Put16(&out, type);
  Put16(&out, data_offset8);
  Put16(&out, length8);
  Put16(&out, flags);
  Put64(&out, transaction_id);
  return out;
}

}  // namespace cvmbus::ring::testing

#endif  // CVMBUS_RING_TESTING_RING_PAIR_H_
