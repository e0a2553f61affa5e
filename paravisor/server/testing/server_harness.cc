#include "paravisor/server/testing/server_harness.h"

#include <future>

namespace cvmbus::paravisor::testing {

using protocol::MessageType;
constexpr auto kTimeout = std::chrono::milliseconds(5000);

OfferParams TestOffer(uint32_t interface, uint32_t instance, uint16_t subchannel) {
  OfferParams params;
  params.interface_name = "scripted";
  params.interface_id.data1 = interface;
  params.instance_id.data1 = instance;
  params.subchannel_index = subchannel;
  return params;
}

absl::StatusOr<std::unique_ptr<ServerHarness>> ServerHarness::Create(ServerOptions options,
                                                                     bool trusted_port) {
  std::unique_ptr<ServerHarness> harness(new ServerHarness(trusted_port));
  guestmem::MemoryOptions memory;
  memory.name = "harness";
  memory.regions = {{0, 16ull << 20}};
  absl::StatusOr<std::shared_ptr<guestmem::MemoryBacking>> backing =
      guestmem::MemoryBacking::Create(memory);
  if (!backing.ok()) return backing.status();
  harness->backing_ = *backing;
  ServerHarness* raw = harness.get();
  options.untrusted_memory = guestmem::GuestMemory::Untrusted(raw->backing_);
  options.log = [raw](const std::string& line) {
    MutexLock lock(&raw->log_mu_);
    raw->log_.push_back(line);
  };
  raw->options_ = options;
  std::promise<absl::Status> started;
  raw->thread_ = std::thread([raw, &started] {
    auto loop = hw::EventLoop::Create();
    if (!loop.ok()) {
      started.set_value(loop.status());
      return;
    }
    raw->loop_ = *std::move(loop);
    raw->server_ = std::make_unique<VmbusServer>(raw->loop_.get(), &raw->port_, raw->options_);
    raw->bus_ = raw->server_->Bus();
    started.set_value(absl::OkStatus());
    (void)raw->loop_->Run();
    raw->devices_.clear();
    raw->bus_.reset();
    raw->server_.reset();
  });
  if (absl::Status status = started.get_future().get(); !status.ok()) {
    raw->thread_.join();
    return status;
  }
  return harness;
}

ServerHarness::~ServerHarness() {
  if (loop_) loop_->Stop();
  if (thread_.joinable()) thread_.join();
  loop_.reset();
}

void ServerHarness::OnServer(const std::function<void()>& fn) {
  std::promise<void> done;
  loop_->Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

ScriptedDevice* ServerHarness::AddDevice(OfferParams params, DeviceScript script) {
  ScriptedDevice* device = nullptr;
  OnServer([&] {
    devices_.push_back(
        std::make_unique<ScriptedDevice>(loop_.get(), bus_.get(), std::move(params), script));
    device = devices_.back().get();
    (void)device->Offer();
  });
  return device;
}

ScriptedDevice* ServerHarness::AddRestoredDevice(OfferParams params, bool open,
                                                 DeviceScript script) {
  ScriptedDevice* device = nullptr;
  OnServer([&] {
    devices_.push_back(
        std::make_unique<ScriptedDevice>(loop_.get(), bus_.get(), std::move(params), script));
    device = devices_.back().get();
    (void)device->OfferRestored(open);
  });
  return device;
}

void ServerHarness::DropDevices() {
  OnServer([&] { devices_.clear(); });
}

std::vector<std::string> ServerHarness::TakeLog() {
  MutexLock lock(&log_mu_);
  std::vector<std::string> out;
  out.swap(log_);
  return out;
}

absl::StatusOr<saved::Server> ServerHarness::SaveAndStop() {
  absl::StatusOr<saved::Server> state = absl::UnknownError("not run");
  OnServer([&] {
    state = server_->Save();
    if (state.ok()) server_->HandOffOnDestruction();
    bus_.reset();
    server_.reset();
  });
  return state;
}

absl::Status ServerHarness::Restart(const saved::Server& state) {
  absl::Status status;
  OnServer([&] {
    bus_.reset();
    server_.reset();
    server_ = std::make_unique<VmbusServer>(loop_.get(), &port_, options_);
    bus_ = server_->Bus();
    status = server_->Restore(state);
  });
  return status;
}

bool ServerHarness::WaitUntil(const std::function<bool()>& condition,
                              std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    bool met = false;
    OnServer([&] { met = condition(); });
    if (met) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

absl::StatusOr<protocol::VersionResponse> ServerHarness::Connect(uint32_t version,
                                                                 uint32_t features, uint32_t vp,
                                                                 uint8_t sint) {
  protocol::InitiateContact contact{};
  contact.vmbus_version_requested = version;
  contact.target_vcpu = vp;
  if (version >= protocol::kVersionWin10V5) {
    contact.interrupt_page_or_target.target.message_sint = sint;
  }
  if (version >= protocol::kVersionWin10V6_0) {
    contact.interrupt_page_or_target.target.feature_flags = features;
  }
  const uint32_t connection_id = version >= protocol::kVersionWin10V5
                                     ? protocol::kMessageConnectionId4
                                     : protocol::kMessageConnectionId;
  if (absl::Status status = Send(protocol::EncodeInitiateContact(contact), connection_id);
      !status.ok()) {
    return status;
  }
  absl::StatusOr<FakePort::Posted> reply = port_.WaitFor(MessageType::kVersionResponse, kTimeout);
  if (!reply.ok()) return reply.status();
  return *reply->message.As<protocol::VersionResponse>();
}

absl::StatusOr<std::vector<protocol::OfferChannel>> ServerHarness::RequestOffers() {
  if (absl::Status status = Send(protocol::Encode(protocol::RequestOffers{})); !status.ok()) {
    return status;
  }
  if (absl::Status status = port_.WaitFor(MessageType::kAllOffersDelivered, kTimeout).status();
      !status.ok()) {
    return status;
  }
  std::vector<protocol::OfferChannel> offers;
  while (true) {
    absl::StatusOr<FakePort::Posted> offer =
        port_.WaitFor(MessageType::kOfferChannel, std::chrono::milliseconds(0));
    if (!offer.ok()) break;
    offers.push_back(*offer->message.As<protocol::OfferChannel>());
  }
  return offers;
}

absl::Status ServerHarness::SendGpadl(uint32_t relid, uint32_t gpadl_id, uint32_t pages,
                                      uint64_t first_gpn) {
  std::vector<uint64_t> words = {uint64_t{pages} * 4096};
  for (uint64_t i = 0; i < pages; ++i) words.push_back(first_gpn + i);
  absl::StatusOr<std::vector<std::vector<uint8_t>>> messages =
      protocol::EncodeGpadl(relid, gpadl_id, 1, words);
  if (!messages.ok()) return messages.status();
  for (const auto& message : *messages) {
    if (absl::Status status = Send(message); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ServerHarness::CreateGpadl(uint32_t relid, uint32_t gpadl_id,
                                                    uint32_t pages, uint64_t first_gpn) {
  if (absl::Status status = SendGpadl(relid, gpadl_id, pages, first_gpn); !status.ok()) {
    return status;
  }
  absl::StatusOr<FakePort::Posted> created = port_.WaitFor(MessageType::kGpadlCreated, kTimeout);
  if (!created.ok()) return created.status();
  return created->message.As<protocol::GpadlCreated>()->creation_status;
}

absl::Status ServerHarness::SendOpen(uint32_t relid, uint32_t gpadl_id, uint32_t target_vp,
                                     uint32_t open_id) {
  protocol::OpenChannel open{};
  open.child_relid = relid;
  open.open_id = open_id == 0 ? relid : open_id;
  open.ring_buffer_gpadl = gpadl_id;
  open.target_vp = target_vp;
  open.downstream_page_offset = 2;
  return Send(protocol::EncodeOpenChannel(open, /*with_tail=*/false));
}

absl::StatusOr<uint32_t> ServerHarness::Open(uint32_t relid, uint32_t gpadl_id,
                                             uint32_t target_vp) {
  if (absl::Status status = SendOpen(relid, gpadl_id, target_vp); !status.ok()) return status;
  absl::StatusOr<FakePort::Posted> result =
      port_.WaitFor(MessageType::kOpenChannelResult, kTimeout);
  if (!result.ok()) return result.status();
  return result->message.As<protocol::OpenResult>()->status;
}

absl::Status ServerHarness::SendTeardown(uint32_t relid, uint32_t gpadl_id) {
  protocol::GpadlTeardown teardown{};
  teardown.child_relid = relid;
  teardown.gpadl = gpadl_id;
  return Send(protocol::Encode(teardown));
}

absl::Status ServerHarness::SendClose(uint32_t relid) {
  protocol::CloseChannel close{};
  close.child_relid = relid;
  return Send(protocol::Encode(close));
}

absl::Status ServerHarness::SendModify(uint32_t relid, uint32_t target_vp) {
  protocol::ModifyChannel modify{};
  modify.child_relid = relid;
  modify.target_vp = target_vp;
  return Send(protocol::Encode(modify));
}

absl::Status ServerHarness::SendRelease(uint32_t relid) {
  protocol::RelIdReleased released{};
  released.child_relid = relid;
  return Send(protocol::Encode(released));
}

}  // namespace cvmbus::paravisor::testing
