#!/usr/bin/env bash
# Installs the Debian 12 packages that cvmbus builds and tests with. Idempotent: does nothing
# when everything is present. Used by the README's commands and by .ci/run.
set -euo pipefail

packages=(
  bazel-bootstrap          # Bazel 4.2, offline WORKSPACE build (see third_party/).
  g++ clang libclang-rt-14-dev  # GCC for the build; clang + its runtime for libFuzzer and sanitizers.
  liburing-dev libabsl-dev libfmt-dev libgtest-dev libgmock-dev
  dpdk-dev librte-bus-vmbus23   # DPDK 22.11's VMBus ring functions: an independent ring peer.
  protobuf-compiler libprotobuf-dev  # Saved state of the VMBus server; cvmbusd's config.
  nlohmann-json3-dev       # cvmbusd's inspect tree (header-only).
  fio                      # The storage peer storvsp_bench compares with (same file, io_uring).
  socat                    # The host end of the hvsocket relay tests (tests/hvsocket/).
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "setup: installing ${missing[*]}" >&2
run_as_root=()
[[ $(id -u) -eq 0 ]] || run_as_root=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${run_as_root[@]}" apt-get update -qq
"${run_as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
