#!/usr/bin/env python3
"""Regenerates the seed corpus paravisor/synic/fuzz/corpus/ in synic_fuzz.cc's input layout
(a VP-count byte, then operations: opcode, VP, arguments, and the CanReceive SINT byte that
ends each one): a guest kernel's SynIC setup in Linux's order (hv_synic_enable_regs), its
HvPostMessage and HvSignalEvent calls, the server's messages and events, EOM, and teardown.

  paravisor/synic/fuzz/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MSR = {"guest_os_id": 0, "hypercall": 1, "vp_index": 2, "time_ref": 3, "vp_assist": 4,
       "scontrol": 5, "sversion": 6, "siefp": 7, "simp": 8, "eom": 9, "sint0": 10, "sint2": 11,
       "sint15": 12, "sint16": 13}


def write_msr(vp, name, value):
    return bytes([0, vp, MSR[name]]) + struct.pack("<Q", value) + b"\x02"


def read_msr(vp, name):
    return bytes([1, vp, MSR[name], 2])


def post(vp, page, connection_id, message_type, size):
    return bytes([4, vp, page, connection_id, 0, message_type, size, 2])


def signal(vp, connection_id):  # HvSignalEvent, fast, flag 0.
    return bytes([2, vp]) + struct.pack("<H", 0x5d) + bytes([1 | 32]) + struct.pack("<Q", 0) + \
        bytes([connection_id]) + struct.pack("<Q", 0) + b"\x02"


def to_guest(vp, sint, payload):
    return bytes([5, vp, sint, len(payload)]) + payload + b"\x02"


def event(vp, sint, flag):
    return bytes([6, vp, sint]) + struct.pack("<H", flag) + b"\x02"


def run():
    return bytes([8, 0, 2])


def setup(vp):
    return (write_msr(vp, "guest_os_id", 0x8100000000000000) +
            write_msr(vp, "hypercall", 0x3000 | 1) +
            write_msr(vp, "simp", 0x1000 | 1) + write_msr(vp, "siefp", 0x2000 | 1) +
            write_msr(vp, "sint2", 0xf3) + write_msr(vp, "scontrol", 1))


def seed(name, data):
    with open(os.path.join(HERE, "corpus", name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(os.path.join(HERE, "corpus"), exist_ok=True)
    seed("linux_setup", b"\x00" + setup(0) + read_msr(0, "sversion") + read_msr(0, "vp_index"))
    seed("post_and_answer", b"\x00" + setup(0) + post(0, 4, 1, 1, 40) + run() +
         to_guest(0, 2, bytes(range(40))) + to_guest(0, 2, bytes(16)) +
         write_msr(0, "eom", 0) + run())
    seed("events", b"\x00" + setup(0) + bytes([10, 0, 1, 2]) + signal(0, 5) + signal(0, 6) +
         event(0, 2, 7) + event(0, 2, 7) + event(0, 3, 2047))
    seed("backpressure", b"\x00" + setup(0) + bytes([7, 0, 0, 2]) +
         b"".join(post(0, 4, 4, 1, 8) for _ in range(8)) + bytes([7, 0, 1, 2]) + run() +
         b"".join(to_guest(0, 2, bytes([i])) for i in range(8)))
    seed("two_vps", b"\x01" + setup(0) + setup(1) + to_guest(1, 2, b"hi") +
         write_msr(1, "sint2", 0x10000 | 0xf3) + to_guest(1, 2, b"masked") +
         write_msr(1, "sint2", 0xf3) + bytes([9, 0, 2, 9, 0, 2]))
    seed("bad_pages", b"\x00" + write_msr(0, "simp", 0x20000 | 1) + write_msr(0, "siefp", 0x1001) +
         write_msr(0, "sint16", 0xf3) + write_msr(0, "sint0", 0x5) + post(1, 4, 1, 1, 250))


main()
