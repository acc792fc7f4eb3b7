// 04_rules_change.test.mjs -- the sync rules change while official clients are connected: ferry
// builds the new rule version beside the old one and switches; the clients move to the new
// buckets over their open connection (no reconnect, no new token), keep data equal to the
// oracle the whole time, see no checksum failure, and receive changes made during the build.
import { check, done, openClient, waitFor, matchesOracle, sql, close } from './lib.mjs';
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';

const rulesFile = join(dirname(process.env.FERRY_CONFIG), 'sync-rules.yaml');
const endpoint = process.env.FERRY_ENDPOINT;

const clients = [await openClient('alice'), await openClient('bob')];
for (const c of clients) await c.db.waitForFirstSync();
for (const c of clients) check(`${c.sub}: synced with rule version 1`, await matchesOracle(c));
const buckets = async (c) => (await c.db.getAll('SELECT name FROM ps_buckets ORDER BY name')).map((r) => r.name);
check('the client holds version 1 buckets', (await buckets(clients[0])).every((b) => b.startsWith('1#') || b.startsWith('$')),
  (await buckets(clients[0])).join(' '));

// the same rows for every user, in buckets of another name (and so another layout on the client)
const rules = readFileSync(rulesFile, 'utf8').replace('  list_todos:\n', '  todos_of_list:\n');
check('the test changed the rules', rules.includes('todos_of_list'));
const fetchesBefore = clients.map((c) => c.credentialFetches);
writeFileSync(`${rulesFile}.new`, rules);
renameSync(`${rulesFile}.new`, rulesFile);

// a change made while version 2 is built must reach the clients once it serves
sql("UPDATE todos SET description = 'during the build' WHERE id = 't-l-alice-1-1'");
const switched = await waitFor('switch', async () => {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  return /ferry_replication_slot_info\{slot="[a-z0-9_]*_2"/.test(text);
}, 60000);
check('ferry switched to rule version 2', switched);
for (const c of clients) {
  const moved = await waitFor('buckets', async () => {
    const bs = await buckets(c);
    return bs.length > 0 && bs.every((b) => b.startsWith('2#') || b.startsWith('$'));
  }, 30000);
  check(`${c.sub}: moved to the version 2 buckets over the open connection`, moved, (await buckets(c)).join(' '));
  check(`${c.sub}: equals the oracle after the switch`, await waitFor('oracle', () => matchesOracle(c), 20000));
}
check('the change made during the build arrived', (await clients[0].db.getAll(
  "SELECT id FROM todos WHERE id = 't-l-alice-1-1' AND description = 'during the build'")).length === 1);
const alice = await buckets(clients[0]);
check('alice has the renamed bucket definition', alice.some((b) => b.startsWith('2#todos_of_list')), alice.join(' '));
check('no client fetched a new token (no reconnect)', clients.every((c, i) => c.credentialFetches === fetchesBefore[i]),
  `${fetchesBefore} -> ${clients.map((c) => c.credentialFetches)}`);

sql("INSERT INTO todos VALUES ('after-switch', 'l-bob-1', 'new rules live', false)");
check('changes stream live with the new rules', await waitFor('live', async () =>
  (await clients[1].db.getAll("SELECT id FROM todos WHERE id = 'after-switch'")).length === 1, 20000));
for (const c of clients) check(`${c.sub}: no checksum failure or sync error`, c.problems.length === 0, c.problems.join(' | '));
for (const c of clients) await close(c);
done();
