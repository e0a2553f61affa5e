#!/usr/bin/env bash
# The deployable tarball: unpacked into an empty root, its cvmbusd runs on its own libraries
# (every one outside glibc resolves inside the root), serves cvmbusctl from the same root with
# the default configuration, and stops in order.
set -euo pipefail
tarball=$1

root=$(mktemp -d /tmp/cvmbusd_package.XXXXXX)  # Short: socket paths live under it.
daemon_pid=
cleanup() {
  [[ -n "$daemon_pid" ]] && kill -9 "$daemon_pid" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

tar -xzf "$tarball" -C "$root"
pkg=$root/cvmbusd
for f in bin/cvmbusd bin/cvmbusctl etc/cvmbusd/cvmbusd.conf share/doc/cvmbusd/OPERATING.md \
  share/doc/cvmbusd/config.proto; do
  [[ -f "$pkg/$f" ]] || fail "$f missing from the tarball"
done

# Every library outside glibc comes from the tarball's lib/.
for binary in "$pkg/bin/cvmbusd" "$pkg/bin/cvmbusctl"; do
  ldd "$binary" | grep -q "not found" && fail "$(basename "$binary"): $(ldd "$binary" | grep "not found")"
  while read -r name path; do
    case "$name" in
      libc.so.* | libm.so.* | ld-linux*.so.* | libpthread.so.* | libdl.so.* | librt.so.*) ;;
      *) [[ "$(realpath "$path")" == "$pkg/lib/"* ]] ||
        fail "$(basename "$binary"): $name resolves to $path" ;;
    esac
  done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
done

socket=$root/control.sock
"$pkg/bin/cvmbusd" --config="$pkg/etc/cvmbusd/cvmbusd.conf" --control_socket="$socket" \
  --hvsocket_prefix="$root/vm.sock" 2>"$root/daemon.log" &
daemon_pid=$!
for _ in $(seq 1 500); do [[ -S "$socket" ]] && break; sleep 0.02; done
[[ -S "$socket" ]] || fail "no control socket: $(cat "$root/daemon.log")"

version=
for _ in $(seq 1 200); do
  version=$("$pkg/bin/cvmbusctl" --socket="$socket" inspect connection/version)
  [[ "$version" == "connection/version = 6.0" ]] && break
  sleep 0.02
done
[[ "$version" == "connection/version = 6.0" ]] || fail "the guest did not connect: '$version'"
echo "inspect: $version"
channels=$("$pkg/bin/cvmbusctl" --socket="$socket" inspect channels | grep -c '/state = ')
# The default configuration: two echo channels and the three ICs (the relay offers per
# connection).
[[ "$channels" -eq 5 ]] || fail "$channels channels, expected 5"

[[ "$("$pkg/bin/cvmbusctl" --socket="$socket" shutdown)" == "shutting down" ]] ||
  fail "shutdown not acknowledged"
status=0
wait "$daemon_pid" || status=$?
daemon_pid=
[[ $status -eq 0 ]] || fail "cvmbusd exited $status: $(cat "$root/daemon.log")"
grep -q "I cvmbusd: stopped" "$root/daemon.log" || fail "no orderly stop: $(cat "$root/daemon.log")"
[[ ! -e "$socket" ]] || fail "the control socket was left behind"
echo "PASS"
