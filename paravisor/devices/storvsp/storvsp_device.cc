#include "paravisor/devices/storvsp/storvsp_device.h"

#include <fmt/format.h>

#include <utility>

#include "paravisor/devices/storvsp/srb_buffer.h"
#include "ring/errors.h"
#include "ring/ring.h"

namespace cvmbus::paravisor::storvsp {

// One open of the controller's channel: its rings, the view SRB buffers are reached through,
// the VSTOR state, and completions waiting for ring space. Shared by the serve task and every
// SRB in flight; the close is answered once both are done.
struct StorvspDevice::OpenChannelState {
  std::shared_ptr<hw::OwnedEventFdSignal> wake;  // The guest's doorbell and our wake-ups.
  ChannelRings rings;
  VstorNegotiation negotiation{NegotiationOptions{}};
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
  if (open_) {
    open_->closing = true;
    (void)open_->wake->Raise();
  }
}

absl::Status StorvspDevice::Start() {
  auto [request_send, request_recv] = MakeChannel<ChannelRequest>();
  auto [server_send, server_recv] = MakeChannel<ChannelServerRequest>();
  OfferParams params;
  params.interface_name = "storvsp";
  params.interface_id = kScsiInterfaceId;
  params.instance_id = options_.instance_id;
  params.allow_confidential_external_memory = options_.allow_confidential_external_memory;
  absl::StatusOr<OfferResources> resources =
      bus_->AddChild(OfferInput{params, std::move(request_send), std::move(server_recv)});
  if (!resources.ok()) return resources.status();
  resources_ = *std::move(resources);
  requests_ = std::make_unique<Receiver<ChannelRequest>>(std::move(request_recv));
  to_server_ = std::move(server_send);
  ServeRequests();
  return absl::OkStatus();
}

hw::Task StorvspDevice::ServeRequests() {
  std::shared_ptr<bool> alive = alive_;
  while (true) {
    std::optional<ChannelRequest> request = co_await requests_->Next(loop_);
    if (!*alive || !request.has_value()) co_return;
    if (auto* gpadl = std::get_if<CreateGpadl>(&*request)) {
      const bool valid = gpadls_.Accept(gpadl->rpc.input());
      std::move(gpadl->rpc).Reply(valid);
    } else if (auto* teardown = std::get_if<TeardownGpadl>(&*request)) {
      gpadls_.Remove(teardown->rpc.input());
      std::move(teardown->rpc).Reply(Unit{});
    } else if (auto* open = std::get_if<OpenChannel>(&*request)) {
      std::optional<OpenResult> result = Open(open->rpc.input());
      std::move(open->rpc).Reply(std::move(result));
    } else if (auto* close = std::get_if<CloseChannel>(&*request)) {
      Close(std::move(close->rpc));
    } else if (auto* modify = std::get_if<ModifyChannel>(&*request)) {
      std::move(modify->rpc).Reply(0);  // Our interrupt follows the server's retargeting.
    }
  }
}

std::optional<OpenResult> StorvspDevice::Open(const OpenRequest& request) {
  ++stats_.opens;
  if (open_) {
    stats_.last_error = absl::FailedPreconditionError("storvsp: already open");
    return std::nullopt;
  }
  absl::StatusOr<std::shared_ptr<hw::OwnedEventFdSignal>> wake = hw::OwnedEventFdSignal::Create();
  if (!wake.ok()) {
    stats_.last_error = wake.status();
    return std::nullopt;
  }
  auto channel = std::make_shared<OpenChannelState>();
  channel->wake = *std::move(wake);
  if (absl::Status status = AttachRings(request, channel); !status.ok()) {
    stats_.last_error = status;
    return std::nullopt;
  }
  return OpenResult{Interrupt(channel->wake)};
}

absl::Status StorvspDevice::AttachRings(const OpenRequest& request,
                                        std::shared_ptr<OpenChannelState> channel) {
  absl::StatusOr<ChannelRings> rings =
      OpenChannelRings("storvsp", loop_, *resources_, gpadls_, request, channel->wake->fd());
  if (!rings.ok()) return rings.status();
  channel->rings = *std::move(rings);
  open_ = channel;
  Serve(channel);
  return absl::OkStatus();
}

void StorvspDevice::Close(Rpc<Unit, Unit> rpc) {
  ++stats_.closes;
  if (!open_) {
    std::move(rpc).Reply(Unit{});
    return;
  }
  open_->closing = true;
  open_->close_rpc = std::move(rpc);
  (void)open_->wake->Raise();  // The serve task sees `closing` and ends.
  open_.reset();
}

void StorvspDevice::MaybeFinishClose(const std::shared_ptr<OpenChannelState>& channel) {
  // The guest may reuse its pages once the close is answered: only after the serve task has
  // stopped and no SRB still moves data.
  if (channel->serving || channel->in_flight != 0 || !channel->close_rpc.has_value()) return;
  std::move(*channel->close_rpc).Reply(Unit{});
  channel->close_rpc.reset();
}

hw::Task StorvspDevice::Serve(std::shared_ptr<OpenChannelState> channel) {
  std::shared_ptr<bool> alive = alive_;
  channel->serving = true;
  ring::PacketBuffer buffer;
  while (!channel->closing && !channel->broken) {
    if (!channel->outbox.empty()) {
      // Completions wait for ring space: take no new requests until they are out.
      const uint32_t needed = static_cast<uint32_t>(channel->outbox.front().payload.size()) + 24;
      absl::Status writable = co_await channel->rings.writer->Writable(needed);
      if (!*alive) co_return;
      if (!writable.ok()) break;
      FlushCompletions(*channel);
      continue;
    }
    absl::Status readable = co_await channel->rings.reader->Readable();
    if (!*alive) co_return;
    if (!readable.ok()) {
      stats_.last_error = readable;
      break;
    }
    while (!channel->closing && channel->outbox.empty()) {
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
  if (request->operation == VstorOperation::kExecuteSrb && channel->negotiation.ready()) {
    HandleSrb(channel, packet, *request);
    return;
  }
  VstorNegotiation::Answer answer = channel->negotiation.Handle(*request);
  stats_.version = channel->negotiation.version();
  // Subchannels are not offered (max_subchannels is 0), so no answer asks for them.
  Complete(channel, packet.transaction_id, std::move(answer.completion));
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

}  // namespace cvmbus::paravisor::storvsp
