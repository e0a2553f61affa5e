#!/usr/bin/env bash
# Builds the device-parser libFuzzer target (paravisor/devices/fuzz/device_fuzz.cc) with
# clang++-14 under ASan and UBSan (tools/fuzz_build.sh), from the parsers' sources directly.
#
#   paravisor/devices/fuzz/build_fuzzer.sh [OUTPUT]   (default /tmp/device_fuzz; CXX overrides)
set -euo pipefail
cd "$(dirname "$0")/../../.."
source tools/fuzz_build.sh
build_fuzz_target "${1:-/tmp/device_fuzz}" \
  paravisor/devices/fuzz/device_fuzz.cc \
  paravisor/devices/ic/ic_message.cc \
  paravisor/devices/ic/ic_negotiation.cc \
  paravisor/devices/hvsocket/hvsocket_protocol.cc \
  paravisor/devices/hvsocket/hybrid_vsock.cc \
  paravisor/devices/storvsp/vstor_protocol.cc \
  paravisor/devices/storvsp/scsi_disk.cc \
  paravisor/devices/storvsp/srb.cc \
  paravisor/devices/storvsp/srb_buffer.cc \
  paravisor/bus/guid.cc
