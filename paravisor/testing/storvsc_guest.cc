#include "paravisor/testing/storvsc_guest.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "paravisor/protocol/channel_messages.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::storvsp {
namespace {

// vstor_packet and vmscsi_request as Linux lays them out (storvsc_drv.c).
constexpr uint32_t kOpCompleteIo = 1;
constexpr uint32_t kOpExecuteSrb = 3;
constexpr uint32_t kOpBeginInitialization = 7;
constexpr uint32_t kOpEndInitialization = 8;
constexpr uint32_t kOpQueryProtocolVersion = 9;
constexpr uint32_t kOpQueryProperties = 10;
constexpr uint32_t kOpCreateSubChannels = 13;
constexpr uint32_t kRequestCompletionFlag = 1;
constexpr size_t kPacketBytes = 64;         // sizeof(struct vstor_packet) in Linux 6.x.
constexpr size_t kSrb = 12;                 // The vmscsi_request starts after the header.
constexpr uint8_t kSenseBufferSize = 0x14;  // STORVSC_SENSE_BUFFER_SIZE.
constexpr uint32_t kSrbFlagsDataIn = 0x40;
constexpr uint32_t kSrbFlagsDataOut = 0x80;
constexpr uint32_t kSrbFlagsDisableSynchTransfer = 0x8;
constexpr uint16_t kLinuxVersions[] = {0x0602, 0x0600, 0x0501};  // WIN10, WIN8_1, WIN8.
constexpr uint32_t kMultiChannelFlag = 1;

void Put32(std::vector<uint8_t>& bytes, size_t at, uint32_t value) {
  std::memcpy(bytes.data() + at, &value, 4);
}
uint32_t Get32(const std::vector<uint8_t>& bytes, size_t at) {
  uint32_t value = 0;
  if (bytes.size() >= at + 4) std::memcpy(&value, bytes.data() + at, 4);
  return value;
}
uint16_t Get16(const std::vector<uint8_t>& bytes, size_t at) {
  uint16_t value = 0;
  if (bytes.size() >= at + 2) std::memcpy(&value, bytes.data() + at, 2);
  return value;
}

std::vector<uint8_t> Header(uint32_t operation) {
  std::vector<uint8_t> packet(kPacketBytes, 0);
  Put32(packet, 0, operation);
  Put32(packet, 4, kRequestCompletionFlag);
  return packet;
}

std::vector<uint8_t> BigEndianCdb(uint8_t opcode, uint64_t lba, uint32_t blocks) {
  std::vector<uint8_t> cdb(16, 0);
  cdb[0] = opcode;
  for (int i = 0; i < 8; ++i) cdb[2 + i] = static_cast<uint8_t>(lba >> (56 - 8 * i));
  for (int i = 0; i < 4; ++i) cdb[10 + i] = static_cast<uint8_t>(blocks >> (24 - 8 * i));
  return cdb;
}

}  // namespace

std::vector<uint8_t> Read16Cdb(uint64_t lba, uint32_t blocks) {
  return BigEndianCdb(0x88, lba, blocks);
}
std::vector<uint8_t> Write16Cdb(uint64_t lba, uint32_t blocks) {
  return BigEndianCdb(0x8a, lba, blocks);
}

absl::StatusOr<std::unique_ptr<StorvscGuest>> StorvscGuest::Attach(vm::VirtualMachine* vm,
                                                                   StorvscOptions options) {
  std::unique_ptr<StorvscGuest> guest(new StorvscGuest(vm, options));
  if (absl::Status status = guest->OpenChannel(0, options.relid); !status.ok()) return status;
  guest->attached_ = true;
  if (absl::Status status = guest->Initialize(); !status.ok()) return status;
  if (absl::Status status = guest->CreateSubchannels(); !status.ok()) return status;
  return guest;
}

StorvscGuest::~StorvscGuest() {
  if (attached_) (void)Detach();
}

absl::Status StorvscGuest::OpenChannel(size_t index, uint32_t relid) {
  absl::StatusOr<std::unique_ptr<testing::GuestChannel>> channel = testing::GuestChannel::Open(
      vm_, {.relid = relid,
            .gpadl_id = options_.first_gpadl_id + static_cast<uint32_t>(index),
            .first_gpn = options_.first_ring_gpn + index * 2 * uint64_t{options_.ring_pages},
            .ring_pages = options_.ring_pages,
            .confidential = options_.confidential});
  if (!channel.ok()) return channel.status();
  channels_.push_back(*std::move(channel));
  relids_.push_back(relid);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> StorvscGuest::Control(size_t channel, uint32_t operation,
                                                           uint16_t value) {
  std::vector<uint8_t> packet = Header(operation);
  std::memcpy(packet.data() + kSrb, &value, 2);  // version / sub_channel_count at 0x0C.
  if (absl::Status status = channels_[channel]->Send(packet, kVmbusRequestInit); !status.ok()) {
    return status;
  }
  ring::PacketBuffer buffer;
  if (absl::Status status = channels_[channel]->Receive(&buffer, options_.timeout); !status.ok()) {
    return status;
  }
  if (buffer.packet().transaction_id != kVmbusRequestInit) {
    return absl::InternalError(
        fmt::format("storvsc: a completion for transaction {:#x}", buffer.packet().transaction_id));
  }
  return std::vector<uint8_t>(buffer.packet().payload.begin(), buffer.packet().payload.end());
}

absl::Status StorvscGuest::Initialize() {
  // storvsc_execute_vstor_op: each step must come back as COMPLETE_IO with status 0.
  const auto step = [&](const char* name, uint32_t operation,
                        uint16_t value) -> absl::StatusOr<std::vector<uint8_t>> {
    absl::StatusOr<std::vector<uint8_t>> answer = Control(0, operation, value);
    if (!answer.ok()) return answer.status();
    if (Get32(*answer, 0) != kOpCompleteIo || Get32(*answer, 8) != 0) {
      return absl::FailedPreconditionError(fmt::format("storvsc: {} answered op {} status {:#x}",
                                                       name, Get32(*answer, 0), Get32(*answer, 8)));
    }
    return answer;
  };
  if (auto begin = step("BEGIN_INITIALIZATION", kOpBeginInitialization, 0); !begin.ok()) {
    return begin.status();
  }
  for (const uint16_t version : kLinuxVersions) {
    absl::StatusOr<std::vector<uint8_t>> answer = Control(0, kOpQueryProtocolVersion, version);
    if (!answer.ok()) return answer.status();
    if (Get32(*answer, 0) == kOpCompleteIo && Get32(*answer, 8) == 0) {
      properties_.version = version;
      break;
    }
  }
  if (properties_.version == 0) {
    return absl::FailedPreconditionError("storvsc: the host accepted no protocol version");
  }
  absl::StatusOr<std::vector<uint8_t>> properties = step("QUERY_PROPERTIES", kOpQueryProperties, 0);
  if (!properties.ok()) return properties.status();
  // storage_channel_properties: max_channel_cnt @0x10, flags @0x14, max_transfer_bytes @0x18.
  properties_.max_channel_count = Get16(*properties, 0x10);
  properties_.flags = Get32(*properties, 0x14);
  properties_.max_transfer_bytes = Get32(*properties, 0x18) & ~4095u;
  if (auto end = step("END_INITIALIZATION", kOpEndInitialization, 0); !end.ok()) {
    return end.status();
  }
  return absl::OkStatus();
}

absl::Status StorvscGuest::CreateSubchannels() {
  // handle_multichannel_storage: num_sc = min(num_online_cpus() - 1, max_chns).
  if ((properties_.flags & kMultiChannelFlag) == 0) return absl::OkStatus();
  const uint32_t count =
      std::min<uint32_t>(options_.cpus == 0 ? 0 : options_.cpus - 1, properties_.max_channel_count);
  if (count == 0) return absl::OkStatus();
  properties_.subchannels_asked = static_cast<uint16_t>(count);
  absl::StatusOr<std::vector<uint8_t>> answer =
      Control(0, kOpCreateSubChannels, static_cast<uint16_t>(count));
  if (!answer.ok()) return answer.status();
  if (Get32(*answer, 0) != kOpCompleteIo || Get32(*answer, 8) != 0) {
    // Linux logs "Failed to create sub-channel" and carries on with the primary.
    return absl::OkStatus();
  }
  // The offers: same interface and instance as the primary, sub_channel_index 1..count (this
  // guest drives one controller, so any subchannel offer is one of its own).
  for (uint32_t opened = 0; opened < count; ++opened) {
    absl::StatusOr<protocol::ParsedMessage> offer = vm_->guest().WaitForMatching(
        protocol::MessageType::kOfferChannel,
        [](const protocol::ParsedMessage& message) {
          const auto* offer = message.As<protocol::OfferChannel>();
          return offer != nullptr && offer->sub_channel_index != 0;
        },
        options_.timeout);
    if (!offer.ok()) {
      return absl::DeadlineExceededError(
          fmt::format("storvsc: subchannel offer {} of {} did not arrive: {}", opened + 1, count,
                      offer.status().ToString()));
    }
    const auto* sub = offer->As<protocol::OfferChannel>();
    // handle_sc_creation: open it with the primary's ring size.
    if (absl::Status status = OpenChannel(channels_.size(), sub->child_relid); !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

absl::Status StorvscGuest::Submit(size_t channel, uint64_t transaction_id,
                                  const std::vector<uint8_t>& cdb, bool data_in, uint32_t length,
                                  const GuestBuffer& buffer, uint8_t lun) {
  if (channel >= channels_.size() || cdb.size() > 16) {
    return absl::InvalidArgumentError("storvsc: no such channel, or a CDB over 16 bytes");
  }
  std::vector<uint8_t> packet = Header(kOpExecuteSrb);
  uint8_t* srb = packet.data() + kSrb;
  srb[0x00] = 0x34;  // vmscsi_request length (Win8 size).
  srb[0x07] = lun;
  srb[0x08] = static_cast<uint8_t>(cdb.size());
  srb[0x09] = kSenseBufferSize;
  srb[0x0a] = length == 0 ? 2 : (data_in ? 1 : 0);  // UNKNOWN_TYPE, READ_TYPE, WRITE_TYPE.
  std::memcpy(srb + 0x0c, &length, 4);
  std::memcpy(srb + 0x10, cdb.data(), cdb.size());
  srb[0x26] = 0xff;  // queue_tag SP_UNTAGGED.
  srb[0x27] = 0x20;  // queue_action SRB_SIMPLE_TAG_REQUEST.
  const uint32_t flags = kSrbFlagsDisableSynchTransfer |
                         (length == 0 ? 0 : (data_in ? kSrbFlagsDataIn : kSrbFlagsDataOut));
  std::memcpy(srb + 0x28, &flags, 4);
  const uint32_t timeout_seconds = 60;
  std::memcpy(srb + 0x2c, &timeout_seconds, 4);
  if (length == 0) return channels_[channel]->Send(packet, transaction_id);
  const uint64_t pages = (uint64_t{buffer.offset} + length + 4095) / 4096;
  if (buffer.gpns.size() < pages) {
    return absl::InvalidArgumentError("storvsc: the buffer has too few pages for the length");
  }
  const ring::GpaRange range{.byte_count = length,
                             .byte_offset = buffer.offset,
                             .gpns = absl::MakeConstSpan(buffer.gpns).subspan(0, pages)};
  return channels_[channel]->SendPacket({.type = ring::PacketType::kDataUsingGpaDirect,
                                         .flags = ring::kFlagCompletionRequested,
                                         .transaction_id = transaction_id,
                                         .payload = packet,
                                         .gpa_ranges = absl::MakeConstSpan(&range, 1)});
}

absl::StatusOr<StorvscCompletion> StorvscGuest::Wait(size_t channel, uint64_t* transaction_id) {
  if (channel >= channels_.size()) return absl::InvalidArgumentError("storvsc: no such channel");
  ring::PacketBuffer buffer;
  if (absl::Status status = channels_[channel]->Receive(&buffer, options_.timeout); !status.ok()) {
    return status;
  }
  const std::vector<uint8_t> payload(buffer.packet().payload.begin(),
                                     buffer.packet().payload.end());
  if (payload.size() < kSrb + 0x10 || Get32(payload, 0) != kOpCompleteIo) {
    return absl::InternalError(
        fmt::format("storvsc: a {}-byte completion that is not COMPLETE_IO", payload.size()));
  }
  *transaction_id = buffer.packet().transaction_id;
  StorvscCompletion completion;
  completion.vstor_status = Get32(payload, 8);
  completion.srb_status = payload[kSrb + 0x02];
  completion.scsi_status = payload[kSrb + 0x03];
  completion.data_transfer_length = Get32(payload, kSrb + 0x0c);
  const size_t sense = std::min<size_t>(payload[kSrb + 0x09], kSenseBufferSize);
  if (payload.size() >= kSrb + 0x10 + sense) {
    completion.sense.assign(payload.begin() + kSrb + 0x10, payload.begin() + kSrb + 0x10 + sense);
  }
  return completion;
}

absl::StatusOr<StorvscCompletion> StorvscGuest::Execute(size_t channel,
                                                        const std::vector<uint8_t>& cdb,
                                                        bool data_in, uint32_t length,
                                                        const GuestBuffer& buffer, uint8_t lun) {
  const uint64_t id = next_transaction_id_++;
  if (absl::Status status = Submit(channel, id, cdb, data_in, length, buffer, lun); !status.ok()) {
    return status;
  }
  uint64_t answered = 0;
  absl::StatusOr<StorvscCompletion> completion = Wait(channel, &answered);
  if (completion.ok() && answered != id) {
    return absl::InternalError(
        fmt::format("storvsc: completion for {} while waiting for {}", answered, id));
  }
  return completion;
}

absl::Status StorvscGuest::Detach() {
  if (!attached_) return absl::OkStatus();
  attached_ = false;
  absl::Status result;
  // vmbus_close: the subchannels first, then the primary; then the ring GPADLs go.
  for (size_t index = channels_.size(); index-- > 0;) {
    absl::Status closed = channels_[index]->Close();
    if (result.ok() && !closed.ok()) result = closed;
  }
  for (size_t index = channels_.size(); index-- > 0;) {
    absl::Status torn = vm_->guest().TeardownGpadl(
        relids_[index], options_.first_gpadl_id + static_cast<uint32_t>(index));
    if (result.ok() && !torn.ok()) result = torn;
  }
  channels_.clear();
  relids_.clear();
  return result;
}

}  // namespace cvmbus::paravisor::storvsp
