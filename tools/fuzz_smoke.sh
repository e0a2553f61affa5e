#!/usr/bin/env bash
# Fuzz smoke test for CI: builds a libFuzzer target with its directory's build_fuzzer.sh (clang,
# ASan + UBSan), replays every reproducer in the directory's crashes/ (every file but
# README.md: inputs that crashed it once, kept as regression tests) and every seed in its
# corpus/, then fuzzes RUNS more runs from the seeds. Exits nonzero if the build fails, a
# reproducer or seed crashes, or the fuzzer finds a crash (the reproducer is kept: its path is
# printed).
#
#   tools/fuzz_smoke.sh DIR [RUNS]    DIR: ring/fuzz or paravisor/X/fuzz (X: protocol, synic,
#                                     devices, server); RUNS default 20000
set -euo pipefail
dir=${1:?usage: tools/fuzz_smoke.sh DIR [RUNS]}
here=$(cd "$dir" && pwd)
runs=${2:-20000}
name=$(basename "$(dirname "$here")")_fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=${TMPDIR:-/tmp}/${name}_artifacts
mkdir -p "$artifacts"

"$here/build_fuzzer.sh" "$work/fuzzer"
# libFuzzer adds what it finds to its first corpus directory: fuzz a copy, keep the seeds clean.
cp -r "$here/corpus" "$work/corpus"
seeds=$(find "$here/corpus" -type f | wc -l)
[[ $seeds -gt 0 ]] || { echo "fuzz_smoke: no seeds in $here/corpus"; exit 1; }

# Replays each past crash on its own (libFuzzer runs the files it is given once each, and exits
# nonzero if one crashes); a failure names the file and shows the report.
reproducers=0
if [[ -d "$here/crashes" ]]; then
  for input in "$here"/crashes/*; do
    [[ -f "$input" && $(basename "$input") != README.md ]] || continue
    reproducers=$((reproducers + 1))
    "$work/fuzzer" -artifact_prefix="$work/" "$input" >"$work/crash_replay.log" 2>&1 ||
      { tail -40 "$work/crash_replay.log"; echo "fuzz_smoke: $dir: reproducer $input crashes"; exit 1; }
  done
fi
echo "fuzz_smoke: $dir: $reproducers reproducers in crashes/ replayed, no crash"

# Replays each seed once, as individual inputs (a failure names the seed).
"$work/fuzzer" -runs=1 "$here"/corpus/* >"$work/replay.log" 2>&1 ||
  { tail -40 "$work/replay.log"; echo "fuzz_smoke: $dir: a seed fails"; exit 1; }

if ! "$work/fuzzer" -runs="$runs" -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$work/corpus" >"$work/fuzz.log" 2>&1; then
  grep -m1 "INFO: Seed:" "$work/fuzz.log" || true
  tail -60 "$work/fuzz.log"
  echo "fuzz_smoke: $dir: the fuzzer failed; reproducer under $artifacts/"
  exit 1
fi
grep -E "DONE|stat::number_of_executed_units|stat::average_exec_per_sec" "$work/fuzz.log"
echo "fuzz_smoke: $dir: $reproducers reproducers and $seeds seeds replayed, $runs runs, no crash"
