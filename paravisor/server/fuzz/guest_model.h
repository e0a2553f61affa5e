// GuestModel: what server_fuzz's guest asked the server for and was told, kept from the exact
// interleaving the server saw (FuzzPort reports every guest message as it is handed to the
// server and every message as the server posts it), so that it can say which answers the
// protocol owes the guest and check every message the server sends.
//
// The connection as the guest knows it:
//   Disconnected --INITIATE_CONTACT or UNLOAD--> Waiting --VERSION_RESPONSE (success)--> Connected
//        ^                                     (more of them: the last one is answered, the     |
//        +-------- UNLOAD_RESPONSE, or a failed VERSION_RESPONSE ----  earlier ones superseded) |
//                                                                                              |
//   Connected --INITIATE_CONTACT or UNLOAD--> Waiting (the server resets every channel) <-----+
// While Connected the server is connected at the same version and features, so the model
// applies the server's own gate (protocol::CheckAllowed) to each guest request to know whether
// it was taken, and then which answer it owes. While Waiting the server is resetting: it takes
// only INITIATE_CONTACT and UNLOAD and sends nothing but the answer, except the messages a
// PAUSE held, which an UNLOAD lets out first.
//
// Checked as messages arrive (a violation traps, invariant.h): each answer answers a request
// that is owed one (or that may still be answered: held across an UNLOAD, or a GPADL of a
// relid the guest released); each message is one the server may send on the connection
// (CheckAllowed for the host); an offer never reuses a relid or a key the guest still holds; a
// rescind names an offer the guest holds; VERSION_RESPONSE accepts exactly the known versions
// and grants no feature that was not asked for; a monitored offer only with the server's
// monitor page (on an isolated VM the guest's own page is shared with the host).
//
// Threads: the fuzzer's thread only.
#ifndef CVMBUS_PARAVISOR_SERVER_FUZZ_GUEST_MODEL_H_
#define CVMBUS_PARAVISOR_SERVER_FUZZ_GUEST_MODEL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "paravisor/bus/bus.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/server/fuzz/fuzz_port.h"
#include "paravisor/server/server_snapshot.h"

namespace cvmbus::paravisor::fuzz {

// The channel with `relid` and the GPADL with `id` in a snapshot, or null.
const ChannelSnapshot* FindChannel(const ServerSnapshot& server, uint32_t relid);
const GpadlSnapshot* FindGpadl(const ServerSnapshot& server, uint32_t id);

class GuestModel : public PortObserver {
 public:
  enum class Phase { kDisconnected, kWaiting, kConnected };
  struct Offer {
    OfferKey key;
    bool rescinded = false;
  };

  // --- PortObserver ---
  void Delivered(const std::vector<uint8_t>& bytes) override;
  void Posted(const protocol::ParsedMessage& message) override;

  // The server's hvsocket listener refused a TL_CONNECT_REQUEST: a TL_CONNECT_RESULT is owed
  // (the message exists from 4.1).
  void ExpectTlConnectResult() {
    if (version_ >= protocol::kVersionWin10V4_1) ++owed_.tl_results;
  }

  // After every step (the loop idle): an offer the guest released with RELID_RELEASED without
  // a rescind is withdrawn if the server released (or dropped) the channel, and held again if
  // the server refused the release. (A release while paused, or of a relid the guest does not
  // hold, may race offers and rescinds the pause holds: that relid is not checked again on this
  // connection.)
  void ResolveReleases(const ServerSnapshot& server);
  // At a settle point (every device request answered, the guest's queue read, the loop idle):
  // the connection request was answered; while connected, every owed answer came (a GPADL the
  // guest is still sending and the teardown of an open channel's ring excepted), and the
  // guest's offers are the server's channels: closed, opening, open or closing ones held,
  // revoked ones held as rescinded, released ones not held. While disconnected, every channel
  // is released and no GPADL is left.
  void CheckSettled(const ServerSnapshot& server) const;

  Phase phase() const { return phase_; }
  bool paused() const { return paused_; }
  bool offers_requested() const { return offers_requested_; }
  uint32_t version() const { return version_; }
  uint32_t features() const { return features_; }
  const std::map<uint32_t, Offer>& offers() const { return offers_; }
  // GPADL ids the server created (GPADL_CREATED success) and has not torn down, per relid.
  const std::map<uint32_t, std::set<uint32_t>>& created() const { return created_; }

  // The messages posted from now on are also kept, for the final well-behaved guest's checks.
  void StartLog() {
    logging_ = true;
    log_.clear();
  }
  std::vector<protocol::ParsedMessage> TakeLog() { return std::exchange(log_, {}); }

 private:
  // The answers a set of requests is owed.
  struct Owed {
    std::multiset<std::pair<uint32_t, uint32_t>> opens;    // (relid, open_id)
    std::multiset<std::pair<uint32_t, uint32_t>> creates;  // (relid, GPADL id)
    std::multiset<uint32_t> teardowns;                     // GPADL id
    std::multiset<uint32_t> modifies;                      // relid
    int all_offers = 0;
    int modify_connections = 0;
    int pauses = 0;
    int tl_results = 0;
    void Merge(Owed&& other);
  };
  struct ConnectionRequest {
    bool unload = false;
    uint32_t version = 0;  // INITIATE_CONTACT's.
    uint32_t features = 0;
    bool monitor_ok = true;  // Its monitor pages: both or neither, page aligned.
  };

  void ConnectionRequested(ConnectionRequest request);
  void Answered(const protocol::ParsedMessage& message);
  void Reset();
  // The GPADLs of `relid` the server was still assembling go unanswered once it is released.
  void DropOwedCreates(uint32_t relid);

  Phase phase_ = Phase::kDisconnected;
  std::vector<ConnectionRequest> pending_connection_;
  uint32_t version_ = 0;  // Of the connection (kept while Waiting for the held messages).
  uint32_t features_ = 0;
  bool offers_requested_ = false;
  bool paused_ = false;
  bool flushing_held_ = false;  // An UNLOAD came while paused: the held messages come first.
  Owed owed_;                   // Must be answered.
  Owed maybe_;                  // May still be answered.
  std::map<uint32_t, Offer> offers_;
  // Offers the guest released without a rescind, until ResolveReleases (after the step) finds
  // whether the server withdrew them or refused.
  std::map<uint32_t, Offer> released_unrescinded_;
  // Relids the guest released while paused or before it held them: what the guest holds of
  // them is not known until the next connection (not checked).
  std::set<uint32_t> uncertain_;
  std::map<uint32_t, std::set<uint32_t>> created_;
  bool logging_ = false;
  std::vector<protocol::ParsedMessage> log_;
};

}  // namespace cvmbus::paravisor::fuzz

#endif  // CVMBUS_PARAVISOR_SERVER_FUZZ_GUEST_MODEL_H_
