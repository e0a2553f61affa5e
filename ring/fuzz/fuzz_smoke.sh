#!/usr/bin/env bash
# Fuzz smoke test for CI: builds ring_fuzz with clang (build_fuzzer.sh), replays every seed in
# ring/fuzz/corpus/, then fuzzes 20000 more runs from them. Exits nonzero if the build fails or
# the fuzzer finds a crash (the reproducer is kept: its path is printed).
#
#   ring/fuzz/fuzz_smoke.sh [RUNS]    (default 20000)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-20000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=${TMPDIR:-/tmp}/ring_fuzz_artifacts
mkdir -p "$artifacts"

"$here/build_fuzzer.sh" "$work/ring_fuzz"
# libFuzzer adds what it finds to its first corpus directory: fuzz a copy, keep the seeds clean.
cp -r "$here/corpus" "$work/corpus"
seeds=$(find "$here/corpus" -type f | wc -l)
[[ $seeds -gt 0 ]] || { echo "fuzz_smoke: no seeds in $here/corpus"; exit 1; }

# Replays each seed once, as individual inputs (a failure names the seed).
"$work/ring_fuzz" -runs=1 "$here"/corpus/* >"$work/replay.log" 2>&1 ||
  { tail -40 "$work/replay.log"; echo "fuzz_smoke: a seed fails"; exit 1; }

if ! "$work/ring_fuzz" -runs="$runs" -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$work/corpus" >"$work/fuzz.log" 2>&1; then
  grep -m1 "INFO: Seed:" "$work/fuzz.log" || true
  tail -60 "$work/fuzz.log"
  echo "fuzz_smoke: the fuzzer failed; reproducer under $artifacts/"
  exit 1
fi
grep -E "DONE|stat::number_of_executed_units|stat::average_exec_per_sec" "$work/fuzz.log"
echo "fuzz_smoke: $seeds seeds replayed, $runs runs, no crash"
