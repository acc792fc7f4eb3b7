// powersync-client.mjs -- the demo's step with the official PowerSync Node client (@powersync/node)
//
// Connects to ferry as one user, waits for the first full sync, prints what arrived, writes a
// todo locally and waits until its upload through POST /api/write is answered, then exits.
// deploy/demo.sh runs it with the PowerSync client installed for tests/conformance/node.
// Environment: FERRY_ENDPOINT (http://127.0.0.1:8080), FERRY_TOKEN (a JWT for the user),
// DEMO_DIR (where the client's SQLite file goes).
import { PowerSyncDatabase, Schema, Table, column, SyncStreamConnectionMethod } from '@powersync/node';

const endpoint = process.env.FERRY_ENDPOINT;
const token = process.env.FERRY_TOKEN;
const t = column.text;

// the client-side schema: the columns the demo's sync rules send (deploy/demo/sync-rules.yaml)
const schema = new Schema({
  announcements: new Table({ body: t }),
  lists: new Table({ org_id: t, owner_id: t, name: t }),
  todos: new Table({ list_id: t, org_id: t, description: t, completed: column.integer, created_by: t }),
  rooms: new Table({ org_id: t, name: t }),
  bookings: new Table({ room_id: t, org_id: t, booked_by: t, starts_at: t, ends_at: t }),
  ferry_violations: new Table({ constraint_name: t, table_name: t, row_id: t, conflicting_ids: t,
                                message: t, created_at: t }),
});

// The connector: credentials for the stream, and uploads of local writes to Ferry's /api/write.
const answers = [];
const connector = {
  async fetchCredentials() { return { endpoint, token }; },
  async uploadData(db) {
    const batch = await db.getCrudBatch(100);
    if (!batch) return;
    const res = await fetch(`${endpoint}/api/write`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify({ client_id: await db.getClientId(), batch: batch.crud.map((e) => e.toJSON()) }),
    });
    if (res.status !== 200) throw new Error(`ferry write-back: HTTP ${res.status}: ${await res.text()}`);
    answers.push(...(await res.json()).results);
    await batch.complete();
  },
};

const quiet = { log() {} };
const db = new PowerSyncDatabase({ schema, database: { dbFilename: 'powersync-node.db', dbLocation: process.env.DEMO_DIR }, logger: quiet });
const deadline = setTimeout(() => { console.log('   powersync: timed out'); process.exit(1); }, 60000);
await db.init();
await db.connect(connector, { connectionMethod: SyncStreamConnectionMethod.HTTP });
await db.waitForFirstSync();
const count = async (table) => (await db.get(`SELECT count(*) AS n FROM ${table}`)).n;
const lists = (await db.getAll('SELECT id FROM lists ORDER BY id')).map((r) => r.id).join(' ');
console.log(`   powersync: first sync complete: lists ${lists}; ${await count('todos')} todos, ` +
            `${await count('rooms')} rooms, ${await count('bookings')} bookings, ${await count('announcements')} announcement`);

await db.execute("INSERT INTO todos (id, list_id, description, completed, created_by) VALUES (uuid(), 'l-alice', 'Added with the PowerSync Node client', 0, 'alice')");
while (answers.length === 0) await new Promise((r) => setTimeout(r, 100));
console.log(`   powersync: local insert uploaded through /api/write: ${answers.map((a) => a.status).join(', ')}`);
clearTimeout(deadline);
await db.disconnect();
await db.close();
