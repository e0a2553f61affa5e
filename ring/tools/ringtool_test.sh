#!/usr/bin/env bash
# ringtool end to end: fill/dump round trips with every packet type (also wrapping), one case per
# corruption mode (exit 1, the error naming the offset and the ring error kind), and bad files,
# flags and specs (exit 2, one exact line on stderr, nothing on stdout; the errors of Abseil's
# command line itself, an unknown flag or one without its value, are its own line and exit 1).
#
# Run by Bazel (sh_test, the binary in runfiles) or by hand: ring/tools/ringtool_test.sh BINARY
set -uo pipefail

tool=${1:-${TEST_SRCDIR:-}/cvmbus/ring/tools/ringtool}
[[ -x "$tool" ]] || { echo "ringtool binary not found at '$tool'"; exit 1; }
tmp=${TEST_TMPDIR:-$(mktemp -d)}
failures=0
checks=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# run ARGS...: runs ringtool; sets $out (stdout), $err (stderr), $rc.
run() {
  out=$("$tool" "$@" 2>"$tmp/stderr")
  rc=$?
  err=$(cat "$tmp/stderr")
}

# expect_ok ARGS...: exit 0 and nothing on stderr.
expect_ok() {
  run "$@"
  checks=$((checks + 1))
  [[ $rc -eq 0 && -z "$err" ]] || fail "ringtool $*: exit $rc, stderr '$err'"
}

# has_line LINE: the last run printed exactly this line on stdout.
has_line() {
  checks=$((checks + 1))
  grep -qxF -- "$1" <<<"$out" || { fail "no stdout line '$1' in:"; echo "$out"; }
}

# expect_error CODE MESSAGE ARGS...: exit CODE and stderr exactly "ringtool: MESSAGE" (MESSAGE
# ending in '*' matches as a prefix); nothing on stdout when CODE is 2.
expect_error() {
  local code=$1 message=$2
  shift 2
  run "$@"
  checks=$((checks + 1))
  [[ $rc -eq $code ]] || fail "ringtool $*: exit $rc, want $code (stderr '$err')"
  # shellcheck disable=SC2053  # The pattern match is intended.
  [[ "$err" == "ringtool: "$message ]] || fail "ringtool $*: stderr '$err', want 'ringtool: $message'"
  [[ $code -ne 2 || -z "$out" ]] || fail "ringtool $*: stdout not empty: '$out'"
}

# expect_flag_error MESSAGE ARGS...: Abseil refused the command line: exit 1, stderr exactly
# "ERROR: MESSAGE", nothing on stdout.
expect_flag_error() {
  local message=$1
  shift
  run "$@"
  checks=$((checks + 1))
  [[ $rc -eq 1 ]] || fail "ringtool $*: exit $rc, want 1 (stderr '$err')"
  [[ "$err" == "ERROR: $message" ]] || fail "ringtool $*: stderr '$err', want 'ERROR: $message'"
  [[ -z "$out" ]] || fail "ringtool $*: stdout not empty: '$out'"
}

# poke FILE OFFSET VALUE BYTES: writes VALUE little-endian in BYTES bytes at OFFSET of FILE.
poke() {
  local escapes="" i
  for ((i = 0; i < $4; i++)); do escapes+=$(printf '\\x%02x' $((($3 >> (8 * i)) & 255))); done
  printf %b "$escapes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

# --- Round trips -------------------------------------------------------------------------------

ring=$tmp/ring.bin
expect_ok fill "$ring" --data-bytes=16384 \
  --packets=inband:5@7+c,completion:8@0x7,gpa:2:3+c@9,xfer:3,inband:0
has_line "wrote $ring: 5 packets, data area 0x4000 bytes, read_index 0x0, write_index 0xd8"
[[ $(stat -c %s "$ring") -eq $((4096 + 16384)) ]] || fail "fill wrote $(stat -c %s "$ring") bytes"
cp "$ring" "$tmp/before.bin"

expect_ok dump "$ring"
first_dump=$out
has_line "ring $ring: data area 0x4000 bytes (4 pages)"
has_line "  write_index     0xd8"
has_line "  read_index      0x0"
has_line "  interrupt_mask  0x0"
has_line "  pending_send_sz 0x0"
has_line "  feature_bits    0x1 (pending_send_sz)"
has_line "packet at 0x0: type 0x6 (in-band), data_offset8 2, length8 3, flags 0x1 (completion-requested), transaction_id 0x7"
has_line "  trailer 0x0: ok"
has_line "  payload 8 bytes: 00 01 02 03 04 00 00 00"
has_line "packet at 0x20: type 0xb (completion), data_offset8 2, length8 3, flags 0x0 (none), transaction_id 0x7"
has_line "  trailer 0x2000000000: ok"
has_line "  payload 8 bytes: 10 11 12 13 14 15 16 17"
has_line "packet at 0x40: type 0x9 (gpa-direct), data_offset8 7, length8 8, flags 0x1 (completion-requested), transaction_id 0x9"
has_line "  gpa ranges: 1"
has_line "    [0] byte_count 0x3000, byte_offset 0x0, 3 pages: 0x1000 0x1001 0x1002"
has_line "  payload 8 bytes: 20 21 00 00 00 00 00 00"
has_line "packet at 0x88: type 0x7 (transfer-pages), data_offset8 6, length8 6, flags 0x0 (none), transaction_id 0x0"
has_line "  transfer pages: set 0x1, sender_owns 0, ranges 3"
has_line "    [0] byte_count 0x800, byte_offset 0x0"
has_line "    [2] byte_count 0x800, byte_offset 0x1000"
has_line "  payload 0 bytes:"
has_line "packet at 0xc0: type 0x6 (in-band), data_offset8 2, length8 2, flags 0x0 (none), transaction_id 0x0"
has_line "5 packets, 0xd8 bytes"

# dump neither changes the file nor commits: a second dump sees the same packets.
cmp -s "$ring" "$tmp/before.bin" || fail "dump changed the file"
expect_ok dump "$ring"
[[ "$out" == "$first_dump" ]] || fail "a second dump differs"

expect_ok dump "$ring" --max-payload-bytes=2
has_line "  payload 8 bytes: 00 01 ..."
expect_ok dump --max-payload-bytes=0 "$ring"
has_line "  payload 8 bytes: ..."
# Abseil's forms: the value as the next argument, the underscored name, a single dash.
expect_ok dump "$ring" --max-payload-bytes 2
has_line "  payload 8 bytes: 00 01 ..."
expect_ok dump "$ring" --max_payload_bytes=2
has_line "  payload 8 bytes: 00 01 ..."
expect_ok dump "$ring" -max-payload-bytes=0
has_line "  payload 8 bytes: ..."

# Packets that wrap past the end of a one-page data area.
wrapped=$tmp/wrapped.bin
expect_ok fill "$wrapped" --data-bytes=4096 --start-index=0xfd8 --packets=inband:100,gpa:16:2,xfer:1
expect_ok dump "$wrapped"
has_line "  read_index      0xfd8"
has_line "packet at 0xfd8: type 0x6 (in-band), data_offset8 2, length8 15, flags 0x0 (none), transaction_id 0x0"
has_line "  trailer 0xfd800000000: ok"
has_line "packet at 0x58: type 0x9 (gpa-direct), data_offset8 6, length8 8, flags 0x0 (none), transaction_id 0x0"
has_line "    [0] byte_count 0x2000, byte_offset 0x0, 2 pages: 0x1000 0x1001"
has_line "  trailer 0x5800000000: ok"
has_line "packet at 0xa0: type 0x7 (transfer-pages), data_offset8 4, length8 4, flags 0x0 (none), transaction_id 0x0"
has_line "3 packets, 0xf0 bytes"
# A descriptor split by the wrap: 8 bytes at the end of the data area, 8 at its start.
expect_ok fill "$wrapped" --data-bytes=4096 --start-index=0xff8 --packets=completion:8@5+c
expect_ok dump "$wrapped"
has_line "packet at 0xff8: type 0xb (completion), data_offset8 2, length8 3, flags 0x1 (completion-requested), transaction_id 0x5"
has_line "  trailer 0xff800000000: ok"
has_line "  payload 8 bytes: 00 01 02 03 04 05 06 07"
has_line "  write_index     0x18"

# Headers over 512 bytes take OutgoingRing's piecewise copy: 64 page numbers, no payload.
large=$tmp/large.bin
expect_ok fill "$large" --data-bytes=8192 --packets=gpa:0:64@3,xfer:70
expect_ok dump "$large" --max-payload-bytes=0
has_line "packet at 0x0: type 0x9 (gpa-direct), data_offset8 68, length8 68, flags 0x0 (none), transaction_id 0x3"
has_line "    [0] byte_count 0x40000, byte_offset 0x0, 64 pages: 0x1000 0x1001 0x1002 0x1003 0x1004 0x1005 0x1006 0x1007 0x1008 0x1009 0x100a 0x100b 0x100c 0x100d 0x100e 0x100f 0x1010 0x1011 0x1012 0x1013 0x1014 0x1015 0x1016 0x1017 0x1018 0x1019 0x101a 0x101b 0x101c 0x101d 0x101e 0x101f ... (32 more)"
has_line "  transfer pages: set 0x1, sender_owns 0, ranges 70"
has_line "    [31] byte_count 0x800, byte_offset 0xf800"
has_line "    ... (38 more)"
has_line "2 packets, 0x478 bytes"

empty=$tmp/empty.bin
expect_ok fill "$empty" --data-bytes=8192
expect_ok dump "$empty"
has_line "  feature_bits    0x1 (pending_send_sz)"
has_line "0 packets, 0x0 bytes"

# --- Corruption: exit 1, the packets before it printed, the error naming offset and kind ----------

data=4096  # The data area's offset in the file.
corrupt() {  # corrupt NAME OFFSET VALUE BYTES: a copy of $ring with one field changed.
  cp "$ring" "$tmp/$1.bin"
  poke "$tmp/$1.bin" "$2" "$3" "$4"
  echo "$tmp/$1.bin"
}

f=$(corrupt trailer $((data + 0x38)) 1 1)  # Low byte of the completion's trailer.
expect_error 1 "$f: packet at 0x20: bad trailer: trailer 0x2000000001, expected 0x2000000000" dump "$f"
has_line "packet at 0x0: type 0x6 (in-band), data_offset8 2, length8 3, flags 0x1 (completion-requested), transaction_id 0x7"
has_line "packet at 0x20 (rejected): type 0xb (completion), data_offset8 2, length8 3, flags 0x0 (none), transaction_id 0x7"
has_line "  trailer 0x2000000001: BAD, expected 0x2000000000"

f=$(corrupt write_range 0x0 0x5000 4)
expect_error 1 "$f: control page: index out of range: write index 0x5000 is outside the 0x4000-byte data area" dump "$f"
has_line "  write_index     0x5000"

f=$(corrupt read_unaligned 0x4 0x4 4)
expect_error 1 "$f: control page: index unaligned: read index 0x4 is not 8-byte aligned" dump "$f"

f=$(corrupt type $((data + 0x40)) 0x8 2)
expect_error 1 "$f: packet at 0x40: unknown type: *" dump "$f"
has_line "packet at 0x40 (rejected): type 0x8 (unknown), data_offset8 7, length8 8, flags 0x1 (completion-requested), transaction_id 0x9"
has_line "packet at 0x20: type 0xb (completion), data_offset8 2, length8 3, flags 0x0 (none), transaction_id 0x7"

f=$(corrupt flags $((data + 0x6)) 0x3 2)
expect_error 1 "$f: packet at 0x0: unknown flags: *" dump "$f"

f=$(corrupt length $((data + 0x44)) 0xff 2)
expect_error 1 "$f: packet at 0x40: truncated: *" dump "$f"

f=$(corrupt short_length $((data + 0x44)) 1 2)  # length8 1 < data_offset8 7.
expect_error 1 "$f: packet at 0x40: bad length: *" dump "$f"

f=$(corrupt data_offset $((data + 0x2)) 1 2)
expect_error 1 "$f: packet at 0x0: bad data offset: *" dump "$f"

f=$(corrupt xfer_count $((data + 0x88 + 20)) 0 4)  # TransferPageHeader.range_count = 0.
expect_error 1 "$f: packet at 0x88: bad ranges: *" dump "$f"
has_line "  trailer 0x8800000000: ok"

f=$(corrupt gpa_offset $((data + 0x40 + 28)) 4096 4)  # The GPA range's byte_offset.
expect_error 1 "$f: packet at 0x40: bad ranges: *" dump "$f"

f=$(corrupt write_short 0x0 0x50 4)  # The write index in the middle of the GPA packet.
expect_error 1 "$f: packet at 0x40: truncated: *" dump "$f"

# --- Bad files, flags and specs: exit 2, one line on stderr ------------------------------------

expect_error 2 "$tmp/missing.bin: cannot open: No such file or directory" dump "$tmp/missing.bin"
expect_error 2 "$tmp: not a regular file" dump "$tmp"
: >"$tmp/zero.bin"
expect_error 2 "$tmp/zero.bin: 0 bytes: too short for the 4096-byte control page" dump "$tmp/zero.bin"
head -c 100 "$ring" >"$tmp/short.bin"
expect_error 2 "$tmp/short.bin: 100 bytes: too short for the 4096-byte control page" \
  dump "$tmp/short.bin"
head -c 4096 "$ring" >"$tmp/page.bin"
expect_error 2 "$tmp/page.bin: data area empty: the file is only the control page" \
  dump "$tmp/page.bin"
head -c 5000 "$ring" >"$tmp/odd.bin"
expect_error 2 "$tmp/odd.bin: 5000 bytes: not a multiple of 4096" dump "$tmp/odd.bin"

expect_error 2 "missing command: dump or fill"
expect_error 2 "unknown command 'frob': want dump or fill" frob "$ring"
expect_error 2 "dump takes exactly one FILE, got 0" dump
expect_error 2 "dump takes exactly one FILE, got 2" dump "$ring" "$ring"
expect_error 2 "unknown flag '--data-bytes' for dump" dump "$ring" --data-bytes=4096
expect_error 2 "unknown flag '--max-payload-bytes' for fill" \
  fill "$tmp/new.bin" --data-bytes=4096 --max-payload-bytes=2
expect_flag_error "Missing the value for the flag 'max_payload_bytes'" \
  dump "$ring" --max-payload-bytes
expect_flag_error "Unknown command line flag 'bogus-flag'" dump "$ring" --bogus-flag=1
expect_error 2 "--max-payload-bytes=0x100000000: not a number (decimal or 0x-hex, < 2^32)" \
  dump "$ring" --max-payload-bytes=0x100000000
expect_error 2 "--max-payload-bytes=-1: not a number (decimal or 0x-hex, < 2^32)" \
  dump "$ring" --max-payload-bytes=-1
expect_error 2 "fill needs --data-bytes=N" fill "$tmp/new.bin" --packets=inband:1
expect_error 2 "--data-bytes=100: must be a nonzero multiple of 4096 up to 1073741824" \
  fill "$tmp/new.bin" --data-bytes=100
expect_error 2 "--start-index=0x4: must be 8-aligned and below --data-bytes" \
  fill "$tmp/new.bin" --data-bytes=4096 --start-index=4
expect_error 2 "bad packet spec 'bogus:1': the kind must be inband, completion, gpa or xfer" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=bogus:1
expect_error 2 "bad packet spec 'inband': want inband:SIZE" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband
expect_error 2 "bad packet spec 'gpa:1': want gpa:SIZE:PAGES" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=gpa:1
expect_error 2 "bad packet spec 'gpa:1:0': PAGES must be 1 to 65535" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=gpa:1:0
expect_error 2 "bad packet spec 'inband:x': 'x' is not a number up to 1048576" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband:x
expect_error 2 "bad packet spec 'inband:1@x': @XID must be a 64-bit number" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband:1@x
expect_error 2 "bad packet spec 'inband:1+d': unexpected suffix '+d' (want @XID and/or +c, once each)" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband:1+d
expect_error 2 "bad packet spec '': the kind must be inband, completion, gpa or xfer" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband:1,
expect_error 2 "packet 0 (inband:5000): too large: *" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband:5000
expect_error 2 "packet 2 (inband:2000): full: *" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=inband:2000,inband:1000,inband:2000
expect_error 2 "packet 0 (xfer:0): bad ranges: *" \
  fill "$tmp/new.bin" --data-bytes=4096 --packets=xfer:0
[[ ! -e "$tmp/new.bin" ]] || fail "a failed fill created its file"

expect_ok help
has_line "usage:"
# Abseil's --help (and -h, as before): the usage, then the flags; it exits 1.
for help in --help -h; do
  run "$help"
  checks=$((checks + 1))
  [[ $rc -eq 1 && -z "$err" ]] || fail "ringtool $help: exit $rc, stderr '$err'"
  has_line "ringtool: usage:"
  has_line "  ringtool dump FILE [--max-payload-bytes=N]"
  grep -q -- "--data_bytes (fill, required" <<<"$out" || fail "ringtool $help lists no --data_bytes"
done

echo "$checks checks, $failures failed"
[[ $failures -eq 0 ]]
