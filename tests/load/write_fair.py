#!/usr/bin/env python3
"""write_fair.py -- one user floods write-back; how long does another user's single op wait?

Usage: write_fair.py URL FLOOD_TOKEN VICTIM_TOKEN SECONDS FLOODERS [OPS]

For SECONDS, FLOODERS threads post batches of OPS (default 1000) PUTs as the flood user, each
thread with its own client_id and rising op ids, back to back (a 429 or 503 is retried at once:
an attacker does not wait). Meanwhile one thread posts a one-op batch as the victim user every
200 ms and another GETs /probes/liveness on the same listener every 100 ms. Without the flood
(FLOODERS 0) the same two threads give the idle figures. Prints one JSON object: the victim's
latencies (ms: p50, p90, max, count, errors), liveness latencies (p50, max), the flood's batches
by status and its applied ops per second. Traffic goes to the given loopback URL only.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def conn_of(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)


def post(conn, token, body):
    conn.request("POST", "/api/write", body=body,
                 headers={"Authorization": "Bearer " + token,
                          "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))], 2)


def main():
    url, flood_tok, victim_tok = sys.argv[1], sys.argv[2], sys.argv[3]
    secs, flooders = float(sys.argv[4]), int(sys.argv[5])
    ops = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
    stop = time.monotonic() + secs
    lock = threading.Lock()
    flood = {"200": 0, "429": 0, "503": 0, "other": 0, "applied_ops": 0}
    victim, victim_err, live = [], [0], []
    run = "%x" % int(time.time() * 1000)

    def flooder(k):
        c = conn_of(url)
        op = 0
        body = None
        while time.monotonic() < stop:
            if body is None:  # a new batch once the last one was applied; else the same again
                batch = []
                for i in range(ops):
                    op += 1
                    batch.append({"op_id": op, "op": "PUT", "type": "bench",
                                  "id": "f%s-%d-%d" % (run, k, op),
                                  "data": {"label": "flood", "owner": "flood", "n": i}})
                body = json.dumps({"client_id": "flood-%s-%d" % (run, k), "batch": batch})
            try:
                st, _ = post(c, flood_tok, body)
            except Exception:
                c = conn_of(url)
                st = 0
            key = str(st) if str(st) in flood else "other"
            with lock:
                flood[key] += 1
                if st == 200:
                    flood["applied_ops"] += ops
            if st == 200:
                body = None

    def victim_loop():
        c = conn_of(url)
        op = 0
        while time.monotonic() < stop:
            op += 1
            body = json.dumps({"client_id": "victim-%s" % run, "batch": [
                {"op_id": op, "op": "PUT", "type": "bench", "id": "v%s-%d" % (run, op),
                 "data": {"label": "victim", "owner": "victim", "n": op}}]})
            t0 = time.monotonic()
            try:
                st, _ = post(c, victim_tok, body)
            except Exception:
                c = conn_of(url)
                st = 0
            ms = (time.monotonic() - t0) * 1000
            if st == 200:
                victim.append(ms)
            else:
                victim_err[0] += 1
            time.sleep(max(0.0, 0.2 - ms / 1000))

    def live_loop():
        c = conn_of(url)
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                c.request("GET", "/probes/liveness")
                c.getresponse().read()
                live.append((time.monotonic() - t0) * 1000)
            except Exception:
                c = conn_of(url)
            time.sleep(0.1)

    threads = [threading.Thread(target=flooder, args=(k,)) for k in range(flooders)]
    threads += [threading.Thread(target=victim_loop), threading.Thread(target=live_loop)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    print(json.dumps({
        "victim_ms": {"p50": pct(victim, 50), "p90": pct(victim, 90), "max": pct(victim, 100),
                      "count": len(victim), "errors": victim_err[0]},
        "liveness_ms": {"p50": pct(live, 50), "max": pct(live, 100)},
        "flood": flood, "flood_ops_per_s": round(flood["applied_ops"] / took),
        "seconds": round(took, 1)}))


if __name__ == "__main__":
    main()
