// 01_sync.test.mjs -- initial and live sync with the official client: three users, each client's
// tables equal to what the rules give that user, changes arriving live, a membership change
// adding and removing a bucket, a priority-0 bucket, no checksum failure.
import { check, done, openClient, waitFor, matchesOracle, sql, close, tableEquals, oracle, columns } from './lib.mjs';

const users = ['alice', 'bob', 'carol'];
const clients = {};
for (const u of users) clients[u] = await openClient(u);

for (const u of users) {
  const c = clients[u];
  await c.db.waitForFirstSync({ priority: 0 });
  const ann = await c.db.getAll('SELECT id FROM announcements');
  check(`${u}: the priority-0 bucket is usable first (${ann.length} rows)`, ann.length === 2);
  await c.db.waitForFirstSync();
  check(`${u}: initial sync equals the SQL oracle for ${u}`, await matchesOracle(c));
}
const todoCount = (await clients.alice.db.getAll('SELECT count(*) AS n FROM todos'))[0].n;
check('alice got her 200 todos and nobody else\'s', todoCount === 200, `got ${todoCount}`);

sql("INSERT INTO todos VALUES ('live-1', 'l-alice-1', 'added live', false)");
check('an insert arrives live', await waitFor('insert', async () =>
  (await clients.alice.db.getAll("SELECT * FROM todos WHERE id = 'live-1'")).length === 1));
sql("UPDATE todos SET description = 'edited', completed = true WHERE id = 'live-1'");
check('an update arrives live', await waitFor('update', async () =>
  (await clients.alice.db.getAll("SELECT * FROM todos WHERE id = 'live-1' AND description = 'edited' AND completed = 1")).length === 1));
sql("DELETE FROM todos WHERE id = 'live-1'");
check('a delete arrives live', await waitFor('delete', async () =>
  (await clients.alice.db.getAll("SELECT * FROM todos WHERE id = 'live-1'")).length === 0));
sql("UPDATE lists SET owner_id = 'bob' WHERE id = 'l-alice-5'");
check('a list moving to another owner leaves one client and reaches the other (buckets removed and added)',
  await waitFor('move', async () => (await matchesOracle(clients.alice)) && (await matchesOracle(clients.bob))));

sql("INSERT INTO members VALUES ('m9', 'globex', 'carol')");
check('a new membership adds the org bucket', await waitFor('member add', async () =>
  (await clients.carol.db.getAll('SELECT * FROM org_docs')).length === 10));
sql("DELETE FROM members WHERE id = 'm9'");
check('removing the membership removes the org bucket and its rows', await waitFor('member remove', async () =>
  (await clients.carol.db.getAll('SELECT * FROM org_docs')).length === 0));

sql("INSERT INTO announcements VALUES ('a3', 'to everyone')");
let all = true;
for (const u of users)
  all = all && await waitFor('global', async () => (await clients[u].db.getAll("SELECT * FROM announcements WHERE id = 'a3'")).length === 1);
check('a global change reaches every client', all);

for (const u of users) {
  check(`${u}: still equal to the oracle after all changes`, await waitFor('final', () => matchesOracle(clients[u])));
  check(`${u}: the client reported no checksum failure or sync error`, clients[u].problems.length === 0, clients[u].problems.join(' | '));
}
for (const u of users) await close(clients[u]);
done();
