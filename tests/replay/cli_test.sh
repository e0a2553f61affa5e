#!/usr/bin/env bash
# vmbus_replay's command line: exit 0 when every script passes, 1 with the file, line and what
# differed when one fails, 2 for a malformed or unreadable script (the others still run) and
# when no script is named. The command line is Abseil's: an unknown flag is its error, exit 1,
# and --help (or -h) prints the usage and exits 1.
#
#   cli_test.sh PATH_TO_VMBUS_REPLAY
set -u
replay=$1
data=tests/replay/testdata
out=$(mktemp)
failures=0

# expect_run WANT_STATUS WANT_TEXT ARGS...: runs vmbus_replay, checks its status and that its
# output (stdout and stderr) contains WANT_TEXT.
expect_run() {
  local want_status=$1 want_text=$2
  shift 2
  "$replay" "$@" >"$out" 2>&1
  local status=$?
  if [[ $status -ne $want_status ]]; then
    echo "FAIL: vmbus_replay $* exited $status, want $want_status"; cat "$out"
    failures=$((failures + 1))
  elif ! grep -qF -- "$want_text" "$out"; then
    echo "FAIL: vmbus_replay $* did not print: $want_text"; cat "$out"
    failures=$((failures + 1))
  else
    echo "ok: vmbus_replay $* -> $status"
  fi
}

expect_run 0 "PASS $data/pass.vmr" "$data/pass.vmr"
# Each step is printed as it runs, with what it saw.
expect_run 0 "$data/pass.vmr:3: expect u32:15 u32:0 u8:1 u8:0 u16:0 \$conn:u32" "$data/pass.vmr"
expect_run 0 "  got ALLOFFERS_DELIVERED (8 bytes)" "$data/pass.vmr"
expect_run 0 "vmbus_replay: 2 passed, 0 failed, 0 malformed" "$data/pass.vmr" "$data/pass.vmr"
expect_run 1 "FAIL $data/fail.vmr:4: expect: VERSION_RESPONSE (16 bytes) differs: offset 8, \`u8:0\` (token 3): expected 00, got 01" \
  "$data/fail.vmr"
expect_run 1 "vmbus_replay: 1 passed, 1 failed, 0 malformed" "$data/pass.vmr" "$data/fail.vmr"
expect_run 2 "$data/malformed.vmr:3: post: \`??\`: \`??\` matches received bytes: only in expect and until" \
  "$data/malformed.vmr"
# A malformed script does not stop the others; it still makes the exit status 2.
expect_run 2 "vmbus_replay: 1 passed, 1 failed, 1 malformed" \
  "$data/pass.vmr" "$data/malformed.vmr" "$data/fail.vmr"
expect_run 2 "$data/missing.vmr: cannot open: No such file or directory" "$data/missing.vmr"
expect_run 2 "usage: vmbus_replay SCRIPT..."
expect_run 1 "ERROR: Unknown command line flag 'bogus'" --bogus "$data/pass.vmr"
expect_run 1 "vmbus_replay: usage: vmbus_replay SCRIPT..." --help
expect_run 1 "vmbus_replay: usage: vmbus_replay SCRIPT..." -h
# After "--", an argument starting with '-' is a script.
expect_run 2 "vmbus_replay: malformed: -x.vmr: cannot open: No such file or directory" -- -x.vmr

rm -f "$out"
if [[ $failures -ne 0 ]]; then
  echo "$failures failed"
  exit 1
fi
echo "all passed"
