// The hybrid vsock text protocol: known answers and one test per malformed request.
#include "paravisor/devices/hvsocket/hybrid_vsock.h"

#include <gtest/gtest.h>

#include <string>

namespace cvmbus::paravisor::hvsocket {
namespace {

TEST(HybridVsockTest, PathsAndAnswers) {
  EXPECT_EQ(HostSocketPath("/run/vm.sock", 5000), "/run/vm.sock_5000");
  EXPECT_EQ(OkLine(1073741824), "OK 1073741824\n");
}

TEST(HybridVsockTest, ConnectLinesParse) {
  EXPECT_EQ(*ParseConnectLine("CONNECT 5000"), 5000u);
  EXPECT_EQ(*ParseConnectLine("connect 0"), 0u);  // Any case, as OpenVMM.
  EXPECT_EQ(*ParseConnectLine("CONNECT 4294967295"), 4294967295u);
  EXPECT_EQ(*ParseConnectLine("CONNECT 0000000001"), 1u);
}

TEST(HybridVsockTest, MalformedConnectLinesAreRefused) {
  for (const std::string line :
       {"", "CONNECT", "CONNECT ", "CONNEC 5", "CONNECT  5", "CONNECT 5 ", "CONNECT +5",
        "CONNECT 4294967296", "CONNECT 12345678901", "CONNECT 5\r", "HELLO 5",
        "CONNECT 00001388-facb-11e6-bd58-64006a7986d3"}) {
    EXPECT_EQ(ParseConnectLine(line).status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << line << "\"";
  }
}

TEST(HybridVsockTest, ErrorsShowOnlyPrintableBytes) {
  absl::StatusOr<uint32_t> port = ParseConnectLine(std::string("CONNECT \x01\x02", 10));
  ASSERT_FALSE(port.ok());
  EXPECT_NE(std::string(port.status().message()).find("CONNECT ??"), std::string::npos);
}

TEST(HybridVsockTest, LinesAreFoundWithinTheLimit) {
  EXPECT_EQ(**FindConnectLine("CONNECT 5\nrest"), 9u);
  EXPECT_FALSE(FindConnectLine("CONNECT 5")->has_value());
  EXPECT_FALSE(FindConnectLine(std::string(kMaxConnectLineBytes, 'x')).ok());
  EXPECT_FALSE(FindConnectLine(std::string(kMaxConnectLineBytes, 'x') + "\n").ok());  // Too late.
}

}  // namespace
}  // namespace cvmbus::paravisor::hvsocket
