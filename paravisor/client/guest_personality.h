// GuestPersonality: how one guest kernel behaves on VMBus (which versions it tries, what it
// asks for, which offers it keeps, whether it says UNLOAD), and PersonalityGuest, which drives
// a GuestClient the way that kernel would, so that tests can put the server through a real
// kernel's lifecycle rather than through hand-written messages.
//
// The facts are those of shared/docs/linux-guest.md ("Versions and connection", "Lifecycle a
// server must survive"), read from Linux drivers/hv/connection.c (vmbus_connect,
// vmbus_negotiate_version), channel_mgmt.c (vmbus_onoffer, vmbus_is_valid_offer,
// vmbus_initiate_unload, vmbus_onoffer_rescind), channel.c (vmbus_open, vmbus_close,
// vmbus_establish_gpadl, vmbus_teardown_gpadl, vmbus_send_modifychannel) and vmbus_drv.c
// (vmbus_bus_suspend/resume):
//
//   GuestPersonality::Linux61()      tries 5.3, 5.2, 5.1, 5.0, 4.1, 4.0, 3.0, 2.4; no feature
//                                    flags; its own two monitor pages; keeps every offer;
//                                    UNLOAD on a clean shutdown (never below 3.0).
//   GuestPersonality::Linux619Cvm()  Linux 6.19 on an SEV-SNP/TDX VM: tries 6.0 (asking for
//                                    confidential channels, 0x10) first, then the 6.1 list;
//                                    refuses an accepted version below 5.2; keeps only the
//                                    classes allowed on an isolated VM and hvsocket offers,
//                                    dropping the others silently (no RELID_RELEASED); never
//                                    asks for the server's monitor pages (0x40), so it signals
//                                    with HvSignalEvent wherever the server gives it no
//                                    monitor id.
//   GuestPersonality::Kexec(of)      the next kernel after a kexec or a crash: `of` in every
//                                    respect, but the kernel before it stopped without UNLOAD
//                                    (PersonalityGuest::Reboot), so its INITIATE_CONTACT finds
//                                    the old connection still up.
//
// Like Linux (connection_state is never read; only a VERSION_RESPONSE with version_supported
// set counts), except where a test guest should be louder than a kernel: a version accepted
// with a failed connection_state, and every wait that would block forever in Linux, are
// errors here (each wait has a timeout and names what did not come).
//
// PersonalityGuest also keeps the guest's account of the conversation: every answer the host
// sends must match a request of the current connection (OPENCHANNEL_RESULT for an open of
// that relid, GPADL_CREATED/GPADL_TORNDOWN for that GPADL id, MODIFYCHANNEL_RESPONSE,
// UNLOAD_RESPONSE, offers only after REQUESTOFFERS, rescinds only of channels offered). What
// does not match is listed by Unsolicited(): a kexec'd kernel that gets an old channel's
// answer would see "a channel that looks already open". Messages that arrive before this
// kernel's first accepted VERSION_RESPONSE were left by the kernel before it and are counted
// by stale_messages() instead.
//
// Threads: a PersonalityGuest's methods block (each waits, with a timeout, for the host) and
// may be called from one thread at a time; Received, Unsolicited, Outstanding and
// stale_messages may be called from any thread, also while a method runs elsewhere.
#ifndef CVMBUS_PARAVISOR_CLIENT_GUEST_PERSONALITY_H_
#define CVMBUS_PARAVISOR_CLIENT_GUEST_PERSONALITY_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "guestmem/guest_memory.h"
#include "paravisor/bus/guid.h"
#include "paravisor/client/guest_client.h"
#include "paravisor/protocol/codec.h"

namespace cvmbus::paravisor {

// Device classes (interface GUIDs, Linux hyperv.h). The first six, and hvsocket offers, are
// the ones a Linux guest keeps on an isolated VM (vmbus_devs[].allowed_in_isolated).
inline constexpr Guid kScsiClassId{
    0xba6163d9, 0x04a1, 0x4d29, {0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f}};
inline constexpr Guid kNetworkClassId{
    0xf8615163, 0xdf3e, 0x46c5, {0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e}};
inline constexpr Guid kPcieClassId{
    0x44c4f61d, 0x4444, 0x4400, {0x9d, 0x52, 0x80, 0x2e, 0x27, 0xed, 0xe1, 0x9f}};
inline constexpr Guid kTimeSyncClassId{
    0x9527e630, 0xd0ae, 0x497b, {0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf}};
inline constexpr Guid kHeartbeatClassId{
    0x57164f39, 0x9115, 0x4e78, {0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d}};
inline constexpr Guid kShutdownClassId{
    0x0e0b6031, 0x5213, 0x4934, {0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb}};
inline constexpr Guid kKvpClassId{
    0xa9a0f4e7, 0x5a45, 0x4d96, {0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6}};

// The first GPADL id a Linux kernel uses (vmbus_connection.next_gpadl_handle); every kernel
// starts there again, so a kexec'd kernel reuses its predecessor's ids.
inline constexpr uint32_t kLinuxFirstGpadlId = 0xe1e10;

// "5.3" for 0x50003.
std::string VersionText(uint32_t version);
// The offer's GUIDs in our type (the wire layout is the same bytes).
Guid OfferInterface(const protocol::OfferChannel& offer);
Guid OfferInstance(const protocol::OfferChannel& offer);

struct GuestPersonality {
  std::string name;
  // vmbus_versions: tried in this order; the first accepted wins.
  std::vector<uint32_t> versions;
  // The max_version module parameter: versions above it are skipped.
  uint32_t max_version = protocol::kVersionWin10V6_0;
  // An accepted version below this is refused (isolated VMs: 5.2), without UNLOAD.
  uint32_t min_version = 0;
  // Feature flags asked for in a 6.0+ INITIATE_CONTACT.
  uint32_t features = 0;
  // Sends its own parent -> child and child -> parent monitor pages in INITIATE_CONTACT.
  bool own_monitor_pages = true;
  // Sends UNLOAD on a clean shutdown (vmbus_initiate_unload; never below 3.0, where hosts
  // cannot reconnect).
  bool unload_on_shutdown = true;
  // Runs on a hardware-isolated VM: keeps only allowed classes and hvsocket offers.
  bool isolated = false;
  // Started by kexec (or as a crash kernel) from a kernel that did not unload.
  bool kexec = false;

  static GuestPersonality Linux61();
  static GuestPersonality Linux619Cvm();
  static GuestPersonality Kexec(GuestPersonality of);
  // The same kernel booted with max_version=`version`.
  GuestPersonality WithMaxVersion(uint32_t version) const;
  // The kernel this one is, kexec aside.
  GuestPersonality Base() const;

  // The flags an INITIATE_CONTACT for `version` asks for (none before 6.0).
  uint32_t FeaturesFor(uint32_t version) const;
  bool SendsUnloadAt(uint32_t version) const;
  // Whether the guest registers `offer` (else it drops it without a word).
  bool Keeps(const protocol::OfferChannel& offer) const;
};

struct PersonalityGuestOptions {
  // The SynIC and this kernel's SynIC pages. `timeout` and `on_message` are set by the
  // PersonalityGuest.
  GuestClientOptions client;
  // This kernel's two monitor pages (parent -> child at this GPA, child -> parent one page
  // above), reached through `monitor_memory` (shared memory on an isolated VM). 0: none.
  uint64_t monitor_pages_gpa = 0;
  std::optional<guestmem::GuestMemory> monitor_memory;
  // How long each wait for the host lasts.
  std::chrono::milliseconds timeout = std::chrono::seconds(5);
};

class PersonalityGuest {
 public:
  // A kernel that has just started: its SynIC is programmed (its SIMP and SIEFP pages zeroed
  // first, as a kernel's freshly allocated pages are), it has said nothing to the host yet.
  static absl::StatusOr<std::unique_ptr<PersonalityGuest>> Create(GuestPersonality personality,
                                                                  PersonalityGuestOptions options);
  // Replaces `running` by a new kernel of `next` on the same SynIC and pages: if `next.kexec`
  // the running kernel stops without a word (Crash), else it shuts down cleanly first
  // (Shutdown). The new kernel is created, not booted.
  static absl::StatusOr<std::unique_ptr<PersonalityGuest>> Reboot(
      std::unique_ptr<PersonalityGuest> running, GuestPersonality next);
  ~PersonalityGuest();
  PersonalityGuest(const PersonalityGuest&) = delete;
  PersonalityGuest& operator=(const PersonalityGuest&) = delete;

  // --- The kernel's lifecycle ---
  // vmbus_connect, then REQUESTOFFERS: the offers it keeps are offers(). Errors: no version
  // accepted (kUnavailable, naming every version tried), an accepted version below
  // min_version (kFailedPrecondition, naming it; the host is left connected, as Linux leaves
  // it), a wait that timed out (kDeadlineExceeded).
  absl::Status Boot();
  // A clean shutdown: UNLOAD and its answer where the personality sends one at this version,
  // then the kernel is gone (its SynIC masked and off).
  absl::Status Shutdown();
  // The kernel stops without a word (a crash, or the moment of a kexec).
  void Crash();
  // Hibernation (vmbus_bus_suspend): every open channel closed and its GPADLs torn down by
  // its driver, then UNLOAD and its answer. Resume (vmbus_bus_resume): INITIATE_CONTACT at
  // the version it had, REQUESTOFFERS, and every primary channel it had must be offered
  // again with the same instance GUID (kNotFound naming the one that is missing). Hibernate
  // is kFailedPrecondition where the personality sends no UNLOAD (below 3.0).
  absl::Status Hibernate();
  absl::Status Resume();

  // --- Channels, as vmbus_open and friends drive them ---
  // A one-range GPADL over whole pages `gpns`, with the next GPADL id (from
  // kLinuxFirstGpadlId). Send* posts and returns the id; Await* waits for GPADL_CREATED and
  // returns its status. CreateGpadl does both and fails unless the status is success.
  absl::StatusOr<uint32_t> SendGpadl(uint32_t relid, const std::vector<uint64_t>& gpns);
  absl::StatusOr<uint32_t> AwaitGpadl(uint32_t gpadl_id);
  absl::StatusOr<uint32_t> CreateGpadl(uint32_t relid, const std::vector<uint64_t>& gpns);
  // GPADL_TEARDOWN; waits for GPADL_TORNDOWN.
  absl::Status TeardownGpadl(uint32_t relid, uint32_t gpadl_id);
  // OPENCHANNEL (open id = relid, as Linux). AwaitOpen returns the OPENCHANNEL_RESULT status,
  // or kAborted if the channel is rescinded first (a rescind wakes Linux's open waiter).
  absl::Status SendOpen(uint32_t relid, uint32_t ring_gpadl_id, uint32_t downstream_page_offset,
                        uint32_t target_vp = 0);
  absl::StatusOr<uint32_t> AwaitOpen(uint32_t relid);
  // SendOpen + AwaitOpen; fails unless the status is success.
  absl::Status Open(uint32_t relid, uint32_t ring_gpadl_id, uint32_t downstream_page_offset,
                    uint32_t target_vp = 0);
  // CLOSECHANNEL (no answer exists).
  absl::Status Close(uint32_t relid);
  // MODIFYCHANNEL (a CPU going offline, a sysfs write): from 5.3 the MODIFYCHANNEL_RESPONSE
  // status; before 5.3 nullopt at once (there is no answer); below 4.1 kFailedPrecondition
  // (Linux cannot retarget). SendModify/AwaitModify split it for tests that hold the answer.
  absl::StatusOr<std::optional<uint32_t>> ModifyChannel(uint32_t relid, uint32_t target_vp);
  absl::Status SendModify(uint32_t relid, uint32_t target_vp);
  absl::StatusOr<uint32_t> AwaitModify(uint32_t relid);

  // --- Offers after boot ---
  // The next offer the guest keeps (dropped ones are skipped and counted); kDeadlineExceeded
  // if none comes within `timeout`.
  absl::StatusOr<protocol::OfferChannel> NextOffer(std::chrono::milliseconds timeout);
  // The relid of the next rescind of a channel it kept (others are ignored, as Linux ignores
  // a rescind for a relid it never registered).
  absl::StatusOr<uint32_t> AwaitRescind(std::chrono::milliseconds timeout);
  // What the driver's removal does for a rescinded channel: CLOSECHANNEL if it is open, every
  // GPADL of it torn down, then RELID_RELEASED.
  absl::Status RemoveRescinded(uint32_t relid);

  // --- State ---
  const GuestPersonality& personality() const { return personality_; }
  uint32_t version() const { return version_; }    // 0 until a version was accepted.
  uint32_t features() const { return features_; }  // Granted by the host.
  // The offers kept on this connection (Boot/Resume, then NextOffer), and the number dropped.
  const std::vector<protocol::OfferChannel>& offers() const { return offers_; }
  size_t dropped_offers() const { return dropped_offers_; }
  // The versions INITIATE_CONTACT asked for, in order, over this kernel's life.
  const std::vector<uint32_t>& versions_tried() const { return versions_tried_; }
  // The client, for raw protocol steps (sends through it bypass the accounting below). Null
  // once the kernel is gone.
  GuestClient* client() { return client_.get(); }

  // --- The guest's account of what the host sent (any thread) ---
  size_t Received(protocol::MessageType type) const;
  // Host messages no request of the current connection asked for, described.
  std::vector<std::string> Unsolicited() const;
  // Requests of this kernel not answered yet (an UNLOAD_RESPONSE forgets the connection's).
  std::vector<std::string> Outstanding() const;
  // Messages that came before this kernel's first accepted VERSION_RESPONSE.
  size_t stale_messages() const;

 private:
  enum class State { kStarted, kRunning, kRefused, kHibernated, kGone };
  struct Expected {
    protocol::MessageType type;
    uint32_t id;  // relid or GPADL id; 0 where the answer names nothing.
  };

  PersonalityGuest(GuestPersonality personality, PersonalityGuestOptions options)
      : personality_(std::move(personality)), options_(std::move(options)) {}
  // Runs on the client's loop thread for every host message.
  void Observe(const protocol::ParsedMessage& message);
  void Expect(protocol::MessageType type, uint32_t id);
  // A new INITIATE_CONTACT: the previous connection's answers are no longer wanted.
  void StartConnection();
  absl::Status Require(State state, const char* operation) const;
  absl::Status Error(absl::Status status, const std::string& operation) const;
  absl::StatusOr<protocol::VersionResponse> Contact(uint32_t version);
  absl::Status RequestOffers();
  absl::Status Unload();
  GuestMonitorSetup MonitorSetup() const;
  bool Rescinded(uint32_t relid) const;

  const GuestPersonality personality_;
  const PersonalityGuestOptions options_;
  std::unique_ptr<GuestClient> client_;
  State state_ = State::kStarted;
  uint32_t version_ = 0;
  uint32_t features_ = 0;
  std::vector<uint32_t> versions_tried_;
  std::vector<protocol::OfferChannel> offers_;
  size_t dropped_offers_ = 0;
  uint32_t next_gpadl_id_ = kLinuxFirstGpadlId;
  absl::flat_hash_map<uint32_t, uint32_t> open_;    // relid -> ring GPADL id.
  absl::flat_hash_map<uint32_t, uint32_t> gpadls_;  // GPADL id -> relid (created ones).

  mutable Mutex mu_;  // What Observe shares with the callers' thread.
  std::vector<Expected> expected_ ABSL_GUARDED_BY(mu_);
  bool answered_ ABSL_GUARDED_BY(mu_) = false;   // A VERSION_RESPONSE accepted us once.
  bool connected_ ABSL_GUARDED_BY(mu_) = false;  // Since then, until UNLOAD_RESPONSE.
  bool offers_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<uint32_t> offered_ ABSL_GUARDED_BY(mu_);           // On this connection.
  absl::flat_hash_set<uint32_t> rescinded_ ABSL_GUARDED_BY(mu_);         // On this connection.
  absl::flat_hash_map<uint32_t, size_t> received_ ABSL_GUARDED_BY(mu_);  // By message type.
  std::vector<std::string> unsolicited_ ABSL_GUARDED_BY(mu_);
  size_t stale_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace cvmbus::paravisor

#endif  // CVMBUS_PARAVISOR_CLIENT_GUEST_PERSONALITY_H_
