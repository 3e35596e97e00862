#!/usr/bin/env python3
"""tls_client.py - Python ssl clients that tests/test_tls.c runs against a
goev TLS server on 127.0.0.1:PORT.  CERTS is the directory tests/tls_certs.sh
made (ca.pem, client.pem, ...).

  tls_client.py pipeline PORT CERTS N     N GETs in one write, answers in order
  tls_client.py upload   PORT CERTS SIZE  POST SIZE bytes, the echo checked by hash
  tls_client.py seq      PORT CERTS N     N connections one after the other
  tls_client.py sni      PORT CERTS NAME...  the peer's CN for each SNI name
  tls_client.py whoami   PORT CERTS [CERTNAME]  GET /whoami with a client cert
  tls_client.py nocert   PORT CERTS       a server that wants a client cert refuses
  tls_client.py shut     PORT CERTS       the server's close_notify, then half-close

Prints what it found on stdout; exits 0 when every check held, 1 otherwise
(with the reason on stderr).  Never waits more than 10 s for one read.
"""
import hashlib
import os
import select
import socket
import ssl
import sys


def fail(msg):
    sys.stderr.write("tls_client.py: %s\n" % msg)
    sys.exit(1)


def context(certs, cert=None, check_hostname=True):
    c = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    c.check_hostname = check_hostname
    if cert:
        c.load_cert_chain(os.path.join(certs, cert + ".pem"), os.path.join(certs, cert + ".key"))
    return c


def connect(port, ctx, name="localhost"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    # Ragged EOFs raise: a clean close (close_notify) is recv() == b"".
    return ctx.wrap_socket(s, server_hostname=name, suppress_ragged_eofs=False)


def read_response(t, buf):
    """One HTTP answer from t (buf: bytes already read).  (body, rest)."""
    while b"\r\n\r\n" not in buf:
        d = t.recv(65536)
        if not d:
            fail("EOF inside an answer's head")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        fail("bad status line %r" % lines[0])
    clen = None
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        if k.strip().lower() == b"content-length":
            clen = int(v)
    if clen is None:
        fail("no Content-Length")
    while len(rest) < clen:
        d = t.recv(262144)
        if not d:
            fail("EOF inside a body (%d of %d)" % (len(rest), clen))
        rest += d
    return rest[:clen], rest[clen:]


def pipeline(port, certs, n):
    t = connect(port, context(certs))
    reqs = b"".join(b"GET /req/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(n))
    t.sendall(reqs)
    buf = b""
    for i in range(n):
        body, buf = read_response(t, buf)
        if body != b"path=/req/%d\n" % i:
            fail("answer %d out of order or wrong: %r" % (i, body[:80]))
    if buf:
        fail("%d bytes more than %d answers" % (len(buf), n))
    t.close()
    print("ok %d" % n)


def upload(port, certs, size):
    data = bytes((i * 7 + (i >> 13)) & 0xFF for i in range(65536)) * (size // 65536 + 1)
    data = data[:size]
    t = connect(port, context(certs))
    msg = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % size + data
    t.setblocking(False)
    sent, got = 0, bytearray()
    while True:
        progress = False
        if sent < len(msg):
            try:
                sent += t.send(msg[sent:sent + 65536])
                progress = True
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        try:
            d = t.recv(262144)
            if not d:
                fail("EOF after %d bytes of the answer" % len(got))
            got += d
            progress = True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        if b"\r\n\r\n" in got:
            head, _, body = bytes(got).partition(b"\r\n\r\n")
            if len(body) >= size:
                break
        if not progress:
            r, w, _ = select.select([t], [t] if sent < len(msg) else [], [], 10)
            if not r and not w:
                fail("stuck: sent %d of %d, got %d" % (sent, len(msg), len(got)))
    if b"Content-Length: %d" % size not in head:
        fail("bad head %r" % head)
    if len(body) != size or hashlib.sha256(body).digest() != hashlib.sha256(data).digest():
        fail("echo differs (%d bytes back)" % len(body))
    t.setblocking(True)
    t.close()
    print("ok %s" % hashlib.sha256(body).hexdigest()[:16])


def seq(port, certs, n):
    ctx = context(certs)
    for i in range(n):
        t = connect(port, ctx)
        t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        body, rest = read_response(t, b"")
        if body != b"hello over tls\n" or rest:
            fail("connection %d: %r %r" % (i, body, rest))
        if t.recv(100) != b"":   # the server's close_notify (a ragged EOF raises)
            fail("connection %d: bytes after the answer" % i)
        t.close()
    print("ok %d" % n)


def cn_of(cert):
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return "?"


def sni(port, certs, names):
    ctx = context(certs, check_hostname=False)
    out = []
    for name in names:
        t = connect(port, ctx, name)
        cn = cn_of(t.getpeercert())
        t.sendall(b"GET /sni HTTP/1.1\r\nHost: x\r\n\r\n")
        body, _ = read_response(t, b"")
        t.close()
        out.append("%s=%s/%s" % (name, cn, body.decode().strip()))
    print(" ".join(out))


def whoami(port, certs, cert):
    t = connect(port, context(certs, cert))
    t.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    body, _ = read_response(t, b"")
    t.close()
    print(body.decode().strip())


def nocert(port, certs):
    try:
        t = connect(port, context(certs))
        # TLS 1.3: the client's side of the handshake is over before the
        # server has looked at the (missing) certificate: its alert comes
        # with the first read.
        t.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        d = t.recv(1000)
    except (ssl.SSLError, OSError) as e:
        print("refused: %s" % (getattr(e, "reason", None) or e))
        return
    fail("served without a client certificate: %r" % d)


def shut(port, certs):
    t = connect(port, context(certs))
    t.sendall(b"ping\n")
    if t.recv(100) != b"ping\n":
        fail("no echo")
    t.sendall(b"shut\n")         # the server echoes it and shuts down its side
    got = b""
    while True:
        d = t.recv(100)          # SSLEOFError here: EOF without close_notify
        if not d:
            break
        got += d
    if got != b"shut\n":
        fail("before close_notify: %r" % got)
    print("clean close_notify")
    t.sendall(b"after\n")        # our side is still open: the server reads on
    t.unwrap()                   # our close_notify (theirs came already)
    print("unwrapped")


def main():
    if len(sys.argv) < 4:
        fail("usage: tls_client.py CMD PORT CERTS [ARGS]")
    cmd, port, certs, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    if cmd == "pipeline":
        pipeline(port, certs, int(args[0]))
    elif cmd == "upload":
        upload(port, certs, int(args[0]))
    elif cmd == "seq":
        seq(port, certs, int(args[0]))
    elif cmd == "sni":
        sni(port, certs, args)
    elif cmd == "whoami":
        whoami(port, certs, args[0] if args else None)
    elif cmd == "nocert":
        nocert(port, certs)
    elif cmd == "shut":
        shut(port, certs)
    else:
        fail("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
