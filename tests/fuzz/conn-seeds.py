#!/usr/bin/env python3
"""conn-seeds.py - write the hand-made seeds of the conn target into conn/.

An input is two header bytes and a program (see fuzz_conn.c):
  hdr0: bit 0 on_eof, bit 1 on_drained, bit 2 TCP (else unix socketpair),
        bit 3 the small reactor (512-byte read buffers, 8 KiB kept tail),
        bits 4-5 goev's SO_SNDBUF (default, 2048, 8192, 65536),
        bits 6-7 on_open: nothing, write 100 bytes, pause, fail.
  hdr1: bits 0-1 the peer's SO_SNDBUF, bits 2-5 the first read mode.
An operation byte is (connection << 7) | op; connection 1 starts with OPEN.
Run it from tests/fuzz/ to regenerate them."""
import os
import struct

(PASS, PEER_WRITE, PEER_READ, PEER_SHUT_WR, PEER_SHUT_RD, PEER_CLOSE, PEER_RESET, WRITE,
 PAUSE, RESUME, SHUTDOWN, CLOSE, ABORT, TIMER, CANCEL, READ_MODE, EOF_MODE, TIMEOUT_MODE,
 DRAINED_MODE, BIG_WRITE, PASSES, OPEN, SENDFILE) = range(23)
C1 = 0x80   # or-ed into an operation: on connection 1
RM_ALL, RM_SOME, RM_NONE, RM_ERROR, RM_ECHO, RM_PAUSE, RM_CLOSE, RM_OVER, RM_ABORT, RM_SHUT = range(10)
EM_KEEP, EM_ERROR, EM_CLOSE, EM_WRITE_SHUT = range(4)
TM_NOTHING, TM_ERROR, TM_WRITE, TM_CLOSE, TM_REARM, TM_PAUSE, TM_RESUME = range(7)
DM_NOTHING, DM_RESUME, DM_WRITE, DM_ERROR = range(4)

EOF_CB, DRAINED_CB, TCP, SMALL = 1, 2, 4, 8


def sndbuf(i):
    return i << 4


def on_open(i):
    return i << 6


def u16(n):
    return list(struct.pack('<H', n))


def pw(n):
    return [PEER_WRITE] + u16(n - 1)


def pr(n):
    return [PEER_READ] + u16(n - 1)


def w(n):
    return [WRITE] + u16(n - 1)


def timer(i, delay, periodic):
    return [TIMER, i | delay << 2 | (0x30 if periodic else 0)]


def rm(mode, arg=0):
    return [READ_MODE, mode, arg]


seeds = {
    'echo': (EOF_CB | DRAINED_CB, 0,
             rm(RM_ECHO, 200) + pw(100) + [PASS] + pw(500) + [PASS] + pr(4096) + [CLOSE, PASS]),
    'half-close': (EOF_CB, 0,
                   pw(300) + [PEER_SHUT_WR, PASS] + w(300) + [SHUTDOWN, PASS] + pr(1000) +
                   [PASS]),
    'eof-no-callback': (0, 0, pw(1000) + [PEER_SHUT_WR, PASS, PASS]),
    'eof-write-shut': (EOF_CB, 0, [EOF_MODE, EM_WRITE_SHUT] + pw(10) + [PEER_SHUT_WR, PASSES, 3]),
    'pause-resume': (EOF_CB, 0, [PAUSE] + pw(5000) + [PASS, RESUME, PASS] + pw(10) + [PASS]),
    'kept-tail': (EOF_CB, RM_NONE << 2,
                  pw(1000) + [PASS] + pw(2000) + [PASS] + rm(RM_SOME, 50) + pw(1) + [PASS] +
                  rm(RM_ALL) + [PAUSE, RESUME, PASS]),
    'backpressure': (EOF_CB | DRAINED_CB | sndbuf(1), 1,
                     [DRAINED_MODE, DM_WRITE] + [BIG_WRITE] * 5 + [PASS] + pr(8000) +
                     [PASS] + pr(65535) + [PASSES, 4]),
    'pause-on-pending': (EOF_CB | DRAINED_CB | sndbuf(1), 0,
                         [DRAINED_MODE, DM_RESUME, BIG_WRITE, BIG_WRITE, PAUSE, PASS] +
                         pw(100) + [PASS] + pr(65535) + [PASS, PASS]),
    'linger-close': (EOF_CB | sndbuf(1), 0,
                     [BIG_WRITE, BIG_WRITE, CLOSE, PASS] + pw(10) + pr(4000) + [PASS] +
                     w(10) + [PASSES, 3]),
    'abort': (EOF_CB | sndbuf(1), 0, [BIG_WRITE, PASS, BIG_WRITE, ABORT, PASS] + pr(100)),
    'abort-in-read': (EOF_CB, RM_ABORT << 2, pw(10) + [PASS, PASS]),
    'close-in-read': (EOF_CB, RM_CLOSE << 2, w(100) + pw(10) + [PASS, PASS]),
    'read-error': (EOF_CB, RM_ERROR << 2, pw(10) + [PASS, PASS]),
    'read-overconsume': (0, RM_OVER << 2, pw(10) + [PASS, PASS]),
    'shut-in-read': (EOF_CB, RM_SHUT << 2, w(50) + pw(10) + [PASS] + w(10) + [PASS]),
    'open-write': (EOF_CB | on_open(1), 0, [PASS] + pr(200) + [PASS]),
    'open-pause': (EOF_CB | on_open(2), 0, pw(100) + [PASS, RESUME, PASS]),
    'open-fail': (EOF_CB | on_open(3), 0, [PASS] + w(10) + [PASS]),
    'peer-close': (EOF_CB, 0, w(100) + [PEER_CLOSE, PASS] + w(100) + [PASS]),
    'peer-shut-rd': (EOF_CB, 0, w(100) + [PEER_SHUT_RD, PASS] + w(100) + [PASS]),
    'tcp-echo': (EOF_CB | TCP, RM_ECHO << 2,
                 pw(3000) + [PASS] + pr(5000) + [PEER_SHUT_WR, PASS, PASS]),
    'tcp-reset': (EOF_CB | TCP, 0, w(1000) + pw(100) + [PEER_RESET, PASS] + w(10) + [PASS]),
    'tcp-backpressure': (EOF_CB | DRAINED_CB | TCP | sndbuf(1), 1,
                         [BIG_WRITE] * 6 + [PASS] + pr(65535) + [PASS, PEER_SHUT_WR, PASS]),
    'timers': (EOF_CB, 0,
               timer(0, 0, False) + timer(1, 1, True) + timer(2, 2, False) + [PASSES, 7] +
               [CANCEL, 1, PASS] + [TIMEOUT_MODE, TM_CLOSE] + timer(0, 0, False) + [PASSES, 3]),
    'timer-rearm': (EOF_CB, 0,
                    [TIMEOUT_MODE, TM_REARM] + timer(0, 0, False) + [PASSES, 5] +
                    [TIMEOUT_MODE, TM_ERROR, PASSES, 2]),
    'timer-pause-resume': (EOF_CB, 0,
                           [TIMEOUT_MODE, TM_PAUSE] + timer(0, 0, False) + [PASS] + pw(100) +
                           [PASS, TIMEOUT_MODE, TM_RESUME] + timer(0, 0, False) + [PASSES, 2]),
    'max-input': (EOF_CB | SMALL, RM_NONE << 2, pw(8192) + [PASS] + pw(8192) + [PASSES, 3]),
    'small-bufs': (EOF_CB | SMALL, 0, pw(8192) * 4 + [PASS] + pw(8192) * 4 + [PASSES, 3]),
    'small-bufs-paused': (EOF_CB | SMALL, 0,
                          pw(8192) + [PASS, PAUSE] + pw(8192) + [PASS, RESUME, PASS]),
    'eof-error': (EOF_CB, 0, [EOF_MODE, EM_ERROR] + w(100) + [PEER_SHUT_WR, PASS, PASS]),
    'drained-error': (EOF_CB | DRAINED_CB | sndbuf(1), 0,
                      [DRAINED_MODE, DM_ERROR, BIG_WRITE, BIG_WRITE, PASS] + pr(65535) +
                      [PASS, PASS]),
    'two-conns': (EOF_CB | DRAINED_CB, 0,
                  [OPEN | C1] + pw(100) + [PEER_WRITE | C1] + u16(200) + [PASS] +
                  [WRITE | C1] + u16(300) + w(100) + [PASS, PEER_READ | C1] + u16(4000) +
                  [CLOSE | C1, PASS]),
    'reopen-slot': (EOF_CB | sndbuf(1), 0,
                    [OPEN | C1] + w(100) + [PAUSE | C1, WRITE | C1] + u16(100) +
                    [ABORT | C1, OPEN | C1, PASS, WRITE | C1] + u16(50) + [PASS] + pr(200) +
                    [PEER_READ | C1] + u16(200) + [PASS]),
    'reopen-after-close': (EOF_CB, 0,
                           w(10) + [CLOSE, PASS, PASS, OPEN] + pw(10) + [PASS] + w(20) +
                           [PASS] + pr(100)),
    'sendfile': (EOF_CB | DRAINED_CB | sndbuf(1), 0,
                 w(100) + [SENDFILE] + u16(20000) + w(50) + [PASS] + pr(8000) + [PASS] +
                 [SENDFILE] + u16(3000) + [CLOSE, PASS] + pr(65535) + [PASSES, 2]),
    'sendfile-abort': (EOF_CB | sndbuf(1), 0,
                       [SENDFILE] + u16(30000) + [PASS, ABORT, PASS]),
    'sendfile-tcp-peer-close': (EOF_CB | TCP | sndbuf(1), 0,
                                [SENDFILE] + u16(30000) + [PASS, PEER_CLOSE, PASS] +
                                [SENDFILE] + u16(100) + [PASS]),
    'open-in-use': (EOF_CB, 0, [OPEN, CLOSE, OPEN, PASS, OPEN] + w(5) + [PASS]),
}

os.makedirs('conn', exist_ok=True)
for name, (h0, h1, prog) in seeds.items():
    with open(os.path.join('conn', name), 'wb') as f:
        f.write(bytes([h0, h1] + prog))
