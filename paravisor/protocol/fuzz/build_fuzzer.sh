#!/usr/bin/env bash
# Builds the control-protocol libFuzzer target (paravisor/protocol/fuzz/protocol_fuzz.cc) with
# clang++-14 under ASan and UBSan, from the codec's sources directly (Bazel's GCC toolchain
# cannot build libFuzzer targets; see ring/fuzz/build_fuzzer.sh).
#
#   paravisor/protocol/fuzz/build_fuzzer.sh [OUTPUT]   (default /tmp/protocol_fuzz; CXX overrides)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:-/tmp/protocol_fuzz}
cxx=${CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "build_fuzzer: $cxx not found (apt-get install clang-14)" >&2; exit 1; }

sources=(
  paravisor/protocol/fuzz/protocol_fuzz.cc
  paravisor/protocol/codec.cc
  guestmem/paged_range.cc
  guestmem/errors.cc
)
mapfile -t absl < <(sed -n '/^ABSL_LIBS = \[/,/^\]/p' third_party/system/BUILD.system |
  grep -o '"[a-z0-9_]*"' | tr -d '"' | sed 's/^/-labsl_/')
[[ ${#absl[@]} -gt 0 ]] || { echo "build_fuzzer: no ABSL_LIBS in BUILD.system" >&2; exit 1; }

"$cxx" -std=c++20 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g -O1 \
  -I. "${sources[@]}" -o "$out" "${absl[@]}" -lfmt -latomic -lrt -lpthread
echo "built $out"
