#!/usr/bin/env bash
# Builds the control-protocol libFuzzer target (paravisor/protocol/fuzz/protocol_fuzz.cc) with
# clang++-14 under ASan and UBSan (tools/fuzz_build.sh), from the codec's sources directly.
#
#   paravisor/protocol/fuzz/build_fuzzer.sh [OUTPUT]   (default /tmp/protocol_fuzz; CXX overrides)
set -euo pipefail
cd "$(dirname "$0")/../../.."
source tools/fuzz_build.sh
build_fuzz_target "${1:-/tmp/protocol_fuzz}" \
  paravisor/protocol/fuzz/protocol_fuzz.cc \
  paravisor/protocol/codec.cc \
  guestmem/paged_range.cc \
  guestmem/errors.cc
