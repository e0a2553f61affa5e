#include "paravisor/daemon/inspect_tree.h"

#include <gtest/gtest.h>

namespace cvmbus::paravisor::daemon {
namespace {

TEST(InspectTreeTest, MembersPrintSortedAndCountersStayExact) {
  Tree root;
  root["connection"]["version"] = "6.0";
  root["connection"]["guest_errors"] = uint64_t{18446744073709551615u};
  root["connection"]["paused"] = false;
  EXPECT_EQ(ToJson(root, /*pretty=*/false),
            R"({"connection":{"guest_errors":18446744073709551615,"paused":false,)"
            R"("version":"6.0"}})");
  absl::StatusOr<Tree> back = ParseJson(ToJson(root, /*pretty=*/true));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, root);
}

TEST(InspectTreeTest, BytesThatAreNotUtf8PrintReplacedInsteadOfThrowing) {
  Tree root;
  root["path"] = std::string("/tmp/\xff\xfe");
  EXPECT_EQ(ToJson(root, false), "{\"path\":\"/tmp/\xef\xbf\xbd\xef\xbf\xbd\"}");
}

TEST(InspectTreeTest, TextThatIsNotJsonIsDataLoss) {
  EXPECT_EQ(ParseJson("{\"a\":").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseJson("").status().code(), absl::StatusCode::kDataLoss);
}

TEST(InspectTreeTest, ASubtreeIsFoundByItsPathAndAMissingPartIsNamed) {
  Tree root;
  root["channels"]["7"]["state"] = "open";
  absl::StatusOr<Tree> channel = Subtree(root, "channels/7");
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_EQ((*channel)["state"], "open");
  absl::StatusOr<Tree> whole = Subtree(root, "/");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, root);
  absl::StatusOr<Tree> missing = Subtree(root, "channels/8/state");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(missing.status().message()), "inspect: no '8' under '/channels'");
  absl::StatusOr<Tree> through_leaf = Subtree(root, "channels/7/state/x");
  ASSERT_FALSE(through_leaf.ok());
  EXPECT_EQ(std::string(through_leaf.status().message()),
            "inspect: no 'x' under '/channels/7/state'");
}

TEST(InspectTreeTest, LinesAreSortedPathsWithTheirValues) {
  Tree root;
  root["b"]["z"] = true;
  root["b"]["a"] = 1.5;
  root["a"] = "text";
  root["c"] = 7;
  EXPECT_EQ(ToLines(root), "a = text\nb/a = 1.5\nb/z = true\nc = 7\n");
  EXPECT_EQ(ToLines(root["b"], "b"), "b/a = 1.5\nb/z = true\n");
}

TEST(InspectTreeTest, TheServerSnapshotBecomesConnectionChannelsAndGpadls) {
  ServerSnapshot server;
  server.connected = true;
  server.version = 0x60000;
  server.guest_errors = 2;
  server.channels.push_back(ChannelSnapshot{.relid = 5,
                                            .state = "open",
                                            .interface_name = "storvsp",
                                            .open = OpenData{.target_vp = 1,
                                                             .ring_offset = 16,
                                                             .ring_gpadl_id = 300,
                                                             .event_flag = 5,
                                                             .connection_id = 0x2005}});
  server.gpadls.push_back(
      GpadlSnapshot{.id = 300, .relid = 5, .state = "accepted", .ranges = 1, .pages = 32});
  Tree root;
  AddServer(server, root);
  EXPECT_EQ(root["connection"]["version"], "6.0");
  EXPECT_EQ(root["connection"]["guest_errors"], 2);
  EXPECT_FALSE(root["connection"].contains("monitor"));  // No MNF.
  EXPECT_EQ(root["channels"]["5"]["state"], "open");
  EXPECT_EQ(root["channels"]["5"]["open"]["connection_id"], 0x2005);
  EXPECT_EQ(root["channels"]["5"]["open"]["ring_gpadl_id"], 300);
  EXPECT_EQ(root["gpadls"]["300"]["pages"], 32);
  EXPECT_EQ(VersionName(0x50003), "5.3");
  EXPECT_EQ(VersionName(13), "0.13");

  Tree empty;
  AddServer(ServerSnapshot{}, empty);
  EXPECT_EQ(empty["connection"]["version"], "none");
  EXPECT_TRUE(empty["channels"].is_object() && empty["channels"].empty());
}

}  // namespace
}  // namespace cvmbus::paravisor::daemon
