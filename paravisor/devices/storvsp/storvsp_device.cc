#include "paravisor/devices/storvsp/storvsp_device.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "paravisor/devices/storvsp/srb_buffer.h"
#include "ring/errors.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::storvsp {

// One VMBus channel of the controller: its offer, the GPADLs the guest made on it, its open.
struct StorvspDevice::ControllerChannel {
  uint16_t index = 0;  // 0: the primary.
  std::optional<OfferResources> resources;
  std::unique_ptr<Receiver<ChannelRequest>> requests;
  std::optional<Sender<ChannelServerRequest>> to_server;
  DeviceGpadls gpadls;
  std::shared_ptr<OpenChannelState> open;
};

// One open of a channel: its rings, the view SRB buffers are reached through, the VSTOR state
// (the primary's), and completions waiting for ring space. Shared by the serve task and every
// SRB in flight; the close is answered once both are done.
struct StorvspDevice::OpenChannelState {
  uint16_t index = 0;
  std::shared_ptr<hw::OwnedEventFdSignal> wake;  // The guest's doorbell and our wake-ups.
  ChannelRings rings;
  VstorNegotiation negotiation;
  struct Completion {
    uint64_t transaction_id;
    std::vector<uint8_t> payload;
  };
  std::deque<Completion> outbox;
  uint64_t in_flight = 0;  // SRBs whose backing I/O has not finished.
  bool closing = false;
  bool serving = false;  // The serve task runs.
  bool broken = false;   // The ring failed: nothing more is written to it.
  std::optional<Rpc<Unit, Unit>> close_rpc;
  // The primary's close waits for this many subchannel opens to drain and revokes to finish.
  uint32_t retiring = 0;
  // A subchannel retired by the primary's close: told when this open has drained.
  std::shared_ptr<OpenChannelState> retired_by;

  explicit OpenChannelState(NegotiationOptions options) : negotiation(options) {}
};

absl::StatusOr<std::unique_ptr<StorvspDevice>> StorvspDevice::Create(hw::EventLoop* loop,
                                                                     ParentBus* bus,
                                                                     StorvspOptions options,
                                                                     BlockBackend* backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("storvsp: no backend");
  if (options.disk.sectors * ScsiDisk::kSectorBytes != backend->size_bytes()) {
    return absl::InvalidArgumentError(
        fmt::format("storvsp: the disk has {} sectors but the backend holds {} bytes",
                    options.disk.sectors, backend->size_bytes()));
  }
  if (options.disk.read_only != backend->read_only()) {
    return absl::InvalidArgumentError("storvsp: the disk and its backend disagree on read-only");
  }
  if (options.disk.unmap && !backend->can_discard()) {
    return absl::InvalidArgumentError(
        "storvsp: the disk offers UNMAP but its backend cannot discard");
  }
  absl::StatusOr<ScsiDisk> disk = ScsiDisk::Create(options.disk);
  if (!disk.ok()) return disk.status();
  return std::unique_ptr<StorvspDevice>(
      new StorvspDevice(loop, bus, std::move(options), *std::move(disk), backend));
}

StorvspDevice::StorvspDevice(hw::EventLoop* loop, ParentBus* bus, StorvspOptions options,
                             ScsiDisk disk, BlockBackend* backend)
    : loop_(loop),
      bus_(bus),
      options_(std::move(options)),
      disk_(std::move(disk)),
      backend_(backend),
      executor_(&disk_, backend) {}

StorvspDevice::~StorvspDevice() {
  *alive_ = false;
  // Subchannels first, then the primary: each slot's tasks may outlive the device, so its
  // offer is dropped here, which the server takes as a revoke.
  for (auto it = channels_.rbegin(); it != channels_.rend(); ++it) {
    const std::shared_ptr<ControllerChannel>& slot = *it;
    if (slot == nullptr) continue;
    if (slot->open) {
      slot->open->closing = true;
      (void)slot->open->wake->Raise();
    }
    slot->to_server.reset();
  }
}

absl::Status StorvspDevice::Start() { return OfferChannel(0); }

absl::StatusOr<std::shared_ptr<StorvspDevice::ControllerChannel>> StorvspDevice::AddOffer(
    uint16_t index) {
  auto [request_send, request_recv] = MakeChannel<ChannelRequest>();
  auto [server_send, server_recv] = MakeChannel<ChannelServerRequest>();
  OfferParams params;
  params.interface_name = "storvsp";
  params.interface_id = kScsiInterfaceId;
  params.instance_id = options_.instance_id;
  params.subchannel_index = index;
  params.allow_confidential_external_memory = options_.allow_confidential_external_memory;
  absl::StatusOr<OfferResources> resources =
      bus_->AddChild(OfferInput{params, std::move(request_send), std::move(server_recv)});
  if (!resources.ok()) return resources.status();
  auto slot = std::make_shared<ControllerChannel>();
  slot->index = index;
  slot->resources = *std::move(resources);
  slot->requests = std::make_unique<Receiver<ChannelRequest>>(std::move(request_recv));
  slot->to_server = std::move(server_send);
  if (channels_.size() <= index) channels_.resize(index + 1);
  channels_[index] = slot;
  if (index != 0) ++stats_.subchannels_offered;
  return slot;
}

absl::Status StorvspDevice::OfferChannel(uint16_t index) {
  absl::StatusOr<std::shared_ptr<ControllerChannel>> slot = AddOffer(index);
  if (!slot.ok()) return slot.status();
  ServeRequests(*std::move(slot));
  return absl::OkStatus();
}

hw::Task StorvspDevice::ServeRequests(std::shared_ptr<ControllerChannel> slot) {
  std::shared_ptr<bool> alive = alive_;
  while (true) {
    // Ends when the server revokes the offer (a retired subchannel) or goes away.
    std::optional<ChannelRequest> request = co_await slot->requests->Next(loop_);
    if (!*alive || !request.has_value()) co_return;
    if (auto* gpadl = std::get_if<CreateGpadl>(&*request)) {
      const bool valid = slot->gpadls.Accept(gpadl->rpc.input());
      if (valid) ++stats_.gpadls;
      std::move(gpadl->rpc).Reply(valid);
    } else if (auto* teardown = std::get_if<TeardownGpadl>(&*request)) {
      slot->gpadls.Remove(teardown->rpc.input());
      std::move(teardown->rpc).Reply(Unit{});
    } else if (auto* open = std::get_if<OpenChannel>(&*request)) {
      std::optional<OpenResult> result = Open(*slot, open->rpc.input());
      std::move(open->rpc).Reply(std::move(result));
    } else if (auto* close = std::get_if<CloseChannel>(&*request)) {
      Close(*slot, std::move(close->rpc));
    } else if (auto* modify = std::get_if<ModifyChannel>(&*request)) {
      std::move(modify->rpc).Reply(0);  // Our interrupt follows the server's retargeting.
    }
  }
}

std::shared_ptr<StorvspDevice::OpenChannelState> StorvspDevice::NewOpenState(uint16_t index) {
  absl::StatusOr<std::shared_ptr<hw::OwnedEventFdSignal>> wake = hw::OwnedEventFdSignal::Create();
  if (!wake.ok()) {
    stats_.last_error = wake.status();
    return nullptr;
  }
  auto channel = std::make_shared<OpenChannelState>(
      NegotiationOptions{.max_subchannels = options_.max_subchannels,
                         .max_transfer_bytes = disk_.options().max_transfer_bytes});
  channel->index = index;
  channel->wake = *std::move(wake);
  return channel;
}

absl::Status StorvspDevice::AttachRings(ControllerChannel& slot,
                                        std::shared_ptr<OpenChannelState> channel,
                                        const OpenRequest& request) {
  absl::StatusOr<ChannelRings> rings = OpenChannelRings("storvsp", loop_, *slot.resources,
                                                        slot.gpadls, request, channel->wake->fd());
  if (!rings.ok()) return rings.status();
  channel->rings = *std::move(rings);
  slot.open = channel;
  if (slot.index == 0) primary_open_ = channel;
  Serve(std::move(channel));
  return absl::OkStatus();
}

std::optional<OpenResult> StorvspDevice::Open(ControllerChannel& slot, const OpenRequest& request) {
  ++stats_.opens;
  if (slot.open) {
    stats_.last_error = absl::FailedPreconditionError(
        fmt::format("storvsp: channel {} is already open", slot.index));
    return std::nullopt;
  }
  std::shared_ptr<OpenChannelState> channel = NewOpenState(slot.index);
  if (channel == nullptr) return std::nullopt;
  if (absl::Status status = AttachRings(slot, channel, request); !status.ok()) {
    stats_.last_error = status;
    return std::nullopt;
  }
  return OpenResult{Interrupt(channel->wake)};
}

void StorvspDevice::Close(ControllerChannel& slot, Rpc<Unit, Unit> rpc) {
  ++stats_.closes;
  if (!slot.open) {
    std::move(rpc).Reply(Unit{});
    return;
  }
  std::shared_ptr<OpenChannelState> channel = std::move(slot.open);
  slot.open.reset();
  channel->closing = true;
  channel->close_rpc = std::move(rpc);
  std::erase_if(closing_,
                [](const std::weak_ptr<OpenChannelState>& weak) { return weak.expired(); });
  closing_.push_back(channel);
  (void)channel->wake->Raise();  // The serve task sees `closing` and ends.
  if (slot.index == 0) {
    primary_open_.reset();
    RetireSubchannels(channel);
  }
}

hw::Task StorvspDevice::RetireSubchannels(std::shared_ptr<OpenChannelState> primary) {
  std::shared_ptr<bool> alive = alive_;
  std::vector<std::shared_ptr<ControllerChannel>> subchannels(channels_.begin() + 1,
                                                              channels_.end());
  channels_.resize(1);
  std::vector<ReplyFuture<Unit>> revokes;
  for (const std::shared_ptr<ControllerChannel>& slot : subchannels) {
    if (slot->open) {  // Linux closes its subchannels first; a guest that did not, now.
      std::shared_ptr<OpenChannelState> open = std::move(slot->open);
      slot->open.reset();
      open->closing = true;
      open->retired_by = primary;
      ++primary->retiring;
      closing_.push_back(open);
      (void)open->wake->Raise();
    }
    auto [rpc, reply] = MakeRpc<Unit, Unit>(Unit{});
    if (slot->to_server->Send(RevokeChannel{std::move(rpc)}).ok()) {
      ++primary->retiring;
      revokes.push_back(std::move(reply));
    }
    ++stats_.subchannels_revoked;
  }
  for (ReplyFuture<Unit>& reply : revokes) {
    (void)co_await reply.On(loop_);  // Answered, or dropped by a server that went away.
    if (!*alive) co_return;
    --primary->retiring;
  }
  MaybeFinishClose(primary);
}

bool StorvspDevice::Drained(const OpenChannelState& channel) {
  return !channel.serving && channel.in_flight == 0;
}

void StorvspDevice::MaybeFinishClose(const std::shared_ptr<OpenChannelState>& channel) {
  // The guest may reuse its pages once the close is answered: only after the serve task has
  // stopped and no SRB still moves data (the primary's: of any of its channels).
  if (!Drained(*channel)) return;
  if (channel->retired_by) {
    std::shared_ptr<OpenChannelState> primary = std::move(channel->retired_by);
    channel->retired_by.reset();
    --primary->retiring;
    MaybeFinishClose(primary);
  }
  if (channel->retiring != 0 || !channel->close_rpc.has_value()) return;
  std::move(*channel->close_rpc).Reply(Unit{});
  channel->close_rpc.reset();
}

hw::Task StorvspDevice::Serve(std::shared_ptr<OpenChannelState> channel) {
  std::shared_ptr<bool> alive = alive_;
  channel->serving = true;
  ring::PacketBuffer buffer;
  while (!channel->closing && !channel->broken && !paused_) {
    if (!channel->outbox.empty()) {
      // Completions wait for ring space: take no new requests until they are out.
      const uint32_t needed = static_cast<uint32_t>(channel->outbox.front().payload.size()) + 24;
      absl::Status writable = co_await channel->rings.writer->Writable(needed);
      if (!*alive) co_return;
      if (!writable.ok()) break;
      FlushCompletions(*channel);
      // Published now: the guest may be waiting for just these (the last of a backlog, with
      // nothing more to send that would wake us to publish them after a read).
      (void)channel->rings.writer->Flush();
      continue;
    }
    absl::Status readable = co_await channel->rings.reader->Readable();
    if (!*alive) co_return;
    if (!readable.ok()) {
      stats_.last_error = readable;
      break;
    }
    while (!channel->closing && !paused_ && channel->outbox.empty()) {
      absl::StatusOr<bool> got = channel->rings.reader->ring().Read(&buffer);
      if (!got.ok()) {
        stats_.last_error = got.status();  // A corrupt ring: stop serving it.
        channel->broken = true;
        break;
      }
      if (!*got) break;
      ++stats_.packets;
      Handle(channel, buffer.packet());
    }
    (void)channel->rings.reader->Release();
    (void)channel->rings.writer->Flush();
  }
  channel->serving = false;
  MaybeFinishClose(channel);
}

void StorvspDevice::Handle(const std::shared_ptr<OpenChannelState>& channel,
                           const ring::Packet& packet) {
  absl::StatusOr<VstorRequest> request = ParseVstorPacket(packet.payload);
  if (!request.ok()) {
    // Too short to say what it is: still answered (64 bytes, as Linux needs).
    ++stats_.bad_packets;
    stats_.last_error = request.status();
    Complete(channel, packet.transaction_id,
             EncodeCompletion(kNtInvalidParameter, {}, kMaxBodyBytes));
    return;
  }
  if (channel->index != 0) {
    // A subchannel carries SCSI requests only, once the primary is initialized.
    if (request->operation != VstorOperation::kExecuteSrb) {
      Complete(channel, packet.transaction_id,
               EncodeCompletion(kNtInvalidDeviceRequest, {}, request->body_bytes));
    } else if (!primary_open_ || !primary_open_->negotiation.ready()) {
      Complete(channel, packet.transaction_id,
               EncodeCompletion(kNtInvalidDeviceState, {}, request->body_bytes));
    } else {
      HandleSrb(channel, packet, *request);
    }
    return;
  }
  if (request->operation == VstorOperation::kExecuteSrb && channel->negotiation.ready()) {
    HandleSrb(channel, packet, *request);
    return;
  }
  VstorNegotiation::Answer answer = channel->negotiation.Handle(*request);
  stats_.version = channel->negotiation.version();
  // The completion first: Linux takes the subchannel offers only after it.
  Complete(channel, packet.transaction_id, std::move(answer.completion));
  if (answer.create_subchannels.has_value()) CreateSubchannels(*answer.create_subchannels);
}

void StorvspDevice::CreateSubchannels(uint16_t count) {
  for (uint16_t index = 1; index <= count; ++index) {
    if (index < channels_.size() && channels_[index]) continue;
    if (absl::Status status = OfferChannel(index); !status.ok()) {
      stats_.last_error = status;  // The guest carries on with the channels it has.
      return;
    }
  }
}

void StorvspDevice::HandleSrb(const std::shared_ptr<OpenChannelState>& channel,
                              const ring::Packet& packet, const VstorRequest& request) {
  ++stats_.srbs;
  const uint64_t transaction_id = packet.transaction_id;
  const size_t body_bytes = request.body_bytes;
  absl::StatusOr<ScsiRequest> srb = ParseScsiRequest(request);
  absl::StatusOr<std::optional<SrbBuffer>> buffer =
      srb.ok() ? SrbBufferOf(packet, srb->data_transfer_length, disk_.options().max_transfer_bytes)
               : absl::StatusOr<std::optional<SrbBuffer>>(srb.status());
  if (!buffer.ok()) {
    ++stats_.bad_packets;
    stats_.last_error = buffer.status();
    Complete(channel, transaction_id,
             EncodeSrbCompletion({.srb_status = kSrbInvalidRequest, .scsi_status = kScsiGood},
                                 body_bytes));
    return;
  }
  if (srb->path_id != 0 || srb->target_id != 0 || srb->lun != 0) {
    // No disk there. A standard INQUIRY says so in its data (peripheral qualifier 3: Linux
    // forces INQUIRY to success); everything else is INVALID_LUN.
    std::vector<uint8_t> data;
    SrbResult result{.srb_status = kSrbInvalidLun, .scsi_status = kScsiCheckCondition};
    if (srb->cdb[0] == 0x12 && (srb->cdb[1] & 1) == 0 && buffer->has_value()) {
      data.assign(36, 0);
      data[0] = 0x7f;  // Qualifier 3, type 0x1f: no logical unit here.
      data[2] = 0x05;
      data[3] = 0x02;
      data[4] = 31;
      data.resize(std::min<size_t>(
          {data.size(), (*buffer)->length, (uint32_t{srb->cdb[3]} << 8) | srb->cdb[4]}));
      absl::StatusOr<guestmem::PinnedPages> pinned =
          channel->rings.data_memory.Pin((*buffer)->gpns, guestmem::Access::kReadWrite);
      if (pinned.ok() && pinned->Write((*buffer)->offset, data).ok()) {
        result = ScsiDisk::Done(static_cast<uint32_t>(data.size()));
      } else {
        result = SrbResult{.srb_status = kSrbInvalidRequest};
      }
    }
    Complete(channel, transaction_id, EncodeSrbCompletion(result, body_bytes));
    return;
  }
  ++channel->in_flight;
  std::shared_ptr<bool> alive = alive_;
  executor_.Execute(*srb, *buffer, channel->rings.data_memory,
                    [this, alive, channel, transaction_id, body_bytes](SrbResult result) {
                      --channel->in_flight;
                      if (!*alive) return;
                      if (!channel->closing) {
                        Complete(channel, transaction_id, EncodeSrbCompletion(result, body_bytes));
                      }
                      MaybeFinishClose(channel);
                    });
}

void StorvspDevice::Complete(const std::shared_ptr<OpenChannelState>& channel,
                             uint64_t transaction_id, std::vector<uint8_t> payload) {
  if (channel->broken) return;
  channel->outbox.push_back({transaction_id, std::move(payload)});
  FlushCompletions(*channel);
  // Written from an I/O completion while the serve task sleeps: publish and signal now.
  (void)channel->rings.writer->Flush();
  if (!channel->outbox.empty()) (void)channel->wake->Raise();  // Wake the task to wait for space.
}

void StorvspDevice::FlushCompletions(OpenChannelState& channel) {
  while (!channel.outbox.empty()) {
    const OpenChannelState::Completion& next = channel.outbox.front();
    const ring::OutgoingPacket packet{.type = ring::PacketType::kCompletion,
                                      .transaction_id = next.transaction_id,
                                      .payload = next.payload};
    absl::Status appended = channel.rings.writer->ring().Append(packet);
    if (ring::IsRingError(appended, ring::RingError::kFull)) return;
    if (!appended.ok()) {
      stats_.last_error = appended;
      channel.broken = true;
      channel.outbox.clear();
      return;
    }
    channel.outbox.pop_front();
  }
}

std::vector<ChannelTraffic> StorvspDevice::traffic() const {
  std::vector<ChannelTraffic> out;
  for (const std::shared_ptr<ControllerChannel>& slot : channels_) {
    if (slot != nullptr && slot->open) {
      out.push_back(TrafficOf(slot->open->rings, options_.instance_id, slot->index));
    }
  }
  return out;
}

void StorvspDevice::Pause() {
  paused_ = true;
  for (const std::shared_ptr<ControllerChannel>& slot : channels_) {
    if (slot != nullptr && slot->open) (void)slot->open->wake->Raise();  // Stop at once.
  }
}

void StorvspDevice::Resume() {
  paused_ = false;
  for (const std::shared_ptr<ControllerChannel>& slot : channels_) {
    if (slot == nullptr || !slot->open) continue;
    OpenChannelState& open = *slot->open;
    if (!open.serving && !open.closing && !open.broken) Serve(slot->open);
  }
}

bool StorvspDevice::Quiesced() const {
  for (const std::shared_ptr<ControllerChannel>& slot : channels_) {
    if (slot != nullptr && slot->open && !Drained(*slot->open)) return false;
  }
  for (const std::weak_ptr<OpenChannelState>& weak : closing_) {
    std::shared_ptr<OpenChannelState> channel = weak.lock();
    if (channel && (!Drained(*channel) || channel->close_rpc.has_value())) return false;
  }
  return true;
}

absl::StatusOr<saved::Storvsp> StorvspDevice::Save() const {
  if (!paused_ || !Quiesced()) {
    return absl::FailedPreconditionError("storvsp: not paused with its I/O drained");
  }
  saved::Storvsp state;
  state.set_instance_id(&options_.instance_id, sizeof(Guid));
  if (primary_open_) {
    const VstorNegotiation& negotiation = primary_open_->negotiation;
    state.set_negotiation_state(static_cast<uint32_t>(negotiation.state()));
    state.set_version(negotiation.version());
    state.set_subchannels_created(negotiation.subchannels_created());
  }
  state.set_subchannels(channels_.empty() ? 0 : static_cast<uint32_t>(channels_.size() - 1));
  for (const std::shared_ptr<ControllerChannel>& slot : channels_) {
    if (slot == nullptr || !slot->open) continue;
    for (const OpenChannelState::Completion& completion : slot->open->outbox) {
      saved::StorvspCompletion* pending = state.add_pending();
      pending->set_channel(slot->index);
      pending->set_transaction_id(completion.transaction_id);
      pending->set_payload(completion.payload.data(), completion.payload.size());
    }
  }
  return state;
}

absl::Status StorvspDevice::CheckSavedState(
    const saved::Storvsp& state, const std::function<bool(uint16_t index)>& was_open) const {
  if (state.instance_id().size() != sizeof(Guid) ||
      std::memcmp(state.instance_id().data(), &options_.instance_id, sizeof(Guid)) != 0) {
    return absl::InvalidArgumentError("storvsp: saved state: instance_id is another controller's");
  }
  if (state.subchannels() > options_.max_subchannels) {
    return absl::InvalidArgumentError(
        fmt::format("storvsp: saved state: subchannels {} is more than the {} this disk offers",
                    state.subchannels(), options_.max_subchannels));
  }
  VstorNegotiation negotiation({.max_subchannels = options_.max_subchannels});
  if (absl::Status status = negotiation.Restore(
          static_cast<VstorNegotiation::State>(std::min<uint32_t>(state.negotiation_state(), 255)),
          static_cast<uint16_t>(std::min<uint32_t>(state.version(), 0xffff)),
          state.subchannels_created());
      !status.ok() || state.version() > 0xffff) {
    return absl::InvalidArgumentError(fmt::format(
        "storvsp: saved state: negotiation_state {} with version {:#x} is not a VSTOR state",
        state.negotiation_state(), state.version()));
  }
  // A ring of the largest size holds fewer completions than this.
  constexpr int kMaxPending = 1 << 16;
  if (state.pending_size() > kMaxPending) {
    return absl::InvalidArgumentError(
        fmt::format("storvsp: saved state: {} pending completions (at most {})",
                    state.pending_size(), kMaxPending));
  }
  for (int i = 0; i < state.pending_size(); ++i) {
    const saved::StorvspCompletion& pending = state.pending(i);
    if (pending.channel() > state.subchannels() ||
        !was_open(static_cast<uint16_t>(pending.channel()))) {
      return absl::InvalidArgumentError(
          fmt::format("storvsp: saved state: pending[{}] is for channel {}, which was not open", i,
                      pending.channel()));
    }
    if (pending.payload().size() > kMaxPacketBytes) {
      return absl::InvalidArgumentError(fmt::format(
          "storvsp: saved state: pending[{}] has {} bytes (a completion has at most {})", i,
          pending.payload().size(), kMaxPacketBytes));
    }
  }
  return absl::OkStatus();
}

absl::Status StorvspDevice::StartRestored(const saved::Storvsp& state,
                                          const std::function<bool(uint16_t index)>& was_open) {
  if (absl::Status status = CheckSavedState(state, was_open); !status.ok()) return status;
  for (uint16_t index = 0; index <= state.subchannels(); ++index) {
    absl::StatusOr<std::shared_ptr<ControllerChannel>> added = AddOffer(index);
    if (!added.ok()) return added.status();
    std::shared_ptr<ControllerChannel> slot = *std::move(added);
    std::shared_ptr<OpenChannelState> channel;
    std::optional<OpenResult> open_result;
    if (was_open(index)) {
      channel = NewOpenState(index);
      if (channel == nullptr) return stats_.last_error;
      for (const saved::StorvspCompletion& pending : state.pending()) {
        if (pending.channel() != index) continue;
        channel->outbox.push_back(
            {pending.transaction_id(),
             std::vector<uint8_t>(pending.payload().begin(), pending.payload().end())});
      }
      if (index == 0) {
        // Checked above. Set now: a subchannel may come back before the primary, and its SRBs
        // need the primary's state.
        (void)channel->negotiation.Restore(
            static_cast<VstorNegotiation::State>(state.negotiation_state()),
            static_cast<uint16_t>(state.version()), state.subchannels_created());
        stats_.version = channel->negotiation.version();
        primary_open_ = channel;
      }
      open_result = OpenResult{Interrupt(channel->wake)};
    }
    std::shared_ptr<bool> alive = alive_;
    absl::Status asked = AskServerToRestore(
        loop_, *slot->to_server, std::move(open_result), &slot->gpadls, &stats_.gpadls, alive,
        {.reopen =
             [this, slot, channel](const OpenRequest& request) {
               ++stats_.restores;
               if (absl::Status status = AttachRings(*slot, channel, request); !status.ok()) {
                 stats_.last_error = status;  // A restore that cannot bring the rings back.
                 if (primary_open_ == channel) primary_open_.reset();
               }
             },
         .failed =
             [this, channel](const absl::Status& status) {
               stats_.last_error = status;
               if (channel != nullptr && primary_open_ == channel) primary_open_.reset();
             }});
    if (!asked.ok()) return asked;
    ServeRequests(std::move(slot));
  }
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor::storvsp
