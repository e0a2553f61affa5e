// VmbusServer: the paravisor's VMBus server. It speaks the channel control protocol with the
// guest through the SynIC (synic::ServerPort) and implements ParentBus for the devices it
// offers.
//
// Protocol: versions 0.13 through 6.0, negotiated from the guest's INITIATE_CONTACT (any known
// version is accepted as asked; others get version_supported = 0 so the guest retries lower).
// Feature flags are granted as asked, masked by what the server supports; confidential
// channels (0x10) only on a trusted port of a VM with private memory. Offer flags 0x2/0x4
// (confidential ring / external memory) are set only with private memory and cleared from
// offers when the feature was not negotiated. Messages go to the VP (from 3.0) and SINT (from
// 5.0) the guest named in INITIATE_CONTACT.
//
// Channels: offered in a stable order (interface id, offer_order, instance, subchannel index)
// after REQUESTOFFERS, then ALLOFFERS_DELIVERED; later offers go out at once. At most 2047
// channels (relids 1..2047). Each channel is a state machine (channel.h) that owns the device
// operation in flight; GPADLs are a table of their own (gpadl_table.h). A reply that comes back
// for an operation nobody waits for any more (the channel closed, was reset or revoked, its
// relid reused) is dropped and counted (ServerStats::stale_replies).
//
// Lifecycle (linux-guest.md, "Lifecycle a server must survive"):
//   - UNLOAD resets the connection: every open channel is closed with its device and every
//     GPADL torn down, and UNLOAD_RESPONSE goes out only once all of that has been answered.
//   - INITIATE_CONTACT while connected (kexec, a crash kernel) resets the same way, then
//     answers the new contact. Re-offers keep relids and instance GUIDs.
//   - Every request Linux waits on is answered, errors included: OPENCHANNEL, GPADL_HEADER,
//     GPADL_TEARDOWN (the ring of an open channel: once it is closed), UNLOAD and, from 5.3,
//     MODIFYCHANNEL.
//   - RELID_RELEASED for an offer that was never rescinded (the guest could not register it):
//     the offer is withdrawn until the next connection.
//   - The channel's guest -> host event exists from OPENCHANNEL on: a guest signal before the
//     device answered is delivered once it does. Optionally both ring directions are signalled
//     again a while after the open (ServerOptions::resignal_after_open).
//   - An hvsocket channel the guest closed is rescinded.
//   - A device's signal is held (shared) only while its channel is open; a device's stale
//     replies never re-install it.
// Revoke rescinds (subchannels before their primary); GPADLs of a revoked channel succeed and
// tear down at once (Hyper-V's behaviour); the relid is reused after RELID_RELEASED.
//
// Bounds: GPADLs per channel and per connection, pages per GPADL and per connection,
// MODIFYCHANNELs in flight (ServerLimits); messages to the guest wait in a bounded outbox, and
// while anything waits (or a paused connection holds its maximum) the server stops taking
// guest messages, which then wait in the SynIC. Nothing a guest asks for is dropped silently.
//
// Guest mistakes get the protocol's answer (a failure status where the message has one) and a
// log line, never a crash or a leak. An exception thrown by anything the server calls (a
// device's signal, a callback) is caught, logged and counted (ServerStats::internal_errors).
//
// Threads: the server runs on `loop`'s thread; AddChild and CloneBus may be called from any
// thread (they post to the loop).
#ifndef CVMBUS_PARAVISOR_SERVER_SERVER_H_
#define CVMBUS_PARAVISOR_SERVER_SERVER_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "base/log.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "hw/uring/task.h"
#include "paravisor/bus/bus.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/server/channel.h"
#include "paravisor/server/gpadl_table.h"
#include "paravisor/server/monitor_scanner.h"
#include "paravisor/server/saved_state.pb.h"
#include "paravisor/server/server_snapshot.h"
#include "paravisor/synic/server_port.h"

namespace cvmbus::paravisor {

inline constexpr uint32_t kMaxChannels = 2047;
// Messages to the guest held while it is paused (PAUSE): past this many the server stops
// taking guest messages until RESUME lets them out.
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
  // STATUS_CONNECTION_REFUSED (from version 4.1, which has that message; a 4.0 guest is told
  // nothing). Unset: every connect is refused.
  std::function<bool(const HvSocketConnect&)> on_hvsocket_connect;
  // Signal both ring directions of a channel this long after its open succeeded, for guests
  // that ignore interrupts arriving before OPENCHANNEL_RESULT (Linux netvsc; OpenVMM #1829
  // uses 100 ms). Unset: off (tests that count signals want it off).
  std::optional<std::chrono::nanoseconds> resignal_after_open;
  // After Restore, a channel whose device has not offered again within this time is revoked:
  // the guest gets a rescind (and closes, tears down and releases it as for any revoke), and
  // the device, should it come later, is offered afresh (OpenVMM #2879). Unset: such channels
  // wait for their device for ever, open as far as the guest can tell.
  std::optional<std::chrono::nanoseconds> restore_claim_deadline;
  // What a guest can make the server hold.
  ServerLimits limits;
  // Receives one line per guest mistake or notable event. Default: the logging facility
  // (base/log.h), rate-limited.
  std::function<void(const std::string&)> log;
};

struct ServerStats {
  uint64_t messages_handled = 0;
  uint64_t guest_errors = 0;     // Messages refused or answered with a failure.
  uint64_t stale_replies = 0;    // Device replies for operations nobody waited for any more.
  uint64_t internal_errors = 0;  // Exceptions caught (from devices' signals, callbacks).
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

  // Servicing. Save() captures the connection, every channel and GPADL and the operations in
  // flight (call on the loop thread; kFailedPrecondition while a connection reset is waiting
  // for devices). Restore() loads that into a fresh server before the guest or devices talk
  // to it; it validates the whole state first (relids, keys, monitor ids, GPADL ids and their
  // ranges, ring GPADLs, limits) and refuses an inconsistent one with kDataLoss, leaving the
  // server as it was. A device offering a saved key gets its old relid back and must then
  // send RestoreChannel (with an OpenResult if it was open); the reply carries the
  // OpenRequest and the GPADLs, each marked accepted or not as bus.rs's RestoredGpadl rule
  // says, and both directions of a restored open channel are signalled once so that no
  // interrupt is lost. Operations that were in flight are sent to the device again.
  absl::StatusOr<saved::Server> Save() const;
  absl::Status Restore(const saved::Server& state);
  // Servicing: when destroyed, this server hands its SynIC port to the next one
  // (ServerPort::HandOffServer) instead of detaching, so the guest sees no gap: its messages
  // and doorbells wait for the restored server. Call after a Save that is to be restored.
  void HandOffOnDestruction() { hand_off_ = true; }
  // After Restore, guest messages wait until every restored channel's device has taken it back
  // (RestoreChannel) or been revoked, at most this long (or restore_claim_deadline, if
  // shorter): a message about a channel whose device is not back yet could not be served.
  static constexpr std::chrono::milliseconds kMaxRestoreHold{2000};

  const ServerStats& stats() const { return stats_; }
  uint32_t version() const { return version_; }
  uint32_t feature_flags() const { return features_; }
  // The connection's monitor page scanner (null without MNF), for tests and statistics.
  const MonitorScanner* monitor() const { return monitor_.get(); }
  size_t channel_count() const { return channels_.size(); }
  size_t gpadl_count() const { return gpadls_.size(); }
  // The connection, every channel and GPADL, and the counters (server_snapshot.cc; call on
  // the loop thread).
  ServerSnapshot Snapshot() const;
  // The ring pages of open channel `relid` (kNotFound: no such channel; kFailedPrecondition:
  // not open).
  absl::StatusOr<RingPages> RingPagesOf(uint32_t relid) const;
  // Raises both directions of open channel `relid` once, as OpenVMM's inspect action does for a
  // channel that looks stuck: the device checks its ring, the guest gets an interrupt.
  absl::Status Unstick(uint32_t relid);

 private:
  class BusHandle;
  using Channel = internal::Channel;
  using Gpadl = internal::Gpadl;
  using OfferId = internal::OfferId;
  using OpId = internal::OpId;

  enum class Phase {
    kDisconnected,
    kConnected,
    kDisconnecting,  // A reset is waiting for devices; then `after_disconnect_`.
  };
  struct AfterDisconnect {
    bool unload_response = false;                      // UNLOAD: answer it.
    std::optional<protocol::InitiateContact> contact;  // A new contact: handle it.
  };

  // --- server.cc: plumbing ---
  absl::StatusOr<OfferResources> AddChild(OfferInput input);
  void OnMessage(uint32_t connection_id, std::vector<uint8_t> bytes);
  void Dispatch(const protocol::ParsedMessage& message);
  // A notable event (info), or with `level` warning a guest mistake (GuestError) or our own.
  void Log(const std::string& line, log::Level level = log::Level::kInfo);
  void GuestError(const std::string& line);
  // Runs `fn`, catching whatever it throws (logged as `what`, counted).
  void Guarded(std::string_view what, const std::function<void()>& fn) noexcept;
  void Send(const std::vector<uint8_t>& bytes);
  template <typename T>
  void SendMessage(const T& message) {
    Send(protocol::Encode(message));
  }
  // Posts what the outbox holds until the SynIC's queue is full.
  void FlushOutbox();
  // Takes guest messages only while nothing waits in the outbox and a pause holds less than
  // its maximum.
  void UpdateAccepting();
  // Waits for a device's reply on the loop, then calls `done` (guarded); `done` is not called
  // if the server is gone.
  template <typename R>
  hw::Task AwaitReply(const char* what, ReplyFuture<R> reply,
                      std::function<void(absl::StatusOr<R>)> done);
  OpId NextOp() { return next_op_++; }
  Channel* FindRelid(uint32_t relid);
  Channel* FindOffer(OfferId offer);
  // FindRelid, logging a guest error naming `operation` when there is none.
  Channel* FindForGuest(uint32_t relid, const char* operation);
  bool connected() const { return phase_ == Phase::kConnected; }
  // Whether an answer asked for on `epoch` may still go to the guest.
  bool Answerable(uint64_t epoch) const { return connected() && epoch == connection_epoch_; }
  void StaleReply(std::string_view what, OfferId offer, OpId op);

  // --- connection.cc: the connection's state machine ---
  void HandleInitiateContact(const protocol::InitiateContact& contact);
  void Contact(const protocol::InitiateContact& contact);
  absl::Status SetUpMonitorPage(uint64_t parent_to_child, uint64_t child_to_parent,
                                bool server_pages_asked);
  void HandleUnload();
  // Starts a reset of every channel; CheckDisconnected finishes it.
  void StartDisconnect(AfterDisconnect next);
  void ReleaseChannel(Channel& channel);
  void ReleaseGpadl(Gpadl& gpadl);
  // Finishes a reset once every channel is released and every GPADL gone.
  void CheckDisconnected();
  void HandleModifyConnection(const protocol::ModifyConnection& modify);
  void HandlePause();
  void HandleResume();
  void HandleTlConnect(const protocol::TlConnectRequest& request);

  // --- offers.cc: offers, revoke, relids ---
  void Attach(std::shared_ptr<OfferInput> offer);
  hw::Task WatchServerRequests(OfferId offer, std::shared_ptr<Receiver<ChannelServerRequest>> r);
  void HandleRequestOffers();
  void SendOffer(Channel& channel);
  bool MayOffer(const Channel& channel) const;
  uint16_t VisibleOfferFlags(const Channel& channel) const;
  void Revoke(OfferId offer);
  void RevokeOne(Channel& channel);
  void HandleRelIdReleased(uint32_t relid);
  // Erases a channel (and its GPADLs) and frees its relid and monitor id.
  void EraseChannel(OfferId offer);
  void FreeRelid(uint32_t relid);
  std::optional<uint8_t> AllocateMonitorId();
  void FreeMonitorId(uint8_t id);
  void WatchMonitor(const Channel& channel, std::shared_ptr<hw::Signal> target);
  void UnwatchMonitor(const Channel& channel);

  // --- channel_ops.cc: the channel state machine ---
  void HandleOpen(const protocol::OpenChannel& open);
  void StartOpen(Channel& channel, internal::OpenParams params);
  void FailOpen(const internal::OpenParams& params, uint32_t relid);
  void OnOpenReply(OfferId offer, OpId op, absl::StatusOr<std::optional<OpenResult>> result);
  void HandleClose(uint32_t relid);
  // Stops the guest -> host event and the interrupt of an open, sends the close.
  void CloseWithDevice(Channel& channel, bool released);
  void OnCloseReply(OfferId offer, OpId op);
  // The channel left the open states: its deferred GPADL teardowns go to the device.
  void ChannelStopped(Channel& channel);
  void HandleModify(const protocol::ModifyChannel& modify);
  void AnswerModify(uint32_t relid, uint64_t epoch, uint32_t status);
  void OnModifyReply(OfferId offer, OpId op, absl::StatusOr<int32_t> status);
  void Resignal(OfferId offer, OpId open_op);
  void RevokeUnclaimed();  // restore_claim_deadline passed: revoke what no device took back.
  // Ends the restore hold once no restored channel awaits its device (or `force`).
  void MaybeEndRestoreHold(bool force = false);

  // --- gpadls.cc: the GPADL table's protocol ---
  void HandleGpadlHeader(const protocol::ParsedMessage& message);
  void HandleGpadlBody(const protocol::ParsedMessage& message);
  void FinishGpadl(Gpadl& gpadl);
  void OfferGpadl(Gpadl& gpadl);
  void OnGpadlReply(GpadlId id, OpId op, absl::StatusOr<bool> accepted);
  void HandleGpadlTeardown(const protocol::GpadlTeardown& teardown);
  void TeardownWithDevice(Gpadl& gpadl);
  void OnTeardownReply(GpadlId id, OpId op);
  // Erases a GPADL, answering the teardowns that wait for it (if their connection is current).
  void GpadlGone(GpadlId id);
  void SendCreated(uint32_t relid, GpadlId id, uint32_t status);
  void SendTorndown(GpadlId id);

  // --- server_save.cc ---
  absl::StatusOr<RestoreResult> RestoreChannelState(OfferId offer,
                                                    const std::optional<OpenResult>& open);

  hw::EventLoop* const loop_;
  synic::ServerPort* const port_;
  ServerOptions options_;
  ServerStats stats_;
  // Without options_.log, lines go to the logging facility, at most 20 at once and 5 a second
  // on average per server: a guest that repeats a mistake cannot flood the log.
  log::RateLimit log_limit_{20, absl::Milliseconds(200)};
  log::Logger logger_{"vmbus server", &log_limit_};

  // The connection.
  Phase phase_ = Phase::kDisconnected;
  AfterDisconnect after_disconnect_;
  bool resetting_ = false;         // StartDisconnect is walking the channels and GPADLs.
  uint64_t connection_epoch_ = 1;  // Bumped by every connect and every reset.
  uint32_t version_ = 0;           // 0: not connected.
  uint32_t features_ = 0;
  bool offers_requested_ = false;
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
  bool hand_off_ = false;  // HandOffOnDestruction.
  // Restore: guest messages held until the restored channels' devices are back (see above).
  bool holding_for_restore_ = false;
  std::chrono::nanoseconds restore_hold_{0};  // How long it holds at most.
  bool paused_ = false;                       // PAUSE: messages to the guest held.
  std::vector<std::vector<uint8_t>> held_while_paused_;

  // Channels by relid (unique at any time), and by OfferId.
  std::map<uint32_t, std::unique_ptr<Channel>> channels_;
  absl::flat_hash_map<OfferId, Channel*> by_offer_;
  // Restored channels whose device has not offered again, by key.
  std::map<OfferKey, OfferId> awaiting_device_;
  internal::GpadlTable gpadls_{options_.limits};
  std::vector<uint32_t> free_relids_;  // Released relids, reused lowest first.
  uint32_t next_relid_ = 1;
  uint64_t monitor_ids_[2] = {0, 0};  // 128 monitor ids.
  OfferId next_offer_ = 1;
  OpId next_op_ = 1;
  // Shared with tasks still awaiting replies: they check it before touching the server.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The connection id the guest signals for channel `relid` (in the offer).
constexpr uint32_t ChannelConnectionId(uint32_t relid) { return 0x10000 + relid; }

template <typename R>
hw::Task VmbusServer::AwaitReply(const char* what, ReplyFuture<R> reply,
                                 std::function<void(absl::StatusOr<R>)> done) {
  std::shared_ptr<bool> alive = alive_;
  // Nothing may escape a task (it would end the process): a failure to wait is a reply that
  // never came, handled like a dropped Rpc.
  absl::StatusOr<R> result = absl::CancelledError("vmbus server: waiting for the reply failed");
  try {
    result = co_await reply.On(loop_);
  } catch (...) {
  }
  if (!*alive) co_return;
  Guarded(what, [&] { done(std::move(result)); });
}

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_SERVER_SERVER_H_
