// The inspect tree: a JSON tree (nlohmann-json) of what the daemon can say about itself, and
// the helpers that walk it and print it.
//
//   Tree root;
//   root["connection"]["version"] = "6.0";
//   std::string json = ToJson(root, /*pretty=*/true);
//   absl::StatusOr<Tree> channel = Subtree(root, "channels/7");
//
// Objects keep their members sorted by name, so the same state prints the same way. Counters
// are JSON integers (64-bit, exact).
#ifndef CVMBUS_PARAVISOR_DAEMON_INSPECT_TREE_H_
#define CVMBUS_PARAVISOR_DAEMON_INSPECT_TREE_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "paravisor/server/server_snapshot.h"

namespace cvmbus::paravisor::daemon {

using Tree = nlohmann::json;

// Strings that are not UTF-8 (a path, a name) print with U+FFFD in place of the bad bytes.
std::string ToJson(const Tree& tree, bool pretty);
// Parses what ToJson printed; kDataLoss if `text` is not JSON.
absl::StatusOr<Tree> ParseJson(std::string_view text);
// The subtree at `path`: names joined by '/' ("" or "/" is the whole tree). kNotFound names
// the first part that is missing.
absl::StatusOr<Tree> Subtree(const Tree& root, std::string_view path);
// "path = value" lines, one per leaf, in path order: the readable form of cvmbusctl.
std::string ToLines(const Tree& tree, const std::string& prefix = "");

// The server's part: "connection", "channels" (by relid) and "gpadls" (by id).
void AddServer(const ServerSnapshot& server, Tree& root);
// "major.minor" of a VMBus protocol version.
std::string VersionName(uint32_t version);

}  // namespace cvmbus::paravisor::daemon

#endif  // CVMBUS_PARAVISOR_DAEMON_INSPECT_TREE_H_
