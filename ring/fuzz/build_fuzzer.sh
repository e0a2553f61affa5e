#!/usr/bin/env bash
# Builds the ring libFuzzer target (ring/fuzz/ring_fuzz.cc) with clang++-14 under ASan and UBSan
# (tools/fuzz_build.sh) from ring/*.cc and guestmem/*.cc (no tests, no benchmarks).
#
#   ring/fuzz/build_fuzzer.sh [OUTPUT]      (default /tmp/ring_fuzz; CXX overrides clang++-14)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/fuzz_build.sh
sources=(ring/fuzz/ring_fuzz.cc)
for source in ring/*.cc guestmem/*.cc; do
  case "$source" in
    *_test.cc | *_bench.cc) ;;
    *) sources+=("$source") ;;
  esac
done
build_fuzz_target "${1:-/tmp/ring_fuzz}" "${sources[@]}"
