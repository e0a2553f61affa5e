#!/usr/bin/env bash
# The throughput harness: builds the benchmark programs optimized, runs them one after another
# (run it with nothing else busy: two vCPUs), and writes their JSON, the plain text of each, PNG
# plots and the README's benchmark section (tools/harness_report.py) into OUT_DIR.
#
#   tools/harness.sh [--quick] [--readme] [OUT_DIR]     (default tests/harness/results)
#     --quick   1 repetition x 100 ms per row (a smoke run; not figures to publish)
#     --readme  also rewrite README.md's harness section from the results
set -euo pipefail
cd "$(dirname "$0")/.."
reps=5 millis=200 channel_reps=3 channel_millis=300 kvm_iterations=2000 update_readme=
out=tests/harness/results
for arg in "$@"; do
  case $arg in
    --quick) reps=1 millis=100 channel_reps=1 channel_millis=100 kvm_iterations=200 ;;
    --readme) update_readme=1 ;;
    -*) echo "harness: unknown flag $arg (see the top of tools/harness.sh)" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done

tools/setup.sh
if ! command -v gnuplot >/dev/null || ! command -v python3 >/dev/null; then
  run_as_root=()
  [[ $(id -u) -eq 0 ]] || run_as_root=(sudo)
  DEBIAN_FRONTEND=noninteractive "${run_as_root[@]}" apt-get install -y -qq \
    --no-install-recommends gnuplot-nox python3 >/dev/null
fi

targets=(//tests/harness:ring_bench //hw/uring:uring_bench //tests/harness:channel_bench
  //tests/kvm_vmbus:kvm_vmbus_bench)
bazel build -c opt --jobs=2 "${targets[@]}"
bin=bazel-out/k8-opt/bin
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.png "$out"/*.txt

echo "harness: ring_bench (busy polling)" >&2
"$bin/tests/harness/ring_bench" --reps=$reps --millis=$millis --json="$out/1_ring.json" |
  tee "$out/ring_bench.txt"
echo "harness: uring_bench (sleeping rings)" >&2
"$bin/hw/uring/uring_bench" --reps=$reps --millis=$millis --json="$out/2_sleep.json" |
  tee "$out/uring_bench.txt"
echo "harness: channel_bench (channels through the server)" >&2
"$bin/tests/harness/channel_bench" --reps=$channel_reps --millis=$channel_millis \
  --json="$out/3_channel" | tee "$out/channel_bench.txt"
for f in "$out"/3_channel.*.json; do mv "$f" "${f/3_channel./3_channel_}"; done
if [[ -e /dev/kvm ]]; then
  echo "harness: kvm_vmbus_bench (the KVM guest's path)" >&2
  "$bin/tests/kvm_vmbus/kvm_vmbus_bench" --iterations=$kvm_iterations --reps=3 \
    --json="$out/4_kvm.json" | tee "$out/kvm_vmbus_bench.txt"
else
  echo "harness: no /dev/kvm: the KVM guest's row is skipped" | tee "$out/kvm_vmbus_bench.txt" >&2
fi
readme=()
[[ -n $update_readme ]] && readme=(--readme README.md)
python3 tools/harness_report.py "$out" "${readme[@]}"
