#include "paravisor/daemon/inspect_tree.h"

#include <fmt/format.h>

#include "absl/strings/str_split.h"

namespace cvmbus::paravisor::daemon {

std::string ToJson(const Tree& tree, bool pretty) {
  return tree.dump(pretty ? 2 : -1, ' ', /*ensure_ascii=*/false,
                   nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<Tree> ParseJson(std::string_view text) {
  Tree tree = Tree::parse(text, nullptr, /*allow_exceptions=*/false);
  if (tree.is_discarded()) return absl::DataLossError("inspect: the text is not JSON");
  return tree;
}

absl::StatusOr<Tree> Subtree(const Tree& root, std::string_view path) {
  const Tree* at = &root;
  std::string walked;
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(path.data(), path.size()), '/', absl::SkipEmpty())) {
    const std::string name(part);
    if (!at->is_object() || !at->contains(name)) {
      return absl::NotFoundError(fmt::format("inspect: no '{}' under '/{}'", name, walked));
    }
    at = &(*at)[name];
    walked += walked.empty() ? name : "/" + name;
  }
  return *at;
}

std::string ToLines(const Tree& tree, const std::string& prefix) {
  if (tree.is_object()) {
    std::string out;
    for (const auto& [name, child] : tree.items()) {
      out += ToLines(child, prefix.empty() ? name : prefix + "/" + name);
    }
    return out;
  }
  if (tree.is_string()) return fmt::format("{} = {}\n", prefix, tree.get<std::string>());
  return fmt::format("{} = {}\n", prefix, ToJson(tree, /*pretty=*/false));
}

std::string VersionName(uint32_t version) {
  return fmt::format("{}.{}", version >> 16, version & 0xffff);
}

void AddServer(const ServerSnapshot& server, Tree& root) {
  Tree& connection = root["connection"];
  connection["connected"] = server.connected;
  connection["version"] = server.version == 0 ? "none" : VersionName(server.version);
  connection["feature_flags"] = server.feature_flags;
  connection["epoch"] = server.connection_epoch;
  connection["paused"] = server.paused;
  connection["messages_handled"] = server.messages_handled;
  connection["guest_errors"] = server.guest_errors;
  connection["stale_replies"] = server.stale_replies;
  connection["internal_errors"] = server.internal_errors;
  connection["log_lines_suppressed"] = server.log_lines_suppressed;
  if (server.monitor_scans.has_value()) {
    connection["monitor"]["scans"] = *server.monitor_scans;
    connection["monitor"]["signals"] = *server.monitor_signals;
  }
  Tree& channels = root["channels"] = Tree::object();
  for (const ChannelSnapshot& c : server.channels) {
    Tree& channel = channels[std::to_string(c.relid)];
    channel["state"] = c.state;
    channel["interface_name"] = c.interface_name;
    channel["interface_id"] = c.interface_id.ToString();
    channel["instance_id"] = c.instance_id.ToString();
    channel["subchannel_index"] = c.subchannel_index;
    channel["hvsocket"] = c.hvsocket;
    channel["offer_flags"] = c.offer_flags;
    channel["device_attached"] = c.device_attached;
    channel["gpadls"] = c.gpadls;
    channel["pending_modifies"] = c.pending_modifies;
    channel["interrupts_to_guest"] = c.interrupts_to_guest;
    if (c.monitor_id.has_value()) channel["monitor_id"] = *c.monitor_id;
    if (c.open.has_value()) {
      Tree& open = channel["open"];
      open["target_vp"] = c.open->target_vp;
      open["connection_id"] = c.open->connection_id;
      open["ring_gpadl_id"] = c.open->ring_gpadl_id;
      open["ring_offset_pages"] = c.open->ring_offset;
      open["event_flag"] = c.open->event_flag;
    }
  }
  Tree& gpadls = root["gpadls"] = Tree::object();
  for (const GpadlSnapshot& g : server.gpadls) {
    Tree& gpadl = gpadls[std::to_string(g.id)];
    gpadl["relid"] = g.relid;
    gpadl["state"] = g.state;
    gpadl["ranges"] = g.ranges;
    gpadl["pages"] = g.pages;
  }
}

}  // namespace cvmbus::paravisor::daemon
