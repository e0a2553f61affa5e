#include "paravisor/server/gpadl_table.h"

#include <fmt/format.h>

namespace cvmbus::paravisor::internal {

std::string_view GpadlStateName(GpadlState state) {
  switch (state) {
    case GpadlState::kInProgress:
      return "in progress";
    case GpadlState::kOffered:
      return "offered to the device";
    case GpadlState::kOfferedTearingDown:
      return "offered, to be torn down";
    case GpadlState::kAccepted:
      return "accepted";
    case GpadlState::kTearingDown:
      return "tearing down";
  }
  return "unknown";
}

Gpadl* GpadlTable::Find(GpadlId id) {
  auto it = gpadls_.find(id);
  return it == gpadls_.end() ? nullptr : &it->second;
}

const Gpadl* GpadlTable::Find(GpadlId id) const {
  auto it = gpadls_.find(id);
  return it == gpadls_.end() ? nullptr : &it->second;
}

absl::Status GpadlTable::CheckAdd(OfferId owner, GpadlId id, uint16_t range_count,
                                  size_t expected_words) const {
  if (const Gpadl* existing = Find(id); existing != nullptr) {
    return absl::AlreadyExistsError(
        fmt::format("GPADL id {:#x} is already in use (channel {})", id, existing->relid));
  }
  if (CountOf(owner) >= limits_.gpadls_per_channel) {
    return absl::ResourceExhaustedError(
        fmt::format("the channel has {} GPADLs, the most it may have", limits_.gpadls_per_channel));
  }
  if (gpadls_.size() >= limits_.gpadls) {
    return absl::ResourceExhaustedError(
        fmt::format("the connection has {} GPADLs, the most it may have", limits_.gpadls));
  }
  const uint64_t pages = PageWords(range_count, expected_words);
  if (pages > limits_.pages_per_gpadl) {
    return absl::ResourceExhaustedError(fmt::format(
        "{} page numbers, more than the {} a GPADL may have", pages, limits_.pages_per_gpadl));
  }
  if (reserved_pages_ + pages > limits_.gpadl_pages) {
    return absl::ResourceExhaustedError(
        fmt::format("{} more page numbers would exceed the connection's {} (it holds {})", pages,
                    limits_.gpadl_pages, reserved_pages_));
  }
  return absl::OkStatus();
}

Gpadl& GpadlTable::Add(Gpadl gpadl) {
  const GpadlId id = gpadl.id;
  ++per_owner_[gpadl.owner];
  reserved_pages_ += PageWords(gpadl.range_count, gpadl.expected_words);
  return gpadls_.insert_or_assign(id, std::move(gpadl)).first->second;
}

void GpadlTable::Erase(GpadlId id) {
  auto it = gpadls_.find(id);
  if (it == gpadls_.end()) return;
  auto owner = per_owner_.find(it->second.owner);
  if (owner != per_owner_.end() && --owner->second == 0) per_owner_.erase(owner);
  reserved_pages_ -= PageWords(it->second.range_count, it->second.expected_words);
  gpadls_.erase(it);
}

void GpadlTable::Clear() {
  gpadls_.clear();
  per_owner_.clear();
  reserved_pages_ = 0;
}

size_t GpadlTable::CountOf(OfferId owner) const {
  auto it = per_owner_.find(owner);
  return it == per_owner_.end() ? 0 : it->second;
}

std::vector<GpadlId> GpadlTable::IdsOf(OfferId owner) const {
  std::vector<GpadlId> ids;
  for (const auto& [id, gpadl] : gpadls_) {
    if (gpadl.owner == owner) ids.push_back(id);
  }
  return ids;
}

std::vector<GpadlId> GpadlTable::Ids() const {
  std::vector<GpadlId> ids;
  ids.reserve(gpadls_.size());
  for (const auto& [id, gpadl] : gpadls_) ids.push_back(id);
  return ids;
}

}  // namespace cvmbus::paravisor::internal
