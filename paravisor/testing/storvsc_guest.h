// StorvscGuest: the guest's storvsc (for tests, the benchmark and the demo), following Linux's
// drivers/scsi/storvsc_drv.c sequence on the wire (../devices/storvsp_protocol.md §3):
//   open the primary channel; BEGIN_INITIALIZATION; QUERY_PROTOCOL_VERSION with WIN10, WIN8_1,
//   WIN8 (newest first, until one succeeds); QUERY_PROPERTIES; END_INITIALIZATION; then, if
//   the host offers multi-channel, CREATE_SUB_CHANNELS(min(cpus - 1, max_channel_cnt)) and
//   open each subchannel offer as it arrives (same ring size).
// Init requests carry the transaction id VMBUS_RQST_INIT and 64-byte packets, as Linux 6.x.
// SCSI commands go as GPA-direct EXECUTE_SRB packets (one range over the buffer's pages) on the
// channel the caller names, the way storvsc picks one per CPU. Detach closes the subchannels,
// then the primary (vmbus_close's order), and tears the ring GPADLs down.
//
// Threads: one caller at a time.
#ifndef CVMBUS_PARAVISOR_TESTING_STORVSC_GUEST_H_
#define CVMBUS_PARAVISOR_TESTING_STORVSC_GUEST_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "paravisor/testing/guest_channel.h"
#include "paravisor/vm/virtual_machine.h"

namespace cvmbus::paravisor::storvsp {

inline constexpr uint64_t kVmbusRequestInit = ~0ull - 2;  // Linux VMBUS_RQST_INIT.

struct StorvscOptions {
  uint32_t relid = 0;               // The primary channel's offer.
  uint32_t first_gpadl_id = 1;      // Ring GPADLs: this id for the primary, +i for subchannel i.
  uint64_t first_ring_gpn = 0x100;  // Rings: 2 * ring_pages pages per channel from here.
  uint32_t ring_pages = 32;         // Per direction: Linux's 128 KiB storvsc_ringbuffer_size.
  bool confidential = true;         // Rings in private pages.
  uint32_t cpus = 1;  // num_online_cpus(): decides how many subchannels are asked for.
  std::chrono::milliseconds timeout{5000};
};

// What the host answered during initialization.
struct StorvscProperties {
  uint16_t version = 0;            // The accepted VSTOR version.
  uint16_t max_channel_count = 0;  // QUERY_PROPERTIES max_channel_cnt.
  uint32_t flags = 0;
  uint32_t max_transfer_bytes = 0;
  uint16_t subchannels_asked = 0;  // The CREATE_SUB_CHANNELS count (0: not sent).
};

// A SCSI command's completion as storvsc reads it.
struct StorvscCompletion {
  uint32_t vstor_status = 0;  // The vstor_packet status (NTSTATUS).
  uint8_t srb_status = 0;
  uint8_t scsi_status = 0;
  uint32_t data_transfer_length = 0;
  std::vector<uint8_t> sense;  // The sense bytes the host filled in (sense_info_length).
};

// A data buffer in guest memory: whole pages from `gpn`, the data from `offset` in the first.
struct GuestBuffer {
  std::vector<uint64_t> gpns;
  uint32_t offset = 0;
};

class StorvscGuest {
 public:
  // Opens the primary, initializes, creates and opens the subchannels. Errors: a channel that
  // would not open, an init step the host failed (naming it and its status), or a subchannel
  // offer that did not arrive in time.
  static absl::StatusOr<std::unique_ptr<StorvscGuest>> Attach(vm::VirtualMachine* vm,
                                                              StorvscOptions options);
  ~StorvscGuest();

  const StorvscProperties& properties() const { return properties_; }
  size_t channel_count() const { return channels_.size(); }  // Primary + subchannels.
  uint32_t relid(size_t channel) const { return relids_[channel]; }

  // Sends one SCSI command on `channel` (0: the primary) with `transaction_id`; data moves
  // through `buffer` (none if `length` is 0).
  absl::Status Submit(size_t channel, uint64_t transaction_id, const std::vector<uint8_t>& cdb,
                      bool data_in, uint32_t length, const GuestBuffer& buffer, uint8_t lun = 0);
  // Waits for the next completion on `channel`; its transaction id in `transaction_id`.
  absl::StatusOr<StorvscCompletion> Wait(size_t channel, uint64_t* transaction_id);
  // Submit + Wait.
  absl::StatusOr<StorvscCompletion> Execute(size_t channel, const std::vector<uint8_t>& cdb,
                                            bool data_in, uint32_t length,
                                            const GuestBuffer& buffer, uint8_t lun = 0);
  // Any vstor request (a control operation) on `channel`, its completion's payload.
  absl::StatusOr<std::vector<uint8_t>> Control(size_t channel, uint32_t operation,
                                               uint16_t value = 0);

  // Closes the subchannels, then the primary, and tears down the ring GPADLs.
  absl::Status Detach();

  testing::GuestChannel& channel(size_t index) { return *channels_[index]; }

 private:
  StorvscGuest(vm::VirtualMachine* vm, StorvscOptions options) : vm_(vm), options_(options) {}
  absl::Status OpenChannel(size_t index, uint32_t relid);
  absl::Status Initialize();
  absl::Status CreateSubchannels();

  vm::VirtualMachine* vm_;
  StorvscOptions options_;
  StorvscProperties properties_;
  std::vector<std::unique_ptr<testing::GuestChannel>> channels_;
  std::vector<uint32_t> relids_;
  bool attached_ = false;
  uint64_t next_transaction_id_ = 1;  // Execute's.
};

// CDBs Linux's sd sends.
std::vector<uint8_t> Read16Cdb(uint64_t lba, uint32_t blocks);
std::vector<uint8_t> Write16Cdb(uint64_t lba, uint32_t blocks);

}  // namespace cvmbus::paravisor::storvsp

#endif  // CVMBUS_PARAVISOR_TESTING_STORVSC_GUEST_H_
