// Builds little-endian byte vectors field by field, for known-answer tests of wire formats.
// It knows nothing of the message structs, so vectors built with it check their layout.
//
//   std::vector<uint8_t> bytes = LeBytes().U32(7).U32(0).U32(5).Take();
#ifndef CVMBUS_PARAVISOR_PROTOCOL_TESTING_LE_BYTES_H_
#define CVMBUS_PARAVISOR_PROTOCOL_TESTING_LE_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace cvmbus::paravisor::protocol::testing {

class LeBytes {
 public:
  LeBytes& U8(uint8_t value) { return Put(value, 1); }
  LeBytes& U16(uint16_t value) { return Put(value, 2); }
  LeBytes& U32(uint32_t value) { return Put(value, 4); }
  LeBytes& U64(uint64_t value) { return Put(value, 8); }
  // `count` bytes first, first + 1, ... (wrapping): recognisable filler for GUIDs and blobs.
  LeBytes& Sequence(uint8_t first, size_t count) {
    for (size_t i = 0; i < count; ++i) bytes_.push_back(static_cast<uint8_t>(first + i));
    return *this;
  }
  LeBytes& Fill(uint8_t value, size_t count) {
    bytes_.insert(bytes_.end(), count, value);
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  std::vector<uint8_t> Take() { return std::move(bytes_); }

 private:
  LeBytes& Put(uint64_t value, int width) {
    for (int i = 0; i < width; ++i) bytes_.push_back(static_cast<uint8_t>(value >> (8 * i)));
    return *this;
  }

  std::vector<uint8_t> bytes_;
};

}  // namespace cvmbus::paravisor::protocol::testing

#endif  // CVMBUS_PARAVISOR_PROTOCOL_TESTING_LE_BYTES_H_
