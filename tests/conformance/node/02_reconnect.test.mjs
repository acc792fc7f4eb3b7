// 02_reconnect.test.mjs -- token expiry and reconnect with a new token; ferry restarted under a
// connected client: it reconnects and resumes without downloading everything again.
import { check, done, openClient, waitFor, matchesOracle, sql, close, ferryctl, metric } from './lib.mjs';

// a token that expires in 25 s: 20 s before expiry ferry says so, the client fetches a new one
const c = await openClient('alice', { ttl: 25 });
await c.db.waitForFirstSync();
check('alice synced with a short-lived token', await matchesOracle(c));
const refreshed = await waitFor('refresh', async () => c.credentialFetches >= 2, 20000);
check(`the client fetched a new token before expiry (${c.credentialFetches} fetches)`, refreshed);
sql("UPDATE todos SET description = 'after refresh' WHERE id = 't-l-alice-1-1'");
check('sync continues on the new token', await waitFor('after refresh', async () =>
  (await c.db.getAll("SELECT * FROM todos WHERE id = 't-l-alice-1-1' AND description = 'after refresh'")).length === 1, 20000));

const d = await openClient('bob');
await d.db.waitForFirstSync();
ferryctl('restart');
sql("UPDATE todos SET description = 'while restarting' WHERE id = 't-l-bob-1-1'");
check('after a ferry restart the client reconnects and catches up', await waitFor('restart', async () =>
  (await d.db.getAll("SELECT * FROM todos WHERE id = 't-l-bob-1-1' AND description = 'while restarting'")).length === 1, 30000));
const sent = await metric('ferry_stream_ops_sent_total');
check(`the reconnected clients did not download everything again (${sent} ops sent since restart, bob alone has 200 todos)`,
  sent < 50, `ops sent ${sent}`);
check('bob equals the oracle after the restart', await waitFor('oracle', () => matchesOracle(d)));
for (const x of [c, d]) check(`${x.sub}: no checksum failure or sync error`, x.problems.length === 0, x.problems.join(' | '));
await close(c);
await close(d);
done();
