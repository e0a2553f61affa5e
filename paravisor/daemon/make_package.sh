#!/usr/bin/env bash
# Builds cvmbusd's tarball (Bazel genrule :cvmbusd_package):
#   make_package.sh OUT.tar.gz CVMBUSD CVMBUSCTL CONFIG SCHEMA DOC
# The binaries are linked with an $ORIGIN/../lib rpath; every shared library they need apart
# from glibc's own (libc, libm, the dynamic loader) is copied into lib/ from the build machine,
# so the tarball runs on another Debian 12 system without the -dev packages.
set -euo pipefail
out=$1 daemon=$2 ctl=$3 config=$4 schema=$5 doc=$6

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/cvmbusd/bin" "$root/cvmbusd/lib" "$root/cvmbusd/etc/cvmbusd" \
  "$root/cvmbusd/share/doc/cvmbusd"
cp "$daemon" "$root/cvmbusd/bin/cvmbusd"
cp "$ctl" "$root/cvmbusd/bin/cvmbusctl"
cp "$config" "$root/cvmbusd/etc/cvmbusd/cvmbusd.conf"
cp "$schema" "$root/cvmbusd/share/doc/cvmbusd/config.proto"
cp "$doc" "$root/cvmbusd/share/doc/cvmbusd/OPERATING.md"
chmod 0755 "$root/cvmbusd/bin/"*
chmod 0644 "$root/cvmbusd/etc/cvmbusd/cvmbusd.conf" "$root/cvmbusd/share/doc/cvmbusd/"*

# "libfoo.so.1 => /usr/lib/x86_64-linux-gnu/libfoo.so.1 (0x...)": the resolved paths.
for binary in "$daemon" "$ctl"; do
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u | while read -r library; do
  case "$(basename "$library")" in
    libc.so.* | libm.so.* | ld-linux*.so.* | libpthread.so.* | libdl.so.* | librt.so.*) ;;
    *) cp -L "$library" "$root/cvmbusd/lib/" ;;
  esac
done
chmod 0644 "$root/cvmbusd/lib/"*

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-01-01 00:00Z' \
  -C "$root" -czf "$out" cvmbusd
