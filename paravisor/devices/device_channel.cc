#include "paravisor/devices/device_channel.h"

#include <fmt/format.h>

#include <utility>

#include "guestmem/ring_memory.h"
#include "ring/ring.h"

namespace cvmbus::paravisor {

bool DeviceGpadls::Accept(const GpadlRequest& request) {
  // The server has already checked the same buffer against the same rules
  // (guestmem::WalkGpaRanges); the device keeps its own parsed copy.
  absl::StatusOr<std::vector<guestmem::PagedRange>> ranges =
      guestmem::ParseGpaRanges(request.buf, request.count);
  if (!ranges.ok()) return false;
  gpadls_[request.id] = *std::move(ranges);
  return true;
}

const std::vector<guestmem::PagedRange>* DeviceGpadls::Find(GpadlId id) const {
  auto found = gpadls_.find(id);
  return found == gpadls_.end() ? nullptr : &found->second;
}

ChannelTraffic TrafficOf(const ChannelRings& rings, const Guid& instance_id,
                         uint16_t subchannel_index) {
  ChannelTraffic traffic{.instance_id = instance_id, .subchannel_index = subchannel_index};
  if (rings.reader != nullptr) {
    const ring::IncomingRing& in = rings.reader->ring();
    traffic.packets_from_guest = in.packets();
    traffic.bytes_from_guest = in.bytes();
    if (!in.error().ok()) traffic.error = "guest -> host: " + std::string(in.error().message());
  }
  if (rings.writer != nullptr) {
    const ring::OutgoingRing& out = rings.writer->ring();
    traffic.packets_to_guest = out.packets();
    traffic.bytes_to_guest = out.bytes();
    traffic.full_refusals = out.full_refusals();
    if (!out.error().ok() && traffic.error.empty()) {
      traffic.error = "host -> guest: " + std::string(out.error().message());
    }
  }
  return traffic;
}

absl::StatusOr<ChannelRings> OpenChannelRings(std::string_view device, hw::EventLoop* loop,
                                              const OfferResources& resources,
                                              const DeviceGpadls& gpadls,
                                              const OpenRequest& request, int wake_fd) {
  absl::StatusOr<guestmem::GuestMemory> ring_memory = resources.ring_memory(request);
  if (!ring_memory.ok()) return ring_memory.status();
  absl::StatusOr<guestmem::GuestMemory> data_memory = resources.guest_memory(request);
  if (!data_memory.ok()) return data_memory.status();
  const std::vector<guestmem::PagedRange>* ranges = gpadls.Find(request.open_data.ring_gpadl_id);
  if (ranges == nullptr) {
    return absl::NotFoundError(
        fmt::format("{}: no ring GPADL {}", device, request.open_data.ring_gpadl_id));
  }
  if (ranges->size() != 1) {
    return absl::InvalidArgumentError(
        fmt::format("{}: the ring GPADL has {} ranges, not one", device, ranges->size()));
  }
  const absl::Span<const uint64_t> pages = (*ranges)[0].gpns();
  const uint32_t split = request.open_data.ring_offset;
  if (split < 2 || pages.size() < uint64_t{split} + 2) {
    return absl::InvalidArgumentError(
        fmt::format("{}: ring offset {} splits {} pages badly", device, split, pages.size()));
  }
  absl::StatusOr<guestmem::RingMemory> in_memory =
      guestmem::RingMemory::Create(*ring_memory, pages.subspan(0, split));
  if (!in_memory.ok()) return in_memory.status();
  absl::StatusOr<guestmem::RingMemory> out_memory =
      guestmem::RingMemory::Create(*ring_memory, pages.subspan(split));
  if (!out_memory.ok()) return out_memory.status();
  absl::StatusOr<ring::IncomingRing> incoming = ring::IncomingRing::Create(*std::move(in_memory));
  if (!incoming.ok()) return incoming.status();
  absl::StatusOr<ring::OutgoingRing> outgoing = ring::OutgoingRing::Create(*std::move(out_memory));
  if (!outgoing.ok()) return outgoing.status();
  if (!request.interrupt.connected()) {
    return absl::FailedPreconditionError(fmt::format("{}: no guest interrupt", device));
  }
  ChannelRings rings{.guest_interrupt = request.interrupt.signal(),
                     .ring_memory = *std::move(ring_memory),
                     .data_memory = *std::move(data_memory)};
  rings.reader = std::make_unique<hw::RingReader>(loop, *std::move(incoming), wake_fd,
                                                  rings.guest_interrupt.get());
  rings.writer = std::make_unique<hw::RingWriter>(loop, *std::move(outgoing), wake_fd,
                                                  rings.guest_interrupt.get());
  return rings;
}

hw::Task ServeChannelRequests(hw::EventLoop* loop, Receiver<ChannelRequest>* requests,
                              DeviceGpadls* gpadls, uint64_t* gpadls_accepted,
                              std::shared_ptr<bool> alive, ChannelRequestHandlers handlers) {
  while (true) {
    std::optional<ChannelRequest> request = co_await requests->Next(loop);
    if (!*alive || !request.has_value()) co_return;
    if (auto* gpadl = std::get_if<CreateGpadl>(&*request)) {
      const bool valid = gpadls->Accept(gpadl->rpc.input());
      if (valid) ++*gpadls_accepted;
      std::move(gpadl->rpc).Reply(valid);
    } else if (auto* teardown = std::get_if<TeardownGpadl>(&*request)) {
      gpadls->Remove(teardown->rpc.input());
      std::move(teardown->rpc).Reply(Unit{});
    } else if (auto* open = std::get_if<OpenChannel>(&*request)) {
      std::optional<OpenResult> result = handlers.open(open->rpc.input());
      std::move(open->rpc).Reply(std::move(result));
    } else if (auto* close = std::get_if<CloseChannel>(&*request)) {
      handlers.close(std::move(close->rpc));
    } else if (auto* modify = std::get_if<ModifyChannel>(&*request)) {
      std::move(modify->rpc).Reply(0);
    }
  }
}

namespace {

hw::Task FinishRestore(hw::EventLoop* loop, ReplyFuture<absl::StatusOr<RestoreResult>> reply,
                       bool was_open, DeviceGpadls* gpadls, uint64_t* gpadls_accepted,
                       std::shared_ptr<bool> alive, RestoreHandlers handlers) {
  absl::StatusOr<RestoreResult> result = Flatten(co_await reply.On(loop));
  if (!*alive) co_return;
  if (!result.ok()) {
    handlers.failed(result.status());
    co_return;
  }
  for (const RestoredGpadl& gpadl : result->gpadls) {
    if (gpadl.accepted && gpadls->Accept(gpadl.request)) ++*gpadls_accepted;
  }
  if (result->open_request.has_value() && was_open) handlers.reopen(*result->open_request);
}

}  // namespace

absl::Status AskServerToRestore(hw::EventLoop* loop, Sender<ChannelServerRequest>& to_server,
                                std::optional<OpenResult> open_result, DeviceGpadls* gpadls,
                                uint64_t* gpadls_accepted, std::shared_ptr<bool> alive,
                                RestoreHandlers handlers) {
  const bool was_open = open_result.has_value();
  auto [rpc, reply] =
      MakeRpc<std::optional<OpenResult>, absl::StatusOr<RestoreResult>>(std::move(open_result));
  if (absl::Status status = to_server.Send(RestoreChannel{std::move(rpc)}); !status.ok()) {
    return status;
  }
  FinishRestore(loop, std::move(reply), was_open, gpadls, gpadls_accepted, std::move(alive),
                std::move(handlers));
  return absl::OkStatus();
}

}  // namespace cvmbus::paravisor
