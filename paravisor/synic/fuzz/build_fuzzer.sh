#!/usr/bin/env bash
# Builds the SynIC libFuzzer target (paravisor/synic/fuzz/synic_fuzz.cc) with
# clang++-14 under ASan and UBSan, from the sources it needs directly (Bazel's GCC toolchain
# cannot build libFuzzer targets; see ring/fuzz/build_fuzzer.sh).
#
#   paravisor/synic/fuzz/build_fuzzer.sh [OUTPUT]   (default /tmp/synic_fuzz; CXX overrides)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:-/tmp/synic_fuzz}
cxx=${CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "build_fuzzer: $cxx not found (apt-get install clang-14)" >&2; exit 1; }

sources=(
  paravisor/synic/fuzz/synic_fuzz.cc
  paravisor/synic/synic.cc
  hw/uring/event_loop.cc
  guestmem/access_gate.cc
  guestmem/errors.cc
  guestmem/guest_memory.cc
  guestmem/memory_backing.cc
  guestmem/page_state.cc
  guestmem/paged_range.cc
)
mapfile -t absl < <(sed -n '/^ABSL_LIBS = \[/,/^\]/p' third_party/system/BUILD.system |
  grep -o '"[a-z0-9_]*"' | tr -d '"' | sed 's/^/-labsl_/')
[[ ${#absl[@]} -gt 0 ]] || { echo "build_fuzzer: no ABSL_LIBS in BUILD.system" >&2; exit 1; }

"$cxx" -std=c++20 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g -O1 \
  -I. "${sources[@]}" -o "$out" "${absl[@]}" -l:liburing.a -lfmt -latomic -lrt -lpthread
echo "built $out"
