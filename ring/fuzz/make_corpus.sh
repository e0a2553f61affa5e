#!/usr/bin/env bash
# Regenerates the seed corpus ring/fuzz/corpus/: rings of each packet type written by
# `ringtool fill` (some wrapping, some on split or reversed pages), plus corrupt copies, each
# converted to ring_fuzz's input layout (see ring_fuzz.cc): config byte, the four control words,
# four outgoing packets, then the data area.
#
#   ring/fuzz/make_corpus.sh [RINGTOOL]   (default: bazel-bin/ring/tools/ringtool, built here)
set -euo pipefail
cd "$(dirname "$0")/../.."
tool=${1:-}
if [[ -z "$tool" ]]; then
  bazel build --jobs=2 //ring/tools:ringtool
  tool=bazel-bin/ring/tools/ringtool
fi
corpus=ring/fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$corpus"
mkdir -p "$corpus"

# le BYTES VALUE: VALUE as BYTES little-endian bytes on stdout.
le() {
  local i
  for ((i = 0; i < $1; i++)); do printf %b "\\x$(printf %02x $((($2 >> (8 * i)) & 255)))"; done
}

# poke FILE OFFSET VALUE BYTES: writes VALUE little-endian at OFFSET of FILE.
poke() { le "$4" "$3" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none; }

# word FILE OFFSET: the u32 at OFFSET of FILE, as raw bytes on stdout.
word() { dd if="$1" bs=1 skip=$(($2)) count=4 status=none; }

# seed NAME RING CONFIG OPS: writes the fuzz input for RING (data area pages-1 in CONFIG bits
# 0-1 added here) with OPS (printf escapes for up to 16 bytes, zero-padded).
seed() {
  local name=$1 ring=$work/$2 config=$3 ops=$4 pages
  pages=$((($(stat -c %s "$ring") - 4096) / 4096))
  {
    le 1 $((config | (pages - 1)))
    word "$ring" 0x00  # write_index
    word "$ring" 0x04  # read_index
    word "$ring" 0x0c  # pending_send_sz
    word "$ring" 0x40  # feature_bits
    printf %b "$ops" >"$work/ops.bin" && truncate -s 16 "$work/ops.bin" && cat "$work/ops.bin"
    tail -c +4097 "$ring"
  } >"$corpus/$name"
}

fill() {  # fill NAME DATA_BYTES ARGS...: a ring made by ringtool in $work/NAME.
  local name=$1 bytes=$2
  shift 2
  "$tool" fill "$work/$name" --data-bytes="$bytes" "$@" >/dev/null
}

# Outgoing packets: in-band 16 bytes; GPA direct (2 ranges of 10 pages, offset 512) with
# completion requested; transfer pages (3 ranges); completion 8 bytes, appended.
ops='\x01\x10\x00\x00\x0b\x08\x00\x29\x04\x00\x00\x03\x12\x08\x00\x00'
# The invalid ones: unknown type, unknown flag, short GPA range, transfer pages with 0 ranges.
bad_ops='\x05\x08\x00\x00\x06\x00\x00\x00\x07\x00\x00\x00\x04\x00\x00\x00'

fill inband 4096 --packets=inband:5@7+c,inband:0,inband:64
seed inband inband 0 ''
fill completion 4096 --packets=completion:16@0x1234,completion:0@1
seed completion completion 0 "$ops"
fill gpa 4096 --packets=gpa:8:3+c@9,gpa:0:1
seed gpa gpa 0 ''
fill xfer 4096 --packets=xfer:4@3,xfer:1+c@4
seed xfer xfer 0 ''
fill mixed 8192 --packets=inband:5@7+c,completion:8@7,gpa:2:3+c@9,xfer:3,inband:0
seed mixed mixed 0 "$ops"
seed mixed_bad_ops mixed 0 "$bad_ops"
fill wrapped 4096 --start-index=0xfd8 --packets=inband:100,gpa:16:2,xfer:1
seed wrapped wrapped 0 "$ops"
seed wrapped_split_reversed wrapped 0x0c "$ops"  # Split copies over reversed pages.
fill split_descriptor 4096 --start-index=0xff8 --packets=completion:8@5+c
seed split_descriptor split_descriptor 0 ''
fill large 12288 --packets=inband:1000,inband:2000,completion:8,gpa:64:9,xfer:16
seed large large 0 "$ops"
seed large_reversed_limited large 0x48 ''  # Reversed pages, 256-byte reader limit.
fill empty 4096
seed empty empty 0 "$ops"
fill near_full 4096 --packets=inband:4000
seed near_full near_full 0 "$ops"
cp "$work/mixed" "$work/pending"
poke "$work/pending" 0x0c 0x100 4  # A writer waiting for 256 bytes; interrupts masked.
seed pending pending 0x20 "$ops"

# Corrupt copies of `mixed` (packets at 0x0, 0x20, 0x40, 0x88, 0xc0).
corrupt() {  # corrupt NAME OFFSET VALUE BYTES
  cp "$work/mixed" "$work/$1"
  poke "$work/$1" "$2" "$3" "$4"
  seed "$1" "$1" 0 "$ops"
}
corrupt bad_trailer $((4096 + 0x38)) 1 1
corrupt unknown_type $((4096 + 0x40)) 0x8 2
corrupt unknown_flags $((4096 + 0x6)) 0x2 2
corrupt write_out_of_range 0x0 0x5000 4
corrupt read_unaligned 0x4 0x4 4
corrupt truncated $((4096 + 0x44)) 0xff 2
corrupt bad_data_offset $((4096 + 0x2)) 1 2
corrupt xfer_no_ranges $((4096 + 0x88 + 20)) 0 4
corrupt gpa_bad_offset $((4096 + 0x40 + 28)) 4096 4
echo "$(find "$corpus" -type f | wc -l) seeds in $corpus"
