// GuestClient: a guest-side VMBus client for tests and the demo. It negotiates a version,
// receives offers, creates GPADLs for rings and buffers, opens and closes channels, and tears
// things down, speaking the channel control protocol through the SynIC exactly as a guest
// kernel would: the same bytes Linux's vmbus driver sends, posted with HvPostMessage from its
// hypercall input page, answers taken from its SIMP slot, channel interrupts from its SIEFP
// flags (GuestSynic does the kernel's SynIC part).
//
// The client runs its own EventLoop thread to receive host messages; its public methods are
// blocking calls (each waits, with a timeout, for the host's answer) and may be called from
// one test or demo thread at a time.
#ifndef CVMBUS_PARAVISOR_CLIENT_GUEST_CLIENT_H_
#define CVMBUS_PARAVISOR_CLIENT_GUEST_CLIENT_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "hw/uring/event_loop.h"
#include "paravisor/client/guest_synic.h"
#include "paravisor/protocol/codec.h"
#include "paravisor/synic/synic.h"

namespace cvmbus::paravisor {

// Monitor pages (MNF) for GuestClient::Connect. `parent_to_child`/`child_to_parent` are the
// guest's own pages, sent in INITIATE_CONTACT (0 and 0: none), accessed through `own_pages`.
// If the host answers with kFeatureServerSpecifiedMonitorPages (ask for it in the features),
// its child -> parent page is used instead, through `server_pages` (the private view on a
// confidential VM).
struct GuestMonitorSetup {
  uint64_t parent_to_child = 0;
  uint64_t child_to_parent = 0;
  std::optional<guestmem::GuestMemory> own_pages;
  std::optional<guestmem::GuestMemory> server_pages;
};

struct GuestClientOptions {
  std::shared_ptr<synic::Synic> synic;  // The SynIC the server is attached to.
  guestmem::GuestMemory memory;         // The guest's view of its SynIC pages.
  uint32_t vp = 0;
  GuestSynicPages pages;
  // How long each blocking call waits for the host's answer.
  std::chrono::milliseconds timeout = std::chrono::seconds(10);
  // Sees every host message the client parses, in arrival order, before any wait can take it
  // (a guest's view of the whole conversation). Runs on the client's loop thread and must not
  // block or call back into the client.
  std::function<void(const protocol::ParsedMessage&)> on_message;
};

class GuestClient {
 public:
  static absl::StatusOr<std::unique_ptr<GuestClient>> Create(GuestClientOptions options);
  ~GuestClient();

  // INITIATE_CONTACT for `version` with `features`; the host's VERSION_RESPONSE.
  // kUnavailable if the host does not support the version.
  absl::StatusOr<protocol::VersionResponse> Connect(uint32_t version, uint32_t features,
                                                    GuestMonitorSetup monitor = {});
  // REQUESTOFFERS; the offers up to ALLOFFERS_DELIVERED.
  absl::StatusOr<std::vector<protocol::OfferChannel>> RequestOffers();
  // GPADL_HEADER (+ bodies) for one range over `gpns` covering whole pages; the GPADL's
  // GPADL_CREATED status (kStatusSuccess or a failure) or a transport error.
  absl::StatusOr<uint32_t> CreateGpadl(uint32_t relid, uint32_t gpadl_id,
                                       const std::vector<uint64_t>& gpns);
  absl::Status TeardownGpadl(uint32_t relid, uint32_t gpadl_id);  // Waits for GPADL_TORNDOWN.
  // OPENCHANNEL; the OPENCHANNEL_RESULT status. Where the connection granted
  // kFeatureGuestSpecifiedSignalParameters the request carries the signal parameters:
  // `connection_id` (default: the one the offer named), which SignalHost then uses, and the
  // event flag (the relid).
  absl::StatusOr<uint32_t> OpenChannel(uint32_t relid, uint32_t ring_gpadl,
                                       uint32_t downstream_page_offset, uint32_t target_vp = 0,
                                       std::optional<uint32_t> connection_id = std::nullopt);
  absl::Status CloseChannel(uint32_t relid);
  absl::StatusOr<uint32_t> ModifyChannel(uint32_t relid, uint32_t target_vp);
  absl::Status ReleaseRelid(uint32_t relid);
  absl::Status Unload();  // Waits for UNLOAD_RESPONSE.

  // Raw access for protocol tests: send any bytes; wait for the next host message of `type`
  // (messages of other types that arrive meanwhile are kept for later waits).
  absl::Status SendRaw(const std::vector<uint8_t>& bytes);
  absl::StatusOr<protocol::ParsedMessage> WaitFor(protocol::MessageType type,
                                                  std::chrono::milliseconds timeout);
  // The same for the first message of `type` that `matches` (e.g. the GPADL_CREATED of one
  // GPADL id); `matches` runs under the client's lock and must not call back into it.
  absl::StatusOr<protocol::ParsedMessage> WaitForMatching(
      protocol::MessageType type,
      const std::function<bool(const protocol::ParsedMessage&)>& matches,
      std::chrono::milliseconds timeout);
  // Drops every message received and not yet waited for.
  void DiscardInbox();
  // True if no message of `type` arrives within `quiet` (for "the host said nothing" checks).
  bool NothingArrives(protocol::MessageType type, std::chrono::milliseconds quiet);

  // The eventfd the channel's host -> guest interrupt signals (created on first call).
  int ChannelEventFd(uint32_t relid);
  // Signals the host for the channel as Linux does: a channel offered with a monitor id sets
  // its pending bit in the child -> parent monitor page (no hypercall); any other channel gets
  // HvSignalEvent on the connection id its offer named.
  absl::Status SignalHost(uint32_t relid);

  uint32_t version() const { return version_; }
  uint32_t features() const { return features_; }  // Granted by the last VERSION_RESPONSE.

 private:
  explicit GuestClient(GuestClientOptions options) : options_(std::move(options)) {}
  void OnMessage(std::vector<uint8_t> bytes);
  void OnEvent(uint16_t flag);
  // HvPostMessage, retried while the SynIC answers INSUFFICIENT_BUFFERS (as vmbus_post_msg).
  absl::Status Post(const std::vector<uint8_t>& bytes) {
    return PostTo(message_connection_id_, bytes);
  }
  absl::Status PostTo(uint32_t connection_id, const std::vector<uint8_t>& bytes);

  const GuestClientOptions options_;
  std::unique_ptr<hw::EventLoop> loop_;
  std::unique_ptr<GuestSynic> synic_;  // Created and destroyed on loop_'s thread.
  std::thread thread_;
  uint32_t version_ = 0;
  uint32_t features_ = 0;
  uint32_t message_connection_id_ = protocol::kMessageConnectionId;
  Mutex mu_;
  std::condition_variable_any arrived_;
  std::deque<protocol::ParsedMessage> inbox_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, uint32_t> connection_ids_ ABSL_GUARDED_BY(mu_);  // relid ->
  absl::flat_hash_map<uint32_t, int> event_fds_ ABSL_GUARDED_BY(mu_);            // event flag -> fd
  absl::flat_hash_map<uint32_t, uint8_t> monitor_ids_ ABSL_GUARDED_BY(mu_);      // relid -> id
  // The child -> parent monitor page in use, if any (set by Connect).
  std::optional<guestmem::GuestMemory> monitor_memory_;
  uint64_t monitor_page_ = 0;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_CLIENT_GUEST_CLIENT_H_
