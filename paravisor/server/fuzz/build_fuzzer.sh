#!/usr/bin/env bash
# Builds the structured server libFuzzer target (paravisor/server/fuzz/server_fuzz.cc) with
# clang++-14 under ASan and UBSan (tools/fuzz_build.sh), from the sources it needs directly:
# the server, the C++ of its saved_state.proto, the control-protocol codec, the bus, the event
# loop, guest memory, the logging facility and the scripted device of the server's tests.
#
# protoc writes saved_state.pb.{h,cc} into a temporary directory first, as
# //third_party/system:protoc.bzl's protoc_cc_library does (--proto_path=., so the header is
# paravisor/server/saved_state.pb.h under it, on the include path); the target links Debian's
# libprotobuf. To fit CI's fuzz smoke (about two minutes with the run), each group of sources
# below compiles as one translation unit (a file of #includes: the headers they share are
# parsed and their templates instantiated once), the groups in parallel.
#
#   paravisor/server/fuzz/build_fuzzer.sh [OUTPUT]   (default /tmp/server_fuzz; CXX overrides;
#                                                    FUZZ_JOBS: parallel compiles, default nproc)
set -euo pipefail
cd "$(dirname "$0")/../../.."
source tools/fuzz_build.sh

# Compiled with libFuzzer's coverage: the server, what the fuzzer steers by.
server=(
  paravisor/server/channel.cc
  paravisor/server/channel_ops.cc
  paravisor/server/connection.cc
  paravisor/server/gpadl_table.cc
  paravisor/server/gpadls.cc
  paravisor/server/monitor_scanner.cc
  paravisor/server/offers.cc
  paravisor/server/saved_queries.cc
  paravisor/server/server.cc
  paravisor/server/server_save.cc
  paravisor/server/server_snapshot.cc
)
# Alone: its anonymous namespace has a name channel_ops.cc's has too.
restore=(paravisor/server/server_restore.cc)
# Compiled without coverage (still under ASan and UBSan): the harness, the parsers it shares
# with the server (the codec and the GPADL range parser have fuzzers of their own), and what it
# all runs on. Their comparisons cost a good part of the time (libFuzzer collects every
# counter's features after each run) and would steer the fuzzer towards states of the harness.
libraries=(
  base/log.cc
  guestmem/access_gate.cc
  guestmem/errors.cc
  guestmem/guest_memory.cc
  guestmem/memory_backing.cc
  guestmem/page_state.cc
  guestmem/paged_range.cc
  guestmem/ring_memory.cc
  hw/uring/event_loop.cc
  paravisor/bus/bus.cc
  paravisor/bus/guid.cc
  paravisor/protocol/codec.cc
  paravisor/server/testing/scripted_device.cc
)
harness=(
  paravisor/server/fuzz/server_fuzz.cc
  paravisor/server/fuzz/session.cc
  paravisor/server/fuzz/guest_model.cc
  paravisor/server/fuzz/fuzz_port.cc
)

out=${1:-/tmp/server_fuzz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
protoc --proto_path=. --cpp_out="$work" paravisor/server/saved_state.proto

group() {  # group NAME SOURCE...: one translation unit of the sources.
  local name=$1
  shift
  printf '#include "%s"\n' "$@" >"$work/$name.cc"
  echo "$work/$name.cc"
}
# Each unit (longest first), then its extra compile flags.
units=(
  "$(group server "${server[@]}")" ""
  "$(group libraries "${libraries[@]}")" -fno-sanitize=fuzzer
  "$(group harness "${harness[@]}")" -fno-sanitize=fuzzer
  "$(group restore "${restore[@]}")" ""
  "$work/paravisor/server/saved_state.pb.cc" -fno-sanitize=fuzzer
)

jobs=${FUZZ_JOBS:-$(nproc)}
objects=()
running=0
for ((i = 0; i < ${#units[@]}; i += 2)); do
  unit=${units[i]}
  object="$work/$(basename "${unit%.cc}").o"
  objects+=("$object")
  # shellcheck disable=SC2086  # The flags are one word or none.
  compile_fuzz_object "$object" "$unit" -I"$work" ${units[i + 1]} &
  running=$((running + 1))
  if [[ $running -ge $jobs ]]; then
    wait -n
    running=$((running - 1))
  fi
done
# `wait -n` returns the status of the compile that ended (set -e stops the build at a failure).
while [[ $running -gt 0 ]]; do
  wait -n
  running=$((running - 1))
done
build_fuzz_target "$out" "${objects[@]}" -- -lprotobuf -l:liburing.a
