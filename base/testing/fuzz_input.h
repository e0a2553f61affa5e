// FuzzInput: a libFuzzer input read front to back as a program. Every byte string is one: a
// read past the end yields zero bytes, so the fuzzer need not learn lengths, and zeros should
// mean a target's common, valid choice.
#ifndef CVMBUS_BASE_TESTING_FUZZ_INPUT_H_
#define CVMBUS_BASE_TESTING_FUZZ_INPUT_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace cvmbus::testing {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  // True once every byte has been read (later reads yield zeros).
  bool done() const { return at_ >= size_; }

  // The next sizeof(T) bytes as a T (host byte order), zero-filled past the end.
  template <typename T>
  T Take() {
    static_assert(std::is_trivially_copyable_v<T>);
    T value{};
    const size_t n = std::min(sizeof(T), size_ - std::min(at_, size_));
    if (n > 0) std::memcpy(&value, data_ + at_, n);
    at_ += sizeof(T);
    return value;
  }
  uint8_t Byte() { return Take<uint8_t>(); }
  std::vector<uint8_t> TakeBytes(size_t len) {
    std::vector<uint8_t> bytes(len);
    for (uint8_t& byte : bytes) byte = Byte();
    return bytes;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

}  // namespace cvmbus::testing

#endif  // CVMBUS_BASE_TESTING_FUZZ_INPUT_H_
