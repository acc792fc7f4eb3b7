#!/usr/bin/env python3
"""random_oracle.py -- generated data, users and mutations, and the SQL oracle (reliability tests)

  random_oracle.py gen SEED STEPS USERS DIR
      writes DIR/schema.sql (tables and the first rows), DIR/rules.yaml, DIR/users.json (each
      user's claims and client parameters) and DIR/steps.sql (STEPS transactions), all chosen
      by SEED: values of every awkward kind (NULLs, unicode and emoji, integers at the 2^53
      and 2^63 edges, floats at their limits and NaN, numeric, bytea, json and jsonb, arrays,
      timestamps in many zones, TOAST-sized text), memberships, claims, and mutations (inserts,
      updates that move rows between buckets or leave a TOASTed value unchanged, deletes,
      membership changes, a TRUNCATE now and then).
  random_oracle.py expect DIR DBURI USER OUT
      the rows USER must hold, computed by SQL in Postgres (which rows: the rules' conditions
      written as SQL; their values: Postgres's text converted as rules/README.md "Value
      conversion" says), written in `ferry debug oracle`'s line format under the bucket name
      "sql" (so compare.py can check a libferry replica against it).
  random_oracle.py check-raw EXPECT RAW_OUT
      a raw client's rows (raw_client.py), whatever their buckets, against EXPECT.
Exits 0 when equal (check-raw), printing the first differences otherwise.
"""
import json
import random
import subprocess
import sys

EMOJI = ["😀", "🚀", "👩‍👩‍👧", "🏳️‍🌈", "🇫🇷", "\u2603"]
UNICODE = ["é", "ß", "中文", "العربية", "e\u0301", "\u200b", "Ω", "ł", "ü", "\u00a0", "𝄞"]
ASCII_HARD = ["'", '"', "\\", "\t", "\n", "%", "_", "{}", "[]", ",", "NULL", "null", "$1", ";"]
ITEM_COLS = ["owner", "team_id", "project", "title", "n4", "n8", "f8", "num", "flag", "js", "jb",
             "tags", "nums", "ts", "blob", "big"]
DOC_COLS = ["region", "tag", "public", "title", "big"]
TYPES = {"owner": "text", "team_id": "int4", "project": "text", "title": "text", "n4": "int4",
         "n8": "int8", "f8": "float8", "num": "numeric", "flag": "bool", "js": "json",
         "jb": "jsonb", "tags": "text[]", "nums": "int8[]", "ts": "timestamptz", "blob": "bytea",
         "big": "text", "region": "text", "tag": "text", "public": "bool"}
REGIONS = ["eu", "us", "apac", "ü-région"]
TAGS = ["red", "green", "blue", "ünï", "🚀"]
PROJECTS = ["p1", "p2", "p3"]


def q(s):
    """An SQL string literal on one line (steps.sql holds one transaction a line): an E'' string
    with escapes when it holds a line break, else a standard one (only quotes double)."""
    if "\n" in s or "\r" in s:
        return "E'" + s.replace("\\", "\\\\").replace("'", "\\'").replace(
            "\n", "\\n").replace("\r", "\\r") + "'"
    return "'" + s.replace("'", "''") + "'"


class Gen:
    def __init__(self, seed, users):
        self.r = random.Random(seed)
        self.users = ["u%d" % i for i in range(users)]
        self.next_item = 0
        self.next_doc = 0
        self.items = set()
        self.docs = set()

    def text(self, null=0.1):
        r = self.r
        if r.random() < null:
            return "NULL"
        parts = []
        for _ in range(r.randint(0, 6)):
            k = r.random()
            if k < 0.4:
                parts.append(r.choice(["a", "word", "Hello", "x y", "0", "-1.5e3"]))
            elif k < 0.6:
                parts.append(r.choice(UNICODE))
            elif k < 0.75:
                parts.append(r.choice(EMOJI))
            else:
                parts.append(r.choice(ASCII_HARD))
        return q("".join(parts))

    def big(self):
        r = self.r
        if r.random() < 0.2:
            return "NULL"
        # random enough that pglz cannot shrink it below the TOAST threshold
        n = r.randint(1500, 4500)
        return q("".join(r.choice("0123456789abcdefghijklmnopqrstuvwxyzé🚀") for _ in range(n)))

    def int4(self):
        return self.r.choice(["NULL", "0", "1", "-1", "2147483647", "-2147483648",
                              str(self.r.randint(-10**6, 10**6))])

    def int8(self):
        return self.r.choice(["NULL", "0", str(2**53), str(2**53 + 1), str(-(2**53)),
                              str(-(2**53) - 1), str(2**63 - 1), str(-(2**63)),
                              str(self.r.randint(-10**12, 10**12))])

    def f8(self):
        return self.r.choice(["NULL", "0", "'-0'", "0.1", "1e308", "-1e-308", "5e-324",
                              "'NaN'", "'Infinity'", "'-Infinity'", "3.141592653589793",
                              repr(self.r.uniform(-1e6, 1e6)), "1e15", "123456789.125"])

    def num(self):
        return self.r.choice(["NULL", "0", "0.00", "'NaN'", "-12.5",
                              "123456789012345678901234567890.123456789",
                              "18014398509481982123.50", str(self.r.randint(-10**20, 10**20)),
                              "1e-20"])

    def jsonval(self, depth=0):
        r = self.r
        k = r.random()
        if depth > 2 or k < 0.3:
            return r.choice([1, -2.5, 2**53 + 1, "é\"\\", "🚀", True, False, None, "", 0])
        if k < 0.65:
            return [self.jsonval(depth + 1) for _ in range(r.randint(0, 3))]
        return {r.choice(["a", "b", "ü", "k k", "x.y"]): self.jsonval(depth + 1)
                for _ in range(r.randint(0, 3))}

    def js(self):
        if self.r.random() < 0.15:
            return "NULL"
        text = json.dumps(self.jsonval(), ensure_ascii=self.r.random() < 0.5)
        if self.r.random() < 0.5:  # json keeps its text as written: odd spacing survives
            text = text.replace(":", " :  ").replace(",", " ,")
        return q(text)

    def tags(self):
        if self.r.random() < 0.15:
            return "NULL"
        el = []
        for _ in range(self.r.randint(0, 4)):
            el.append("NULL" if self.r.random() < 0.15 else self.text(null=0))
        return "ARRAY[%s]::text[]" % ", ".join(el)

    def nums(self):
        if self.r.random() < 0.15:
            return "NULL"
        return "ARRAY[%s]::int8[]" % ", ".join(self.int8() for _ in range(self.r.randint(0, 4)))

    def ts(self):
        r = self.r
        if r.random() < 0.1:
            return "NULL"
        zone = r.choice(["Z", "+05:30", "-08", "+14", "-11:30", "+00"])
        frac = r.choice(["", ".5", ".123456", ".000001", ".12"])
        return "'%04d-%02d-%02d %02d:%02d:%02d%s%s'" % (
            r.randint(1971, 2099), r.randint(1, 12), r.randint(1, 28), r.randint(0, 23),
            r.randint(0, 59), r.randint(0, 59), frac, zone)

    def blob(self):
        if self.r.random() < 0.2:
            return "NULL"
        return "'\\x%s'::bytea" % "".join("%02x" % self.r.randint(0, 255)
                                          for _ in range(self.r.randint(0, 16)))

    def item_values(self):
        r = self.r
        return {
            "owner": q(r.choice(self.users)) if r.random() < 0.9 else "NULL",
            "team_id": str(r.randint(1, 6)) if r.random() < 0.9 else "NULL",
            "project": q(r.choice(PROJECTS)) if r.random() < 0.8 else "NULL",
            "title": self.text(), "n4": self.int4(), "n8": self.int8(), "f8": self.f8(),
            "num": self.num(), "flag": r.choice(["true", "false", "NULL"]), "js": self.js(),
            "jb": self.js(), "tags": self.tags(), "nums": self.nums(), "ts": self.ts(),
            "blob": self.blob(), "big": self.big(),
        }

    def doc_values(self):
        r = self.r
        return {"region": q(r.choice(REGIONS)) if r.random() < 0.9 else "NULL",
                "tag": q(r.choice(TAGS)) if r.random() < 0.9 else "NULL",
                "public": r.choice(["true", "false"]), "title": self.text(), "big": self.big()}

    def insert_item(self):
        self.next_item += 1
        i = "it-%d" % self.next_item
        self.items.add(i)
        v = self.item_values()
        return "INSERT INTO items (id, %s) VALUES (%s, %s);" % (
            ", ".join(ITEM_COLS), q(i), ", ".join(v[c] for c in ITEM_COLS))

    def insert_doc(self):
        self.next_doc += 1
        self.docs.add(self.next_doc)
        v = self.doc_values()
        return "INSERT INTO docs (id, %s) VALUES (%d, %s);" % (
            ", ".join(DOC_COLS), self.next_doc, ", ".join(v[c] for c in DOC_COLS))

    def step(self):
        r = self.r
        k = r.random()
        if k < 0.25 or not self.items:
            return self.insert_item()
        if k < 0.45:  # a few columns; "big" mostly left alone (unchanged TOAST)
            v = self.item_values()
            cols = r.sample([c for c in ITEM_COLS if c != "big"], r.randint(1, 4))
            if r.random() < 0.15:
                cols.append("big")
            return "UPDATE items SET %s WHERE id = %s;" % (
                ", ".join("%s = %s" % (c, v[c]) for c in cols), q(r.choice(sorted(self.items))))
        if k < 0.55:  # a move between buckets
            v = self.item_values()
            c = r.choice(["owner", "team_id", "project"])
            return "UPDATE items SET %s = %s WHERE id = %s;" % (c, v[c], q(r.choice(sorted(self.items))))
        if k < 0.62:
            i = r.choice(sorted(self.items))
            self.items.discard(i)
            return "DELETE FROM items WHERE id = %s;" % q(i)
        if k < 0.72:
            return "INSERT INTO memberships VALUES (%s, %d) ON CONFLICT DO NOTHING;" % (
                q(r.choice(self.users)), r.randint(1, 6))
        if k < 0.78:
            return "DELETE FROM memberships WHERE user_id = %s AND team_id = %d;" % (
                q(r.choice(self.users)), r.randint(1, 6))
        if k < 0.88 or not self.docs:
            return self.insert_doc()
        if k < 0.95:
            v = self.doc_values()
            c = r.choice(DOC_COLS)
            return "UPDATE docs SET %s = %s WHERE id = %d;" % (c, v[c], r.choice(sorted(self.docs)))
        if k < 0.99:
            d = r.choice(sorted(self.docs))
            self.docs.discard(d)
            return "DELETE FROM docs WHERE id = %d;" % d
        self.docs = set()
        return "TRUNCATE docs;"


RULES = """bucket_definitions:
  everyone:
    data:
      - SELECT id, {docs} FROM docs WHERE public = 1
  mine:
    parameters: SELECT request.user_id() AS uid
    data:
      - SELECT id, {items} FROM items WHERE owner = bucket.uid
  team:
    parameters: SELECT team_id FROM memberships WHERE user_id = request.user_id()
    data:
      - SELECT id, {items} FROM items WHERE team_id = bucket.team_id
  project:
    parameters: SELECT request.parameters() ->> 'project' AS project
    accept_potentially_dangerous_queries: true
    data:
      - SELECT id, {items} FROM items WHERE project = bucket.project
  region:
    parameters: SELECT request.jwt() ->> 'region' AS region
    data:
      - SELECT id, {docs} FROM docs WHERE region = bucket.region
  tagged:
    parameters: SELECT value AS tag FROM json_each(request.jwt() -> 'tags')
    data:
      - SELECT id, {docs} FROM docs WHERE tag = bucket.tag
""".format(items=", ".join(ITEM_COLS), docs=", ".join(DOC_COLS))


def cmd_gen(seed, steps, nusers, out):
    g = Gen(seed, nusers)
    with open(out + "/schema.sql", "w") as f:
        f.write("CREATE TABLE items (id text PRIMARY KEY, %s);\n" % ", ".join(
            "%s %s" % (c, TYPES[c]) for c in ITEM_COLS))
        f.write("CREATE TABLE docs (id int PRIMARY KEY, %s);\n" % ", ".join(
            "%s %s" % (c, TYPES[c]) for c in DOC_COLS))
        f.write("CREATE TABLE memberships (user_id text, team_id int, PRIMARY KEY (user_id, team_id));\n")
        f.write("CREATE PUBLICATION ferry FOR ALL TABLES;\n")
        for _ in range(60):
            f.write(g.insert_item() + "\n")
        for _ in range(30):
            f.write(g.insert_doc() + "\n")
        for u in g.users:
            for t in g.r.sample(range(1, 7), g.r.randint(0, 2)):
                f.write("INSERT INTO memberships VALUES (%s, %d);\n" % (q(u), t))
    with open(out + "/rules.yaml", "w") as f:
        f.write(RULES)
    users = {}
    for u in g.users:
        claims = {}
        if g.r.random() < 0.8:
            claims["region"] = g.r.choice(REGIONS)
        if g.r.random() < 0.8:
            claims["tags"] = g.r.sample(TAGS, g.r.randint(0, 3))
        params = {"project": g.r.choice(PROJECTS)} if g.r.random() < 0.7 else {}
        users[u] = {"claims": claims, "params": params}
    with open(out + "/users.json", "w") as f:
        json.dump(users, f, ensure_ascii=False)
    with open(out + "/steps.sql", "w") as f:
        for _ in range(steps):
            stmts = [g.step() for _ in range(g.r.randint(1, 3))]
            f.write("BEGIN; %s COMMIT;\n" % " ".join(stmts))


# ---- the oracle ----

def convert(typ, text):
    """A column's Postgres text (or array_to_json text for arrays) as it appears in row JSON."""
    if text is None:
        return None
    if typ in ("text", "json", "jsonb"):
        return text
    if typ in ("int4", "int8"):
        return int(text)
    if typ == "float8":
        if text in ("NaN", "Infinity", "-Infinity"):
            return None
        f = float(text)
        return 0.0 if f == 0 else f  # -0 prints as 0.0 (JavaScript's JSON, the service's)
    if typ == "numeric":
        return text
    if typ == "bool":  # bool::text is "true"/"false"
        return 1 if text in ("t", "true") else 0
    if typ == "timestamptz":  # TimeZone=UTC: "2023-03-06 13:47:00.12+00" -> "...00.12Z"
        assert text.endswith("+00"), text
        return text[:-3] + "Z"
    if typ in ("text[]", "int8[]"):
        return json.loads(text)  # compared parsed: the row holds the array as JSON text
    raise ValueError(typ)


def select_sql(table, cols, where):
    parts = ["'id', id::text"]
    for c in cols:
        if TYPES[c] == "bytea":  # a blob is dropped from rows; NULL stays null
            parts.append("%s, CASE WHEN %s IS NULL THEN NULL ELSE 'blob' END" % (q(c), c))
        elif TYPES[c].endswith("[]"):
            parts.append("%s, array_to_json(%s)::text" % (q(c), c))
        else:
            parts.append("%s, %s::text" % (q(c), c))
    return "SELECT json_build_object(%s) FROM %s WHERE %s" % (", ".join(parts), table, where)


def cmd_expect(d, uri, user, out):
    users = json.load(open(d + "/users.json"))
    u = users[user]
    claims, params = u["claims"], u["params"]
    proj = params.get("project")
    items_where = "owner = %s OR team_id IN (SELECT team_id FROM memberships WHERE user_id = %s)" % (
        q(user), q(user))
    if proj is not None:
        items_where += " OR project = %s" % q(proj)
    docs_where = "public"
    if claims.get("region") is not None:
        docs_where += " OR region = %s" % q(claims["region"])
    if claims.get("tags"):
        docs_where += " OR tag IN (%s)" % ", ".join(q(t) for t in claims["tags"])
    sql = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3;\n" +
           select_sql("items", ITEM_COLS, items_where) + ";\n" +
           select_sql("docs", DOC_COLS, docs_where) + ";\n")
    res = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", uri],
                         input=sql, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("expect: psql failed: " + res.stderr)
    # the two result sets come one after the other; items' ids are text ("it-…"), docs' digits
    with open(out, "w") as f:
        for line in res.stdout.splitlines():
            if not line.startswith("{"):
                continue  # the SET commands' output
            row = json.loads(line)
            table = "items" if row["id"].startswith("it-") else "docs"
            cols = ITEM_COLS if table == "items" else DOC_COLS
            data = {"id": row["id"] if table == "items" else int(row["id"])}
            for c in cols:
                if TYPES[c] != "bytea":
                    data[c] = convert(TYPES[c], row[c])
                elif row[c] is None:
                    data[c] = None
            # arrays are JSON text inside the row: keep them as text for a libferry replica
            for c in cols:
                if TYPES[c].endswith("[]") and data[c] is not None:
                    data[c] = json.dumps(data[c], ensure_ascii=False, separators=(",", ":"))
            f.write(json.dumps({"bucket": "sql", "type": table, "id": row["id"], "data": data},
                               ensure_ascii=False) + "\n")


def norm(data):
    """A row's data as comparable Python values (array columns parsed from their JSON text)."""
    d = json.loads(data) if isinstance(data, str) else dict(data)
    for c, t in TYPES.items():
        if t.endswith("[]") and isinstance(d.get(c), str):
            d[c] = json.loads(d[c])
    return json.dumps(d, sort_keys=True, ensure_ascii=False)


def cmd_check_raw(expect, raw):
    want = set()
    for line in open(expect):
        r = json.loads(line)
        want.add((r["type"], r["id"], norm(r["data"])))
    state = json.load(open(raw))
    got = {(r["type"], r["id"], norm(r["data"])) for r in state["rows"]}
    if want == got:
        return 0
    missing, extra = sorted(want - got), sorted(got - want)
    print("raw client %s differs from the SQL oracle: %d missing, %d unexpected" % (
        raw, len(missing), len(extra)))
    for r in missing[:3]:
        print("  missing   ", str(r)[:400])
    for r in extra[:3]:
        print("  unexpected", str(r)[:400])
    return 1


def main():
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "gen":
        return cmd_gen(int(a[1]), int(a[2]), int(a[3]), a[4])
    if len(a) == 5 and a[0] == "expect":
        return cmd_expect(a[1], a[2], a[3], a[4])
    if len(a) == 3 and a[0] == "check-raw":
        return cmd_check_raw(a[1], a[2])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main() or 0)
