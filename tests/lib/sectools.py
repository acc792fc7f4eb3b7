#!/usr/bin/env python3
"""sectools.py -- what the security tests (tests/integration/9x_security_*.sh) send that curl cannot

Subcommands (each prints its result on stdout; traffic goes to 127.0.0.1 only):
  raw PORT                 send stdin's bytes as they are (\\r\\n included) on one connection, then
                           print everything the server sends until it closes (or 5 s pass)
  jwt HEADER PAYLOAD KEY   a JWT with the given JSON header and payload texts (sent as written,
                           so duplicate keys survive), HMAC-SHA256 over KEY (a file path with @,
                           else the text); alg "none" in HEADER gets an empty signature
  colliding N              N distinct 5-byte bucket names whose unkeyed FNV-1a 64 hashes share
                           their low 16 bits (one probe cluster in any table of up to 65536 slots
                           hashed that way), one per line
  random N                 N distinct random 5-byte names of the same alphabet, one per line
  ttfb PORT TOKEN FILE     POST FILE's bytes to /sync/stream; print the seconds from the start
                           of sending to the first byte of the response (from the start: a
                           clock read after sendall returns can come after ferry has answered
                           when this process is descheduled, which made a best-of-five 0.014 ms)
"""
import base64
import hashlib
import hmac
import random
import socket
import sys
import time

ALPHABET = [chr(c) for c in range(0x21, 0x7f) if chr(c) not in '"\\']


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def cmd_raw(port):
    data = sys.stdin.buffer.read()
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(data)
    s.settimeout(5)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except socket.timeout:
        out += b"\n<no close within 5 s>"
    s.close()
    sys.stdout.write(out.decode("latin-1"))


def cmd_jwt(header, payload, key):
    if key.startswith("@"):
        with open(key[1:], "rb") as f:
            secret = f.read()
    else:
        secret = key.encode()
    signing = b64url(header.encode()) + "." + b64url(payload.encode())
    if '"none"' in header:
        sig = ""
    else:
        sig = b64url(hmac.new(secret, signing.encode(), hashlib.sha256).digest())
    print(signing + "." + sig)


FNV_PRIME = 1099511628211
MASK = 0xFFFF


def cmd_colliding(n):
    # FNV-1a's low 16 bits depend only on the low 16 bits of its state, and one step
    # h -> (h ^ byte) * prime is invertible mod 2^16 (the prime is odd): so for every 2-byte
    # suffix the state the 3-byte prefix must reach is known, and a table of prefixes by state
    # gives every name that lands on the target (a meet in the middle).
    n = int(n)
    p = FNV_PRIME & MASK
    pinv = pow(p, -1, 1 << 16)
    by_state = {}
    codes = [ord(c) for c in ALPHABET]
    h0 = 1469598103934665603 & MASK
    for a in codes:
        ha = ((h0 ^ a) * p) & MASK
        for b in codes:
            hb = ((ha ^ b) * p) & MASK
            for c in codes:
                hc = ((hb ^ c) * p) & MASK
                by_state.setdefault(hc, []).append((a, b, c))
    target = 7
    out = []
    for d in codes:
        for e in codes:
            h4 = ((target * pinv) & MASK) ^ e
            h3 = ((h4 * pinv) & MASK) ^ d
            for a, b, c in by_state.get(h3, ()):
                out.append(bytes((a, b, c, d, e)).decode())
                if len(out) == n:
                    print("\n".join(out))
                    return
    sys.exit("only %d colliding names" % len(out))


def cmd_random(n):
    n = int(n)
    seen = set()
    rnd = random.Random(19)
    while len(seen) < n:
        seen.add("".join(rnd.choice(ALPHABET) for _ in range(5)))
    print("\n".join(sorted(seen)))


def cmd_ttfb(port, token, path):
    with open(path, "rb") as f:
        body = f.read()
    head = ("POST /sync/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (token, len(body)))
    s = socket.create_connection(("127.0.0.1", int(port)))
    t0 = time.monotonic()
    s.sendall(head.encode() + body)
    s.settimeout(60)
    first = s.recv(1)
    t1 = time.monotonic()
    s.close()
    if not first:
        sys.exit("no answer")
    print("%.6f" % (t1 - t0))


def main():
    cmds = {"raw": cmd_raw, "jwt": cmd_jwt, "colliding": cmd_colliding, "random": cmd_random,
            "ttfb": cmd_ttfb}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
