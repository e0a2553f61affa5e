#!/usr/bin/env bash
# Builds the SynIC libFuzzer target (paravisor/synic/fuzz/synic_fuzz.cc) with clang++-14 under
# ASan and UBSan (tools/fuzz_build.sh), from the sources it needs directly (the SynIC, the
# event loop, guest memory) and the static liburing.
#
#   paravisor/synic/fuzz/build_fuzzer.sh [OUTPUT]   (default /tmp/synic_fuzz; CXX overrides)
set -euo pipefail
cd "$(dirname "$0")/../../.."
source tools/fuzz_build.sh
build_fuzz_target "${1:-/tmp/synic_fuzz}" \
  paravisor/synic/fuzz/synic_fuzz.cc \
  paravisor/synic/synic.cc \
  hw/uring/event_loop.cc \
  guestmem/access_gate.cc \
  guestmem/errors.cc \
  guestmem/guest_memory.cc \
  guestmem/memory_backing.cc \
  guestmem/page_state.cc \
  guestmem/paged_range.cc \
  -- -l:liburing.a
