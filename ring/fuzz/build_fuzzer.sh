#!/usr/bin/env bash
# Builds the ring libFuzzer target (ring/fuzz/ring_fuzz.cc) with clang++-14 under ASan and UBSan.
# Bazel's GCC toolchain cannot build libFuzzer targets, so this compiles the sources directly:
# ring/*.cc and guestmem/*.cc (no tests, no benchmarks) against Debian's Abseil and fmt, with
# the Abseil libraries that third_party/system/BUILD.system links.
#
#   ring/fuzz/build_fuzzer.sh [OUTPUT]      (default /tmp/ring_fuzz; CXX overrides clang++-14)
#
# UBSan findings abort (-fno-sanitize-recover) so that libFuzzer records them as crashes.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/ring_fuzz}
cxx=${CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "build_fuzzer: $cxx not found (apt-get install clang-14)" >&2; exit 1; }

sources=(ring/fuzz/ring_fuzz.cc)
for source in ring/*.cc guestmem/*.cc; do
  case "$source" in
    *_test.cc | *_bench.cc) ;;
    *) sources+=("$source") ;;
  esac
done
# The -labsl_* list of BUILD.system's ABSL_LIBS, so that the two stay in step.
mapfile -t absl < <(sed -n '/^ABSL_LIBS = \[/,/^\]/p' third_party/system/BUILD.system |
  grep -o '"[a-z0-9_]*"' | tr -d '"' | sed 's/^/-labsl_/')
[[ ${#absl[@]} -gt 0 ]] || { echo "build_fuzzer: no ABSL_LIBS in BUILD.system" >&2; exit 1; }

"$cxx" -std=c++20 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g -O1 \
  -I. "${sources[@]}" -o "$out" "${absl[@]}" -lfmt -latomic -lrt -lpthread
echo "built $out"
