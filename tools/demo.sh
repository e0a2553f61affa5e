#!/usr/bin/env bash
# The main job: installs what is missing, builds optimized, and runs the cvmbus demo: an
# emulated AMD SEV-SNP confidential VM whose guest talks VMBus 6.0 to the paravisor's server
# over confidential channels (rings in private, validated memory). Flags go to the demo:
#   tools/demo.sh [--packets=N] [--channels=N]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build --jobs=2 -c opt //paravisor/demo:cvmbus_demo
exec bazel-out/k8-opt/bin/paravisor/demo/cvmbus_demo "$@"
