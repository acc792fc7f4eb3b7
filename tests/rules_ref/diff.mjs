// diff.mjs -- differential test: Ferry's rules library against PowerSync's reference compiler
//
//   node tests/rules_ref/diff.mjs DRIVER CORPUS_DIR [NAME_FILTER]
//
// For every file of CORPUS_DIR/valid, rows of every table of the shared schema (schema.json)
// are generated from value pools (NULLs, unicode, numbers at the 2^53 and 2^63 edges, JSON with
// nulls at the top and inside, arrays) with a fixed seed, and a set of requests (tokens, whose
// claims hold JSON nulls and objects too, x subscriptions) is built from the streams the file
// defines. The same job goes to the reference compiler
// (@powersync/service-sync-rules, installed by tests/conformance/node; used, never copied) and
// to Ferry's driver (build/rules-refdriver). Compared exactly: each row's ops (bucket, object
// type, id, data, checksum), each row's parameter-lookup entries, each request's buckets
// (id, priority, reasons) and which subscriptions have errors. Every file of CORPUS_DIR/invalid
// must be rejected by both. A mismatch prints the file, the row or request and both outputs.
// Ends with "N passed, N failed" (one check per file).
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// Node 20 has no Object.groupBy; the reference's edition-3 compiler calls it (test-only shim)
if (!Object.groupBy) {
  Object.groupBy = (items, fn) => {
    const out = Object.create(null);
    let i = 0;
    for (const item of items) {
      const k = fn(item, i++);
      (out[k] ??= []).push(item);
    }
    return out;
  };
}

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '../..');
const modules = path.join(root, 'tests/conformance/node/node_modules');
const sr = await import(pathToFileURL(path.join(modules, '@powersync/service-sync-rules/dist/index.js')));
const { JSONBig } = await import(pathToFileURL(path.join(modules, '@powersync/service-jsonbig/dist/index.js')));

const [driver, corpus, filter] = process.argv.slice(2);
if (!driver || !corpus) {
  console.error('usage: diff.mjs DRIVER CORPUS_DIR [NAME_FILTER]');
  process.exit(2);
}
const VERSION = '1'; // the reference is hydrated with rule version 1, Ferry's version "1"
const schema = JSON.parse(fs.readFileSync(path.join(corpus, 'schema.json'), 'utf8'));

// ---- rows -------------------------------------------------------------------------------

// deterministic PRNG (mulberry32)
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// the Postgres module's time options (microseconds)
const PG_TIME = Object.freeze({ subSecondPrecision: sr.TimeValuePrecision.microseconds,
  defaultSubSecondPrecision: sr.TimeValuePrecision.microseconds });

const OIDS = { text: 25, int8: 20, float8: 701, bool: 16, json: 114, jsonb: 3802, 'text[]': 1009,
  'int8[]': 1016, timestamptz: 1184, numeric: 1700 };

// a column type in schema.json is "type" or "type:pool"; pools of pgoutput text values
function poolOf(spec) {
  const [type, pool] = spec.split(':');
  return { type, values: schema.pools[pool ?? type] };
}

function seedOf(s) {
  let h = 2166136261;
  for (const ch of s) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return h >>> 0;
}

function makeRows(file) {
  const rand = rng(seedOf(path.basename(file)));
  // a row of table with the given id (its pgtype and text), the other columns from the pools
  const makeRow = (table, def, idType, idValue) => {
    const cols = [];
    for (const [name, spec] of Object.entries(def.columns)) {
      if (name === 'id') {
        cols.push({ name, type: OIDS[idType], pgtype: idType, value: idValue });
        continue;
      }
      const { values } = poolOf(spec);
      const value = values[Math.floor(rand() * values.length)];
      cols.push({ name, type: OIDS[spec.split(':')[0]], pgtype: spec.split(':')[0], value });
    }
    return { table, schema: 'public', cols };
  };
  const rows = [];
  for (const [table, def] of Object.entries(schema.tables))
    for (let i = 0; i < def.rows; i++) rows.push(makeRow(table, def, 'text', `${def.prefix}${i + 1}`));
  // then, per table, a row with an integer id (past 2^53): the object id is the reference's
  // String(id); and a row with a NULL id: object id '', and in "id IN <request array>" of a
  // bucket definition's parameter query a lookup entry keyed [null], which a null element of
  // the request array finds (the reference's expanding IN keeps null; "=" drops it)
  for (const [table, def] of Object.entries(schema.tables)) {
    rows.push(makeRow(table, def, 'int8', '9007199254740993'));
    rows.push(makeRow(table, def, 'text', null));
  }
  return rows;
}

// pgoutput text -> the value PowerSync's Postgres module hands the sync rules
function pgToSqlite(type, text) {
  if (text === null) return null;
  switch (type) {
    case 'int8':
      return BigInt(text);
    case 'float8':
      return Number(text);
    case 'bool':
      return text === 't' ? 1n : 0n;
    case 'text[]':
    case 'int8[]':
      return pgArray(type, text);
    case 'timestamptz': {
      // "2023-03-06 13:47:00.12+00" -> DateTimeValue rendered per the file's config
      const m = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)?\+00$/.exec(text);
      const iso = `${m[1]}T${m[2]}${m[3] ?? ''}Z`;
      return new sr.DateTimeValue(iso, `${m[1]} ${m[2]}${m[3] ?? ''}Z`, PG_TIME);
    }
    default:
      return text;
  }
}

function pgArray(type, text) {
  const inner = text.slice(1, -1);
  if (inner === '') return '[]';
  const items = [];
  let cur = '', quoted = false, wasQuoted = false;
  for (let i = 0; i < inner.length; i++) {
    const ch = inner[i];
    if (quoted) {
      if (ch === '\\') cur += inner[++i];
      else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') {
      quoted = true;
      wasQuoted = true;
    } else if (ch === ',') {
      items.push(wasQuoted || cur !== 'NULL' ? cur : null);
      cur = '';
      wasQuoted = false;
    } else cur += ch;
  }
  items.push(wasQuoted || cur !== 'NULL' ? cur : null);
  const vals = items.map((v) => (v === null ? null : type === 'int8[]' ? BigInt(v) : v));
  return JSONBig.stringify(vals);
}

// ---- requests ---------------------------------------------------------------------------

function streamNames(text) {
  // the names under `streams:` (the reference's config has them too, but not for invalid files)
  const names = [];
  let inStreams = false;
  for (const line of text.split('\n')) {
    if (/^streams:\s*$/.test(line)) inStreams = true;
    else if (/^\S/.test(line)) inStreams = false;
    else if (inStreams) {
      const m = /^  ([A-Za-z0-9_]+):\s*$/.exec(line);
      if (m) names.push(m[1]);
    }
  }
  return names;
}

function makeRequests(text) {
  const names = streamNames(text);
  const reqs = [];
  for (const token of schema.tokens) {
    for (const params of [schema.connection[0], schema.connection[1]]) {
      reqs.push({ claims: token, params, streams: { include_defaults: true, subscriptions: [] } });
    }
    const variants = schema.subscription;
    reqs.push({ claims: token, params: schema.connection[0], streams: { include_defaults: false,
      subscriptions: names.map((n) => ({ stream: n, parameters: variants[0], override_priority: null })) } });
    reqs.push({ claims: token, params: schema.connection[1], streams: { include_defaults: true,
      subscriptions: names.flatMap((n, i) => [
        { stream: n, parameters: variants[1], override_priority: i % 2 ? 0 : null },
        { stream: n, parameters: variants[2], override_priority: null },
        { stream: n, parameters: null, override_priority: 1 },
      ]) } });
  }
  return reqs;
}

// ---- the reference ----------------------------------------------------------------------

function checksum(type, id, data) {
  const h = createHash('sha256').update(`put.${type}.${id}.${data}`).digest();
  return h.readUInt32LE(0);
}

const big = (k, v) => (typeof v === 'bigint' ? `${v}n` : v);

async function reference(text, job) {
  let config, errors;
  try {
    ({ config, errors } = sr.SqlSyncRules.fromYaml(text, { defaultSchema: 'public', throwOnError: false }));
  } catch (e) {
    return { ok: false, errors: [String(e.message ?? e)] };
  }
  const fatal = errors.filter((e) => e.type !== 'warning');
  if (fatal.length) return { ok: false, errors: fatal.map((e) => e.message) };
  const h = config.hydrate({ hydrationState: sr.versionedHydrationState(Number(VERSION)) });
  const index = new Map();
  const rows = [];
  for (const r of job.rows) {
    const raw = {};
    for (const c of r.cols) raw[c.name] = pgToSqlite(c.pgtype, c.value);
    const record = h.applyRowContext(raw);
    const sourceTable = { connectionTag: 'default', schema: r.schema, name: r.table };
    const ev = h.evaluateRowWithErrors({ sourceTable, record });
    const ops = ev.results.map((o) => {
      const data = JSONBig.stringify(o.data);
      return { bucket: o.bucket, table: o.table, id: o.id, data, checksum: checksum(o.table, o.id, data) };
    });
    const pr = h.evaluateParameterRowWithErrors(sourceTable, record);
    const lookups = [];
    for (const p of pr.results) {
      const [name, qid, ...vals] = p.lookup.values;
      const key = `${name}/${qid}${sr.JSONBucketNameSerialize.stringify(vals)}`;
      const list = index.get(p.lookup.serializedRepresentation) ?? [];
      index.set(p.lookup.serializedRepresentation, list);
      for (const bp of p.bucketParameters) {
        lookups.push({ key, params: JSONBig.stringify(bp) });
        list.push(bp);
      }
    }
    rows.push({ ops, lookups, errors: ev.errors.length + pr.errors.length });
  }
  const requests = [];
  for (const q of job.requests) {
    const payload = new sr.BaseJwtPayload(q.claims);
    const params = new sr.RequestParameters(payload, q.params ?? {});
    const byName = {};
    (q.streams.subscriptions ?? []).forEach((s, i) => {
      (byName[s.stream] ??= []).push({ priorityOverride: s.override_priority, parameters: s.parameters ?? {}, opaque_id: i });
    });
    const includeDefaults = q.streams.include_defaults ?? true;
    let res;
    try {
      const { querier, errors } = h.getBucketParameterQuerier({ globalParameters: params, hasDefaultStreams: includeDefaults, streams: byName });
      const stat = sr.mergeBuckets(querier.staticBuckets);
      let dyn = [];
      if (querier.hasDynamicBuckets) {
        dyn = sr.mergeBuckets(await querier.queryDynamicBucketDescriptions({
          getParameterSets: async (lookups) => lookups.map((l) => ({ lookup: l, rows: index.get(l.serializedRepresentation) ?? [] })),
        }));
      }
      const all = new Map();
      for (const b of [...stat, ...dyn]) all.set(b.bucket, b);
      const buckets = [...all.values()].map((b) => ({
        bucket: b.bucket, priority: b.priority, definition: b.definition,
        reasons: b.inclusion_reasons.map((r) => (r === 'default' ? -1 : r.subscription)),
      }));
      const subscribed = new Set(Object.keys(byName));
      const streams = h.bucketSourceDefinitions
        .filter((s) => (s.subscribedToByDefault && includeDefaults) || subscribed.has(s.name))
        .map((s) => ({ name: s.name, is_default: s.subscribedToByDefault }));
      const known = new Set(h.bucketSourceDefinitions.map((s) => s.name));
      const errs = errors.map((e) => ({ stream: e.descriptor, subscription: e.subscription?.opaque_id ?? -1 }));
      // Ferry reports subscriptions to unknown streams as errors (the service ignores them)
      (q.streams.subscriptions ?? []).forEach((s, i) => { if (!known.has(s.stream)) errs.push({ stream: s.stream, subscription: i }); });
      res = { buckets, streams, errors: errs };
    } catch (e) {
      res = { failed: String(e.message ?? e) };
    }
    requests.push(res);
  }
  return { ok: true, rows, requests };
}

// ---- comparing --------------------------------------------------------------------------

const sortBy = (arr, key) => [...arr].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
function uniqOps(ops) {
  const m = new Map();
  for (const o of ops) m.set(`${o.bucket}\u0000${o.table}\u0000${o.id}`, o);
  return sortBy([...m.values()], (o) => `${o.bucket}\u0000${o.table}\u0000${o.id}`);
}
function uniqLookups(l) {
  const m = new Map();
  for (const o of l) m.set(`${o.key}\u0000${o.params}`, o);
  return sortBy([...m.values()], (o) => `${o.key}\u0000${o.params}`);
}
const show = (v) => JSON.stringify(v, big);
const rowText = (r) => `${r.table}(${r.cols.map((c) => `${c.name}=${c.value === null ? 'NULL' : JSON.stringify(c.value)}`).join(', ')})`;

function compareRequest(a, b) {
  if (a.failed || b.error) return a.failed && b.error ? null : `reference: ${a.failed ?? 'ok'}; ferry: ${b.error ?? 'ok'}`;
  const norm = (list) => sortBy(list.map((x) => ({ bucket: x.bucket, priority: x.priority, reasons: [...x.reasons].sort((p, q) => p - q) })), (x) => x.bucket);
  const ab = norm(a.buckets), bb = norm(b.buckets);
  if (show(ab) !== show(bb)) return `buckets differ\n      reference: ${show(ab)}\n      ferry:     ${show(bb)}`;
  const as = show(a.streams), bs = show(b.streams);
  if (as !== bs) return `streams differ\n      reference: ${as}\n      ferry:     ${bs}`;
  const ae = show(sortBy(a.errors, (e) => `${e.stream}/${e.subscription}`));
  const be = show(sortBy(b.errors.map((e) => ({ stream: e.stream, subscription: e.subscription })), (e) => `${e.stream}/${e.subscription}`));
  if (ae !== be) return `errors differ\n      reference: ${ae}\n      ferry:     ${be}`;
  return null;
}

let passed = 0, failed = 0;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-rules-ref-'));
try {
  for (const kind of ['valid', 'invalid']) {
    const dir = path.join(corpus, kind);
    for (const name of fs.readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
      if (filter && !name.includes(filter)) continue;
      const file = path.join(dir, name);
      const text = fs.readFileSync(file, 'utf8');
      const job = { file, version: VERSION, rows: kind === 'valid' ? makeRows(file) : [], requests: kind === 'valid' ? makeRequests(text) : [] };
      const jobFile = path.join(tmp, 'job.json');
      fs.writeFileSync(jobFile, JSON.stringify(job));
      const ferry = JSON.parse(execFileSync(driver, [jobFile], { maxBuffer: 1 << 28 }).toString());
      const ref = await reference(text, job);
      const problems = [];
      if (kind === 'invalid') {
        if (ref.ok) problems.push('the reference accepts this file');
        if (ferry.ok) problems.push('ferry accepts this file');
        else if (!ferry.diags.some((d) => !d.warning && d.line > 0)) problems.push('ferry\'s error has no line:col');
        if (problems.length === 0) {
          passed++;
          console.log(`  ok   ${kind}/${name}: both reject (${ferry.diags.filter((d) => !d.warning)[0].text})`);
        }
      } else if (!ref.ok || !ferry.ok) {
        problems.push(`compile: reference ${ref.ok ? 'ok' : 'rejects: ' + ref.errors.join('; ')}; ferry ${ferry.ok ? 'ok' : 'rejects: ' + ferry.diags.map((d) => d.text).join('; ')}`);
      } else {
        let nops = 0, nlk = 0, nb = 0;
        job.rows.forEach((row, i) => {
          const a = uniqOps(ref.rows[i].ops), b = uniqOps(ferry.rows[i].ops);
          nops += a.length;
          if (show(a) !== show(b)) problems.push(`row ${rowText(row)}: ops differ\n      reference: ${show(a)}\n      ferry:     ${show(b)}`);
          const la = uniqLookups(ref.rows[i].lookups), lb = uniqLookups(ferry.rows[i].lookups);
          nlk += la.length;
          if (show(la) !== show(lb)) problems.push(`row ${rowText(row)}: lookups differ\n      reference: ${show(la)}\n      ferry:     ${show(lb)}`);
        });
        job.requests.forEach((q, i) => {
          nb += ref.requests[i].buckets?.length ?? 0;
          const d = compareRequest(ref.requests[i], ferry.requests[i]);
          if (d) problems.push(`request ${show({ claims: q.claims, params: q.params, streams: q.streams })}: ${d}`);
        });
        if (problems.length === 0) {
          passed++;
          console.log(`  ok   ${kind}/${name}: ${job.rows.length} rows, ${nops} ops, ${nlk} lookup entries, ${job.requests.length} requests, ${nb} buckets equal`);
        }
      }
      if (problems.length) {
        failed++;
        console.log(`  FAIL ${kind}/${name}`);
        for (const p of problems.slice(0, 8)) console.log(`    ${p}`);
        if (problems.length > 8) console.log(`    ... and ${problems.length - 8} more differences`);
      }
    }
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
