// clients.mjs -- long-running sync clients for multi-instance tests (tests/integration/36_*.sh)
//
// Runs raw protocol clients (one per user in RAW_USERS, fetch + NDJSON, resuming from their
// bucket positions) and one official @powersync/node client (OFFICIAL_USER) against
// FERRY_ENDPOINT,
// and writes their state to OUT as JSON every 200 ms:
//   { clients: [{ name, kind, user, server, connects, ops, expected_ops, checksum_failures,
//                 checkpoints, last_op, problems }], final }
// server is the x-ferry-server header of the current connection (HAProxy sets it), connects the
// number of streams opened, ops the ops received over all of them, expected_ops the total count
// of the client's buckets in the last complete checkpoint (equal to ops when nothing was
// downloaded twice). When the file STOP appears the clients finish, compare their rows with
// the oracle (FERRY_PG_URI, the rules of tests/conformance/sync-rules.yaml) and write
// "final": { "<name>": true|false } before exiting.
//
// Environment: FERRY_ENDPOINT, FERRY_BIN, FERRY_CONFIG (tokens), FERRY_PG_URI (the source), RAW_USERS,
// OFFICIAL_USER, OUT, STOP, CONFORMANCE_TMP (the official client's database folder).
import { existsSync, writeFileSync, renameSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const env = process.env;
const endpoint = env.FERRY_ENDPOINT;
const realFetch = globalThis.fetch; // the raw clients' (the official client's is patched below)
const clients = [];

function token(sub) {
  return execFileSync(env.FERRY_BIN, ['token', '--config', env.FERRY_CONFIG, '--sub', sub, '--ttl', '7200'])
    .toString().trim();
}

function sqlJson(text) {
  const out = execFileSync('psql', ['-qAtX', env.FERRY_PG_URI, '-c',
    `SELECT coalesce(json_agg(t ORDER BY t.id), '[]') FROM (${text}) t`]).toString().trim();
  return JSON.parse(out);
}

const oracle = {
  announcements: () => 'SELECT id, body FROM announcements',
  lists: (u) => `SELECT id, owner_id, name FROM lists WHERE owner_id = '${u}'`,
  todos: (u) => `SELECT t.id, t.list_id, t.description, t.completed FROM todos t JOIN lists l ON l.id = t.list_id WHERE l.owner_id = '${u}'`,
  org_docs: (u) => `SELECT d.id, d.org_id, d.title FROM org_docs d WHERE d.org_id IN (SELECT org_id FROM members WHERE user_id = '${u}')`,
};

// ---- the stream's bookkeeping, shared by both kinds (the official one sees a copy) ----

// Counts ops and follows checkpoints in NDJSON text fed in pieces.
class Ledger {
  constructor() { this.rest = ''; this.ops = 0; this.cp = null; this.expected = 0; this.lastOp = '0'; this.checkpoints = 0; }
  feed(text, onLine) {
    this.rest += text;
    let nl;
    while ((nl = this.rest.indexOf('\n')) >= 0) {
      const line = this.rest.slice(0, nl);
      this.rest = this.rest.slice(nl + 1);
      if (line.trim() === '') continue;
      let j;
      try { j = JSON.parse(line); } catch { continue; }
      if (j.checkpoint) this.cp = new Map(j.checkpoint.buckets.map((b) => [b.bucket, b]));
      if (j.checkpoint_diff && this.cp) {
        for (const b of j.checkpoint_diff.updated_buckets) this.cp.set(b.bucket, b);
        for (const n of j.checkpoint_diff.removed_buckets) this.cp.delete(n);
      }
      if (j.data) this.ops += j.data.data.length;
      if (j.checkpoint_complete && this.cp) {
        this.checkpoints++;
        this.lastOp = j.checkpoint_complete.last_op_id;
        this.expected = [...this.cp.values()].reduce((s, b) => s + b.count, 0);
      }
      if (onLine) onLine(j);
    }
  }
}

// ---- a raw client: the protocol by hand ----

class RawClient {
  constructor(user) {
    this.name = `raw-${user}`; this.kind = 'raw'; this.user = user;
    this.buckets = new Map(); // name -> { after, sum, rows: Map(type/id -> data) }
    this.ledger = new Ledger(); this.connects = 0; this.server = ''; this.checksumFailures = 0;
    this.problems = []; this.stopped = false; this.tok = token(user);
  }
  bucket(n) {
    if (!this.buckets.has(n)) this.buckets.set(n, { after: '0', sum: 0, rows: new Map() });
    return this.buckets.get(n);
  }
  onLine(j) {
    if (j.data) {
      const b = this.bucket(j.data.bucket);
      for (const op of j.data.data) {
        if (op.op !== 'CLEAR') b.sum = (b.sum + op.checksum) >>> 0;
        const key = `${op.object_type}/${op.object_id}`;
        if (op.op === 'PUT') b.rows.set(key, JSON.parse(op.data));
        else if (op.op === 'REMOVE') b.rows.delete(key);
        if (op.op === 'CLEAR') { b.rows.clear(); b.sum = op.checksum >>> 0; }
      }
      b.after = j.data.next_after;
    }
    if (j.checkpoint_diff) for (const n of j.checkpoint_diff.removed_buckets) this.buckets.delete(n);
    if (j.checkpoint) for (const n of [...this.buckets.keys()]) if (!j.checkpoint.buckets.some((b) => b.bucket === n)) this.buckets.delete(n);
    if (j.checkpoint_complete && this.ledger.cp) {
      for (const [n, want] of this.ledger.cp) {
        const have = this.bucket(n).sum;
        if (have !== want.checksum >>> 0) {
          this.checksumFailures++;
          this.problems.push(`checksum of ${n}: have ${have}, checkpoint ${want.checksum}`);
        }
      }
    }
  }
  async run() {
    while (!this.stopped) {
      try {
        const res = await realFetch(`${endpoint}/sync/stream`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Token ${this.tok}` },
          body: JSON.stringify({ client_id: this.name, raw_data: true, include_checksum: true,
            buckets: [...this.buckets].map(([name, b]) => ({ name, after: b.after })) }),
        });
        if (res.status !== 200) throw new Error(`status ${res.status}`);
        this.connects++;
        this.server = res.headers.get('x-ferry-server') ?? '';
        const dec = new TextDecoder();
        for await (const chunk of res.body) {
          this.ledger.feed(dec.decode(chunk, { stream: true }), (j) => this.onLine(j));
          if (this.stopped) break;
        }
      } catch (e) {
        if (!this.stopped) await new Promise((r) => setTimeout(r, 200));
      }
    }
  }
  rows(table) {
    const out = new Map();
    for (const b of this.buckets.values()) for (const [k, v] of b.rows) if (k.startsWith(`${table}/`)) out.set(v.id, v);
    return [...out.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  }
  equalsOracle() {
    for (const t of Object.keys(oracle)) {
      const want = sqlJson(oracle[t](this.user));
      const have = this.rows(t).map((r) => Object.fromEntries(Object.keys(want[0] ?? r).map((c) => [c, r[c]])));
      const norm = (rs) => JSON.stringify(rs.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v === true ? 1 : v === false ? 0 : v]))));
      if (norm(have) !== norm(want)) return false;
    }
    return true;
  }
}

// ---- the official client, its stream seen through a patched fetch ----

let official = null;
globalThis.fetch = async (resource, init) => {
  const res = await realFetch(resource, init);
  const url = typeof resource === 'string' ? resource : resource.url;
  if (official == null || !String(url).endsWith('/sync/stream') || res.body == null) return res;
  official.connects++;
  try { // what it asked for: the positions it resumed from
    const body = JSON.parse(init?.body ?? '{}');
    official.requests.push((body.buckets ?? []).map((b) => `${b.name}@${b.after}`).join(' '));
  } catch { official.requests.push('?'); }
  official.server = res.headers.get('x-ferry-server') ?? '';
  const [a, b] = res.body.tee();
  (async () => {
    const dec = new TextDecoder();
    try { for await (const chunk of b) official.ledger.feed(dec.decode(chunk, { stream: true })); } catch { /* the connection went away */ }
  })();
  return new Response(a, { status: res.status, statusText: res.statusText, headers: res.headers });
};

async function startOfficial(user) {
  const lib = await import('../lib.mjs');
  official = { name: `official-${user}`, kind: 'official', user, ledger: new Ledger(), connects: 0, server: '', checksumFailures: 0, problems: [], requests: [] };
  const c = await lib.openClient(user);
  official.client = c;
  official.problems = c.problems;
  clients.push(official);
}

// ---- main ----

function snapshot(final) {
  const state = {
    clients: clients.map((c) => ({
      name: c.name, kind: c.kind, user: c.user, server: c.server, connects: c.connects,
      ops: c.ledger.ops, expected_ops: c.ledger.expected, checkpoints: c.ledger.checkpoints,
      last_op: c.ledger.lastOp, checksum_failures: c.checksumFailures + c.problems.filter((p) => /checksum/i.test(p)).length,
      problems: c.problems.slice(0, 5),
      requests: c.requests ?? [],
    })),
    final,
  };
  writeFileSync(`${env.OUT}.tmp`, JSON.stringify(state));
  renameSync(`${env.OUT}.tmp`, env.OUT);
}

for (const u of (env.RAW_USERS ?? '').split(',').filter(Boolean)) {
  const c = new RawClient(u);
  clients.push(c);
  c.run();
}
if (env.OFFICIAL_USER) await startOfficial(env.OFFICIAL_USER);

const timer = setInterval(() => snapshot(null), 200);
while (!existsSync(env.STOP)) await new Promise((r) => setTimeout(r, 200));
// finish: every client at the newest checkpoint, then compare with the oracle
const final = {};
const lib = official ? await import('../lib.mjs') : null;
const deadline = Date.now() + 60000;
for (const c of clients) {
  let ok = false;
  while (!ok && Date.now() < deadline) {
    ok = c.kind === 'raw' ? c.equalsOracle() : await lib.matchesOracle(c.client);
    if (!ok) await new Promise((r) => setTimeout(r, 300));
  }
  final[c.name] = ok;
}
clearInterval(timer);
snapshot(final);
for (const c of clients) c.stopped = true;
if (official) await lib.close(official.client);
process.exit(0);
