// DpdkPeer: DPDK 22.11's own VMBus ring code as an independent peer for tests.
//
// DpdkPeer drives the ring functions of Debian 12's DPDK 22.11 (librte_bus_vmbus.so.23, package
// librte-bus-vmbus23) over ring memory the test owns, without starting EAL: it builds DPDK's
// private `struct vmbus_channel` itself instead of opening a UIO device. A test can then put our
// ring code on one side of a ring and a VMBus implementation written by someone else on the other,
// and compare packets, indices and signalling decisions byte for byte.
//
// Ring memory. Each direction is given as the ring exactly as it lies in memory: a 4096-byte
// control page (u32 write_index at 0x00, read_index at 0x04, interrupt_mask at 0x08,
// pending_send_sz at 0x0c, feature_bits at 0x40) followed by the data area. DpdkPeer writes
// packets into its tx ring (it owns that ring's write_index) and reads packets from its rx ring (it
// owns that ring's read_index). The same memory may be the tx ring of one DpdkPeer and the rx ring
// of another, or both rings of one peer (loopback).
//
// When DPDK 22.11 signals the other side (checked against the disassembly of the installed
// librte_bus_vmbus.so.23.0 and DPDK's drivers/bus/vmbus/vmbus_channel.c and vmbus_bufring.c):
//  - Send / SendSgList (vmbus_txbr_write): after publishing write_index, a full fence, then
//    "signal needed" = tx interrupt_mask == 0 && the write_index before this packet == tx
//    read_index (the empty -> non-empty edge). With `need_signal == nullptr` DPDK signals at once
//    through rte_vmbus_chan_signal_tx; otherwise it ORs the decision into `*need_signal`, does not
//    signal, and the caller calls SignalTx() after the batch.
//  - SignalTx (rte_vmbus_chan_signal_tx): signals unless the tx interrupt_mask is non-zero (read
//    again at call time).
//  - Recv (rte_vmbus_chan_recv) calls rte_vmbus_chan_signal_read itself with the bytes the packet
//    used (descriptor + payload + 8-byte trailer). RecvRaw never signals: ack with SignalRead.
//  - SignalRead(bytes_read) (rte_vmbus_chan_signal_read): only when bit 0 of the rx ring's
//    feature_bits is set; then a full fence, then with pending = rx pending_send_sz (no signal if
//    0) and free = DPDK's writable bytes of the rx ring now (dsize when empty; otherwise
//    dsize - (write_index - read_index) mod dsize), it signals iff
//    `free - bytes_read <= pending && free > pending` in u32 arithmetic (a bytes_read above free
//    wraps and gives no signal). The rx interrupt_mask is not consulted.
//  - A signal is an atomic OR of bit (monitor_id % 32) into the u32 at
//    monitor_page + 8 + 8 * (monitor_id / 32); 22.11 uses no interrupt page and no hypercall.
//    DpdkPeer owns a zeroed monitor page, and after every call that can signal it takes the bit
//    back (each DPDK call signals at most once), so signals_to_host() is an exact count. A call
//    after which any other monitor bit is set returns Internal: DPDK wrote where the assumed
//    layout says it would not.
//
// Trust. The rings are shared with a peer under test, which may write garbage. Before each call
// DpdkPeer checks the indices DPDK would use (in range, 8-aligned) and returns an error instead
// of letting DPDK copy out of bounds; DPDK itself checks descriptor lengths (-EIO) and space
// (-EAGAIN). The checks are exact when the peers take turns on one thread; a concurrent peer that
// rewrites an index between the check and DPDK's read is not caught. DPDK's send path spins until
// the shared tx write_index equals its private cursor, so Send refuses (DataLoss) a tx
// write_index that someone else moved; a concurrent rewrite after that check hangs Send.
//
// Thread ownership: a DpdkPeer is used by one thread at a time (DPDK's ring code tolerates the
// other peer running concurrently on another thread; the signal counter does not tolerate two
// callers of this object). The ring memory is not owned; the caller keeps it mapped and does not
// move it for the DpdkPeer's lifetime.
#ifndef CVMBUS_RING_TESTING_DPDK_PEER_H_
#define CVMBUS_RING_TESTING_DPDK_PEER_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace cvmbus::ring::testing {

// One direction of a VMBus ring, as laid out in memory. Not owned.
struct RawRing {
  // Points at the control page; 4096-byte aligned.
  uint8_t* base = nullptr;
  // 4096 (control page) + the data area, a non-zero multiple of 4096 of at most 1 GiB (DPDK
  // keeps indices in u32 and adds lengths to them before wrapping).
  size_t total_bytes = 0;
};

// One range of a GPA-direct packet (type 0x9) as DPDK writes it: at most one page, named by its
// page number. Same layout as DPDK's `struct vmbus_gpa` (16 bytes).
struct GpaPageRange {
  uint32_t byte_count = 0;
  uint32_t byte_offset = 0;  // Within the page; DPDK does not check < 4096.
  uint64_t pfn = 0;
};

class DpdkPeer {
 public:
  static constexpr size_t kControlPageBytes = 4096;
  static constexpr size_t kDescriptorBytes = 16;  // u16 type, data_offset8, length8, flags; u64 xid
  static constexpr size_t kTrailerBytes = 8;      // u64 (start write_index << 32) after each packet
  // DPDK stores length8 in a u16, so a packet (descriptor + padded payload) is at most this long.
  static constexpr size_t kMaxPacketBytes = 0xffff * 8;
  // monitor_id must name one of the 4 x 32 trigger bits of a monitor page.
  static constexpr uint32_t kMonitorIds = 128;

  // Builds DPDK's channel over `tx` (DPDK writes) and `rx` (DPDK reads). DPDK's private write
  // cursor starts at tx's current write_index, as vmbus_br_setup does, so the rings may already
  // hold packets. Before touching the caller's rings, Create runs a self-check on two scratch
  // rings of its own: it sends one packet that wraps through DPDK and confirms that the tx
  // write_index, DPDK's private cursor, the descriptor, payload and trailer changed in our memory
  // as the VMBus layout says and the rx ring did not, that DPDK signalled through exactly the
  // expected monitor bit, and that after copying the tx ring into the rx ring DPDK receives the
  // packet and moves that ring's read_index alone. Any mismatch means the installed DPDK's channel
  // layout is not the one assumed here: FailedPrecondition. Bad ring geometry, ring index or
  // monitor_id: InvalidArgument.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<DpdkPeer>> Create(RawRing tx, RawRing rx,
                                                                        uint8_t monitor_id = 0);

  DpdkPeer(const DpdkPeer&) = delete;
  DpdkPeer& operator=(const DpdkPeer&) = delete;
  ~DpdkPeer();

  // Writes one packet {type, flags, xid} + payload (zero-padded to 8 bytes) + trailer through
  // rte_vmbus_chan_send. `need_signal`: nullptr lets DPDK signal now if needed; otherwise DPDK ORs
  // its decision into *need_signal (so start it at false) and the caller signals with SignalTx.
  // Errors: ResourceExhausted when the ring lacks space (DPDK needs strictly more free bytes than
  // the packet plus trailer; a packet larger than the ring never fits); InvalidArgument for flags
  // above 0xffff or a packet above kMaxPacketBytes (DPDK would truncate them silently);
  // DataLoss for a corrupt tx index.
  [[nodiscard]] absl::Status Send(uint16_t type, uint32_t flags, absl::Span<const uint8_t> payload,
                                  uint64_t xid, bool* need_signal);

  // Writes one GPA-direct packet through rte_vmbus_chan_send_sglist: type 0x9, flags 0x1
  // (completion requested; DPDK fixes both), data_offset8 = (24 + 16 * ranges) / 8, then
  // {u32 reserved = 0, u32 range_count}, the ranges, the payload, padding and trailer. Errors as
  // Send.
  [[nodiscard]] absl::Status SendSgList(absl::Span<const GpaPageRange> ranges,
                                        absl::Span<const uint8_t> payload, uint64_t xid,
                                        bool* need_signal);

  // Signals the reader of the tx ring unless its interrupt_mask is set (rte_vmbus_chan_signal_tx).
  // Fails (Internal) only if DPDK wrote a monitor bit other than ours, as every signalling call
  // does.
  [[nodiscard]] absl::Status SignalTx();

  // Receives the next packet through rte_vmbus_chan_recv, copying the bytes after the packet's
  // header (data_offset8 * 8) into `out` and its transaction id into *xid (if non-null). Returns
  // the PADDED payload length, (length8 - data_offset8) * 8: DPDK does not know the sender's
  // unpadded length, so a 5-byte payload comes back as 8 bytes whose tail is the sender's padding.
  // Signals as described above. Errors: Unavailable when no complete packet is in the ring;
  // OutOfRange when `out` is too small (the message gives the size; the packet stays in the ring);
  // DataLoss for a descriptor DPDK rejects (data_offset8 < 2 or > length8: -EIO) or a corrupt rx
  // index.
  [[nodiscard]] absl::StatusOr<size_t> Recv(absl::Span<uint8_t> out, uint64_t* xid);

  // Receives the next packet whole, descriptor included (length8 * 8 bytes, without the trailer),
  // through rte_vmbus_chan_recv_raw. Does not signal: the ring bytes it consumed are the returned
  // size + kTrailerBytes, which the caller passes (alone or summed over a batch) to SignalRead.
  // Errors as Recv.
  [[nodiscard]] absl::StatusOr<size_t> RecvRaw(absl::Span<uint8_t> out);

  // True if the rx ring's read_index equals its write_index (rte_vmbus_chan_rx_empty).
  [[nodiscard]] bool RxEmpty() const;

  // Tells the writer of the rx ring that `bytes_read` bytes were consumed
  // (rte_vmbus_chan_signal_read); signals per the rule above.
  [[nodiscard]] absl::Status SignalRead(uint32_t bytes_read);

  // How many times DPDK signalled the other side since creation or the last ResetSignals().
  [[nodiscard]] uint64_t signals_to_host() const { return signals_; }
  void ResetSignals() { signals_ = 0; }

  [[nodiscard]] uint8_t monitor_id() const { return monitor_id_; }

  // DPDK's own `struct vmbus_channel *` for this peer, for a benchmark that calls
  // rte_vmbus_chan_* directly, without this wrapper's checks and error formatting. The caller
  // then owns the safety checks; valid for the DpdkPeer's lifetime.
  [[nodiscard]] void* raw_channel() const;

 private:
  struct Channel;  // DPDK 22.11's struct vmbus_channel, defined in dpdk_peer.cc.
  struct FreeDeleter {
    void operator()(void* memory) const;
  };

  DpdkPeer(RawRing tx, RawRing rx, uint8_t monitor_id,
           std::unique_ptr<uint8_t, FreeDeleter> monitor_page);

  // Checks the indices DPDK will use on the tx (writer) or rx (reader) ring.
  absl::Status CheckTxIndices(const char* function) const;
  absl::Status CheckRxIndices(const char* function) const;
  // Takes back the monitor bit DPDK may have set and counts it. Any other bit set means DPDK wrote
  // where this wrapper did not expect: Internal.
  absl::Status CollectSignal(const char* function);

  RawRing tx_;
  RawRing rx_;
  uint8_t monitor_id_;
  std::unique_ptr<Channel> channel_;
  std::unique_ptr<uint8_t, FreeDeleter> monitor_page_;  // 4096 bytes, page-aligned.
  uint64_t signals_ = 0;
};

}  // namespace cvmbus::ring::testing

#endif  // CVMBUS_RING_TESTING_DPDK_PEER_H_
