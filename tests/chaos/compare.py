#!/usr/bin/env python3
"""compare.py -- does a client's replica equal the oracle for its user? (reliability tests)

The oracle is `ferry debug oracle` (one JSON line per bucket row: what the rules select from
Postgres now) and the user's bucket list (from `ferry rules explain --db`, or from SQL). A
client must hold exactly the oracle's rows of its buckets:

  compare.py raw ORACLE BUCKETS OUT.json
      the raw protocol client (raw_client.py): its rows per bucket, data text and all
  compare.py sdk ORACLE BUCKETS DB SPEC
      a libferry replica: each table of SPEC ("name:col,col=i;...", as chaos_replica takes it)
      must hold one row per object of the user's buckets, with every column equal to the
      value libferry stores for the row's JSON (json_extract's, under the column's affinity)

BUCKETS is a file with one bucket name a line. Prints nothing and exits 0 when equal; else
prints the first differences and their counts and exits 1.
"""
import json
import sqlite3
import sys


def load_oracle(path, buckets):
    rows = set()
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if r["bucket"] in buckets:
                data = r["data"] if isinstance(r["data"], str) else json.dumps(r["data"])
                rows.add((r["bucket"], r["type"], r["id"], canon(data)))
    return rows


def canon(data):
    """The data text as JSON with sorted keys (the client keeps the server's text; the oracle
    prints an object: compare their meaning)."""
    try:
        return json.dumps(json.loads(data), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return data


def report(want, got, what):
    if want == got:
        return 0
    missing = sorted(want - got)
    extra = sorted(got - want)
    print("%s differs from the oracle: %d missing, %d unexpected" % (what, len(missing), len(extra)))
    for r in missing[:3]:
        print("  missing   ", str(r)[:300])
    for r in extra[:3]:
        print("  unexpected", str(r)[:300])
    return 1


def cmd_raw(oracle, buckets, out):
    want = load_oracle(oracle, buckets)
    with open(out) as f:
        state = json.load(f)
    got = {(r["bucket"], r["type"], r["id"], canon(r["data"])) for r in state["rows"]}
    rc = report(want, got, "raw client " + out)
    if set(state["buckets"]) != buckets:
        print("raw client %s has buckets %s, the oracle gives %s" %
              (out, sorted(state["buckets"])[:5], sorted(buckets)[:5]))
        rc = 1
    return rc


def parse_spec(spec):
    tables = {}
    for t in spec.split(";"):
        if not t:
            continue
        name, _, cols = t.partition(":")
        tables[name] = [(c.split("=")[0], {"i": "INTEGER", "r": "REAL"}.get(c.partition("=")[2], "TEXT"))
                        for c in cols.split(",") if c]
    return tables


def cmd_sdk(oracle, buckets, db, spec):
    want = load_oracle(oracle, buckets)
    tables = parse_spec(spec)
    mem = sqlite3.connect(":memory:")
    rep = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    rc = 0
    for name, cols in tables.items():
        # the expected rows, stored the way libferry stores them: json_extract under affinity
        decl = ", ".join('"%s" %s' % (c, t) for c, t in cols)
        mem.execute('CREATE TABLE "%s" (id TEXT, %s)' % (name, decl))
        objs = {}
        for (_, typ, oid, data) in want:
            if typ == name:
                objs[oid] = data  # the same object in two buckets has the same data
        for oid, data in objs.items():
            mem.execute('INSERT INTO "%s" VALUES (?, %s)' % (name, ", ".join(
                "json_extract(?, '$.\"%s\"')" % c for c, _ in cols)), [oid] + [data] * len(cols))
        sel = 'SELECT id, %s FROM "%s"' % (", ".join('"%s"' % c for c, _ in cols), name)
        exp = set(mem.execute(sel).fetchall())
        got = set(rep.execute(sel).fetchall())
        rc |= report(exp, got, "libferry replica %s table %s" % (db, name))
    return rc


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    kind, oracle, bfile = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(bfile) as f:
        buckets = {l.strip() for l in f if l.strip()}
    if kind == "raw":
        return cmd_raw(oracle, buckets, sys.argv[4])
    if kind == "sdk" and len(sys.argv) >= 6:
        return cmd_sdk(oracle, buckets, sys.argv[4], sys.argv[5])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
