// GpadlTable: the GPADLs of one VMBus connection, keyed by GPADL id (ids are unique across the
// connection's channels: GPADL_BODY names no channel), each owned by one channel (OfferId),
// with the bounds a guest cannot grow past.
//
//   InProgress --last body--> Offered --device accepts--> Accepted --GPADL_TEARDOWN--> TearingDown
//                                |  (refuses: erased)        |  ring of an open channel:    |
//                                |                           |  teardown_deferred until it  |
//                                v teardown asked, or reset  |  closes                      v
//                          OfferedTearingDown --accepted--> TearingDown --device done--> erased
//
// A GPADL in Offered, OfferedTearingDown or TearingDown has exactly one device request in flight
// (`op`); its reply is applied only if `op` still matches. Guest answers owed by a GPADL (its
// GPADL_CREATED, one GPADL_TORNDOWN per GPADL_TEARDOWN) are sent only while the connection
// epoch they were asked on is current.
//
// Threads: the server's loop thread.
#ifndef CVMBUS_PARAVISOR_SERVER_GPADL_TABLE_H_
#define CVMBUS_PARAVISOR_SERVER_GPADL_TABLE_H_

#include <cstdint>
#include <map>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "paravisor/bus/bus.h"
#include "paravisor/server/channel.h"

namespace cvmbus::paravisor {

// Bounds on what a guest can make the server hold (ServerOptions::limits). A request past one
// is refused with the protocol's failure answer.
struct ServerLimits {
  uint32_t gpadls_per_channel = 64;
  uint32_t gpadls = 4096;  // Per connection: every channel's ring and then some.
  // Page numbers in one GPADL; what GPADL_HEADER's 16-bit range_buflen can describe anyway.
  uint32_t pages_per_gpadl = 8190;
  // Page numbers over all of a connection's GPADLs (8 MiB of them by default).
  uint64_t gpadl_pages = uint64_t{1} << 20;
  // MODIFYCHANNEL requests waiting for the device, per channel.
  uint32_t modifies_in_flight = 16;
};

}  // namespace cvmbus::paravisor

namespace cvmbus::paravisor::internal {

enum class GpadlState : uint8_t {
  kInProgress,          // GPADL_HEADER seen, bodies still arriving.
  kOffered,             // Sent to the device; its answer pending.
  kOfferedTearingDown,  // Offered, and a teardown is already wanted (guest or reset).
  kAccepted,
  kTearingDown,  // The device was told to tear it down.
};
std::string_view GpadlStateName(GpadlState state);

struct Gpadl {
  GpadlId id = 0;
  OfferId owner = 0;
  uint32_t relid = 0;  // The owner's, for GPADL_CREATED.
  GpadlState state = GpadlState::kInProgress;
  uint16_t range_count = 0;
  size_t expected_words = 0;  // range_buflen / 8.
  std::vector<uint64_t> words;
  OpId op = 0;                     // The device request in flight, if any.
  uint64_t connection_epoch = 0;   // The connection whose guest asked for it.
  bool created_owed = false;       // GPADL_CREATED still to send.
  uint32_t teardown_waiters = 0;   // GPADL_TORNDOWNs to send when it is gone.
  bool teardown_deferred = false;  // Torn down once its channel stops using it as a ring.
};

// The words of a range buffer that are page numbers (each range has one header word).
constexpr uint64_t PageWords(uint16_t range_count, size_t words) {
  return words > range_count ? words - range_count : 0;
}

class GpadlTable {
 public:
  explicit GpadlTable(const ServerLimits& limits) : limits_(limits) {}

  Gpadl* Find(GpadlId id);
  const Gpadl* Find(GpadlId id) const;
  // Whether a new GPADL of `expected_words` words (`range_count` ranges) may be added for
  // `owner`: the id is free and every bound holds. The error names the bound.
  absl::Status CheckAdd(OfferId owner, GpadlId id, uint16_t range_count,
                        size_t expected_words) const;
  // Adds without checking (CheckAdd first; Restore checks its own way).
  Gpadl& Add(Gpadl gpadl);
  void Erase(GpadlId id);
  void Clear();

  size_t size() const { return gpadls_.size(); }
  bool empty() const { return gpadls_.empty(); }
  size_t CountOf(OfferId owner) const;
  uint64_t reserved_pages() const { return reserved_pages_; }
  // The ids of `owner`'s GPADLs (a copy: callers erase while they walk it).
  std::vector<GpadlId> IdsOf(OfferId owner) const;
  std::vector<GpadlId> Ids() const;
  const std::map<GpadlId, Gpadl>& all() const { return gpadls_; }

 private:
  const ServerLimits& limits_;
  std::map<GpadlId, Gpadl> gpadls_;
  absl::flat_hash_map<OfferId, uint32_t> per_owner_;
  uint64_t reserved_pages_ = 0;  // Page-number words reserved by every GPADL's range_buflen.
};

}  // namespace cvmbus::paravisor::internal

#endif  // CVMBUS_PARAVISOR_SERVER_GPADL_TABLE_H_
