#include "paravisor/testing/ic_guest.h"

#include <cstring>
#include <utility>

#include "paravisor/protocol/channel_messages.h"
#include "paravisor/testing/linux_negotiate.h"

namespace cvmbus::paravisor::ic::testing {
namespace {

constexpr size_t kLinuxReceiveBuffer = 4 * 4096;  // kmalloc(HV_HYP_PAGE_SIZE * 4).
constexpr size_t kStatusAt = kIcHeaderOffset + offsetof(IcMessageHeader, status);
constexpr size_t kFlagsAt = kIcHeaderOffset + offsetof(IcMessageHeader, flags);
constexpr size_t kTypeAt = kIcHeaderOffset + offsetof(IcMessageHeader, message_type);

template <typename T>
T Get(const std::vector<uint8_t>& buf, size_t at) {
  T value{};
  std::memcpy(&value, buf.data() + at, sizeof(T));
  return value;
}
template <typename T>
void Put(std::vector<uint8_t>& buf, size_t at, T value) {
  std::memcpy(buf.data() + at, &value, sizeof(T));
}

}  // namespace

bool OfferIs(const protocol::OfferChannel& offer, const Guid& interface_id) {
  return std::memcmp(offer.interface_type.bytes, &interface_id, sizeof(Guid)) == 0;
}

IcGuest::IcGuest(paravisor::vm::VirtualMachine* vm, IcGuestOptions options,
                 std::unique_ptr<paravisor::testing::GuestChannel> channel)
    : vm_(vm), options_(std::move(options)), channel_(std::move(channel)) {
  if (options_.framework_versions.empty()) {
    options_.framework_versions.assign(std::begin(kLinuxFrameworkVersions),
                                       std::end(kLinuxFrameworkVersions));
  }
  if (options_.message_versions.empty()) {
    switch (options_.service) {
      case IcService::kHeartbeat:
        options_.message_versions.assign(std::begin(kLinuxHeartbeatVersions),
                                         std::end(kLinuxHeartbeatVersions));
        break;
      case IcService::kShutdown:
        options_.message_versions.assign(std::begin(kLinuxShutdownVersions),
                                         std::end(kLinuxShutdownVersions));
        break;
      case IcService::kTimeSync:
        options_.message_versions.assign(std::begin(kLinuxTimeSyncVersions),
                                         std::end(kLinuxTimeSyncVersions));
        break;
    }
  }
}

absl::StatusOr<std::unique_ptr<IcGuest>> IcGuest::Attach(paravisor::vm::VirtualMachine* vm,
                                                         IcGuestOptions options) {
  absl::StatusOr<std::unique_ptr<paravisor::testing::GuestChannel>> channel =
      paravisor::testing::GuestChannel::Open(vm, {.relid = options.relid,
                                                  .gpadl_id = options.gpadl_id,
                                                  .first_gpn = options.first_gpn,
                                                  .ring_pages = options.ring_pages,
                                                  .confidential = options.confidential});
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<IcGuest>(new IcGuest(vm, std::move(options), *std::move(channel)));
}

absl::Status IcGuest::ReceiveRaw(ring::PacketBuffer* buffer, std::chrono::milliseconds timeout) {
  return channel_->Receive(buffer, timeout);
}

absl::Status IcGuest::SendRaw(absl::Span<const uint8_t> payload, uint64_t transaction_id,
                              ring::PacketType type) {
  return channel_->SendPacket(
      {.type = type, .flags = 0, .transaction_id = transaction_id, .payload = payload});
}

absl::StatusOr<IcGuestEvent> IcGuest::ServeOne(std::chrono::milliseconds timeout) {
  ring::PacketBuffer buffer;
  if (absl::Status status = channel_->Receive(&buffer, timeout); !status.ok()) return status;
  const ring::Packet& packet = buffer.packet();
  IcGuestEvent event;
  event.transaction_id = packet.transaction_id;
  if (packet.payload.size() > 4096) {
    // vmbus_recvpacket into a HV_HYP_PAGE_SIZE buffer fails with -ENOBUFS.
    return absl::ResourceExhaustedError("ic guest: a packet over Linux's 4 KiB buffer");
  }
  const uint32_t recvlen = static_cast<uint32_t>(packet.payload.size());
  event.received_bytes = recvlen;
  std::vector<uint8_t> buf(kLinuxReceiveBuffer, 0);
  std::memcpy(buf.data(), packet.payload.data(), recvlen);
  if (recvlen < kIcBodyOffset) return event;  // "Packet length too small": dropped.
  event.message_type = Get<uint16_t>(buf, kTypeAt);
  bool answer = true;
  switch (event.message_type) {
    case kMessageTypeNegotiate:
      Negotiate(buf, recvlen, event);
      break;
    case kMessageTypeHeartbeat:
      answer = options_.service == IcService::kHeartbeat ? Heartbeat(buf, recvlen, event) : true;
      break;
    case kMessageTypeShutdown:
      answer = options_.service == IcService::kShutdown ? Shutdown(buf, recvlen, event) : true;
      break;
    case kMessageTypeTimeSync:
      answer = options_.service == IcService::kTimeSync ? TimeSync(buf, recvlen, event) : true;
      break;
    default:
      break;
  }
  // A type the service does not handle: "Invalid msg type", answered HV_E_FAIL.
  const bool handled =
      event.message_type == kMessageTypeNegotiate ||
      (event.message_type == kMessageTypeHeartbeat && options_.service == IcService::kHeartbeat) ||
      (event.message_type == kMessageTypeShutdown && options_.service == IcService::kShutdown) ||
      (event.message_type == kMessageTypeTimeSync && options_.service == IcService::kTimeSync);
  if (!handled) Put<uint32_t>(buf, kStatusAt, kStatusFail);
  if (!answer) return event;
  buf[kFlagsAt] = kFlagTransaction | kFlagResponse;
  event.status = Get<uint32_t>(buf, kStatusAt);
  if (absl::Status sent = SendRaw(absl::MakeConstSpan(buf.data(), recvlen), packet.transaction_id);
      !sent.ok()) {
    return sent;
  }
  event.answered = true;
  return event;
}

void IcGuest::Negotiate(std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event) {
  const LinuxNegotiation result = PrepareNegotiateResponse(
      buf, recvlen, options_.framework_versions, options_.message_versions);
  if (recvlen >= kIcBodyOffset + 4) service_version_ = result.message;
  if (result.found) event.negotiated = IcVersions{result.framework, result.message};
}

bool IcGuest::Heartbeat(std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event) {
  if (recvlen < kIcBodyOffset + sizeof(uint64_t)) return false;  // Dropped.
  event.sequence = Get<uint64_t>(buf, kIcBodyOffset);
  Put<uint64_t>(buf, kIcBodyOffset, event.sequence + 1);
  return true;
}

bool IcGuest::Shutdown(std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event) {
  if (recvlen < kIcBodyOffset + sizeof(ShutdownMessage)) return false;  // Dropped.
  event.shutdown_flags = Get<uint32_t>(buf, kIcBodyOffset + offsetof(ShutdownMessage, flags));
  uint32_t status = kStatusFail;
  switch (event.shutdown_flags) {
    case 0:
    case 1:
    case 2:
    case 3:
      status = kStatusOk;
      event.shutdown_started = true;
      break;
    case 4:
    case 5:
      status = options_.hibernation_supported ? kStatusOk : kStatusFail;
      event.shutdown_started = options_.hibernation_supported;
      break;
    default:
      break;
  }
  Put<uint32_t>(buf, kStatusAt, status);
  return true;
}

bool IcGuest::TimeSync(const std::vector<uint8_t>& buf, uint32_t recvlen, IcGuestEvent& event) {
  // ts_srv_version > TS_VERSION_3: the 4.0 layout.
  const bool v4 = service_version_.has_value() &&
                  (service_version_->major > 3 ||
                   (service_version_->major == 3 && service_version_->minor > 0));
  event.reference_format = v4;
  if (v4) {
    if (recvlen < kIcBodyOffset + kTimeSyncRefLinuxBodyBytes) return false;
    event.parent_time = Get<uint64_t>(buf, kIcBodyOffset);
    event.reference_time = Get<uint64_t>(buf, kIcBodyOffset + 8);
    event.time_flags = buf[kIcBodyOffset + offsetof(TimeSyncRefMessage, flags)];
  } else {
    if (recvlen < kIcBodyOffset + kTimeSyncLinuxBodyBytes) return false;
    event.parent_time = Get<uint64_t>(buf, kIcBodyOffset);
    event.time_flags = buf[kIcBodyOffset + offsetof(TimeSyncMessage, flags)];
  }
  return true;
}

absl::Status IcGuest::Close() {
  if (!open_) return absl::OkStatus();
  open_ = false;
  absl::Status closed = channel_->Close();
  absl::Status torn = vm_->guest().TeardownGpadl(options_.relid, options_.gpadl_id);
  return closed.ok() ? torn : closed;
}

}  // namespace cvmbus::paravisor::ic::testing
