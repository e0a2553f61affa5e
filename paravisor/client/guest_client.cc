#include "paravisor/client/guest_client.h"

#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <future>

#include "base/format.h"
#include "hw/uring/signal.h"
#include "paravisor/protocol/monitor_page.h"

namespace cvmbus::paravisor {
namespace {
using protocol::MessageType;
}  // namespace

absl::StatusOr<std::unique_ptr<GuestClient>> GuestClient::Create(GuestClientOptions options) {
  std::unique_ptr<GuestClient> client(new GuestClient(std::move(options)));
  GuestClient* raw = client.get();
  std::promise<absl::Status> ready;
  raw->thread_ = std::thread([raw, &ready] {
    auto loop = hw::EventLoop::Create();
    if (!loop.ok()) {
      ready.set_value(loop.status());
      return;
    }
    raw->loop_ = *std::move(loop);
    GuestSynicOptions synic;
    synic.synic = raw->options_.synic;
    synic.memory = raw->options_.memory;
    synic.vp = raw->options_.vp;
    synic.pages = raw->options_.pages;
    synic.on_message = [raw](std::vector<uint8_t> bytes) { raw->OnMessage(std::move(bytes)); };
    synic.on_event = [raw](uint16_t flag) { raw->OnEvent(flag); };
    absl::StatusOr<std::unique_ptr<GuestSynic>> guest_synic =
        GuestSynic::Create(std::move(synic), raw->loop_.get());
    if (!guest_synic.ok()) {
      ready.set_value(guest_synic.status());
      return;
    }
    raw->synic_ = *std::move(guest_synic);
    ready.set_value(absl::OkStatus());
    (void)raw->loop_->Run();
    raw->synic_.reset();  // On the loop's thread, after its last drain: no more deliveries.
  });
  if (absl::Status status = ready.get_future().get(); !status.ok()) {
    raw->thread_.join();
    return status;
  }
  return client;
}

GuestClient::~GuestClient() {
  if (loop_) loop_->Stop();
  if (thread_.joinable()) thread_.join();
  // Destroy the loop while the members its leftover posted handlers touch are alive. (Its
  // thread has ended, so no other thread can be inside Stop() or Post() any more.)
  loop_.reset();
  MutexLock lock(&mu_);
  for (auto& [flag, fd] : event_fds_) close(fd);
}

void GuestClient::OnEvent(uint16_t flag) {
  MutexLock lock(&mu_);
  auto it = event_fds_.find(flag);
  if (it == event_fds_.end()) return;  // No channel listens: dropped, as Linux does.
  const uint64_t one = 1;
  (void)!write(it->second, &one, sizeof(one));
}

void GuestClient::OnMessage(std::vector<uint8_t> bytes) {
  absl::StatusOr<protocol::ParsedMessage> parsed = protocol::ParseMessage(bytes);
  if (!parsed.ok()) return;  // A malformed host message: a real guest would log and drop it.
  if (options_.on_message) options_.on_message(*parsed);
  MutexLock lock(&mu_);
  if (const auto* offer = parsed->As<protocol::OfferChannel>()) {
    connection_ids_[offer->child_relid] = offer->connection_id;
    if (offer->monitor_allocated() && offer->monitor_id < protocol::monitor::kMaxMonitorIds) {
      monitor_ids_[offer->child_relid] = offer->monitor_id;
    } else {
      monitor_ids_.erase(offer->child_relid);
    }
  }
  inbox_.push_back(*std::move(parsed));
  arrived_.notify_all();
}

absl::Status GuestClient::PostTo(uint32_t connection_id, const std::vector<uint8_t>& bytes) {
  if (bytes.size() > synic::kMessagePayloadBytes) {
    return absl::InvalidArgumentError(
        fmt::format("guest client: a {}-byte message exceeds the 240-byte payload", bytes.size()));
  }
  // vmbus_post_msg retries INSUFFICIENT_BUFFERS/MEMORY up to 100 times, sleeping 1..20 ms.
  auto backoff = std::chrono::microseconds(100);
  for (int attempt = 0;; ++attempt) {
    const uint64_t status = synic_->PostMessage(connection_id, bytes);
    if (status == synic::kStatusSuccess) return absl::OkStatus();
    if (status != synic::kStatusInsufficientBuffers || attempt == 100) {
      return absl::UnavailableError(fmt::format(
          "guest client: HvPostMessage to connection {} returned {:#x}", connection_id, status));
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::microseconds(20000));
  }
}

absl::Status GuestClient::SendRaw(const std::vector<uint8_t>& bytes) { return Post(bytes); }

absl::StatusOr<protocol::ParsedMessage> GuestClient::WaitFor(MessageType type,
                                                             std::chrono::milliseconds timeout) {
  return WaitForMatching(
      type, [](const protocol::ParsedMessage&) { return true; }, timeout);
}

absl::StatusOr<protocol::ParsedMessage> GuestClient::WaitForMatching(
    MessageType type, const std::function<bool(const protocol::ParsedMessage&)>& matches,
    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(&mu_);
  std::unique_lock<Mutex> wait_lock(mu_, std::adopt_lock);
  while (true) {
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (it->type == type && matches(*it)) {
        protocol::ParsedMessage message = std::move(*it);
        inbox_.erase(it);
        wait_lock.release();
        return message;
      }
    }
    if (arrived_.wait_until(wait_lock, deadline) == std::cv_status::timeout) {
      wait_lock.release();
      return absl::DeadlineExceededError(
          fmt::format("guest client: no {} from the host within {} ms",
                      protocol::MessageTypeName(type), timeout.count()));
    }
  }
}

void GuestClient::DiscardInbox() {
  MutexLock lock(&mu_);
  inbox_.clear();
}

bool GuestClient::NothingArrives(MessageType type, std::chrono::milliseconds quiet) {
  return !WaitFor(type, quiet).ok();
}

absl::StatusOr<protocol::VersionResponse> GuestClient::Connect(uint32_t version, uint32_t features,
                                                               GuestMonitorSetup monitor) {
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = version;
  contact.monitor_page1 = monitor.parent_to_child;
  contact.monitor_page2 = monitor.child_to_parent;
  if (version >= protocol::kVersionWin10V5) {
    contact.interrupt_page_or_target.target.message_sint = protocol::kMessageSint;
  }
  if (version >= protocol::kVersionWin10V6_0) {
    contact.interrupt_page_or_target.target.feature_flags = features;
  }
  // From 5.0 INITIATE_CONTACT goes to connection 4, and later messages to the connection the
  // answer names; before 5.0 everything goes to connection 1 (Linux vmbus_negotiate_version).
  const bool v5 = version >= protocol::kVersionWin10V5;
  if (absl::Status status =
          PostTo(v5 ? protocol::kMessageConnectionId4 : protocol::kMessageConnectionId,
                 protocol::EncodeInitiateContact(contact));
      !status.ok()) {
    return status;
  }
  absl::StatusOr<protocol::ParsedMessage> reply =
      WaitFor(MessageType::kVersionResponse, options_.timeout);
  if (!reply.ok()) return reply.status();
  const protocol::VersionResponse response = *reply->As<protocol::VersionResponse>();
  if (!response.version_supported) {
    return absl::UnavailableError(fmt::format("host does not support version {:#x}", version));
  }
  if (response.connection_state != protocol::kConnectionSuccessful) return response;
  version_ = version;
  features_ = response.supported_features;
  message_connection_id_ = v5 ? response.message_connection_id : protocol::kMessageConnectionId;
  if (response.has_server_monitor_pages()) {
    monitor_memory_ = monitor.server_pages;
    monitor_page_ = response.child_to_parent_monitor_page;
  } else {
    monitor_memory_ = monitor.child_to_parent != 0 ? monitor.own_pages : std::nullopt;
    monitor_page_ = monitor.child_to_parent;
  }
  return response;
}

absl::StatusOr<std::vector<protocol::OfferChannel>> GuestClient::RequestOffers() {
  if (absl::Status status = Post(protocol::Encode(protocol::RequestOffers{})); !status.ok()) {
    return status;
  }
  if (absl::Status status = WaitFor(MessageType::kAllOffersDelivered, options_.timeout).status();
      !status.ok()) {
    return status;
  }
  std::vector<protocol::OfferChannel> offers;
  MutexLock lock(&mu_);
  for (auto it = inbox_.begin(); it != inbox_.end();) {
    if (it->type == MessageType::kOfferChannel) {
      offers.push_back(*it->As<protocol::OfferChannel>());
      it = inbox_.erase(it);
    } else {
      ++it;
    }
  }
  return offers;
}

absl::StatusOr<uint32_t> GuestClient::CreateGpadl(uint32_t relid, uint32_t gpadl_id,
                                                  const std::vector<uint64_t>& gpns) {
  std::vector<uint64_t> words;
  words.push_back(uint64_t{static_cast<uint32_t>(gpns.size() * 4096)});  // byte_count, offset 0
  words.insert(words.end(), gpns.begin(), gpns.end());
  absl::StatusOr<std::vector<std::vector<uint8_t>>> messages =
      protocol::EncodeGpadl(relid, gpadl_id, 1, words);
  if (!messages.ok()) return messages.status();
  for (const auto& message : *messages) {
    if (absl::Status status = Post(message); !status.ok()) return status;
  }
  auto created = WaitFor(MessageType::kGpadlCreated, options_.timeout);
  if (!created.ok()) return created.status();
  return created->As<protocol::GpadlCreated>()->creation_status;
}

absl::Status GuestClient::TeardownGpadl(uint32_t relid, uint32_t gpadl_id) {
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = gpadl_id;
  if (absl::Status status = Post(protocol::Encode(teardown)); !status.ok()) return status;
  return WaitFor(MessageType::kGpadlTorndown, options_.timeout).status();
}

absl::StatusOr<uint32_t> GuestClient::OpenChannel(uint32_t relid, uint32_t ring_gpadl,
                                                  uint32_t downstream_page_offset,
                                                  uint32_t target_vp,
                                                  std::optional<uint32_t> connection_id) {
  protocol::OpenChannel open{};
  open.child_relid = relid;
  open.open_id = relid;
  open.ring_buffer_gpadl = ring_gpadl;
  open.target_vp = target_vp;
  open.downstream_page_offset = downstream_page_offset;
  const bool with_tail = (features_ & (protocol::kFeatureGuestSpecifiedSignalParameters |
                                       protocol::kFeatureChannelInterruptRedirection)) != 0;
  if ((features_ & protocol::kFeatureGuestSpecifiedSignalParameters) != 0) {
    MutexLock lock(&mu_);
    auto offered = connection_ids_.find(relid);
    if (connection_id.has_value()) {
      connection_ids_[relid] = *connection_id;
    } else if (offered != connection_ids_.end()) {
      connection_id = offered->second;
    }
    open.connection_id = connection_id.value_or(0);
    open.event_flag = static_cast<uint16_t>(relid);
  }
  if (absl::Status status = Post(protocol::EncodeOpenChannel(open, with_tail)); !status.ok()) {
    return status;
  }
  auto result = WaitFor(MessageType::kOpenChannelResult, options_.timeout);
  if (!result.ok()) return result.status();
  return result->As<protocol::OpenResult>()->status;
}

absl::Status GuestClient::CloseChannel(uint32_t relid) {
  protocol::CloseChannel close{};
  close.child_relid = relid;
  return Post(protocol::Encode(close));
}

absl::StatusOr<uint32_t> GuestClient::ModifyChannel(uint32_t relid, uint32_t target_vp) {
  protocol::ModifyChannel modify{};
  modify.child_relid = relid;
  modify.target_vp = target_vp;
  if (absl::Status status = Post(protocol::Encode(modify)); !status.ok()) return status;
  auto response = WaitFor(MessageType::kModifyChannelResponse, options_.timeout);
  if (!response.ok()) return response.status();
  return response->As<protocol::ModifyChannelResponse>()->status;
}

absl::Status GuestClient::ReleaseRelid(uint32_t relid) {
  protocol::RelIdReleased released{};
  released.child_relid = relid;
  return Post(protocol::Encode(released));
}

absl::Status GuestClient::Unload() {
  if (absl::Status status = Post(protocol::Encode(protocol::Unload{})); !status.ok()) {
    return status;
  }
  return WaitFor(MessageType::kUnloadResponse, options_.timeout).status();
}

int GuestClient::ChannelEventFd(uint32_t relid) {
  MutexLock lock(&mu_);
  auto it = event_fds_.find(relid);
  if (it != event_fds_.end()) return it->second;
  const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  event_fds_[relid] = fd;  // The channel's event flag is its relid (OpenChannel asks so).
  return fd;
}

absl::Status GuestClient::SignalHost(uint32_t relid) {
  uint32_t connection_id;
  std::optional<uint8_t> monitor_id;
  {
    MutexLock lock(&mu_);
    auto it = connection_ids_.find(relid);
    if (it == connection_ids_.end()) {
      return absl::NotFoundError(fmt::format("guest client: no offer for channel {}", relid));
    }
    connection_id = it->second;
    if (auto monitored = monitor_ids_.find(relid); monitored != monitor_ids_.end()) {
      monitor_id = monitored->second;
    }
  }
  if (monitor_id.has_value() && monitor_memory_.has_value() && monitor_page_ != 0) {
    // Linux vmbus_setevent: sync_set_bit(monitor_bit, &pending[monitor_grp]).
    const uint64_t pending = monitor_page_ + protocol::monitor::PendingOffset(
                                                 *monitor_id / protocol::monitor::kIdsPerGroup);
    return monitor_memory_
        ->FetchOr32(pending, 1u << (*monitor_id % protocol::monitor::kIdsPerGroup))
        .status();
  }
  const uint64_t status = synic_->SignalEvent(connection_id);
  if (status != synic::kStatusSuccess) {
    return absl::UnavailableError(fmt::format(
        "guest client: HvSignalEvent on connection {:#x} returned {:#x}", connection_id, status));
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
