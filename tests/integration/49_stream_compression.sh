#!/usr/bin/env bash
# 49_stream_compression.sh -- POST /sync/stream with Content-Encoding over raw HTTP: zstd and gzip
# streams decode to exactly the identity stream's lines; nothing waits in the compressor (after
# every HTTP chunk the decoded output ends at a line boundary, for the first sync and for a live
# change); big batches on the worker, small ones on the loop thread, hang-ups and a shutdown
# with a batch on the worker; negotiation (zstd first, then gzip, q=0, no header); headers (X-Accel-Buffering,
# Vary, CORS); metrics before and after; http.compression.enabled: false
source "$(dirname "$0")/../lib/testlib.sh"

PY=python3
$PY -c 'import zstandard' 2>/dev/null || PY=/usr/bin/python3 # Debian's python3-zstandard

db=$(new_db compress49)
psql -q "$db" <<'SQL'
CREATE TABLE items (id text PRIMARY KEY, owner text, body text);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO items SELECT 'i' || i, 'u' || (i % 3), repeat('body of item ' || i || ' ', 3)
  FROM generate_series(1, 3000) i;
SQL
cat >"$T_TMP/sync-rules.yaml" <<'YAML'
bucket_definitions:
  everything:
    data:
      - SELECT id, owner, body FROM items
YAML
port=$(free_port)
replication_config "$T_TMP/ferry.yaml" "$port" "$db"
start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { fail "ready" "not ready"; exit 1; }
TOKEN=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1)

# streams.py PORT TOKEN DB OUTDIR: three streams at once (identity, zstd, gzip) read over a raw
# socket, chunk by chunk; after the first sync of all three, a row is inserted with psql and each
# reads on to the next checkpoint_complete. Writes per encoding: headers, lines, and "chunks=N
# bad=M" where bad counts chunks after which the decoded text did not end at a line boundary.
cat >"$T_TMP/streams.py" <<'PY'
import json, os, socket, subprocess, sys, time, zlib
import zstandard
port, token, db, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

class Stream:
    def __init__(self, name, accept):
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        body = b'{"buckets":[],"client_id":"c-%s"}' % name.encode()
        head = ("POST /sync/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Token %s\r\n"
                "Content-Type: application/json\r\nOrigin: http://app.test\r\n"
                "Content-Length: %d\r\n" % (token, len(body)))
        if accept is not None:
            head += "Accept-Encoding: %s\r\n" % accept
        self.sock.sendall(head.encode() + b"\r\n" + body)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        h, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.headers = h.decode().lower()
        enc = [l.split(":", 1)[1].strip() for l in self.headers.split("\r\n") if l.startswith("content-encoding:")]
        self.enc = enc[0] if enc else "identity"
        self.zd = None
        self.gz = zlib.decompressobj(16 + 15) if self.enc == "gzip" else None
        self.text = b""
        self.chunks = self.bad = 0
        self.done = 0  # checkpoint_complete lines seen

    def decode(self, data):
        if self.enc == "gzip":
            return self.gz.decompress(data)
        if self.enc == "zstd":  # one frame per batch: start a new decoder after each frame
            out = b""
            while data:
                if self.zd is None:
                    self.zd = zstandard.ZstdDecompressor().decompressobj()
                out += self.zd.decompress(data)
                data = self.zd.unused_data if self.zd.eof else b""
                if self.zd.eof:
                    self.zd = None
            return out
        return data

    def read_chunk(self):  # one HTTP chunk (chunked transfer encoding)
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        size, rest = self.buf.split(b"\r\n", 1)
        n = int(size.split(b";")[0], 16)
        while len(rest) < n + 2:
            rest += self.sock.recv(65536)
        data, self.buf = rest[:n], rest[n + 2:]
        if n == 0:
            raise EOFError
        self.chunks += 1
        self.text += self.decode(data)
        if not self.text.endswith(b"\n"):
            self.bad += 1

    def until_complete(self, count):
        t0 = time.monotonic()
        while self.text.count(b'"checkpoint_complete"') < count and time.monotonic() - t0 < 60:
            self.read_chunk()

streams = [Stream("identity", None), Stream("zstd", "gzip, deflate, br, zstd"), Stream("gzip", "gzip, deflate")]
for s in streams:
    s.until_complete(1)
subprocess.run(["psql", "-q", db, "-c", "INSERT INTO items VALUES ('live-1', 'u1', 'a live change')"], check=True)
for s in streams:
    s.until_complete(2)
for s in streams:
    lines = [l for l in s.text.decode().split("\n") if l and "token_expires_in" not in l]
    with open(os.path.join(out, s.name + ".lines"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, s.name + ".headers"), "w") as f:
        f.write(s.headers + "\n")
    with open(os.path.join(out, s.name + ".chunks"), "w") as f:
        f.write("encoding=%s chunks=%d bad=%d\n" % (s.enc, s.chunks, s.bad))
PY
t_in_ns $PY "$T_TMP/streams.py" "$port" "$TOKEN" "$db" "$T_TMP" || fail "the three streams were read" "streams.py failed"

expect_eq "no Accept-Encoding: identity" "encoding=identity" "$(cut -d' ' -f1 "$T_TMP/identity.chunks")"
expect_eq "zstd is preferred when offered with gzip" "encoding=zstd" "$(cut -d' ' -f1 "$T_TMP/zstd.chunks")"
expect_eq "gzip without zstd" "encoding=gzip" "$(cut -d' ' -f1 "$T_TMP/gzip.chunks")"
n_id=$(wc -l <"$T_TMP/identity.lines")
[ "$n_id" -ge 6 ] && pass "the identity stream has the first sync and the live change ($n_id lines)" ||
  fail "identity lines" "$n_id"
grep -q '"live-1"' "$T_TMP/identity.lines" && pass "the live change is in it" || fail "live change" "missing"
expect_eq "zstd decodes to exactly the identity stream's lines" "" "$(diff "$T_TMP/identity.lines" "$T_TMP/zstd.lines" | head -3)"
expect_eq "gzip decodes to exactly the identity stream's lines" "" "$(diff "$T_TMP/identity.lines" "$T_TMP/gzip.lines" | head -3)"
for e in zstd gzip; do
  c=$(cat "$T_TMP/$e.chunks")
  expect_match "$e: after every HTTP chunk the decoded text ends at a line boundary (live change included)" \
    "^encoding=$e chunks=[2-9][0-9]* bad=0$" "$c"
done
h=$(cat "$T_TMP/zstd.headers")
expect_match "the stream says X-Accel-Buffering: no" $'\r\nx-accel-buffering: no' "$h"
expect_match "and Vary: Accept-Encoding" $'\r\nvary: accept-encoding' "$h"
expect_match "and carries the CORS header" $'\r\naccess-control-allow-origin: \\*' "$h"
expect_match "identity has no Content-Encoding" '^[^C]*$' "$(grep -i '^content-encoding' "$T_TMP/identity.headers" | tr -d '\r')"

m=$(curl -s "http://127.0.0.1:$port/metrics")
zin=$(echo "$m" | sed -n 's/^ferry_stream_encoded_bytes_in_total{encoding="zstd"} //p')
zout=$(echo "$m" | sed -n 's/^ferry_stream_encoded_bytes_out_total{encoding="zstd"} //p')
gin=$(echo "$m" | sed -n 's/^ferry_stream_encoded_bytes_in_total{encoding="gzip"} //p')
gout=$(echo "$m" | sed -n 's/^ferry_stream_encoded_bytes_out_total{encoding="gzip"} //p')
idb=$(wc -c <"$T_TMP/identity.lines")
[ "${zin:-0}" -ge "$idb" ] && [ "${zout:-0}" -gt 0 ] && [ "$zout" -lt "$((zin / 3))" ] &&
  pass "metrics: zstd bytes before ($zin) and after ($zout) compression" || fail "zstd metrics" "in=$zin out=$zout lines=$idb"
[ "${gin:-0}" -ge "$idb" ] && [ "${gout:-0}" -gt 0 ] && [ "$gout" -lt "$((gin / 3))" ] &&
  pass "metrics: gzip bytes before ($gin) and after ($gout) compression" || fail "gzip metrics" "in=$gin out=$gout"
# big batches (the first sync) are compressed on the loop thread's worker, small ones (the live
# change) on the loop thread itself; the decoded equality above covers both
bw=$(echo "$m" | sed -n 's/^ferry_stream_compressed_batches_total{thread="worker"} //p')
bl=$(echo "$m" | sed -n 's/^ferry_stream_compressed_batches_total{thread="loop"} //p')
[ "${bw:-0}" -ge 2 ] && pass "the first sync's batches were compressed on the worker ($bw)" ||
  fail "worker batches" "worker=$bw loop=$bl"
[ "${bl:-0}" -ge 2 ] && pass "the live change's batches were compressed on the loop thread ($bl)" ||
  fail "loop batches" "worker=$bw loop=$bl"

# clients that hang up in the middle of a compressed first sync, while a batch may be on the
# worker: every stream ends (the gauge returns to 0) and ferry goes on serving
cat >"$T_TMP/hangup.py" <<'PY'
import socket, sys
port, token = int(sys.argv[1]), sys.argv[2]
socks = []
for i in range(30):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = b'{"buckets":[],"client_id":"hang-%d"}' % i
    s.sendall(("POST /sync/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Token %s\r\n"
               "Content-Type: application/json\r\nAccept-Encoding: %s\r\n"
               "Content-Length: %d\r\n\r\n" % (token, "zstd" if i % 2 else "gzip", len(body))).encode() + body)
    socks.append(s)
for s in socks:
    s.recv(4096)  # the headers and the first bytes: the sync is under way
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()     # a reset, with the rest of the sync unsent
PY
t_in_ns $PY "$T_TMP/hangup.py" "$port" "$TOKEN" || fail "hang-up clients" "hangup.py failed"
wait_match "http://127.0.0.1:$port/metrics" $'\nferry_streams_open 0\n' 60 >/dev/null &&
  pass "streams whose clients hung up mid-sync all ended" ||
  fail "streams ended" "$(curl -s "http://127.0.0.1:$port/metrics" | grep '^ferry_streams_open')"
n=$(stream_once "http://127.0.0.1:$port" "$TOKEN" '{"buckets":[]}' | grep -c '"data"')
[ "$n" -ge 1 ] && pass "and ferry still serves a new stream ($n data lines)" || fail "serving after hang-ups" "$n"

# negotiation edge cases, by the response header alone
enc() { # the Content-Encoding answered to Accept-Encoding $1 (headers only, then hang up)
  t_in_ns python3 - "$port" "$TOKEN" "$1" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/sync/stream", body='{"buckets":[]}', headers={"Authorization": "Token " + sys.argv[2],
          "Content-Type": "application/json", "Accept-Encoding": sys.argv[3]})
print(c.getresponse().getheader("content-encoding") or "")
PY
}
expect_eq "zstd;q=0 falls back to gzip" "gzip" "$(enc 'zstd;q=0, gzip')"
expect_eq "both refused with q=0: identity" "" "$(enc 'zstd;q=0, gzip;q=0, br')"
expect_eq "case and spaces do not matter" "zstd" "$(enc ' ZSTD ; q=0.5 ')"

# curl decodes what ferry sends (an independent decoder: libcurl's own zstd and zlib), to the end
# of the response: a token valid for 3 s, so ferry ends the stream (gzip: its trailer, CRC checked)
SHORT=$("$FERRY_BIN" token --config "$T_TMP/ferry.yaml" --sub u1 --ttl 3)
pids=()
for e in zstd gzip; do
  t_bg curl -s --compressed --max-time 60 -X POST -H "Authorization: Token $SHORT" -H "Accept-Encoding: $e" \
    -H 'Content-Type: application/json' --data '{"buckets":[],"client_id":"c-curl"}' \
    -o "$T_TMP/curl-$e.ndjson" -w '%{exitcode}' "http://127.0.0.1:$port/sync/stream" >"$T_TMP/curl-$e.rc" &
  pids+=($!)
done
wait "${pids[@]}"
for e in zstd gzip; do
  expect_eq "curl --compressed reads the whole $e stream, to its end" 0 "$(cat "$T_TMP/curl-$e.rc")"
  tail -1 "$T_TMP/curl-$e.ndjson" | grep -q '"token_expires_in":0' && grep -q '"checkpoint_complete"' "$T_TMP/curl-$e.ndjson" &&
    pass "  with every line up to the last one" || fail "$e lines" "$(tail -c 200 "$T_TMP/curl-$e.ndjson")"
done

# ferry stopped in the middle of 20 compressed first syncs that read as fast as they can (batches
# on the worker at that moment): it ends every stream and exits cleanly
cat >"$T_TMP/shutdown.py" <<'PY'
import socket, sys, threading
port, token, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ended = []
def read(i):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = b'{"buckets":[],"client_id":"stop-%d"}' % i
    s.sendall(("POST /sync/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Token %s\r\n"
               "Content-Type: application/json\r\nAccept-Encoding: %s\r\n"
               "Content-Length: %d\r\n\r\n" % (token, "zstd" if i % 2 else "gzip", len(body))).encode() + body)
    got = 0
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += len(b)
            if got > 8192 and i == 0:
                open(ready, "w").close()
    except OSError:
        pass
    ended.append(got)
ts = [threading.Thread(target=read, args=(i,)) for i in range(20)]
for t in ts: t.start()
for t in ts: t.join()
print(len(ended))
PY
rm -f "$T_TMP/syncing"
t_in_ns $PY "$T_TMP/shutdown.py" "$port" "$TOKEN" "$T_TMP/syncing" >"$T_TMP/shutdown.out" &
spy=$!
for ((i = 0; i < 600; i++)); do [ -e "$T_TMP/syncing" ] && break; sleep 0.1; done
stop_pid "$FERRY_PID" 60
expect_eq "ferry stopped during 20 compressed first syncs exits cleanly" 0 "$STOP_RC"
wait "$spy"
expect_eq "and every one of those streams ended" 20 "$(cat "$T_TMP/shutdown.out")"

# ferry told to stop while a batch is on the worker (a test hold: the job waits while a file
# exists, released once ferry is draining): the batch is sent, the stream ends, ferry exits 0
touch "$T_TMP/hold"
FERRY_TEST_COMPRESS_HOLD=$T_TMP/hold start_ferry "$T_TMP/ferry.yaml" || exit 1
wait_ready "$port" 60 || { fail "ready (hold)" "not ready"; exit 1; }
t_in_ns curl -s --max-time 120 -X POST -H "Authorization: Token $TOKEN" -H "Accept-Encoding: zstd" \
  -H 'Content-Type: application/json' --data '{"buckets":[],"client_id":"c-held"}' \
  -o "$T_TMP/held.zst" -w '%{http_code}' "http://127.0.0.1:$port/sync/stream" >"$T_TMP/held.code" &
cpid=$!
for ((i = 0; i < 600; i++)); do grep -q 'test hold: compression paused' "$FERRY_LOG" && break; sleep 0.1; done
grep -q 'test hold: compression paused' "$FERRY_LOG" && pass "a first-sync batch is held on the worker" ||
  fail "held batch" "no hold in the log"
t_mine "$FERRY_PID" && kill -TERM "$FERRY_PID"
for ((i = 0; i < 600; i++)); do grep -q 'msg="shutting down"' "$FERRY_LOG" && break; sleep 0.1; done
rm -f "$T_TMP/hold"
stop_pid "$FERRY_PID" 60
expect_eq "ferry stopped with a batch on the worker exits cleanly" 0 "$STOP_RC"
grep -q 'stream ended.*reason=server_shutdown' "$FERRY_LOG" &&
  pass "the held stream ended with the shutdown" || fail "held stream ended" "$(grep 'stream ended' "$FERRY_LOG")"
wait "$cpid"
expect_eq "its client got a whole response" 200 "$(cat "$T_TMP/held.code")"
n=$($PY -c 'import sys, zstandard; d = zstandard.ZstdDecompressor().decompressobj(); t = b""
data = open(sys.argv[1], "rb").read()
while data:
    t += d.decompress(data); data = d.unused_data; d = zstandard.ZstdDecompressor().decompressobj() if data else d
print(t.count(b"\n"))' "$T_TMP/held.zst" 2>&1)
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] && pass "which decodes to whole lines, the held batch included ($n lines)" ||
  fail "held stream decoded" "$n"

# http.compression.enabled: false
printf 'http:\n  listen: "127.0.0.1:%s"\n  threads: 2\n  compression:\n    enabled: false\n' "$port" >"$T_TMP/off.yaml"
sed '1,/^  threads: 2$/d' "$T_TMP/ferry.yaml" | grep -v '^log_level' >>"$T_TMP/off.yaml"
start_ferry "$T_TMP/off.yaml" || exit 1
wait_ready "$port" 60 || { fail "ready (compression off)" "not ready"; exit 1; }
expect_eq "http.compression.enabled: false sends identity to a client that accepts zstd" "" "$(enc 'zstd, gzip')"
