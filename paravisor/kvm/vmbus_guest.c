/* A VMBus client as a guest kernel is one, in a KVM vCPU: it finds Hyper-V by CPUID, sets up
 * its SynIC through the synthetic MSRs (Linux's order), negotiates a version, asks for
 * offers, builds a GPADL for a ring in its own memory, opens the echo channel, sends requests
 * through the ring, rings the doorbell with HvSignalEvent, takes the answers by interrupt,
 * checks every byte, and closes, tears down and unloads. It reports through the debug port and
 * the result block (vmbus_guest_abi.h), and ends with an exit code.
 *
 * The message layouts are Linux's (include/linux/hyperv.h); the ring rules are
 * drivers/hv/ring_buffer.c's. The guest trusts nothing it reads from the host beyond what it
 * checks: every length is bounded before use.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "paravisor/kvm/vmbus_guest_abi.h"

/* --- SynIC ----------------------------------------------------------------------------------*/
#define HV_MSR_SCONTROL 0x40000080
#define HV_MSR_SIEFP 0x40000082
#define HV_MSR_SIMP 0x40000083
#define HV_MSR_EOM 0x40000084
#define HV_MSR_SINT0 0x40000090
#define HV_MSR_TIME_REF_COUNT 0x40000020
#define VMBUS_SINT 2
#define HV_STATUS_INSUFFICIENT_BUFFERS 0x13

/* --- Channel messages (enum vmbus_channel_message_type) --------------------------------------*/
enum {
  MSG_OFFERCHANNEL = 1,
  MSG_REQUESTOFFERS = 3,
  MSG_ALLOFFERS_DELIVERED = 4,
  MSG_OPENCHANNEL = 5,
  MSG_OPENCHANNEL_RESULT = 6,
  MSG_CLOSECHANNEL = 7,
  MSG_GPADL_HEADER = 8,
  MSG_GPADL_CREATED = 10,
  MSG_GPADL_TEARDOWN = 11,
  MSG_GPADL_TORNDOWN = 12,
  MSG_INITIATE_CONTACT = 14,
  MSG_VERSION_RESPONSE = 15,
  MSG_UNLOAD = 16,
  MSG_UNLOAD_RESPONSE = 17,
};

struct hv_message_slot {
  volatile uint32_t type;
  volatile uint8_t size;
  volatile uint8_t flags;
  uint16_t reserved;
  uint64_t sender;
  uint8_t payload[240];
};

struct ring_control {
  volatile uint32_t write_index;
  volatile uint32_t read_index;
  volatile uint32_t interrupt_mask;
  volatile uint32_t pending_send_sz;
  uint32_t reserved[12];
  uint32_t feature_bits;
};

#define RING_DATA_BYTES ((VMBUS_GUEST_RING_PAGES - 1) * 4096u)
#define GPADL_ID 0x4242
#define PACKET_INBAND 6
#define PACKET_COMPLETION 0xb
#define PACKET_FLAG_COMPLETION_REQUESTED 1

static volatile struct vmbus_guest_config* const config =
    (volatile struct vmbus_guest_config*)VMBUS_GUEST_CONFIG;
static struct vmbus_guest_result* const result = (struct vmbus_guest_result*)VMBUS_GUEST_RESULT;
static struct hv_message_slot* const slot =
    (struct hv_message_slot*)(VMBUS_GUEST_SIMP + VMBUS_SINT * 256);
static volatile uint32_t* const event_flags = (volatile uint32_t*)(VMBUS_GUEST_SIEFP + VMBUS_SINT * 256);
static struct ring_control* const out_ring = (struct ring_control*)VMBUS_GUEST_RINGS;
static struct ring_control* const in_ring =
    (struct ring_control*)(VMBUS_GUEST_RINGS + VMBUS_GUEST_RING_PAGES * 4096);

static volatile uint64_t interrupts;
static volatile uint64_t last_interrupt_tsc; /* When on_vmbus_interrupt last began. */
static uint32_t message_connection_id = 1;

/* A full barrier with general registers only (mfence would do too). */
static inline void full_barrier(void) { __asm__ volatile("lock orq $0, (%%rsp)" : : : "memory", "cc"); }
static inline void compiler_barrier(void) { __asm__ volatile("" : : : "memory"); }

static uint32_t fail(uint32_t step, uint32_t value, const char* what) {
  result->failed_step = step;
  result->failed_value = value;
  debug_puts("vmbus guest: FAILED: ");
  debug_puts(what);
  debug_puts(" (");
  debug_put_hex(value);
  debug_puts(")\n");
  return step;
}

static void on_vmbus_interrupt(struct interrupt_frame* frame) {
  (void)frame;
  last_interrupt_tsc = rdtsc();
  interrupts = interrupts + 1;
  x2apic_eoi(); /* Explicit EOI: the SynIC recommends it (CPUID 0x40000004 EAX bit 9). */
}

/* --- Messages -------------------------------------------------------------------------------*/

/* HvPostMessage from the input page; retried while the SynIC has no room (vmbus_post_msg). */
static uint64_t post(const void* message, uint32_t bytes) {
  volatile uint32_t* input = (volatile uint32_t*)VMBUS_GUEST_INPUT_PAGE;
  input[0] = message_connection_id;
  input[1] = 0;
  input[2] = 1; /* Message type: VMBus. */
  input[3] = bytes;
  memcpy((void*)(VMBUS_GUEST_INPUT_PAGE + 16), message, bytes);
  for (int attempt = 0;; ++attempt) {
    uint64_t status = hypercall(HVCALL_POST_MESSAGE, VMBUS_GUEST_INPUT_PAGE, 0) & 0xffff;
    if (status != HV_STATUS_INSUFFICIENT_BUFFERS || attempt == 100000) return status;
    cpu_relax();
  }
}

/* Waits for the next message in the SINT 2 slot and takes it (vmbus_on_msg_dpc). */
static uint32_t receive(uint8_t* out) {
  for (;;) {
    irq_disable();
    if (slot->type != 0) break;
    sti_hlt();
  }
  irq_enable();
  compiler_barrier(); /* x86 keeps loads in order: the payload was written before the type. */
  uint32_t size = slot->size;
  if (size > 240) size = 240;
  memcpy(out, slot->payload, size);
  slot->type = 0;
  full_barrier();
  if (slot->flags & 1) wrmsr(HV_MSR_EOM, 0);
  return size;
}

static uint32_t u32_at(const uint8_t* p, uint32_t offset) {
  uint32_t v;
  memcpy(&v, p + offset, 4);
  return v;
}

/* Receives messages until one of `type` arrives (others are offers or noise: dropped). */
static uint32_t receive_type(uint32_t type, uint8_t* out) {
  for (;;) {
    uint32_t size = receive(out);
    if (size >= 8 && u32_at(out, 0) == type) return size;
  }
}

/* --- The ring (drivers/hv/ring_buffer.c) ----------------------------------------------------*/

static uint8_t* ring_data(struct ring_control* ring) { return (uint8_t*)ring + 4096; }

/* Copies into and out of a ring's data area, split at its end (the data is not double-mapped
 * here). */
static void ring_copy_in(struct ring_control* ring, uint32_t offset, const void* from, uint32_t n) {
  offset %= RING_DATA_BYTES;
  const uint32_t first = n < RING_DATA_BYTES - offset ? n : RING_DATA_BYTES - offset;
  memcpy(ring_data(ring) + offset, from, first);
  memcpy(ring_data(ring), (const uint8_t*)from + first, n - first);
}

static void ring_copy_out(struct ring_control* ring, uint32_t offset, void* to, uint32_t n) {
  offset %= RING_DATA_BYTES;
  const uint32_t first = n < RING_DATA_BYTES - offset ? n : RING_DATA_BYTES - offset;
  memcpy(to, ring_data(ring) + offset, first);
  memcpy((uint8_t*)to + first, ring_data(ring), n - first);
}

/* Writes one in-band packet; returns 1 if the host must be signalled (the ring was empty and
 * the host is not masking), 0 if not, -1 if it does not fit. */
static int ring_write(uint64_t transaction_id, const uint8_t* payload, uint32_t bytes) {
  const uint32_t padded = (bytes + 7) & ~7u;
  const uint32_t packet = 16 + padded;
  const uint32_t w = out_ring->write_index;
  const uint32_t r = out_ring->read_index;
  const uint32_t free = r > w ? r - w : RING_DATA_BYTES - (w - r);
  if (free <= packet + 8) return -1; /* Strictly more free bytes than the write. */
  uint16_t descriptor[4] = {PACKET_INBAND, 2, (uint16_t)(packet / 8),
                            PACKET_FLAG_COMPLETION_REQUESTED};
  ring_copy_in(out_ring, w, descriptor, 8);
  ring_copy_in(out_ring, w + 8, &transaction_id, 8);
  ring_copy_in(out_ring, w + 16, payload, bytes);
  static const uint8_t zeros[8];
  ring_copy_in(out_ring, w + 16 + bytes, zeros, padded - bytes);
  const uint64_t trailer = (uint64_t)w << 32;
  ring_copy_in(out_ring, w + packet, &trailer, 8);
  compiler_barrier(); /* The packet before the index (x86 keeps stores in order). */
  out_ring->write_index = (w + packet + 8) % RING_DATA_BYTES;
  full_barrier(); /* Then look at the reader: hv_signal_on_write. */
  return out_ring->interrupt_mask == 0 && out_ring->read_index == w ? 1 : 0;
}

/* Takes one packet from the host's ring into `buffer`; returns its total length (descriptor
 * included), 0 if the ring is empty, or -1 if the host wrote a malformed packet. */
static int ring_read(uint8_t* buffer, uint32_t capacity, int* signal) {
  const uint32_t w = in_ring->write_index;
  const uint32_t r = in_ring->read_index;
  *signal = 0;
  if (w == r) return 0;
  if (w >= RING_DATA_BYTES || (w & 7) != 0) return -1;
  const uint32_t available = w > r ? w - r : RING_DATA_BYTES - (r - w);
  compiler_barrier();
  uint16_t descriptor[4];
  ring_copy_out(in_ring, r, descriptor, 8);
  const uint32_t length = (uint32_t)descriptor[2] * 8;
  if (length < 16 || length + 8 > available || length > capacity) return -1;
  ring_copy_out(in_ring, r, buffer, length);
  compiler_barrier();
  in_ring->read_index = (r + length + 8) % RING_DATA_BYTES;
  full_barrier(); /* hv_pkt_iter_close: then the writer's pending_send_sz. */
  if (in_ring->pending_send_sz != 0) *signal = 1;
  return (int)length;
}

/* --- The program ----------------------------------------------------------------------------*/

uint32_t guest_main(void) {
  static uint8_t message[240];
  static uint8_t request[1024];
  static uint8_t answer[1024 + 16];

  if (config->magic != VMBUS_GUEST_CONFIG_MAGIC || config->payload_bytes > 1024 ||
      config->payload_bytes == 0) {
    return fail(VMBUS_GUEST_FAIL_CONFIG, config->magic, "no valid config block");
  }
  memset(result, 0, sizeof(*result));

  /* Hyper-V? (ms_hyperv_platform: "Microsoft Hv" and leaf 0x40000003's privileges) */
  struct cpuid_result vendor = cpuid(0x40000000, 0);
  struct cpuid_result privileges = cpuid(0x40000003, 0);
  if (vendor.ebx != 0x7263694d || vendor.ecx != 0x666f736f || vendor.edx != 0x76482074 ||
      (privileges.eax & ((1u << 2) | (1u << 5) | (1u << 6))) != ((1u << 2) | (1u << 5) | (1u << 6))) {
    return fail(VMBUS_GUEST_FAIL_CPUID, vendor.ebx, "not a Hyper-V with a SynIC");
  }

  /* The SynIC, as hv_synic_enable_regs: SIMP, SIEFP, SINT 2, SCONTROL. */
  set_interrupt_handler(VMBUS_GUEST_VECTOR, on_vmbus_interrupt);
  x2apic_enable(0xff);
  if (!hv_enable_hypercall_page(VMBUS_GUEST_HYPERCALL_PAGE,
                                (0x8100ull << 48) | (0x060100ull << 16))) {
    return fail(VMBUS_GUEST_FAIL_SYNIC, 0, "hypercall page");
  }
  if (!wrmsr_safe(HV_MSR_SIMP, VMBUS_GUEST_SIMP | 1) ||
      !wrmsr_safe(HV_MSR_SIEFP, VMBUS_GUEST_SIEFP | 1) ||
      !wrmsr_safe(HV_MSR_SINT0 + VMBUS_SINT, VMBUS_GUEST_VECTOR) ||
      !wrmsr_safe(HV_MSR_SCONTROL, 1)) {
    return fail(VMBUS_GUEST_FAIL_SYNIC, 0, "SynIC registers");
  }
  irq_enable();

  /* INITIATE_CONTACT to connection 4 (5.0+), msg_sint 2; the answer names the connection. */
  const uint32_t version = config->version;
  memset(message, 0, sizeof(message));
  uint32_t words[4] = {MSG_INITIATE_CONTACT, 0, version, 0 /* target_vcpu */};
  memcpy(message, words, 16);
  message[16] = VMBUS_SINT;
  const uint32_t features = config->features;
  memcpy(message + 20, &features, 4);
  message_connection_id = 4;
  uint64_t status = post(message, 40);
  if (status != HV_STATUS_SUCCESS) return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "INITIATE_CONTACT");
  uint32_t size = receive_type(MSG_VERSION_RESPONSE, message);
  if (size < 16 || message[8] == 0 || message[9] != 0) {
    return fail(VMBUS_GUEST_FAIL_VERSION, message[8] | (message[9] << 8), "VERSION_RESPONSE");
  }
  message_connection_id = u32_at(message, 12);
  result->version = version;
  result->features = size >= 20 ? u32_at(message, 16) : 0;
  debug_puts("vmbus guest: connected at ");
  debug_put_hex(version);
  debug_puts(", features ");
  debug_put_hex(result->features);
  debug_puts("\n");

  /* REQUESTOFFERS; keep the first offer of the echo interface. */
  memset(message, 0, 8);
  message[0] = MSG_REQUESTOFFERS;
  if ((status = post(message, 8)) != HV_STATUS_SUCCESS) {
    return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "REQUESTOFFERS");
  }
  uint8_t interface_id[16];
  for (int i = 0; i < 16; ++i) interface_id[i] = config->interface_id[i];
  for (;;) {
    size = receive(message);
    if (size < 8) continue;
    const uint32_t type = u32_at(message, 0);
    if (type == MSG_ALLOFFERS_DELIVERED) break;
    if (type != MSG_OFFERCHANNEL || size < 196) continue;
    result->offers++;
    if (result->relid == 0 && memcmp(message + 8, interface_id, 16) == 0) {
      result->relid = u32_at(message, 184);
      result->connection_id = u32_at(message, 192);
      memcpy(&result->offer_flags, message + 56, 2);
    }
  }
  if (result->relid == 0) return fail(VMBUS_GUEST_FAIL_OFFER, result->offers, "no echo offer");
  if (config->require_confidential && (result->offer_flags & 0x2) == 0) {
    return fail(VMBUS_GUEST_FAIL_OFFER, result->offer_flags, "the offer is not confidential");
  }
  debug_puts("vmbus guest: echo channel ");
  debug_put_dec(result->relid);
  debug_puts(", connection ");
  debug_put_hex(result->connection_id);
  debug_puts(", offer flags ");
  debug_put_hex(result->offer_flags);
  debug_puts("\n");

  /* GPADL_HEADER: one range over both rings (8 pages fit the header). */
  memset((void*)VMBUS_GUEST_RINGS, 0, 2 * VMBUS_GUEST_RING_PAGES * 4096);
  const uint32_t pages = 2 * VMBUS_GUEST_RING_PAGES;
  memset(message, 0, sizeof(message));
  uint32_t header[3] = {MSG_GPADL_HEADER, 0, result->relid};
  memcpy(message, header, 12);
  const uint32_t gpadl = GPADL_ID;
  memcpy(message + 12, &gpadl, 4);
  const uint16_t range_buflen = (uint16_t)(8 + 8 * pages), range_count = 1;
  memcpy(message + 16, &range_buflen, 2);
  memcpy(message + 18, &range_count, 2);
  const uint32_t byte_count = pages * 4096, byte_offset = 0;
  memcpy(message + 20, &byte_count, 4);
  memcpy(message + 24, &byte_offset, 4);
  for (uint32_t i = 0; i < pages; ++i) {
    const uint64_t pfn = VMBUS_GUEST_RINGS / 4096 + i;
    memcpy(message + 28 + 8 * i, &pfn, 8);
  }
  if ((status = post(message, 28 + 8 * pages)) != HV_STATUS_SUCCESS) {
    return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "GPADL_HEADER");
  }
  receive_type(MSG_GPADL_CREATED, message);
  if (u32_at(message, 12) != GPADL_ID || u32_at(message, 16) != 0) {
    return fail(VMBUS_GUEST_FAIL_GPADL, u32_at(message, 16), "GPADL_CREATED");
  }

  /* OPENCHANNEL: host -> guest ring at page VMBUS_GUEST_RING_PAGES of the GPADL. */
  memset(message, 0, sizeof(message));
  uint32_t open[6] = {MSG_OPENCHANNEL, 0, result->relid, result->relid /* openid */, GPADL_ID, 0};
  memcpy(message, open, 24);
  const uint32_t downstream = VMBUS_GUEST_RING_PAGES;
  memcpy(message + 24, &downstream, 4);
  if ((status = post(message, 148)) != HV_STATUS_SUCCESS) {
    return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "OPENCHANNEL");
  }
  receive_type(MSG_OPENCHANNEL_RESULT, message);
  if (u32_at(message, 8) != result->relid || u32_at(message, 16) != 0) {
    return fail(VMBUS_GUEST_FAIL_OPEN, u32_at(message, 16), "OPENCHANNEL_RESULT");
  }
  debug_puts("vmbus guest: channel open\n");

  /* Round trips: one request, its completion, byte for byte. */
  const uint32_t bytes = config->payload_bytes;
  const uint32_t total = config->warmup + config->iterations;
  const uint32_t flag_word = result->relid / 32, flag_bit = 1u << (result->relid % 32);
  for (uint32_t i = 0; i < total; ++i) {
    if (i == config->warmup) result->timed_ref_start = rdmsr(HV_MSR_TIME_REF_COUNT);
    /* A request of its own per round trip: a fill byte and, at the front, the round trip's
     * number (one rep stosb and one store: byte loops are slow under this machine's emulator). */
    memset(request, (uint8_t)(i * 7 + 1), bytes);
    if (bytes >= 4) memcpy(request, &i, 4);
    const uint64_t transaction_id = 0x1000 + i;
    const int signal = ring_write(transaction_id, request, bytes);
    if (signal < 0) return fail(VMBUS_GUEST_FAIL_RING, i, "the request ring is full");
    uint64_t signalled_tsc = 0;
    if (signal) {
      signalled_tsc = rdtsc();
      status = hv_signal_event(result->connection_id) & 0xffff;
      result->signals++;
      /* Linux's vmbus_set_event ignores the status too: a doorbell the host refuses (as while
       * the paravisor is being serviced) is lost, and the host must make up for it. */
      if (status != HV_STATUS_SUCCESS) result->signals_refused++;
    }
    int length;
    int reader_signal;
    for (;;) {
      irq_disable();
      /* Take the channel's event flag before looking at the ring (vmbus_chan_sched): an
       * answer that lands after the look sets it again and interrupts. */
      __atomic_and_fetch(&event_flags[flag_word], ~flag_bit, __ATOMIC_SEQ_CST);
      length = ring_read(answer, sizeof(answer), &reader_signal);
      if (length != 0) break;
      sti_hlt();
    }
    irq_enable();
    if (signalled_tsc != 0 && i >= config->warmup && last_interrupt_tsc > signalled_tsc) {
      result->doorbell_to_interrupt_tsc += last_interrupt_tsc - signalled_tsc;
      result->doorbell_to_interrupt_count++;
    }
    if (length < 0) return fail(VMBUS_GUEST_FAIL_RING, i, "a malformed answer");
    if (reader_signal) (void)hv_signal_event(result->connection_id);
    uint16_t descriptor[4];
    uint64_t answered_id;
    memcpy(descriptor, answer, 8);
    memcpy(&answered_id, answer + 8, 8);
    const uint32_t offset = (uint32_t)descriptor[1] * 8;
    if (descriptor[0] != PACKET_COMPLETION || answered_id != transaction_id || offset < 16 ||
        (uint32_t)length - offset < bytes || memcmp(answer + offset, request, bytes) != 0) {
      return fail(VMBUS_GUEST_FAIL_ECHO, i, "the answer differs from the request");
    }
    result->round_trips++;
  }
  result->timed_ref_end = rdmsr(HV_MSR_TIME_REF_COUNT);
  result->interrupts = interrupts;
  debug_puts("vmbus guest: ");
  debug_put_dec(result->round_trips);
  debug_puts(" round trips checked\n");

  /* CLOSECHANNEL (no answer), GPADL_TEARDOWN -> GPADL_TORNDOWN, UNLOAD -> UNLOAD_RESPONSE. */
  memset(message, 0, 16);
  uint32_t close[3] = {MSG_CLOSECHANNEL, 0, result->relid};
  memcpy(message, close, 12);
  if ((status = post(message, 12)) != HV_STATUS_SUCCESS) {
    return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "CLOSECHANNEL");
  }
  uint32_t teardown[4] = {MSG_GPADL_TEARDOWN, 0, result->relid, GPADL_ID};
  memcpy(message, teardown, 16);
  if ((status = post(message, 16)) != HV_STATUS_SUCCESS) {
    return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "GPADL_TEARDOWN");
  }
  receive_type(MSG_GPADL_TORNDOWN, message);
  if (u32_at(message, 8) != GPADL_ID) return fail(VMBUS_GUEST_FAIL_TEARDOWN, u32_at(message, 8), "GPADL_TORNDOWN");
  memset(message, 0, 8);
  message[0] = MSG_UNLOAD;
  if ((status = post(message, 8)) != HV_STATUS_SUCCESS) {
    return fail(VMBUS_GUEST_FAIL_POST, (uint32_t)status, "UNLOAD");
  }
  receive_type(MSG_UNLOAD_RESPONSE, message);
  debug_puts("vmbus guest: closed, torn down, unloaded\n");
  return VMBUS_GUEST_OK;
}
