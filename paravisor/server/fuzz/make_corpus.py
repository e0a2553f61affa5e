#!/usr/bin/env python3
"""Regenerates the seed corpus paravisor/server/fuzz/corpus/: programs in server_fuzz.cc's input
language (an options byte, then actions: an opcode byte and its arguments) for the lifecycles
a guest and its devices go through: a Linux guest's boot, open, retarget, close, teardown and
unload at 6.0 and older versions; devices that answer late, refuse or drop requests; revokes
in every channel state; resets (UNLOAD, kexec's INITIATE_CONTACT) while devices hold requests;
pause and resume; MODIFY_CONNECTION; hvsocket connects accepted and refused; backpressure from
a full SINT queue; servicing at each of those moments; and GPADLs sent in pieces, broken or
past the limits.

  paravisor/server/fuzz/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Device answers (server_fuzz.cc Script()): two bits each.
NOW, HOLD, DROP = 0, 1, 2


def script_bytes(open_=NOW, close=NOW, gpadl=NOW, teardown=NOW, modify=NOW, refuse_open=False,
                 refuse_gpadl=False, revoke_on_open=False, throwing=False, modify_status=0):
    modes = open_ | close << 2 | gpadl << 4 | teardown << 6
    flags = modify | (4 if refuse_open else 0) | (8 if refuse_gpadl else 0)
    if revoke_on_open:
        flags |= 0x30
    elif throwing:
        flags |= 0x10
    flags |= modify_status << 6
    return bytes([modes, flags])


class Program:
    def __init__(self, small_limits=False):
        self.data = bytearray([1 if small_limits else 0])

    def op(self, code, *args):
        self.data.append(code)
        for arg in args:
            self.data += arg if isinstance(arg, (bytes, bytearray)) else bytes([arg])
        return self

    # --- guest ---
    def contact(self, version_index=0, features=0, vp=0, sint=0, monitor=0, raw_version=None):
        # version_index: 0 is 6.0, 1 is 5.3, ... 10 is 0.13 (WS2008); 11 is 6.1 (unknown).
        args = [version_index if raw_version is None else 12]
        if raw_version is not None:
            args.append(struct.pack("<I", raw_version))
        args += [features, vp, sint, monitor]
        return self.op(0, *args)

    def request_offers(self):
        return self.op(1)

    def gpadl(self, relid=0, gpadl_id=1, pages=4, ranges=1, mode=0, shape=0):
        """A GPADL of `pages` pages (1..24), sent whole (mode 0), header only (2) or header and
        one body (3). `shape` adds: 2 an offset, 4 a short count, 0x38 a raw word (not used
        here), 0x80 words promised but not sent."""
        shape |= 1 if ranges == 2 else 0
        args = [relid, gpadl_id - 1, shape, pages - 1]
        if shape & 0x80:
            args.append(0)
        args.append(mode)
        return self.op(2, *args)

    def big_gpadl(self, relid=0, gpadl_id=1, size=40, mode=0):
        # 1 + 2 * size pages: several bodies.
        return self.op(2, relid, gpadl_id - 1, 0x40, size, mode)

    def body(self, words=28):
        return self.op(3, 0, words - 1)

    def teardown(self, relid=0, gpadl_id=1):
        return self.op(4, relid, 0x80, gpadl_id - 1)

    def open(self, relid=0, gpadl_id=1, vp=0, connection=0, tail_error=False, event_flag=5):
        shape = 0x40 if tail_error else 0
        return self.op(5, relid, 0x80, gpadl_id - 1, vp, shape, connection, event_flag)

    def close(self, relid=0):
        return self.op(6, relid)

    def modify(self, relid=0, vp=1):
        return self.op(7, relid, vp)

    def release(self, relid=0):
        return self.op(8, relid)

    def unload(self):
        return self.op(9)

    def pause(self):
        return self.op(10)

    def resume(self):
        return self.op(11)

    def modify_connection(self, monitor=1):
        return self.op(12, monitor)

    def tl_connect(self, accept=True, silo=False, endpoint=0):
        shape = (0 if accept else 1) | (2 if silo else 0) | (endpoint << 4)
        return self.op(13, shape)

    def signal(self, choice=0):
        return self.op(14, choice)

    def queue_limit(self, limit):
        return self.op(15, 0x80 | limit)

    def read(self):
        return self.op(15, 0)

    def raw(self, message, connection_id=4):
        return self.op(16, len(message), message, 0 if connection_id == 4 else 1)

    # --- devices ---
    def offer(self, slot, **script):
        return self.op(17, slot, script_bytes(**script))

    def revoke(self, slot, drop=False):
        return self.op(18, slot | (0x80 if drop else 0))

    def script(self, slot, **script):
        return self.op(19, slot, script_bytes(**script))

    def answer(self, slot, kind, accept=True):
        # kind: 0 open, 1 close, 2 GPADL, 3 teardown, 4 modify.
        return self.op(20, slot | kind << 3 | (0 if accept else 0x80))

    def interrupt(self, slot):
        return self.op(21, slot)

    def service(self):
        return self.op(22)

    def settle(self, accept=True):
        return self.op(23, 0 if accept else 1)

    # --- common sequences ---
    def boot(self, slots=(0,), **contact):
        for slot in slots:
            self.offer(slot)
        return self.contact(**contact).request_offers()

    def ring(self, relid=0, gpadl_id=1):
        return self.gpadl(relid, gpadl_id).open(relid, gpadl_id)


def seeds():
    out = {}
    out["linux_boot"] = Program().boot((0, 1, 2, 3, 4)).ring().modify().close().teardown()
    out["linux_unload"] = (Program().boot((0, 2)).ring().ring(1, 2).settle().unload()
                           .contact().request_offers())
    out["version_5_3"] = Program().boot((0,), version_index=1).ring().modify().close().teardown()
    out["version_4_0"] = Program().boot((0, 4), version_index=6).ring().tl_connect(accept=False)
    out["old_versions"] = (Program().boot((0,), version_index=10).ring().unload()
                           .contact(version_index=8).request_offers().ring().unload()
                           .contact(version_index=11).contact(raw_version=0x00070000))
    out["kexec"] = Program().boot((0, 1)).ring().contact().request_offers().ring(0, 1)
    out["reset_while_opening"] = (Program().offer(0, open_=HOLD).contact().request_offers()
                                  .ring().unload().answer(0, 0).settle())
    out["reset_while_closing"] = (Program().offer(0, close=HOLD).contact().request_offers()
                                  .ring().close().teardown().contact().request_offers()
                                  .answer(0, 1))
    out["held_gpadl_teardown"] = (Program().offer(0, gpadl=HOLD, teardown=HOLD).contact()
                                  .request_offers().gpadl().teardown().answer(0, 2)
                                  .answer(0, 3))
    out["refusing_device"] = (Program().offer(0, refuse_open=True, refuse_gpadl=True).contact()
                              .request_offers().ring().script(0).ring(0, 2))
    out["dropping_device"] = (Program().offer(0, open_=DROP, close=DROP, gpadl=DROP,
                                              teardown=DROP, modify=DROP)
                              .contact().request_offers().gpadl().script(0, open_=DROP)
                              .ring(0, 2).modify().settle())
    out["revoke_open"] = (Program().boot((0, 1)).ring().revoke(0).close().teardown().release()
                          .offer(0).ring(0, 3))
    out["revoke_opening"] = (Program().offer(0, open_=HOLD).contact().request_offers().ring()
                             .revoke(0, drop=True).release().settle())
    out["revoke_on_open"] = (Program().offer(2, revoke_on_open=True).contact().request_offers()
                             .ring().release().offer(2).settle())
    out["release_unrescinded"] = (Program().boot((0, 3)).release().release(1).settle().unload()
                                  .contact().request_offers())
    out["pause_resume"] = (Program().boot((0,)).pause().ring().modify_connection().resume()
                           .pause().pause().unload())
    out["pause_contact"] = Program().boot((0,)).pause().ring().contact().request_offers()
    out["modify_connection"] = (Program().boot((0, 1), monitor=1).ring().modify_connection(2)
                                .modify_connection(0).close().teardown().modify_connection(5))
    out["monitor_pages"] = (Program().offer(0).contact(monitor=2).contact(monitor=3)
                            .contact(monitor=4).contact(monitor=5).request_offers().ring())
    out["no_features"] = Program().boot((0, 2), features=0x7f).ring().close().teardown()
    out["hvsocket_accept"] = (Program().contact().request_offers().tl_connect(accept=True)
                              .ring().close().release().tl_connect(accept=False))
    out["backpressure"] = (Program().boot((0, 1, 2, 3)).unload().queue_limit(1).contact()
                           .request_offers().read().read().ring().read().read().settle())
    out["servicing_open"] = Program().boot((0, 1)).ring().service().modify().close().teardown()
    out["servicing_opening"] = (Program().offer(0, open_=HOLD).contact().request_offers().ring()
                                .service().settle())
    out["servicing_closing"] = (Program().offer(0, close=HOLD).contact().request_offers().ring()
                                .close().teardown().service().ring(0, 2).settle())
    out["servicing_gpadls"] = (Program().offer(0, gpadl=HOLD, modify=HOLD).contact()
                               .request_offers().gpadl().ring(0, 2).answer(0, 2).modify()
                               .gpadl(0, 3, mode=2).service().body().settle())
    out["servicing_paused"] = (Program().boot((0,)).pause().ring().queue_limit(1).service()
                               .resume().read().settle())
    out["servicing_twice"] = (Program().boot((0, 2, 3)).ring().service().revoke(2).service()
                              .release(1).settle())
    out["gpadl_pieces"] = (Program().offer(0).contact().request_offers()
                           .big_gpadl(0, 1, 40, mode=2).body().body().body()
                           .big_gpadl(0, 2, 20, mode=3).teardown(0, 2)
                           .gpadl(0, 3, shape=0x80).body(1))
    out["gpadl_broken"] = (Program().offer(0).contact().request_offers()
                           .gpadl(0, 1, shape=2).gpadl(0, 2, shape=4).gpadl(0, 2)
                           .gpadl(0, 3, ranges=2, pages=6).open(0, 1, connection=2)
                           .open(0, 3, connection=3).open(0, 3, tail_error=True))
    out["gpadl_limits"] = (Program(small_limits=True).offer(0).contact().request_offers()
                           .big_gpadl(0, 1, 30).gpadl(0, 2, 20).gpadl(0, 3, 20).gpadl(0, 4, 20)
                           .gpadl(0, 5).modify().ring(0, 6))
    out["modify_limits"] = (Program(small_limits=True).offer(0, modify=HOLD).contact()
                            .request_offers().ring().modify(0, 1).modify(0, 2).modify(0, 3)
                            .modify(0, 0xf1).answer(0, 4).settle())
    out["signals"] = (Program().offer(0, open_=HOLD).offer(2, throwing=True).contact()
                      .request_offers().ring().signal().answer(0, 0).signal().ring(1, 2)
                      .signal(1).interrupt(0).close().interrupt(0).signal())
    out["raw_messages"] = (Program().boot((0,)).raw(bytes([3, 0, 0, 0, 0, 0, 0, 0]))
                           .raw(bytes([14]) + bytes(39)).raw(bytes([5]) + bytes(7))
                           .raw(bytes(241 - 1)))
    out["subchannel_revoke"] = (Program().boot((0, 1)).ring().ring(1, 2).revoke(0)
                                .release().release(1).settle())
    return out


def main():
    corpus = os.path.join(HERE, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name in os.listdir(corpus):
        os.remove(os.path.join(corpus, name))
    for name, program in seeds().items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(bytes(program.data))


main()
