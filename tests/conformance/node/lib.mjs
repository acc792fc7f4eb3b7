// lib.mjs -- helpers for conformance tests with the official PowerSync Node client.
//
// Environment (set by tests/conformance/run.sh): FERRY_ENDPOINT, FERRY_BIN, FERRY_CONFIG,
// FERRY_PG_URI, FERRY_CTL (a script that restarts ferry), CONFORMANCE_TMP.
import { PowerSyncDatabase, Schema, Table, column, SyncStreamConnectionMethod } from '@powersync/node';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';

const env = process.env;
export const endpoint = env.FERRY_ENDPOINT;
let passed = 0, failed = 0;

export function check(name, ok, detail = '') {
  if (ok) { passed++; console.log(`  ok   ${name}`); }
  else { failed++; console.log(`  FAIL ${name}: ${detail}`); }
}

export function done() {
  console.log(`RESULT ${passed} ${failed}`);
  process.exit(failed > 0 ? 1 : 0);
}

export function token(sub, ttl = 3600) {
  return execFileSync(env.FERRY_BIN, ['token', '--config', env.FERRY_CONFIG, '--sub', sub,
    '--ttl', String(ttl)]).toString().trim();
}

export function sql(text) {
  return execFileSync('psql', ['-qAtX', env.FERRY_PG_URI, '-c', text]).toString().trim();
}

export function rows(text) {
  const out = sql(`SELECT coalesce(json_agg(t ORDER BY t.id), '[]') FROM (${text}) t`);
  return JSON.parse(out);
}

export function ferryctl(cmd) {
  execFileSync(env.FERRY_CTL, [cmd], { stdio: 'inherit' });
}

export async function metric(name) {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\d+)`, 'm'));
  return m ? Number(m[1]) : NaN;
}

export const schema = new Schema({
  announcements: new Table({ body: column.text }),
  lists: new Table({ owner_id: column.text, name: column.text }),
  todos: new Table({ list_id: column.text, description: column.text, completed: column.integer }),
  org_docs: new Table({ org_id: column.text, title: column.text }),
});

// Open a client for user sub. Problems the SDK logs at warn or above are collected in
// client.problems (a checksum failure lands there).
// With crudJson, the connector sends each CRUD entry as CrudEntry.toJSON() gives it (with "old"
// and "metadata" for tables with trackPrevious / trackMetadata); db schema: clientSchema.
export async function openClient(sub, { ttl = 3600, params = undefined, checkpointMode = undefined, clientSchema = schema, crudJson = false } = {}) {
  // the SDK serialises sync per database file name, so every client gets its own name
  const dir = mkdtempSync(join(env.CONFORMANCE_TMP, `client-${sub}-`));
  const problems = [];
  const logger = { log(r) { if (r.level >= 40) problems.push(String(r.message) + (r.error ? ` ${r.error}` : '')); } };
  const db = new PowerSyncDatabase({ schema: clientSchema, database: { dbFilename: `${dir.split('/').pop()}.db`, dbLocation: dir }, logger });
  await db.init();
  const client = { db, sub, problems, credentialFetches: 0, uploads: [] };
  client.connector = {
    fetchCredentials: async () => { client.credentialFetches++; return { endpoint, token: token(sub, ttl) }; },
    uploadData: async (database) => {
      const tx = await database.getNextCrudTransaction();
      if (!tx) return;
      const batch = tx.crud.map((e) => (crudJson ? e.toJSON()
        : { op_id: e.clientId, op: e.op, type: e.table, id: e.id, data: e.opData }));
      const res = await fetch(`${endpoint}/api/write`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Token ${token(sub)}` },
        body: JSON.stringify({ client_id: await database.getClientId(), batch }),
      });
      if (!res.ok) throw new Error(`upload failed: ${res.status} ${await res.text()}`);
      client.uploads.push(await res.json());
      await tx.complete();
    },
  };
  // kept on the client, so a test can disconnect and connect again
  client.options = { connectionMethod: SyncStreamConnectionMethod.HTTP, params, ...(checkpointMode ? { checkpointMode } : {}) };
  await db.connect(client.connector, client.options);
  return client;
}

export async function waitFor(what, fn, timeoutMs = 15000) {
  const start = Date.now();
  let last;
  while (Date.now() - start < timeoutMs) {
    last = await fn();
    if (last === true) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

// Compare a client table with the oracle rows (arrays of objects sorted by id).
export async function tableEquals(client, table, cols, oracleSql) {
  const local = await client.db.getAll(`SELECT ${['id', ...cols].join(', ')} FROM ${table} ORDER BY id`);
  const want = rows(oracleSql);
  const norm = (rs) => JSON.stringify(rs.map((r) => Object.fromEntries(['id', ...cols].map((c) => [c, r[c] === true ? 1 : r[c] === false ? 0 : r[c]]))));
  return norm(local) === norm(want);
}

export const oracle = {
  announcements: () => 'SELECT id, body FROM announcements',
  lists: (u) => `SELECT id, owner_id, name FROM lists WHERE owner_id = '${u}'`,
  todos: (u) => `SELECT t.id, t.list_id, t.description, t.completed::int AS completed FROM todos t JOIN lists l ON l.id = t.list_id WHERE l.owner_id = '${u}'`,
  org_docs: (u) => `SELECT d.id, d.org_id, d.title FROM org_docs d WHERE d.org_id IN (SELECT org_id FROM members WHERE user_id = '${u}')`,
};
export const columns = { announcements: ['body'], lists: ['owner_id', 'name'], todos: ['list_id', 'description', 'completed'], org_docs: ['org_id', 'title'] };

export async function matchesOracle(client) {
  for (const t of Object.keys(oracle)) {
    if (!(await tableEquals(client, t, columns[t], oracle[t](client.sub)))) return false;
  }
  return true;
}

export async function close(client) {
  await client.db.disconnect();
  await client.db.close();
}
