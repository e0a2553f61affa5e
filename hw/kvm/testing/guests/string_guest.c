/* The runtime's string functions (rep movsb / stosb / cmpsb) as a guest runs them. Mailbox out:
 * [0] the number of the first check that failed (0 if none), [1] how many checks ran.
 */
#include "hw/kvm/guest/runtime/guest.h"
#include "hw/kvm/testing/guests/layout.h"

static volatile uint64_t* const mailbox = (volatile uint64_t*)TEST_MAILBOX_GPA;
static uint8_t buffer[64];

static uint32_t checks;
static uint32_t first_failure;

static void check(int ok) {
  ++checks;
  if (!ok && first_failure == 0) first_failure = checks;
}

static void fill_counting(void) {
  for (uint32_t i = 0; i < sizeof(buffer); ++i) buffer[i] = (uint8_t)i;
}

uint32_t guest_main(void) {
  /* memset: exactly the range, the byte value truncated from the int. */
  fill_counting();
  memset(buffer + 4, 0x1ab, 8);
  check(buffer[3] == 3 && buffer[4] == 0xab && buffer[11] == 0xab && buffer[12] == 12);
  memset(buffer, 0, 0);
  check(buffer[0] == 0 && buffer[1] == 1);

  /* memcpy: exactly the range. */
  fill_counting();
  uint8_t copy[16];
  memset(copy, 0xee, sizeof(copy));
  memcpy(copy + 1, buffer + 20, 14);
  check(copy[0] == 0xee && copy[1] == 20 && copy[14] == 33 && copy[15] == 0xee);

  /* memmove: overlapping upwards (copies backwards) and downwards, and disjoint. */
  fill_counting();
  memmove(buffer + 2, buffer, 10);
  check(buffer[1] == 1 && buffer[2] == 0 && buffer[11] == 9 && buffer[12] == 12);
  fill_counting();
  memmove(buffer, buffer + 2, 10);
  check(buffer[0] == 2 && buffer[9] == 11 && buffer[10] == 10);
  fill_counting();
  memmove(buffer + 40, buffer, 8);
  check(buffer[40] == 0 && buffer[47] == 7 && buffer[48] == 48);
  /* The direction flag is clear again: a forward copy after the backward one. */
  memcpy(copy, buffer + 40, 2);
  check(copy[0] == 0 && copy[1] == 1);

  /* memcmp: equal, n == 0, a difference first, last, and the sign as unsigned bytes. */
  uint8_t a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint8_t b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  check(memcmp(a, b, 8) == 0);
  check(memcmp(a, b, 0) == 0);
  b[7] = 9;
  check(memcmp(a, b, 8) < 0 && memcmp(b, a, 8) > 0);
  check(memcmp(a, b, 7) == 0);
  b[0] = 0x80;
  check(memcmp(a, b, 8) < 0);  /* 0x01 < 0x80 */
  a[0] = 0xff;
  check(memcmp(a, b, 1) > 0);  /* 0xff > 0x80 as unsigned */

  mailbox[0] = first_failure;
  mailbox[1] = checks;
  return first_failure == 0 ? TEST_EXIT_OK : TEST_EXIT_FAILED + first_failure;
}
