#!/usr/bin/env python3
"""Regenerates the seed corpus paravisor/protocol/fuzz/corpus/: the message sequences of a
Linux guest's connection (INITIATE_CONTACT at 6.0 and 5.x, REQUEST_OFFERS, a ring GPADL of
one range in a header and a body, OPENCHANNEL with and without its tail, MODIFYCHANNEL,
TL_CONNECT_REQUEST, CLOSECHANNEL, GPADL_TEARDOWN, RELID_RELEASED, UNLOAD), the host's
answers, and a few broken GPADLs, in protocol_fuzz.cc's input layout: a connection byte, a
feature byte, then length-prefixed messages.

  paravisor/protocol/fuzz/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def msg(msg_type, body=b""):
    return struct.pack("<II", msg_type, 0) + body


def initiate(version, features=0, client_id=False):
    if version >= 0x50000:  # msg_sint, msg_vtl, reserved, feature_flags
        target = struct.pack("<BBHI", 2, 0, 0, features)
    else:
        target = struct.pack("<Q", 0x10000)
    body = struct.pack("<II", version, 0) + target + struct.pack("<QQ", 0x11000, 0x12000)
    if client_id:
        body += bytes(range(16))
    return msg(14, body)


def gpadl(relid, gpadl_id, pages, first_words=26, offset=0, count=None, range_count=1):
    count = len(pages) * 4096 - offset if count is None else count
    words = [count | (offset << 32)] + pages
    buflen = 8 * len(words)
    head = words[:first_words]
    out = [msg(8, struct.pack("<IIHH", relid, gpadl_id, buflen, range_count) +
               struct.pack(f"<{len(head)}Q", *head))]
    rest = words[first_words:]
    while rest:
        chunk, rest = rest[:28], rest[28:]
        out.append(msg(9, struct.pack("<II", 0, gpadl_id) + struct.pack(f"<{len(chunk)}Q", *chunk)))
    return out


def open_channel(relid, gpadl_id, tail):
    body = struct.pack("<IIIII", relid, relid, gpadl_id, 0, 8) + bytes(120)
    if tail:
        body += struct.pack("<IHH", 0x2000 + relid, 0, 0)
    return msg(5, body)


def seed(name, connection, features, messages):
    data = bytes([connection, features])
    for m in messages:
        data += bytes([len(m)]) + m
    with open(os.path.join(HERE, "corpus", name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(os.path.join(HERE, "corpus"), exist_ok=True)
    ring = list(range(0x100, 0x100 + 40))  # 40 pages: a header and one body.
    linux_60 = ([initiate(0x60000, features=0x1, client_id=False), msg(3)] +
                gpadl(1, 0xe1e10, ring) +
                [open_channel(1, 0xe1e10, tail=True),
                 msg(22, struct.pack("<II", 1, 1)),
                 msg(7, struct.pack("<I", 1)),
                 msg(11, struct.pack("<II", 1, 0xe1e10)),
                 msg(13, struct.pack("<I", 1)),
                 msg(16)])
    seed("linux_6_0", 10, 0x1, linux_60)
    seed("linux_5_3", 9, 0, [initiate(0x50003), msg(3)] + gpadl(2, 7, ring[:4]) +
         [open_channel(2, 7, tail=False), msg(16)])
    seed("client_id", 10, 0x3, [initiate(0x60000, features=0x2, client_id=True)])
    seed("win7", 1, 0, [initiate(0x10001), msg(3), msg(16)])
    seed("tl_connect", 10, 0, [msg(21, bytes(range(32))), msg(21, bytes(range(48)))])
    host = [msg(15, struct.pack("<BBHII", 1, 0, 0, 0x2000, 0x1f)),
            msg(1, bytes(188)), msg(4), msg(6, struct.pack("<III", 1, 1, 0)),
            msg(10, struct.pack("<III", 1, 7, 0)), msg(12, struct.pack("<I", 7)), msg(17),
            msg(2, struct.pack("<I", 1)), msg(24, struct.pack("<II", 1, 0))]
    seed("host_answers", 10, 0x1, host)
    seed("gpadl_two_ranges", 10, 0,
         [msg(8, struct.pack("<IIHH", 3, 9, 32, 2) +
              struct.pack("<4Q", 4096, 0x200, 100 | (16 << 32), 0x300))])
    seed("gpadl_trailing_word", 10, 0,
         [msg(8, struct.pack("<IIHH", 3, 9, 40, 2) +
              struct.pack("<5Q", 4096, 0x200, 100 | (16 << 32), 0x300, 0))])
    seed("gpadl_short_body", 10, 0, gpadl(4, 11, ring, first_words=26)[:1] +
         [msg(9, struct.pack("<II", 0, 11) + struct.pack("<Q", 0x400))])
    seed("gpadl_bad_offset", 10, 0, gpadl(5, 12, ring[:2], offset=4096, count=1))
    seed("too_long", 10, 0, [bytes(241), bytes(7), msg(0), msg(30)])


main()
