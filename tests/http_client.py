#!/usr/bin/env python3
"""http_client.py - raw-socket checks of the example HTTP servers
(examples/techempower, examples/async_http), run by tests/test_http_servers.c.

    python3 tests/http_client.py PORT CHECK

CHECK is one of:
  pipeline   1000 requests (GET/HEAD/POST, /plaintext, /json, unknown paths)
             in one write, then one with "Connection: close": every answer
             complete and in request order, then EOF.  Then 300 of them
             followed by a half-close: all answered, then EOF.
  malformed  requests the parser refuses (400, 413, 431, 501), alone and
             after good ones: the answer(s), then EOF; and nothing answered
             after a request that ends the connection.
  bytewise   requests sent one byte per write: the same answers.

Exit status 0 and one line "ok ..." on stdout on success; 1 and the reason
on stderr otherwise.  Only the standard library is used.
"""
import random
import socket
import sys
import time
from email.utils import parsedate_to_datetime

TIMEOUT = 10.0
PLAIN = b"Hello, World!"
JSON = b'{"message":"Hello, World!"}'
REASON = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          413: "Content Too Large", 431: "Request Header Fields Too Large",
          501: "Not Implemented"}


class Fail(Exception):
    pass


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Reader:
    """Buffered reads of HTTP/1.1 answers from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Fail("timed out waiting for the server (%d bytes buffered: %r)"
                       % (len(self.buf), self.buf[:200]))
        self.buf += chunk
        return len(chunk)

    def answer(self, head_only):
        """One answer: (status, reason, headers (lower-case names, in
        order), body)."""
        while b"\r\n\r\n" not in self.buf:
            if not self.fill():
                raise Fail("EOF inside an answer's head: %r" % self.buf[:200])
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) != 3 or parts[0] != "HTTP/1.1":
            raise Fail("bad status line %r" % lines[0])
        headers = []
        for ln in lines[1:]:
            name, sep, value = ln.partition(":")
            if not sep:
                raise Fail("bad header line %r" % ln)
            headers.append((name.lower(), value.strip()))
        hd = dict(headers)
        if len(hd) != len(headers):
            raise Fail("repeated header in %r" % head)
        if "content-length" not in hd:
            raise Fail("no Content-Length in %r" % head)
        n = 0 if head_only else int(hd["content-length"])
        while len(self.buf) < n:
            if not self.fill():
                raise Fail("EOF inside a body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(parts[1]), parts[2], hd, body

    def expect_eof(self):
        if self.buf:
            raise Fail("bytes after the last answer: %r" % self.buf[:200])
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Fail("no EOF after the last answer")
        except ConnectionResetError:
            raise Fail("reset instead of EOF after the last answer")
        if chunk:
            raise Fail("bytes after the last answer: %r" % chunk[:200])


def expected(method, path, version="1.1", conn=None):
    """What the servers answer: (status, content type, body, Connection
    header or None, head_only)."""
    if path == "/plaintext":
        status, ctype, body = 200, "text/plain", PLAIN
    elif path == "/json":
        status, ctype, body = 200, "application/json", JSON
    else:
        status, ctype, body = 404, "text/plain", b"Not Found"
    if status == 200 and method not in ("GET", "HEAD"):
        status, ctype, body = 405, "text/plain", b"Method Not Allowed"
    tokens = [t.strip().lower() for t in (conn or "").split(",")]
    keep = "close" not in tokens and (version == "1.1" or "keep-alive" in tokens)
    hdr = None if keep and version == "1.1" else ("keep-alive" if keep else "close")
    return status, ctype, body, hdr, method == "HEAD"


def check_answer(got, want, what):
    status, reason, hd, body = got
    wstatus, wctype, wbody, wconn, head_only = want
    if status != wstatus or reason != REASON[wstatus]:
        raise Fail("%s: status %d %s, want %d %s" % (what, status, reason, wstatus,
                                                     REASON[wstatus]))
    names = {"server", "content-type", "content-length", "date"} | ({"connection"} if wconn else set())
    if set(hd) != names:
        raise Fail("%s: headers %s, want %s" % (what, sorted(hd), sorted(names)))
    if hd["server"] != "goev" or hd["content-type"] != wctype:
        raise Fail("%s: Server %r, Content-Type %r" % (what, hd["server"], hd["content-type"]))
    if int(hd["content-length"]) != len(wbody):
        raise Fail("%s: Content-Length %s, want %d" % (what, hd["content-length"], len(wbody)))
    if wconn and hd["connection"].lower() != wconn:
        raise Fail("%s: Connection %r, want %r" % (what, hd["connection"], wconn))
    try:
        age = abs(time.time() - parsedate_to_datetime(hd["date"]).timestamp())
    except (TypeError, ValueError):
        raise Fail("%s: bad Date %r" % (what, hd["date"]))
    if not hd["date"].endswith(" GMT") or age > 60:
        raise Fail("%s: Date %r is not now" % (what, hd["date"]))
    if body != (b"" if head_only else wbody):
        raise Fail("%s: body %r, want %r" % (what, body, wbody))


def request(method, path, version="1.1", conn=None, body=b""):
    r = "%s %s HTTP/%s\r\nHost: 127.0.0.1\r\n" % (method, path, version)
    if conn:
        r += "Connection: %s\r\n" % conn
    if body:
        r += "Content-Length: %d\r\n" % len(body)
    return (r + "\r\n").encode() + body


def check_pipeline(port):
    rng = random.Random(20240601)
    reqs, wants = [], []
    for i in range(1000):
        k = rng.randrange(8)
        if k < 3:
            m, p = "GET", "/plaintext"
        elif k < 5:
            m, p = "GET", "/json"
        elif k == 5:
            m, p = "GET", "/nope/%d" % i
        elif k == 6:
            m, p = "HEAD", rng.choice(["/plaintext", "/json", "/missing"])
        else:
            m, p = "POST", rng.choice(["/plaintext", "/json", "/x"])
        # A body (skipped by the server) on some POSTs, a query on some GETs.
        body = b"payload-%d" % i if m == "POST" and i % 2 else b""
        target = p + ("?i=%d" % i if m == "GET" and i % 3 == 0 else "")
        reqs.append(request(m, target, body=body))
        wants.append(expected(m, p))
    reqs.append(request("GET", "/json", conn="close"))
    wants.append(expected("GET", "/json", conn="close"))
    s = connect(port)
    s.sendall(b"".join(reqs))          # one write
    rd = Reader(s)
    for i, w in enumerate(wants):
        check_answer(rd.answer(w[4]), w, "answer %d" % i)
    rd.expect_eof()
    s.close()

    # The same without "Connection: close", ended by a half-close instead:
    # the server must answer everything before it closes too.
    s = connect(port)
    s.sendall(b"".join(reqs[:300]))
    s.shutdown(socket.SHUT_WR)
    rd = Reader(s)
    for i, w in enumerate(wants[:300]):
        check_answer(rd.answer(w[4]), w, "half-closed: answer %d" % i)
    rd.expect_eof()
    s.close()
    return "%d pipelined answers in order, then EOF; 300 before a half-close" % len(wants)


def check_malformed(port):
    ok = request("GET", "/plaintext")
    cases = [
        ("no method", b"BAD\r\n\r\n", [], 400),
        ("bad version", b"GET /json HTTP/9.9\r\n\r\n", [], 400),
        ("space before colon", b"GET /json HTTP/1.1\r\nHost : x\r\n\r\n", [], 400),
        ("bad byte after a good request", ok + b"GET /j\x01son HTTP/1.1\r\n\r\n",
         [expected("GET", "/plaintext")], 400),
        ("two good, then garbage", ok + request("HEAD", "/json") + b"\x00\r\n\r\n",
         [expected("GET", "/plaintext"), expected("HEAD", "/json")], 400),
        ("Transfer-Encoding", b"POST /plaintext HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
         [], 501),
        ("Content-Length too big",
         b"POST /plaintext HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", [], 413),
        # Exactly the head limit (8192) of an unfinished head: the server
        # has read everything sent when it answers, so its close is a FIN.
        ("head too long", b"GET /plaintext HTTP/1.1\r\nX: " + b"a" * (8192 - 28), [], 431),
        # Not malformed, but the same rule: nothing after the request that
        # ends the connection is answered.
        ("requests after Connection: close",
         request("GET", "/json", conn="close") + ok + request("GET", "/json"),
         [expected("GET", "/json", conn="close")], None),
        ("requests after an HTTP/1.0 request", request("GET", "/plaintext", "1.0") + ok,
         [expected("GET", "/plaintext", "1.0")], None),
    ]
    for name, data, before, status in cases:
        s = connect(port)
        s.sendall(data)
        rd = Reader(s)
        for i, w in enumerate(before):
            check_answer(rd.answer(w[4]), w, "%s: answer %d" % (name, i))
        if status:
            check_answer(rd.answer(False), (status, "text/plain", REASON[status].encode(),
                                            "close", False), name)
        rd.expect_eof()
        s.close()
    return "%d malformed or final requests answered, then EOF" % len(cases)


def check_bytewise(port):
    plan = [
        (request("GET", "/plaintext"), expected("GET", "/plaintext")),
        (request("HEAD", "/json"), expected("HEAD", "/json")),
        (b"\r\n" + request("GET", "/nope"), expected("GET", "/nope")),
        (request("POST", "/json", body=b"abc"), expected("POST", "/json")),
        (request("GET", "/json", version="1.0", conn="keep-alive"),
         expected("GET", "/json", "1.0", "keep-alive")),
        (request("GET", "/plaintext", conn="close"), expected("GET", "/plaintext", conn="close")),
    ]
    s = connect(port)
    data = b"".join(r for r, _ in plan)
    for i in range(len(data)):
        s.send(data[i:i + 1])
        time.sleep(0.0005)             # one byte per segment, most reads see one
    rd = Reader(s)
    for i, (_, w) in enumerate(plan):
        check_answer(rd.answer(w[4]), w, "answer %d" % i)
    rd.expect_eof()
    s.close()
    return "%d requests sent in %d one-byte writes answered, then EOF" % (len(plan), len(data))


CHECKS = {"pipeline": check_pipeline, "malformed": check_malformed, "bytewise": check_bytewise}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in CHECKS:
        sys.stderr.write("usage: http_client.py PORT %s\n" % "|".join(CHECKS))
        return 2
    try:
        print("ok", sys.argv[2] + ":", CHECKS[sys.argv[2]](int(sys.argv[1])))
    except (Fail, OSError) as e:
        sys.stderr.write("%s: %s\n" % (sys.argv[2], e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
