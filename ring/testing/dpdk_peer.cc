#include "ring/testing/dpdk_peer.h"

// The only file that includes DPDK headers (built with `-include rte_config.h`, found through
// @system//:dpdk_vmbus's -isystem directories).
#include <errno.h>
#include <fmt/format.h>
#include <rte_bus_vmbus.h>
#include <rte_vmbus_reg.h>
#include <string.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/status_macros.h"

namespace cvmbus::ring::testing {
namespace {

// DPDK 22.11's private `struct vmbus_br` and `struct vmbus_channel`
// (drivers/bus/vmbus/private.h). Not in any installed header; the offsets below were read off
// the installed librte_bus_vmbus.so.23.0 (Debian 22.11.11-0+deb12u1):
//  - vmbus_chan_create stores the STAILQ head at +0/+8, device at +0x18, relid | subid << 16 at
//    +0x40, monitor_id at +0x44, device->monitor_page at +0x48, from an 80-byte rte_zmalloc.
//  - rte_vmbus_chan_rx_empty / _signal_read load rxbr.vbr at +0x20 and rxbr.dsize at +0x28;
//    rte_vmbus_chan_signal_tx loads txbr.vbr at +0x30; rte_vmbus_chan_send passes &txbr (+0x30)
//    to vmbus_txbr_write, which keeps its private write cursor at +0xc of the vmbus_br.
struct VmbusBr {
  struct vmbus_bufring* vbr;  // The ring's control page; data starts one page later.
  uint32_t dsize;             // Data bytes: ring bytes - page size (vmbus_br_setup).
  uint32_t windex;            // tx: DPDK's private write cursor; rx: last write_index seen.
};

struct ChannelLayout {
  void* subchannel_first;  // STAILQ_HEAD(, vmbus_channel) subchannel_list
  void** subchannel_last;  //
  void* next;              // STAILQ_ENTRY(vmbus_channel) next
  const void* device;      // const struct rte_vmbus_device *; never read on 22.11 ring paths.
  VmbusBr rxbr;            // +0x20
  VmbusBr txbr;            // +0x30
  uint16_t relid;          // +0x40
  uint16_t subchannel_id;  // +0x42
  uint8_t monitor_id;      // +0x44
  struct vmbus_mon_page* monitor_page;  // +0x48
};

static_assert(sizeof(VmbusBr) == 16);
static_assert(sizeof(ChannelLayout) == 80);
static_assert(offsetof(ChannelLayout, device) == 24);
static_assert(offsetof(ChannelLayout, rxbr) == 32);
static_assert(offsetof(ChannelLayout, txbr) == 48);
static_assert(offsetof(ChannelLayout, relid) == 64);
static_assert(offsetof(ChannelLayout, subchannel_id) == 66);
static_assert(offsetof(ChannelLayout, monitor_id) == 68);
static_assert(offsetof(ChannelLayout, monitor_page) == 72);

// The public wire structures DPDK uses must match the VMBus layout our tests decode.
static_assert(offsetof(struct vmbus_bufring, windex) == 0x00);
static_assert(offsetof(struct vmbus_bufring, rindex) == 0x04);
static_assert(offsetof(struct vmbus_bufring, imask) == 0x08);
static_assert(offsetof(struct vmbus_bufring, pending_send) == 0x0c);
static_assert(offsetof(struct vmbus_bufring, feature_bits) == 0x40);
static_assert(sizeof(struct vmbus_mon_page) == 4096);
static_assert(offsetof(struct vmbus_mon_page, trigs) == 8);
static_assert(sizeof(struct vmbus_mon_trig) == 8);
static_assert(sizeof(struct vmbus_chanpkt_hdr) == DpdkPeer::kDescriptorBytes);
static_assert(sizeof(struct vmbus_chanpkt_sglist) == 24);
static_assert(sizeof(struct vmbus_gpa) == sizeof(GpaPageRange));
static_assert(offsetof(struct vmbus_gpa, len) == offsetof(GpaPageRange, byte_count));
static_assert(offsetof(struct vmbus_gpa, ofs) == offsetof(GpaPageRange, byte_offset));
static_assert(offsetof(struct vmbus_gpa, page) == offsetof(GpaPageRange, pfn));

constexpr size_t kPageBytes = 4096;
constexpr size_t kMaxDataBytes = size_t{1} << 30;
constexpr size_t kWriteIndex = 0x00;
constexpr size_t kReadIndex = 0x04;
constexpr uint32_t kMonitorTriggers = 4;

// Ring control words are shared with the other peer: each is loaded once, with acquire so that
// packet bytes published before the index are visible, and the value is used from then on.
uint32_t LoadShared(const uint8_t* control_page, size_t offset) {
  return __atomic_load_n(reinterpret_cast<const uint32_t*>(control_page + offset),
                         __ATOMIC_ACQUIRE);
}

uint32_t DataBytes(const RawRing& ring) {
  return static_cast<uint32_t>(ring.total_bytes - kPageBytes);
}

size_t RoundUp8(size_t bytes) { return (bytes + 7) & ~size_t{7}; }

// "-EAGAIN" for rc == -EAGAIN; DPDK functions return negative errno values.
std::string ErrnoName(int rc) {
  const char* name = rc < 0 ? strerrorname_np(-rc) : nullptr;
  return name != nullptr ? fmt::format("-{}", name) : fmt::format("{}", rc);
}

absl::Status DpdkError(absl::StatusCode code, std::string_view function, int rc,
                       std::string_view what) {
  return absl::Status(code, fmt::format("{} returned {}: {}", function, ErrnoName(rc), what));
}

struct FreeMemory {
  void operator()(void* memory) const { std::free(memory); }
};

// Zeroed, page-aligned memory.
std::unique_ptr<uint8_t, FreeMemory> AllocatePages(size_t bytes) {
  auto* memory = static_cast<uint8_t*>(std::aligned_alloc(kPageBytes, bytes));
  if (memory != nullptr) std::memset(memory, 0, bytes);
  return std::unique_ptr<uint8_t, FreeMemory>(memory);
}

absl::Status CheckGeometry(std::string_view name, const RawRing& ring) {
  if (ring.base == nullptr) {
    return absl::InvalidArgumentError(fmt::format("DpdkPeer: {} ring base is null", name));
  }
  if (reinterpret_cast<uintptr_t>(ring.base) % kPageBytes != 0) {
    return absl::InvalidArgumentError(fmt::format(
        "DpdkPeer: {} ring base {} is not 4096-byte aligned", name, fmt::ptr(ring.base)));
  }
  if (ring.total_bytes <= kPageBytes || ring.total_bytes % kPageBytes != 0 ||
      ring.total_bytes - kPageBytes > kMaxDataBytes) {
    return absl::InvalidArgumentError(
        fmt::format("DpdkPeer: {} ring of {} bytes is not a control page plus 1 to {} data pages",
                    name, ring.total_bytes, kMaxDataBytes / kPageBytes));
  }
  return absl::OkStatus();
}

// An index into a ring's data area is valid if it lies inside it and is 8-byte aligned.
bool ValidIndex(uint32_t index, uint32_t data_bytes) {
  return index < data_bytes && index % 8 == 0;
}

absl::Status CheckIndex(absl::StatusCode code, std::string_view function, std::string_view ring,
                        std::string_view field, uint32_t index, uint32_t data_bytes) {
  if (ValidIndex(index, data_bytes)) return absl::OkStatus();
  return absl::Status(code, fmt::format("{}: {} ring {} {:#x} is not an 8-aligned offset into its "
                                        "{:#x}-byte data area",
                                        function, ring, field, index, data_bytes));
}

// Mirrors vmbus_chan_create (STAILQ_INIT, ids, monitor page) and vmbus_br_setup (vbr = ring,
// windex = vbr->windex, dsize = ring bytes - page size) for one channel over `tx` and `rx`.
void SetUpChannel(ChannelLayout& channel, const RawRing& tx, const RawRing& rx, uint8_t monitor_id,
                  uint8_t* monitor_page) {
  channel = ChannelLayout{};
  channel.subchannel_first = nullptr;
  channel.subchannel_last = &channel.subchannel_first;
  channel.device = nullptr;
  channel.relid = 0;
  channel.subchannel_id = 0;
  channel.monitor_id = monitor_id;
  channel.monitor_page = reinterpret_cast<struct vmbus_mon_page*>(monitor_page);
  channel.txbr.vbr = reinterpret_cast<struct vmbus_bufring*>(tx.base);
  channel.txbr.dsize = DataBytes(tx);
  channel.txbr.windex = LoadShared(tx.base, kWriteIndex);
  channel.rxbr.vbr = reinterpret_cast<struct vmbus_bufring*>(rx.base);
  channel.rxbr.dsize = DataBytes(rx);
  channel.rxbr.windex = LoadShared(rx.base, kWriteIndex);
}

struct vmbus_channel* AsDpdk(ChannelLayout& channel) {
  return reinterpret_cast<struct vmbus_channel*>(&channel);
}

// Byte offset of monitor trigger `index`'s `pending` word in a monitor page.
size_t PendingWordOffset(uint32_t index) { return 8 + 8 * size_t{index}; }

absl::Status SelfCheckFailed(std::string_view what) {
  return absl::FailedPreconditionError(
      fmt::format("DpdkPeer self-check: {}; the installed librte_bus_vmbus does not have the "
                  "DPDK 22.11 channel layout this wrapper assumes",
                  what));
}

// Maps the send functions' errors; `packet_bytes` excludes the trailer.
absl::Status SendError(const char* function, int rc, size_t packet_bytes, const RawRing& tx) {
  if (rc != -EAGAIN)
    return DpdkError(absl::StatusCode::kInternal, function, rc, "unexpected error");
  return DpdkError(absl::StatusCode::kResourceExhausted, function, rc,
                   fmt::format("no room for a {}-byte packet + {}-byte trailer in the tx ring "
                               "({:#x} data bytes, write_index {:#x}, read_index {:#x})",
                               packet_bytes, DpdkPeer::kTrailerBytes, DataBytes(tx),
                               LoadShared(tx.base, kWriteIndex), LoadShared(tx.base, kReadIndex)));
}

// Maps the receive functions' errors; `capacity` and `needed` are buffer sizes in bytes.
absl::Status RecvError(const char* function, int rc, uint32_t capacity, uint32_t needed,
                       uint32_t write_index, uint32_t read_index) {
  switch (-rc) {
    case EAGAIN:
      return DpdkError(absl::StatusCode::kUnavailable, function, rc,
                       fmt::format("no complete packet in the rx ring (write_index {:#x}, "
                                   "read_index {:#x})",
                                   write_index, read_index));
    case ENOBUFS:
      return DpdkError(
          absl::StatusCode::kOutOfRange, function, rc,
          fmt::format("the packet needs a {}-byte buffer, got {}; it stays in the ring", needed,
                      capacity));
    case EIO:
      return DpdkError(absl::StatusCode::kDataLoss, function, rc,
                       fmt::format("descriptor at read_index {:#x} has data_offset8 < 2 or "
                                   "> length8",
                                   read_index));
    default:
      return DpdkError(absl::StatusCode::kInternal, function, rc, "unexpected error");
  }
}

uint32_t Capacity(absl::Span<uint8_t> out) {
  return out.size() > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(out.size());
}

// Sends one packet that wraps around the end of a scratch tx ring's data area, copies that ring
// into a second scratch ring and receives the packet from it, checking every effect in memory we
// own. Two distinct rings tell the tx and rx halves of the channel apart; together the checks
// prove the channel offsets (both vmbus_br, the private cursors, monitor id and page) against the
// real library before the caller's rings are touched.
absl::Status SelfCheck(uint8_t monitor_id) {
  constexpr size_t kRingBytes = 2 * kPageBytes;  // Control page + 4 KiB data.
  constexpr uint32_t kStart = 4080;              // The descriptor ends exactly at the wrap.
  constexpr uint64_t kXid = 0x0123456789abcdef;
  constexpr uint32_t kPayloadBytes = 16;
  constexpr uint32_t kEnd = (kStart + 16 + kPayloadBytes + 8) % 4096;

  auto tx_memory = AllocatePages(kRingBytes);
  auto rx_memory = AllocatePages(kRingBytes);
  auto monitor_page = AllocatePages(kPageBytes);
  if (tx_memory == nullptr || rx_memory == nullptr || monitor_page == nullptr) {
    return absl::ResourceExhaustedError("DpdkPeer self-check: out of memory");
  }
  uint8_t* const tx = tx_memory.get();
  uint8_t* const rx = rx_memory.get();
  for (uint8_t* ring : {tx, rx}) {
    std::memcpy(ring + kWriteIndex, &kStart, 4);
    std::memcpy(ring + kReadIndex, &kStart, 4);
  }
  auto index = [](const uint8_t* ring, size_t offset) {
    uint32_t value;
    std::memcpy(&value, ring + offset, 4);
    return value;
  };
  auto monitor_page_is_zero = [&monitor_page] {
    for (size_t i = 0; i < kPageBytes; ++i) {
      if (monitor_page.get()[i] != 0) return false;
    }
    return true;
  };

  ChannelLayout channel;
  SetUpChannel(channel, RawRing{tx, kRingBytes}, RawRing{rx, kRingBytes}, monitor_id,
               monitor_page.get());
  if (!rte_vmbus_chan_rx_empty(AsDpdk(channel))) {
    return SelfCheckFailed("rx_empty reports a packet in an empty rx ring");
  }

  uint8_t payload[kPayloadBytes];
  for (uint32_t i = 0; i < kPayloadBytes; ++i) payload[i] = static_cast<uint8_t>(0xa0 + i);
  int rc = rte_vmbus_chan_send(AsDpdk(channel), VMBUS_CHANPKT_TYPE_INBAND, payload, kPayloadBytes,
                               kXid, VMBUS_CHANPKT_FLAG_RC, nullptr);
  if (rc != 0) return SelfCheckFailed(fmt::format("send returned {}", ErrnoName(rc)));
  if (index(tx, kWriteIndex) != kEnd || channel.txbr.windex != kEnd) {
    return SelfCheckFailed(fmt::format(
        "after one send the tx write_index is {:#x} and DPDK's cursor {:#x}, expected {:#x}",
        index(tx, kWriteIndex), channel.txbr.windex, kEnd));
  }
  if (index(rx, kWriteIndex) != kStart || !rte_vmbus_chan_rx_empty(AsDpdk(channel))) {
    return SelfCheckFailed("a send changed the rx ring");
  }
  const uint8_t* const data = tx + kPageBytes;
  const uint8_t expected_descriptor[16] = {0x06, 0,    2,    0,    4,    0,    1,    0,
                                           0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01};
  uint64_t trailer;
  std::memcpy(&trailer, data + kPayloadBytes, 8);
  if (std::memcmp(data + kStart, expected_descriptor, 16) != 0 ||
      std::memcmp(data, payload, kPayloadBytes) != 0 || trailer != uint64_t{kStart} << 32) {
    return SelfCheckFailed("the bytes in the tx ring are not the VMBus in-band packet sent");
  }

  const uint32_t trigger = monitor_id / 32;
  const uint32_t bit = uint32_t{1} << (monitor_id % 32);
  uint32_t pending;
  std::memcpy(&pending, monitor_page.get() + PendingWordOffset(trigger), 4);
  std::memset(monitor_page.get() + PendingWordOffset(trigger), 0, 4);
  if (pending != bit || !monitor_page_is_zero()) {
    return SelfCheckFailed(
        fmt::format("after an empty -> non-empty send, monitor trigger {} "
                    "reads {:#x} (expected {:#x}) or other bytes changed",
                    trigger, pending, bit));
  }

  std::memcpy(rx, tx, kRingBytes);  // Now the rx ring holds the packet, the tx ring stays put.
  if (rte_vmbus_chan_rx_empty(AsDpdk(channel))) {
    return SelfCheckFailed("rx_empty reports an empty rx ring holding one packet");
  }
  uint8_t received[64] = {};
  uint32_t received_bytes = sizeof(received);
  uint64_t xid = 0;
  rc = rte_vmbus_chan_recv(AsDpdk(channel), received, &received_bytes, &xid);
  if (rc != 0) return SelfCheckFailed(fmt::format("recv returned {}", ErrnoName(rc)));
  if (received_bytes != kPayloadBytes || xid != kXid ||
      std::memcmp(received, payload, kPayloadBytes) != 0 || index(rx, kReadIndex) != kEnd ||
      channel.rxbr.windex != kEnd || index(tx, kReadIndex) != kStart ||
      !rte_vmbus_chan_rx_empty(AsDpdk(channel))) {
    return SelfCheckFailed(fmt::format(
        "recv gave {} bytes and xid {:#x}, rx read_index {:#x}, DPDK's rx cursor {:#x}, tx "
        "read_index {:#x}; expected {} bytes, xid {:#x}, {:#x}, {:#x}, {:#x}",
        received_bytes, xid, index(rx, kReadIndex), channel.rxbr.windex, index(tx, kReadIndex),
        kPayloadBytes, kXid, kEnd, kEnd, kStart));
  }
  if (!monitor_page_is_zero()) {
    return SelfCheckFailed("DPDK signalled a read although feature bit 0 is clear");
  }
  return absl::OkStatus();
}

}  // namespace

// Lines of its own (two of them: the adjacent-line prefetcher pulls pairs): the channel's
// cursors are written per packet, and a benchmark's sender and receiver, on two CPUs, must not
// share a line through two neighbouring allocations. (DPDK's rte_zmalloc aligns to a line.)
struct alignas(128) DpdkPeer::Channel {
  ChannelLayout layout;
};

void DpdkPeer::FreeDeleter::operator()(void* memory) const { std::free(memory); }

void* DpdkPeer::raw_channel() const { return AsDpdk(channel_->layout); }

absl::StatusOr<std::unique_ptr<DpdkPeer>> DpdkPeer::Create(RawRing tx, RawRing rx,
                                                           uint8_t monitor_id) {
  if (monitor_id >= kMonitorIds) {
    return absl::InvalidArgumentError(fmt::format(
        "DpdkPeer: monitor_id {} names no bit of a monitor page's 4 x 32 triggers", monitor_id));
  }
  CVMBUS_RETURN_IF_ERROR(CheckGeometry("tx", tx));
  CVMBUS_RETURN_IF_ERROR(CheckGeometry("rx", rx));
  // vmbus_br_setup and the copy loops offset the data by rte_mem_page_size(), which is
  // sysconf(_SC_PAGESIZE) (librte_eal's eal_unix_memory.c); the VMBus layout says 4096.
  if (sysconf(_SC_PAGESIZE) != static_cast<long>(kPageBytes)) {
    return absl::FailedPreconditionError(
        fmt::format("DpdkPeer: DPDK would place ring data {} bytes after the control page, not "
                    "4096",
                    sysconf(_SC_PAGESIZE)));
  }
  // The caller's indices become DPDK's starting state: check them once here.
  const RawRing rings[2] = {tx, rx};
  const char* const names[2] = {"tx", "rx"};
  for (int i = 0; i < 2; ++i) {
    CVMBUS_RETURN_IF_ERROR(CheckIndex(absl::StatusCode::kInvalidArgument, "DpdkPeer::Create",
                                      names[i], "write_index",
                                      LoadShared(rings[i].base, kWriteIndex), DataBytes(rings[i])));
    CVMBUS_RETURN_IF_ERROR(CheckIndex(absl::StatusCode::kInvalidArgument, "DpdkPeer::Create",
                                      names[i], "read_index", LoadShared(rings[i].base, kReadIndex),
                                      DataBytes(rings[i])));
  }
  CVMBUS_RETURN_IF_ERROR(SelfCheck(monitor_id));

  std::unique_ptr<uint8_t, FreeDeleter> monitor_page(AllocatePages(kPageBytes).release());
  if (monitor_page == nullptr) {
    return absl::ResourceExhaustedError("DpdkPeer: cannot allocate the monitor page");
  }
  return std::unique_ptr<DpdkPeer>(new DpdkPeer(tx, rx, monitor_id, std::move(monitor_page)));
}

DpdkPeer::DpdkPeer(RawRing tx, RawRing rx, uint8_t monitor_id,
                   std::unique_ptr<uint8_t, FreeDeleter> monitor_page)
    : tx_(tx),
      rx_(rx),
      monitor_id_(monitor_id),
      channel_(std::make_unique<Channel>()),
      monitor_page_(std::move(monitor_page)) {
  SetUpChannel(channel_->layout, tx_, rx_, monitor_id_, monitor_page_.get());
}

DpdkPeer::~DpdkPeer() = default;

absl::Status DpdkPeer::CheckTxIndices(const char* function) const {
  const uint32_t data_bytes = DataBytes(tx_);
  const uint32_t write_index = LoadShared(tx_.base, kWriteIndex);
  if (write_index != channel_->layout.txbr.windex) {
    // vmbus_txbr_write spins until the shared write_index equals its private cursor.
    return absl::DataLossError(fmt::format(
        "{}: tx ring write_index {:#x} is not where DPDK left it ({:#x}); only DpdkPeer may "
        "write it, and DPDK would spin forever",
        function, write_index, channel_->layout.txbr.windex));
  }
  return CheckIndex(absl::StatusCode::kDataLoss, function, "tx", "read_index",
                    LoadShared(tx_.base, kReadIndex), data_bytes);
}

absl::Status DpdkPeer::CheckRxIndices(const char* function) const {
  const uint32_t data_bytes = DataBytes(rx_);
  CVMBUS_RETURN_IF_ERROR(CheckIndex(absl::StatusCode::kDataLoss, function, "rx", "write_index",
                                    LoadShared(rx_.base, kWriteIndex), data_bytes));
  return CheckIndex(absl::StatusCode::kDataLoss, function, "rx", "read_index",
                    LoadShared(rx_.base, kReadIndex), data_bytes);
}

absl::Status DpdkPeer::CollectSignal(const char* function) {
  const uint32_t our_trigger = monitor_id_ / 32;
  const uint32_t our_bit = uint32_t{1} << (monitor_id_ % 32);
  uint32_t foreign_bits = 0;
  for (uint32_t trigger = 0; trigger < kMonitorTriggers; ++trigger) {
    // DPDK sets the bit with a locked OR; taking the word back with an exchange never loses one.
    auto* word = reinterpret_cast<uint32_t*>(monitor_page_.get() + PendingWordOffset(trigger));
    uint32_t value = __atomic_exchange_n(word, 0, __ATOMIC_ACQ_REL);
    if (trigger == our_trigger && (value & our_bit) != 0) {
      ++signals_;
      value &= ~our_bit;
    }
    foreign_bits |= value;
  }
  if (foreign_bits != 0) {
    return absl::InternalError(fmt::format(
        "{}: DPDK set monitor bits {:#x} besides bit {} of trigger {}; the channel layout does "
        "not match this DPDK",
        function, foreign_bits, monitor_id_ % 32, our_trigger));
  }
  return absl::OkStatus();
}

absl::Status DpdkPeer::Send(uint16_t type, uint32_t flags, absl::Span<const uint8_t> payload,
                            uint64_t xid, bool* need_signal) {
  static constexpr char kFunction[] = "rte_vmbus_chan_send";
  if (flags > 0xffff) {
    return absl::InvalidArgumentError(
        fmt::format("{}: flags {:#x} do not fit the descriptor's u16", kFunction, flags));
  }
  if (payload.size() > kMaxPacketBytes ||
      kDescriptorBytes + RoundUp8(payload.size()) > kMaxPacketBytes) {
    return absl::InvalidArgumentError(
        fmt::format("{}: a {}-byte payload does not fit length8 (at most {} packet bytes)",
                    kFunction, payload.size(), kMaxPacketBytes));
  }
  CVMBUS_RETURN_IF_ERROR(CheckTxIndices(kFunction));
  const size_t packet_bytes = kDescriptorBytes + RoundUp8(payload.size());
  uint8_t no_bytes = 0;
  // DPDK takes `void *` but only reads the payload (it becomes an iovec source).
  void* data = payload.empty() ? &no_bytes : const_cast<uint8_t*>(payload.data());
  const int rc =
      rte_vmbus_chan_send(AsDpdk(channel_->layout), type, data,
                          static_cast<uint32_t>(payload.size()), xid, flags, need_signal);
  CVMBUS_RETURN_IF_ERROR(CollectSignal(kFunction));
  if (rc == 0) return absl::OkStatus();
  return SendError(kFunction, rc, packet_bytes, tx_);
}

absl::Status DpdkPeer::SendSgList(absl::Span<const GpaPageRange> ranges,
                                  absl::Span<const uint8_t> payload, uint64_t xid,
                                  bool* need_signal) {
  static constexpr char kFunction[] = "rte_vmbus_chan_send_sglist";
  constexpr size_t kSgHeaderBytes = sizeof(struct vmbus_chanpkt_sglist);
  if (ranges.size() > kMaxPacketBytes / sizeof(GpaPageRange) || payload.size() > kMaxPacketBytes ||
      kSgHeaderBytes + ranges.size() * sizeof(GpaPageRange) + RoundUp8(payload.size()) >
          kMaxPacketBytes) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: {} ranges and a {}-byte payload do not fit length8 (at most {} packet bytes)",
        kFunction, ranges.size(), payload.size(), kMaxPacketBytes));
  }
  CVMBUS_RETURN_IF_ERROR(CheckTxIndices(kFunction));
  const size_t packet_bytes =
      kSgHeaderBytes + ranges.size() * sizeof(GpaPageRange) + RoundUp8(payload.size());
  // DPDK takes non-const pointers but only reads both arrays (iovec sources).
  struct vmbus_gpa no_range = {};
  auto* gpa = ranges.empty()
                  ? &no_range
                  : reinterpret_cast<struct vmbus_gpa*>(const_cast<GpaPageRange*>(ranges.data()));
  uint8_t no_bytes = 0;
  void* data = payload.empty() ? &no_bytes : const_cast<uint8_t*>(payload.data());
  const int rc = rte_vmbus_chan_send_sglist(
      AsDpdk(channel_->layout), gpa, static_cast<uint32_t>(ranges.size()), data,
      static_cast<uint32_t>(payload.size()), xid, need_signal);
  CVMBUS_RETURN_IF_ERROR(CollectSignal(kFunction));
  if (rc == 0) return absl::OkStatus();
  return SendError(kFunction, rc, packet_bytes, tx_);
}

absl::Status DpdkPeer::SignalTx() {
  rte_vmbus_chan_signal_tx(AsDpdk(channel_->layout));
  return CollectSignal("rte_vmbus_chan_signal_tx");
}

absl::StatusOr<size_t> DpdkPeer::Recv(absl::Span<uint8_t> out, uint64_t* xid) {
  static constexpr char kFunction[] = "rte_vmbus_chan_recv";
  CVMBUS_RETURN_IF_ERROR(CheckRxIndices(kFunction));
  const uint32_t capacity = Capacity(out);
  uint32_t length = capacity;
  uint8_t no_bytes = 0;
  void* data = out.empty() ? &no_bytes : out.data();
  const int rc = rte_vmbus_chan_recv(AsDpdk(channel_->layout), data, &length, xid);
  CVMBUS_RETURN_IF_ERROR(CollectSignal(kFunction));
  if (rc == 0) return size_t{length};
  return RecvError(kFunction, rc, capacity, length, LoadShared(rx_.base, kWriteIndex),
                   LoadShared(rx_.base, kReadIndex));
}

absl::StatusOr<size_t> DpdkPeer::RecvRaw(absl::Span<uint8_t> out) {
  static constexpr char kFunction[] = "rte_vmbus_chan_recv_raw";
  CVMBUS_RETURN_IF_ERROR(CheckRxIndices(kFunction));
  const uint32_t capacity = Capacity(out);
  uint32_t length = capacity;
  uint8_t no_bytes = 0;
  void* data = out.empty() ? &no_bytes : out.data();
  const int rc = rte_vmbus_chan_recv_raw(AsDpdk(channel_->layout), data, &length);
  CVMBUS_RETURN_IF_ERROR(CollectSignal(kFunction));
  if (rc > 0) {
    // DPDK returns the ring bytes consumed: the packet and its trailer.
    if (static_cast<uint32_t>(rc) != length + kTrailerBytes) {
      return absl::InternalError(
          fmt::format("{} returned {} for a {}-byte packet", kFunction, rc, length));
    }
    return size_t{length};
  }
  return RecvError(kFunction, rc, capacity, length, LoadShared(rx_.base, kWriteIndex),
                   LoadShared(rx_.base, kReadIndex));
}

bool DpdkPeer::RxEmpty() const {
  return rte_vmbus_chan_rx_empty(reinterpret_cast<const struct vmbus_channel*>(&channel_->layout));
}

absl::Status DpdkPeer::SignalRead(uint32_t bytes_read) {
  rte_vmbus_chan_signal_read(AsDpdk(channel_->layout), bytes_read);
  return CollectSignal("rte_vmbus_chan_signal_read");
}

}  // namespace cvmbus::ring::testing
