#!/usr/bin/env python3
"""abuse.py -- clients that misbehave on purpose, for the reliability tests (loopback only)

  abuse.py slowheaders HOST PORT CONNS DELAY_MS
      CONNS connections each send a request's headers one byte every DELAY_MS, never finishing.
      Prints "closed N of CONNS after S s" once the server closed them all (or after 120 s).
  abuse.py slowbody HOST PORT CONNS DELAY_MS TOKEN
      the same with complete headers (Content-Length 4096) and a body sent one byte at a time.
  abuse.py bigheader HOST PORT BYTES
      one request with a header of BYTES bytes; prints the status line the server answered (or
      "closed" when it closed without one).
  abuse.py keepalive HOST PORT N
      N requests (GET /probes/liveness) one after the other on one keep-alive connection;
      prints "ok K of N in S s".
  abuse.py slowreaders HOST PORT CONNS TOKEN SECONDS
      CONNS streams (POST /sync/stream) that send their request and then never read, for
      SECONDS; prints "held CONNS".
Addresses other than loopback are refused.
"""
import socket
import sys
import time


def conn(host, port):
    if not (host.startswith("127.") or host == "localhost"):
        sys.exit("abuse.py: loopback addresses only")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def wait_closed(socks, limit):
    """Seconds until the server closed every socket (reads until EOF or reset), or None."""
    t0 = time.monotonic()
    open_ = set(range(len(socks)))
    for s in socks:
        s.setblocking(False)
    while open_ and time.monotonic() - t0 < limit:
        for i in list(open_):
            try:
                d = socks[i].recv(65536)
                if not d:
                    open_.discard(i)
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(i)
        time.sleep(0.05)
    return len(socks) - len(open_), time.monotonic() - t0


def trickle(host, port, n, delay_ms, payloads):
    socks = [conn(host, port) for _ in range(n)]
    t0 = time.monotonic()
    closed = set()
    pos = 0
    longest = max(len(p) for p in payloads)
    while len(closed) < n and time.monotonic() - t0 < 120 and pos < longest:
        for i, s in enumerate(socks):
            if i in closed or pos >= len(payloads[i]):
                continue
            try:
                s.send(payloads[i][pos:pos + 1])
            except OSError:
                closed.add(i)
        pos += 1
        time.sleep(delay_ms / 1000.0)
    done, _ = wait_closed([s for i, s in enumerate(socks) if i not in closed], 1)
    print("closed %d of %d after %.1f s" % (len(closed) + done, n, time.monotonic() - t0))


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    cmd = a[0]
    if cmd == "slowheaders":
        host, port, n, delay = a[1], a[2], int(a[3]), int(a[4])
        hdr = ("POST /sync/stream HTTP/1.1\r\nHost: x\r\n" + "X-Slow: " + "a" * 4000 + "\r\n\r\n").encode()
        trickle(host, port, n, delay, [hdr] * n)
    elif cmd == "slowbody":
        host, port, n, delay, token = a[1], a[2], int(a[3]), int(a[4]), a[5]
        req = ("POST /api/write HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n" % token).encode()
        payloads = [req + b"{" + b" " * 4095] * n
        socks = [conn(host, port) for _ in range(n)]
        for s in socks:
            s.send(req)  # the headers at once, then the body byte by byte
        t0 = time.monotonic()
        closed = set()
        pos = len(req)
        while len(closed) < n and time.monotonic() - t0 < 120 and pos < len(payloads[0]):
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    s.send(payloads[i][pos:pos + 1])
                except OSError:
                    closed.add(i)
            pos += 1
            time.sleep(delay / 1000.0)
        done, _ = wait_closed([s for i, s in enumerate(socks) if i not in closed], 1)
        print("closed %d of %d after %.1f s" % (len(closed) + done, n, time.monotonic() - t0))
    elif cmd == "bigheader":
        host, port, size = a[1], a[2], int(a[3])
        s = conn(host, port)
        try:
            s.sendall(b"GET /probes/liveness HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * size + b"\r\n\r\n")
        except OSError:
            pass
        try:
            line = s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError:
            line = ""
        print(line or "closed")
    elif cmd == "keepalive":
        host, port, n = a[1], a[2], int(a[3])
        s = conn(host, port)
        f = s.makefile("rb")
        req = b"GET /probes/liveness HTTP/1.1\r\nHost: x\r\n\r\n"
        ok = 0
        t0 = time.monotonic()
        batch = 100  # pipelined 100 at a time
        sent = 0
        while sent < n:
            k = min(batch, n - sent)
            s.sendall(req * k)
            sent += k
            for _ in range(k):
                status = f.readline()
                length = 0
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b""):
                        break
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                body = f.read(length)
                if status.startswith(b"HTTP/1.1 200") and b"alive" in body:
                    ok += 1
        print("ok %d of %d in %.1f s" % (ok, n, time.monotonic() - t0))
    elif cmd == "slowreaders":
        host, port, n, token, secs = a[1], a[2], int(a[3]), a[4], float(a[5])
        body = b'{"buckets":[],"client_id":"slow"}'
        socks = []
        for _ in range(n):
            s = conn(host, port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"POST /sync/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Token " + token.encode() +
                      b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                      b"\r\n\r\n" + body)
            socks.append(s)
        print("held %d" % len(socks), flush=True)
        time.sleep(secs)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
