// 03_write.test.mjs -- write-back with the official client: local writes go through its
// uploadData connector to POST /api/write, land in Postgres, and the client sees its own write
// acknowledged through the write checkpoint without flickering back to old data; a write the
// rules refuse is reported and disappears from the client.
import { check, done, openClient, waitFor, sql, close, matchesOracle } from './lib.mjs';

const c = await openClient('alice');
await c.db.waitForFirstSync();
check('alice synced', await matchesOracle(c));

// watch the row from the moment it is written locally: it must never vanish or revert
let flicker = false, seen = false;
const watcher = setInterval(async () => {
  const r = await c.db.getAll("SELECT description FROM todos WHERE id = 'local-1'");
  if (r.length === 1) seen = true;
  else if (seen) flicker = true;
}, 5);
await c.db.execute("INSERT INTO todos (id, list_id, description, completed) VALUES ('local-1', 'l-alice-1', 'written offline-first', 0)");
check('a local insert reaches Postgres through /api/write', await waitFor('pg', async () =>
  sql("SELECT description FROM todos WHERE id = 'local-1'") === 'written offline-first', 20000));
check('the upload queue drains', await waitFor('queue', async () =>
  (await c.db.getUploadQueueStats()).count === 0, 20000));
await c.db.execute("UPDATE todos SET completed = 1 WHERE id = 'local-1'");
check('a local update (PATCH) reaches Postgres', await waitFor('patch', async () =>
  sql("SELECT completed FROM todos WHERE id = 'local-1'") === 't', 20000));
check('after the write checkpoint the client equals the oracle', await waitFor('oracle', () => matchesOracle(c), 20000));
await new Promise((r) => setTimeout(r, 500));
clearInterval(watcher);
check('the row never vanished or reverted while its write was acknowledged', seen && !flicker);
const results = c.uploads.flatMap((u) => u.results ?? []);
check('the server answered applied for the uploads', results.length >= 2 && results.every((r) => r.status === 'applied'), JSON.stringify(results));

// a todo in someone else's list: the rules refuse it; the client is told and converges
await c.db.execute("INSERT INTO todos (id, list_id, description, completed) VALUES ('sneaky', 'l-bob-1', 'not mine', 0)");
check('a write the rules refuse is reported as rejected', await waitFor('rejected', async () =>
  c.uploads.flatMap((u) => u.results ?? []).some((r) => r.status === 'rejected'), 20000));
check('the refused row is not in Postgres', sql("SELECT count(*) FROM todos WHERE id = 'sneaky'") === '0');
check('the refused row disappears from the client once the server state is applied', await waitFor('gone', async () =>
  (await c.db.getAll("SELECT * FROM todos WHERE id = 'sneaky'")).length === 0, 20000));
check('no checksum failure or sync error', c.problems.length === 0, c.problems.join(' | '));
await close(c);
done();
