// 06_merge.test.mjs -- per-column merge with the official client: a counter merged with "add".
// Two clients of one user, both offline, each increment the same counter; the app's table has
// trackPrevious, so every PATCH carries the value it replaced ("old", CrudEntry.toJSON()). Both
// increments count once both have uploaded, and both clients converge on the sum. A client
// whose table does not track previous values gets its PATCH rejected with the reason.
import { Schema, Table, column } from '@powersync/node';
import { check, done, openClient, waitFor, sql, close } from './lib.mjs';

const tracked = new Schema({
  counters: new Table({ owner_id: column.text, likes: column.integer }, { trackPrevious: true }),
});
const untracked = new Schema({ counters: new Table({ owner_id: column.text, likes: column.integer }) });
const likes = async (c) => (await c.db.getAll("SELECT likes FROM counters WHERE id = 'k1'"))[0]?.likes;

const a = await openClient('alice', { clientSchema: tracked, crudJson: true });
const b = await openClient('alice', { clientSchema: tracked, crudJson: true });
check('both clients have the counter', await waitFor('synced', async () => (await likes(a)) === 0 && (await likes(b)) === 0, 20000));
await a.db.disconnect();
await b.db.disconnect();
await a.db.execute("UPDATE counters SET likes = likes + 1 WHERE id = 'k1'");
await b.db.execute("UPDATE counters SET likes = likes + 1 WHERE id = 'k1'");
check('offline, each sees only its own increment', (await likes(a)) === 1 && (await likes(b)) === 1);
const crud = await a.db.getNextCrudTransaction();
check('the queued PATCH carries old (trackPrevious)', crud?.crud[0]?.toJSON().old?.likes === 0, JSON.stringify(crud?.crud[0]?.toJSON()));
await openAgain(a);
await openAgain(b);
check('both increments count in Postgres', await waitFor('pg', async () => sql("SELECT likes FROM counters WHERE id = 'k1'") === '2', 20000), sql("SELECT likes FROM counters WHERE id = 'k1'"));
check('both clients converge on the sum', await waitFor('converge', async () => (await likes(a)) === 2 && (await likes(b)) === 2, 20000));
const results = [...a.uploads, ...b.uploads].flatMap((u) => u.results ?? []);
check('both uploads applied, the second merged', results.length === 2 && results.every((r) => r.status === 'applied') &&
  results.some((r) => r.columns?.likes === 'merged'), JSON.stringify(results));
await close(a);
await close(b);

const c = await openClient('alice', { clientSchema: untracked, crudJson: true });
check('an untracked client syncs', await waitFor('synced', async () => (await likes(c)) === 2, 20000));
await c.db.execute("UPDATE counters SET likes = likes + 1 WHERE id = 'k1'");
check('its PATCH without old is rejected, naming trackPrevious', await waitFor('rejected', async () =>
  c.uploads.flatMap((u) => u.results ?? []).some((r) => r.status === 'rejected' && r.code === 'old_required' && /trackPrevious/.test(r.message)), 20000),
  JSON.stringify(c.uploads));
check('and the counter is unchanged', sql("SELECT likes FROM counters WHERE id = 'k1'") === '2');
check('its replica converges back to the server value', await waitFor('back', async () => (await likes(c)) === 2, 20000));
check('no checksum failure or sync error', [...a.problems, ...b.problems, ...c.problems].length === 0,
  [...a.problems, ...b.problems, ...c.problems].join(' | '));
await close(c);
done();

// reconnect a client opened by openClient (its connect options are kept by the SDK)
async function openAgain(client) {
  await client.db.connect(client.connector, client.options);
}
