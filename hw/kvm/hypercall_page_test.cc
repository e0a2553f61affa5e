#include "hw/kvm/hypercall_page.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace cvmbus::hw::kvm {
namespace {

// Known answer: the stub's bytes with the ports 0x4e0 / 0x4e4 (assembly in hypercall_page.cc).
TEST(HypercallPageTest, StubCarriesBothPorts) {
  const std::array<uint8_t, kHypercallPageBytes> page = HypercallPage(0x4e0, 0x1234);
  const uint8_t expected[] = {
      0x48, 0x81, 0xf9, 0x5d, 0x00, 0x01, 0x00, 0x75, 0x18, 0x48, 0x89, 0xd0, 0x48, 0xc1, 0xe8,
      0x20, 0x75, 0x0f, 0x89, 0xd0, 0x45, 0x31, 0xc9, 0xba, 0x34, 0x12, 0x00, 0x00, 0xef, 0x4c,
      0x89, 0xc8, 0xc3, 0x49, 0x89, 0xd2, 0xba, 0xe0, 0x04, 0x00, 0x00, 0xee, 0xc3,
  };
  ASSERT_EQ(HypercallStubBytes(), sizeof(expected));
  for (size_t i = 0; i < sizeof(expected); ++i) EXPECT_EQ(page[i], expected[i]) << "byte " << i;
}

TEST(HypercallPageTest, RestOfThePageIsUd2) {
  const std::array<uint8_t, kHypercallPageBytes> page = HypercallPage(0x4e0, 0x4e4);
  for (size_t i = HypercallStubBytes(); i + 1 < page.size(); i += 2) {
    ASSERT_EQ(page[i], 0x0f) << i;
    ASSERT_EQ(page[i + 1], 0x0b) << i;
  }
}

}  // namespace
}  // namespace cvmbus::hw::kvm
