# Sourced by each fuzzer's build_fuzzer.sh: compiles a libFuzzer target with clang++-14 under
# ASan and UBSan from the sources given, against Debian's Abseil (the libraries that
# third_party/system/BUILD.system's ABSL_LIBS links, so the two stay in step) and fmt. Bazel's
# GCC toolchain cannot build libFuzzer targets. UBSan findings abort (-fno-sanitize-recover) so
# that libFuzzer records them as crashes. Run from the repository root.
#
#   build_fuzz_target OUTPUT SOURCE... [-- EXTRA_LINK_FLAGS...]      (CXX overrides clang++-14)
#
# A target of many sources can compile them in parallel first, with the same flags, and link
# the objects with build_fuzz_target (SOURCEs may be objects):
#
#   compile_fuzz_object OBJECT SOURCE [EXTRA_COMPILE_FLAGS...]
fuzz_cxx_flags=(-std=c++20 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g
  -O1 -I.)

fuzz_cxx() {
  local cxx=${CXX:-clang++-14}
  command -v "$cxx" >/dev/null ||
    { echo "build_fuzzer: $cxx not found (apt-get install clang-14)" >&2; return 1; }
  echo "$cxx"
}

compile_fuzz_object() {
  local out=$1 source=$2
  shift 2
  local cxx
  cxx=$(fuzz_cxx) || return 1
  "$cxx" "${fuzz_cxx_flags[@]}" "$@" -c "$source" -o "$out"
}

build_fuzz_target() {
  local out=$1
  shift
  local sources=() extra=()
  while [[ $# -gt 0 && $1 != -- ]]; do sources+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift && extra=("$@")
  local cxx
  cxx=$(fuzz_cxx) || return 1
  local absl
  mapfile -t absl < <(sed -n '/^ABSL_LIBS = \[/,/^\]/p' third_party/system/BUILD.system |
    grep -o '"[a-z0-9_]*"' | tr -d '"' | sed 's/^/-labsl_/')
  [[ ${#absl[@]} -gt 0 ]] || { echo "build_fuzzer: no ABSL_LIBS in BUILD.system" >&2; return 1; }
  "$cxx" "${fuzz_cxx_flags[@]}" "${sources[@]}" -o "$out" "${absl[@]}" "${extra[@]}" -lfmt -latomic \
    -lrt -lpthread
  echo "built $out"
}
