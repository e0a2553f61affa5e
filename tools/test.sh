#!/usr/bin/env bash
# The test command: installs what is missing, runs every test under ASan + UBSan, reruns the
# tests tagged "concurrency" under ThreadSanitizer, runs the five fuzz smokes, and ends with one
# line "N passed, N failed" counting individual test cases (a test target that did not build or
# run counts as one failure).
#
#   tools/test.sh            everything (what CI runs)
#   tools/test.sh //ring/... only these targets, once, without a sanitizer (a quick check)
#
# Every test runs under ASan + UBSan rather than once plain and again sanitized: on two vCPUs
# each configuration is mostly a build of its own, and a plain one would add a third (the run
# takes 32-33 minutes on a fresh clone here, builds nearly all of it).
set -uo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

targets=("${@:-//...}")
passed=0
failed=0

# Adds up test cases from Bazel's per-target summary (in file $1) and each target's test.xml.
count_results() {
  local log=$1; shift
  local target line xml package name tests failures errors
  for target in "$@"; do
    line=$(grep -E "^$target +" "$log" | tail -1)
    package=${target#//}; package=${package%%:*}; name=${target##*:}
    xml="bazel-testlogs/$package/$name/test.xml"
    if [[ "$line" != *PASSED* && "$line" != *FAILED* ]] || [[ "$line" == *"FAILED TO BUILD"* ]] ||
       [[ ! -f "$xml" ]]; then
      echo "no result: $target ${line##* }"
      failed=$((failed + 1))
      continue
    fi
    tests=$(grep -o -m1 '<testsuites [^>]*' "$xml" | grep -o ' tests="[0-9]*"' | tr -dc 0-9)
    failures=$(grep -o -m1 '<testsuites [^>]*' "$xml" | grep -o ' failures="[0-9]*"' | tr -dc 0-9)
    errors=$(grep -o -m1 '<testsuites [^>]*' "$xml" | grep -o ' errors="[0-9]*"' | tr -dc 0-9)
    tests=${tests:-0}; failures=${failures:-0}; errors=${errors:-0}
    [[ "$tests" -eq 0 ]] && tests=1  # Not a gtest XML: the target is one case.
    if [[ "$line" == *FAILED* && $((failures + errors)) -eq 0 ]]; then
      failures=1  # The cases passed but the process failed (a crash or sanitizer report).
    fi
    failed=$((failed + failures + errors))
    passed=$((passed + tests - failures - errors))
  done
}

run_pass() {
  local label=$1; shift
  local query=$1; shift
  local tests log
  mapfile -t tests < <(bazel query "$query" 2>/dev/null)
  [[ ${#tests[@]} -eq 0 ]] && return
  echo "== $label: ${#tests[@]} test targets ($((SECONDS / 60))m$((SECONDS % 60))s in)"
  log=$(mktemp)
  bazel test --jobs=2 --keep_going "$@" "${tests[@]}" >"$log" 2>&1
  grep -E "PASSED|FAILED|TIMEOUT|NO STATUS|^ERROR" "$log" | grep -v "^INFO" || true
  count_results "$log" "${tests[@]}"
  rm -f "$log"
}

if [[ $# -gt 0 ]]; then
  run_pass "tests" "tests(set(${targets[*]}))"
else
  # Every test, with ASan + UBSan (their errors are fatal).
  run_pass "asan+ubsan" "tests(//...)" --config=asan --config=ubsan
  run_pass "tsan" "attr(tags, 'concurrency', tests(//...))" --config=tsan
  # The fuzzers (clang, libFuzzer + ASan + UBSan): the ring reader, the control protocol with
  # GPADL assembly, the SynIC boundary (MSRs, hypercalls, its pages), the device parsers
  # a guest or host program feeds, and the server as a whole (a guest, its devices and
  # servicing, interleaved); each its corpus plus 20000 runs, one case each. Two at a time
  # (a fuzzer's build and run are mostly one process; there are two vCPUs).
  echo "== fuzz smoke ($((SECONDS / 60))m$((SECONDS % 60))s in)"
  fuzzers=(paravisor/server/fuzz ring/fuzz paravisor/synic/fuzz paravisor/protocol/fuzz
    paravisor/devices/fuzz)
  fuzz_log() { echo "/tmp/cvmbus_fuzz_smoke_${1//\//_}.log"; }
  running=0
  for fuzzer in "${fuzzers[@]}"; do
    (tools/fuzz_smoke.sh "$fuzzer" 20000 >"$(fuzz_log "$fuzzer")" 2>&1
      echo $? >"$(fuzz_log "$fuzzer").rc") &
    running=$((running + 1))
    if [[ $running -ge 2 ]]; then wait -n; running=$((running - 1)); fi
  done
  wait
  for fuzzer in "${fuzzers[@]}"; do
    log=$(fuzz_log "$fuzzer")
    if [[ $(cat "$log.rc" 2>/dev/null) == 0 ]]; then
      passed=$((passed + 1)); tail -1 "$log"
    else
      failed=$((failed + 1)); tail -20 "$log"
    fi
    rm -f "$log.rc"
  done
fi
echo "test.sh: $((SECONDS / 60))m$((SECONDS % 60))s"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
