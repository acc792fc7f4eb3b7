// app.js -- the web demo's page: the signed-in user's lists and todos, live, from a local SQLite
// database that @powersync/web keeps in sync with Ferry (served from another origin than this
// page). Adding or completing a todo writes locally at once; the SDK uploads the queue to
// Ferry's /api/write when it can (offline writes wait in the queue).
import {
  PowerSyncDatabase,
  Schema,
  Table,
  column,
  SyncStreamConnectionMethod,
} from '@powersync/web';

const config = await (await fetch('/config.json')).json(); // { endpoint, users }
const params = new URLSearchParams(location.search);
const user = params.get('user') || config.users[0];

// the tables and columns the demo's sync rules send (deploy/demo/sync-rules.yaml)
const schema = new Schema({
  lists: new Table({ org_id: column.text, owner_id: column.text, name: column.text }),
  todos: new Table({
    list_id: column.text,
    org_id: column.text,
    description: column.text,
    completed: column.integer,
    created_by: column.text,
  }),
});

// Tokens come from the demo's own static server (demo only: a real app gets them from its
// auth server). Ferry has no token endpoint.
async function token() {
  const res = await fetch(`/token?user=${encodeURIComponent(user)}`);
  if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
  return (await res.json()).token;
}

const connector = {
  async fetchCredentials() {
    return { endpoint: config.endpoint, token: await token() };
  },
  async uploadData(db) {
    const batch = await db.getCrudBatch(100);
    if (!batch) return;
    const res = await fetch(`${config.endpoint}/api/write`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${await token()}` },
      body: JSON.stringify({
        client_id: await db.getClientId(),
        batch: batch.crud.map((e) => e.toJSON()),
      }),
    });
    if (res.status !== 200) throw new Error(`upload: HTTP ${res.status}`); // the SDK retries
    for (const r of (await res.json()).results) {
      if (r.status === 'rejected') console.warn(`write ${r.op_id} refused: ${r.code}: ${r.message}`);
    }
    await batch.complete();
  },
};

// the workers are served as files (copied by build.mjs), not bundled into this script
const db = new PowerSyncDatabase({
  schema,
  database: { dbFilename: `ferry-demo-${user}.sqlite`, worker: '/@powersync/worker.js' },
  sync: { worker: '/@powersync/worker.js' },
});
window.ferryDemo = { db, user }; // for the browser test

// ---- rendering ----
const $ = (id) => document.getElementById(id);
$('endpoint').textContent = `Ferry: ${config.endpoint}`;
for (const u of config.users) {
  const o = document.createElement('option');
  o.value = o.textContent = u;
  o.selected = u === user;
  $('user').append(o);
}
$('user').addEventListener('change', (e) => {
  location.search = `?user=${encodeURIComponent(e.target.value)}`;
});

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...kids);
  return e;
}

function render(lists, todos) {
  const root = $('lists');
  root.replaceChildren();
  const pick = $('list');
  const chosen = pick.value;
  pick.replaceChildren(...lists.map((l) => el('option', { value: l.id }, l.name)));
  if (chosen) pick.value = chosen;
  for (const l of lists) {
    const table = el('table', { 'data-list': l.id }, el('caption', {}, l.name));
    for (const t of todos.filter((t) => t.list_id === l.id)) {
      const box = el('input', { type: 'checkbox', 'data-todo': t.id });
      box.checked = !!t.completed;
      box.addEventListener('change', () =>
        db.execute('UPDATE todos SET completed = ? WHERE id = ?', [box.checked ? 1 : 0, t.id]),
      );
      const row = el('tr', { 'data-id': t.id, class: t.completed ? 'done' : '' },
        el('td', {}, box), el('td', { class: 'desc' }, t.description), el('td', {}, t.created_by));
      table.append(row);
    }
    root.append(table);
  }
}

let lists = [], todos = [];
db.watch('SELECT id, name, org_id FROM lists ORDER BY name', [], {
  onResult: (r) => { lists = r.rows?._array ?? []; render(lists, todos); },
});
db.watch('SELECT id, list_id, description, completed, created_by FROM todos ORDER BY id', [], {
  onResult: (r) => { todos = r.rows?._array ?? []; render(lists, todos); },
});

function showStatus(s) {
  const parts = [s.connected ? 'connected' : s.connecting ? 'connecting' : 'offline'];
  if (s.dataFlowStatus?.uploading) parts.push('uploading');
  if (s.dataFlowStatus?.downloading) parts.push('downloading');
  parts.push(s.lastSyncedAt ? `last synced ${s.lastSyncedAt.toLocaleTimeString()}` : 'not synced yet');
  $('status').textContent = parts.join(' · ');
  $('status').dataset.connected = String(!!s.connected);
  $('status').dataset.synced = String(!!s.hasSynced);
}
db.registerListener({ statusChanged: showStatus });

$('add').addEventListener('submit', async (e) => {
  e.preventDefault();
  const list = lists.find((l) => l.id === $('list').value);
  const text = $('description').value.trim();
  if (!list || !text) return;
  await db.execute(
    'INSERT INTO todos (id, list_id, org_id, description, completed, created_by) VALUES (uuid(), ?, ?, ?, 0, ?)',
    [list.id, list.org_id ?? null, text, user],
  );
  $('description').value = '';
});

await db.init();
showStatus(db.currentStatus);
await db.connect(connector, { connectionMethod: SyncStreamConnectionMethod.HTTP });
