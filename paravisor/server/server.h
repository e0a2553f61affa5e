// VmbusServer: the paravisor's VMBus server. It speaks the channel control protocol with the
// guest through the SynIC (synic::ServerPort) and implements ParentBus for the devices it
// offers.
//
// Protocol: versions 0.13 through 6.0, negotiated from the guest's INITIATE_CONTACT (any known
// version is accepted as asked; others get version_supported = 0 so the guest retries lower).
// Feature flags are granted as asked, masked by what the server supports; confidential
// channels (0x10) only on a trusted port of a VM with private memory. Offer flags 0x2/0x4
// (confidential ring / external memory) are set only with private memory and cleared from
// offers when the feature was not negotiated.
//
// Channels: offered in a stable order (interface id, offer_order, instance, subchannel index)
// after REQUESTOFFERS, then ALLOFFERS_DELIVERED; later offers go out at once. At most 2047
// channels (relids 1..2047). GPADLs are assembled from GPADL_HEADER + GPADL_BODY, validated,
// and handed to the device; open, close, modify and teardown are Rpcs to the device. Revoke
// rescinds (subchannels before their primary); the relid is reused after RELID_RELEASED.
// UNLOAD closes everything and answers UNLOAD_RESPONSE.
//
// Guest mistakes get the protocol's answer (a failure status where the message has one) and a
// log line, never a crash or a leak.
//
// Threads: the server runs on `loop`'s thread; AddChild and CloneBus may be called from any
// thread (they post to the loop).
#ifndef CVMBUS_PARAVISOR_SERVER_SERVER_H_
#define CVMBUS_PARAVISOR_SERVER_SERVER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/server/monitor_scanner.h"
#include "paravisor/server/saved_state.pb.h"
#include "paravisor/synic/server_port.h"

namespace cvmbus::paravisor {

inline constexpr uint32_t kMaxChannels = 2047;
// Messages to the guest held while it is paused (PAUSE), at most.
inline constexpr size_t kMaxHeldWhilePaused = 4096;

// A guest's hvsocket connect request (TL_CONNECT_REQUEST).
struct HvSocketConnect {
  Guid endpoint_id;  // The guest's endpoint: the instance id of the channel that answers.
  Guid service_id;   // The host service: the interface id of that channel.
  Guid silo_id;      // Zero unless the guest named a silo.
};

struct ServerOptions {
  guestmem::GuestMemory untrusted_memory;
  std::optional<guestmem::GuestMemory> private_memory;  // Set on a hardware-isolated VM.
  uint32_t max_version = protocol::kVersionWin10V6_0;
  // A page the server may give the guest as its child -> parent monitor page (feature
  // kFeatureServerSpecifiedMonitorPages), in the private view on a confidential VM. Without
  // it, a confidential VM's channels are offered without MNF (the guest's own monitor pages
  // are shared with the host); other VMs use the guest's page.
  std::optional<uint64_t> server_monitor_page;
  // Called on the loop thread for a guest's hvsocket connect. Return true if a listener will
  // offer the channel (an HvSocketChannel with is_connect false, instance = endpoint id,
  // interface = service id); false refuses it: the guest gets TL_CONNECT_RESULT with
  // STATUS_CONNECTION_REFUSED. Unset: every connect is refused.
  std::function<bool(const HvSocketConnect&)> on_hvsocket_connect;
  // Receives one line per guest mistake or notable event. Default: stderr.
  std::function<void(const std::string&)> log;
};

struct ServerStats {
  uint64_t messages_handled = 0;
  uint64_t guest_errors = 0;  // Messages refused or answered with a failure.
};

class VmbusServer {
 public:
  // Attaches to `port` on `loop`'s thread (call from that thread) for the VMBus message
  // connection ids (1 before version 5.0, 4 from it). If the port refuses (another server has
  // them), every later call logs it and the guest's posts fail at the SynIC.
  VmbusServer(hw::EventLoop* loop, synic::ServerPort* port, ServerOptions options);
  ~VmbusServer();
  VmbusServer(const VmbusServer&) = delete;
  VmbusServer& operator=(const VmbusServer&) = delete;

  // A ParentBus handle on this server (thread-safe; the server must outlive it).
  std::unique_ptr<ParentBus> Bus();

  // Servicing. Save() captures the connection, every channel and GPADL (call on the loop
  // thread). Restore() loads that into a fresh server before the guest or devices talk to it:
  // a device offering a saved key gets its old relid back, and must then send RestoreChannel
  // (with an OpenResult if it was open); the reply carries the OpenRequest and the GPADLs, each
  // marked accepted or not as bus.rs's RestoredGpadl rule says, and both directions of a
  // restored open channel are signalled once so that no interrupt is lost.
  absl::StatusOr<saved::Server> Save() const;
  absl::Status Restore(const saved::Server& state);

  const ServerStats& stats() const { return stats_; }
  uint32_t version() const { return version_; }
  uint32_t feature_flags() const { return features_; }
  // The connection's monitor page scanner (null without MNF), for tests and statistics.
  const MonitorScanner* monitor() const { return monitor_.get(); }
  size_t channel_count() const { return channels_.size(); }

 private:
  class BusHandle;
  enum class GpadlState { kInProgress, kOffered, kAccepted, kTearingDown };
  struct Gpadl {
    GpadlState state = GpadlState::kInProgress;
    uint16_t range_count = 0;
    size_t expected_words = 0;
    std::vector<uint64_t> words;
  };
  enum class ChannelState { kClosed, kOpening, kOpen, kClosing };
  struct Channel {
    uint32_t relid = 0;
    OfferParams params;
    uint16_t offer_flags = 0;  // As offered (before masking by the connection's features).
    Sender<ChannelRequest> requests;
    std::shared_ptr<Receiver<ChannelServerRequest>> server_requests;
    ChannelState state = ChannelState::kClosed;
    bool offered_to_guest = false;
    bool revoked = false;  // Rescinded; waiting for RELID_RELEASED.
    std::optional<uint8_t> monitor_id;
    std::map<uint32_t, Gpadl> gpadls;
    std::optional<uint32_t> ring_gpadl;  // While open.
    OpenData open_data;                  // As of the last open.
    bool awaiting_restore = false;       // Restored from saved state; the device must confirm.
  };

  absl::StatusOr<OfferResources> AddChild(OfferInput input);
  void OnMessage(uint32_t connection_id, std::vector<uint8_t> bytes);
  void Dispatch(const protocol::ParsedMessage& message);
  void Log(const std::string& line);
  void GuestError(const std::string& line);
  void Send(const std::vector<uint8_t>& bytes);
  // Posts what the outbox holds until the SynIC's queue is full; stops taking guest messages
  // while anything is left, and takes them again once the outbox is empty.
  void FlushOutbox();
  template <typename T>
  void SendMessage(const T& message) {
    Send(protocol::Encode(message));
  }

  void HandleInitiateContact(const protocol::ParsedMessage& message);
  // Validates the guest's monitor pages (INITIATE_CONTACT, MODIFY_CONNECTION) and sets up
  // monitor_: the server's page if `server_pages_asked` and it has one, else the guest's
  // page where the VM is not confidential, else none. An error is the guest's mistake and
  // leaves monitor_ as it was.
  absl::Status SetUpMonitorPage(uint64_t parent_to_child, uint64_t child_to_parent,
                                bool server_pages_asked);
  void HandleModifyConnection(const protocol::ModifyConnection& modify);
  void HandlePause();
  void HandleResume();
  void HandleTlConnect(const protocol::TlConnectRequest& request);
  void WatchMonitor(const Channel& channel, std::shared_ptr<hw::Signal> target);
  void UnwatchMonitor(const Channel& channel);
  void HandleRequestOffers();
  void HandleOpen(const protocol::OpenChannel& open);
  void HandleClose(uint32_t relid);
  void HandleGpadlHeader(const protocol::ParsedMessage& message);
  void HandleGpadlBody(const protocol::ParsedMessage& message);
  void HandleGpadlTeardown(const protocol::GpadlTeardown& teardown);
  void HandleRelIdReleased(uint32_t relid);
  void HandleUnload();
  void HandleModify(const protocol::ModifyChannel& modify);

  void SendOffer(Channel& channel);
  absl::StatusOr<RestoreResult> RestoreChannelState(uint32_t relid,
                                                    const std::optional<OpenResult>& open);
  static void ApplySaved(const saved::Channel& saved, Channel* channel);
  void FinishGpadl(Channel& channel, uint32_t gpadl_id);
  void Revoke(uint32_t relid);
  void ResetConnection();
  uint16_t VisibleOfferFlags(const Channel& channel) const;
  Channel* FindChannel(uint32_t relid, const char* operation);
  hw::Task WatchServerRequests(uint32_t relid, std::shared_ptr<Receiver<ChannelServerRequest>> r);
  hw::Task AwaitOpen(uint32_t relid, uint32_t open_id, uint32_t connection_id,
                     ReplyFuture<std::optional<OpenResult>> reply);
  hw::Task AwaitGpadl(uint32_t relid, uint32_t gpadl_id, ReplyFuture<bool> reply);
  hw::Task AwaitTeardown(uint32_t relid, uint32_t gpadl_id, ReplyFuture<Unit> reply);
  hw::Task AwaitModify(uint32_t relid, ReplyFuture<int32_t> reply);
  hw::Task AwaitClose(uint32_t relid, ReplyFuture<Unit> reply);

  hw::EventLoop* const loop_;
  synic::ServerPort* const port_;
  ServerOptions options_;
  ServerStats stats_;
  uint32_t version_ = 0;  // 0: not connected.
  uint32_t features_ = 0;
  bool offers_requested_ = false;
  std::map<uint32_t, Channel> channels_;  // By relid.
  std::vector<uint32_t> free_relids_;     // Released relids, reused lowest first.
  uint32_t next_relid_ = 1;
  uint64_t monitor_ids_[2] = {0, 0};         // 128 monitor ids.
  std::unique_ptr<MonitorScanner> monitor_;  // This connection's MNF page, if any.
  bool monitor_server_allocated_ = false;    // monitor_ is options_'s page.
  // Where messages to the guest go: the VP and SINT the guest named in INITIATE_CONTACT.
  uint32_t message_vp_ = 0;
  uint8_t message_sint_ = protocol::kMessageSint;
  struct Outgoing {
    uint32_t vp;
    uint8_t sint;
    std::vector<uint8_t> bytes;
  };
  // Messages the SynIC could not take yet (its per-SINT queue was full), in order. Bounded by
  // what one guest request produces: no guest message is taken while it is not empty.
  std::deque<Outgoing> outbox_;
  bool accepting_ = true;  // What the port was last told.
  bool paused_ = false;    // PAUSE: messages to the guest held.
  std::vector<std::vector<uint8_t>> held_while_paused_;
  std::map<OfferKey, saved::Channel> pending_restores_;  // Saved channels not yet re-offered.
  // Shared with tasks still awaiting replies: they check it before touching the server.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The connection id the guest signals for channel `relid` (in the offer).
constexpr uint32_t ChannelConnectionId(uint32_t relid) { return 0x10000 + relid; }

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_SERVER_H_
