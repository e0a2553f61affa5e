#!/usr/bin/env bash
# The main job, small: the demo runs to its end, exits 0, and shows each step's result.
set -euo pipefail
demo=$1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$demo" --packets=2000 --channels=3 >"$out" 2>&1 || { cat "$out"; echo "FAIL: exit $?"; exit 1; }
for expected in \
  "== guest: VMBus 6.0 negotiated, features granted 0x50" \
  "== 3 echo channels open" \
  "... 2000 of 2000 packets echoed" \
  "== host read of the private ring page at 0x1000000: ciphertext" \
  "== host write to it: snp 'vm': RMP #PF" \
  "the same bytes; the file's bytes at 0x100000 match" \
  "sense key 0x5 asc 0x21 (ILLEGAL REQUEST, LBA OUT OF RANGE)" \
  "every one back once and in order" \
  "8 answered once each, all in the file; the guest saw no new offer" \
  "heartbeat health: healthy" \
  "guest answered status 0x0" \
  "read \"host got: HELLO FROM THE CONFIDENTIAL GUEST\" and the host's FIN" \
  "relid  1  cvmbus-echo      open      rings private" \
  "0 guest errors" \
  "== cvmbusd stopped"; do
  grep -qF -- "$expected" "$out" || { cat "$out"; echo "FAIL: no '$expected'"; exit 1; }
done
# Nothing at warning level or above from the daemon's log.
if grep -E '^[0-9T:.-]+Z [WE] ' "$out"; then echo "FAIL: the daemon logged a problem"; exit 1; fi
# --kvm: the guest is a KVM vCPU, serviced under twice.
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  "$demo" --kvm --packets=3000 >"$out" 2>&1 || { cat "$out"; echo "FAIL: --kvm exit $?"; exit 1; }
  for expected in \
    "== KVM guest: exited; VMBus 6.0 with features 0x10" \
    "310 round trips checked byte for byte" \
    "== 2 servicings under the running vCPU; 0 guest errors; the guest unloaded: yes"; do
    grep -qF -- "$expected" "$out" || { cat "$out"; echo "FAIL: --kvm: no '$expected'"; exit 1; }
  done
else
  echo "SKIP: --kvm: no usable /dev/kvm here"
fi
echo PASS
