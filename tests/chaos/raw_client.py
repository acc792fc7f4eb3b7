#!/usr/bin/env python3
"""raw_client.py -- a sync client on the raw protocol, for the reliability tests

Speaks POST /sync/stream (NDJSON, powersync-protocol.md) the way a client must: keeps each
bucket's ops, applies PUT/REMOVE/MOVE/CLEAR, validates every bucket's checksum at each
checkpoint_complete (add_checksum + the checksums of the ops it holds, mod 2^32), drops a bucket
whose checksum fails and downloads it again, resumes with "after" positions when the stream
breaks (ferry killed, network faults), and reconnects until told to stop. It holds its state in
memory only (a client process that lives through the whole test).

After every validated checkpoint it writes OUT (atomically): the rows it holds per bucket and
its counters (checkpoints, checksum failures, reconnects, the last op id).

Usage: raw_client.py --url URL --token TOKEN --out FILE [--params JSON] [--client-id ID]
Stops on SIGTERM (the last validated checkpoint is already in OUT).
"""
import argparse
import http.client
import json
import os
import signal
import sys
import time
import urllib.parse

stop = False


def on_term(signum, frame):
    global stop
    stop = True
    raise SystemExit(0)


class Bucket:
    def __init__(self):
        self.ops = {}  # (type, id, subkey) -> (op_id, checksum, data)
        self.add = 0  # checksums of ops no longer held
        self.last = 0  # the highest op id received

    def checksum(self):
        s = self.add
        for op in self.ops.values():
            s += op[1]
        return s % 4294967296

    def apply(self, op):
        oid = int(op["op_id"])
        ck = int(op["checksum"]) % 4294967296
        kind = op["op"]
        key = (op.get("object_type"), op.get("object_id"), op.get("subkey") or "")
        if kind == "PUT":
            old = self.ops.pop(key, None)
            if old is not None:
                self.add += old[1]
            self.ops[key] = (oid, ck, op.get("data"))
        elif kind == "REMOVE":
            old = self.ops.pop(key, None)
            if old is not None:
                self.add += old[1]
            self.add += ck
        elif kind == "MOVE":
            self.add += ck
        elif kind == "CLEAR":
            self.ops = {}
            self.add = ck
        else:
            raise ValueError("unknown op %r" % kind)
        self.add %= 4294967296
        if oid > self.last:
            self.last = oid


class Client:
    def __init__(self, args):
        self.args = args
        self.buckets = {}  # name -> Bucket
        self.target = None  # name -> (checksum, count) of the checkpoint being downloaded
        self.target_op = None
        self.checkpoints = 0
        self.failures = 0
        self.reconnects = 0
        self.protocol_errors = 0
        self.errors = []
        self.last_applied = 0
        self.write_checkpoint = None

    def body(self):
        return json.dumps({
            "buckets": [{"name": n, "after": str(b.last)} for n, b in sorted(self.buckets.items())],
            "include_checksum": True,
            "raw_data": True,
            "client_id": self.args.client_id,
            "parameters": json.loads(self.args.params),
        })

    def write_out(self):
        rows = []
        for name in sorted(self.buckets):
            for (t, i, sub), (oid, ck, data) in self.buckets[name].ops.items():
                rows.append({"bucket": name, "type": t, "id": i, "data": data})
        rows.sort(key=lambda r: (r["bucket"], r["type"] or "", r["id"] or ""))
        state = {"rows": rows, "buckets": sorted(self.buckets), "checkpoints": self.checkpoints,
                 "checksum_failures": self.failures, "reconnects": self.reconnects,
                 "protocol_errors": self.protocol_errors,
                 "last_op_id": self.last_applied, "errors": self.errors[-5:],
                 "time": time.time()}
        tmp = self.args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.args.out)

    def on_line(self, line):
        """Handle one line; returns False when the stream must be reopened."""
        msg = json.loads(line)
        if "checkpoint" in msg:
            cp = msg["checkpoint"]
            self.target = {b["bucket"]: (int(b["checksum"]) % 4294967296, b.get("count"))
                           for b in cp["buckets"]}
            self.target_op = int(cp["last_op_id"])
            for name in list(self.buckets):
                if name not in self.target:
                    del self.buckets[name]
            for name in self.target:
                self.buckets.setdefault(name, Bucket())
        elif "checkpoint_diff" in msg:
            d = msg["checkpoint_diff"]
            if self.target is None:
                raise ValueError("checkpoint_diff before a checkpoint")
            for b in d.get("updated_buckets", []):
                self.target[b["bucket"]] = (int(b["checksum"]) % 4294967296, b.get("count"))
                self.buckets.setdefault(b["bucket"], Bucket())
            for name in d.get("removed_buckets", []):
                self.target.pop(name, None)
                self.buckets.pop(name, None)
            self.target_op = int(d["last_op_id"])
        elif "data" in msg:
            d = msg["data"]
            b = self.buckets.get(d["bucket"])
            if b is None:
                raise ValueError("data for bucket %r outside the checkpoint" % d["bucket"])
            for op in d["data"]:
                b.apply(op)
        elif "checkpoint_complete" in msg:
            if int(msg["checkpoint_complete"]["last_op_id"]) != self.target_op:
                raise ValueError("checkpoint_complete for another checkpoint")
            bad = [n for n, (ck, _) in self.target.items() if self.buckets[n].checksum() != ck]
            if bad:
                self.failures += len(bad)
                self.errors.append("checksum mismatch in %s" % ", ".join(sorted(bad)[:3]))
                for n in bad:
                    del self.buckets[n]
                self.write_out()
                return False  # download them again
            self.checkpoints += 1
            self.last_applied = self.target_op
            self.write_out()
        return True

    def run_once(self):
        u = urllib.parse.urlparse(self.args.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conn.request("POST", "/sync/stream", body=self.body(),
                         headers={"Authorization": "Token " + self.args.token,
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                self.errors.append("HTTP %d" % resp.status)
                resp.read()
                return
            self.target = None
            while not stop:
                line = resp.readline()
                if not line:
                    return
                line = line.strip()
                if line and not self.on_line(line):
                    return
        finally:
            conn.close()

    def run(self):
        while not stop:
            try:
                self.run_once()
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(type(e).__name__ + ": " + str(e)[:200])
            except ValueError as e:  # bad JSON, or a line that breaks the protocol
                self.protocol_errors += 1
                self.errors.append("protocol: " + str(e)[:200])
                self.write_out()
            if stop:
                break
            self.reconnects += 1
            time.sleep(0.3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="{}")
    ap.add_argument("--client-id", default="raw-%d" % os.getpid())
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    c = Client(args)
    c.write_out()
    try:
        c.run()
    except SystemExit:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
