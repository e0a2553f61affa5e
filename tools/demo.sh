#!/usr/bin/env bash
# The main job: installs what is missing, builds optimized, and runs cvmbus's most complete
# program. Until the emulated-SNP VMBus demo lands, that is the guestmem copy benchmark over
# the private and untrusted views of a memfd-backed guest memory.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build --jobs=2 -c opt //guestmem:copy_bench
exec bazel-bin/guestmem/copy_bench "$@"
