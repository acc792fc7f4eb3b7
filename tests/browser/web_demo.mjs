// web_demo.mjs -- the web demo (deploy/demo/web) in a real headless Chromium, from another
// origin than Ferry. Driven by playwright-core with Debian's chromium (executablePath).
//
//   node web_demo.mjs   env: CHROMIUM, PAGE_URL (the demo's origin), FERRY_ENDPOINT, PG_URI,
//                       FERRYCTL (a script: stop | start), SCREENSHOT, USER_NAME (alice),
//                       FIRST_SYNC_MS (how long the first sync may take; the negative control
//                       runs with a short one)
//
// The SDK syncs inside a SharedWorker, which Playwright's page listeners do not see: the test
// attaches to every worker target through the Chrome DevTools Protocol and records its network
// failures (CORS errors among them) and console errors. Prints one line per check ("ok NAME" or
// "FAIL NAME: why") and, last, "cors_errors=N"; exits 1 when a check failed.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

const require = createRequire(process.env.DEMO_MODULES + '/');
const { chromium } = require('playwright-core');

const env = (k, d) => process.env[k] ?? d;
const user = env('USER_NAME', 'alice');
const pg = env('PG_URI');
const sql = (q) => execFileSync('psql', ['-qtAX', pg, '-c', q], { encoding: 'utf8' }).trim();
let failures = 0;
const ok = (name) => console.log(`ok ${name}`);
const fail = (name, why) => { failures++; console.log(`FAIL ${name}: ${why}`); };
const check = (name, cond, why) => (cond ? ok(name) : fail(name, why));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(fn, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) return undefined;
    await sleep(200);
  }
}

// the oracle: the todos the demo's rules give the user (deploy/demo/sync-rules.yaml)
const oracle = () => sql(`SELECT string_agg(id, ',' ORDER BY id) FROM todos
  WHERE list_id IN (SELECT id FROM lists WHERE owner_id = '${user}' AND org_id IS NULL)
     OR org_id IN (SELECT org_id FROM members WHERE user_id = '${user}')`);
const oracleLists = () => sql(`SELECT string_agg(id, ',' ORDER BY id) FROM lists
  WHERE (owner_id = '${user}' AND org_id IS NULL)
     OR org_id IN (SELECT org_id FROM members WHERE user_id = '${user}')`);

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', 'chromium'),
  headless: true,
  args: ['--no-sandbox'],
});

// ---- the workers' network and console, through CDP ----
const events = { corsErrors: [], failed: [], console: [], requests: [] };
const cdp = await browser.newBrowserCDPSession();
let msgId = 0;
const toWorker = (sessionId, method, params = {}) =>
  cdp.send('Target.sendMessageToTarget', {
    sessionId,
    message: JSON.stringify({ id: ++msgId, method, params }),
  }).catch(() => {});
cdp.on('Target.targetCreated', async ({ targetInfo }) => {
  if (!/worker/.test(targetInfo.type)) return;
  try {
    const { sessionId } = await cdp.send('Target.attachToTarget', {
      targetId: targetInfo.targetId,
      flatten: false,
    });
    await toWorker(sessionId, 'Network.enable');
    await toWorker(sessionId, 'Runtime.enable');
    await toWorker(sessionId, 'Log.enable');
  } catch (e) {
    console.log(`# could not attach to ${targetInfo.type}: ${e.message}`);
  }
});
cdp.on('Target.receivedMessageFromTarget', ({ message }) => {
  const m = JSON.parse(message);
  const p = m.params ?? {};
  if (m.method === 'Network.requestWillBeSent') events.requests.push(p.request.url);
  if (m.method === 'Network.loadingFailed') {
    events.failed.push(`${p.errorText}${p.corsErrorStatus ? ' cors=' + p.corsErrorStatus.corsError : ''}`);
    if (p.corsErrorStatus) events.corsErrors.push(p.corsErrorStatus.corsError);
  }
  if (m.method === 'Log.entryAdded' && p.entry.level === 'error') {
    events.console.push(p.entry.text);
    if (/CORS/.test(p.entry.text)) events.corsErrors.push(p.entry.text);
  }
  if (m.method === 'Runtime.consoleAPICalled' && p.type === 'error')
    events.console.push(p.args.map((a) => a.value ?? a.description).join(' '));
});
await cdp.send('Target.setDiscoverTargets', { discover: true });

const context = await browser.newContext();
const page = await context.newPage();
page.on('console', (m) => {
  if (m.type() === 'error') {
    events.console.push(`page: ${m.text()}`);
    if (/CORS/.test(m.text())) events.corsErrors.push(m.text());
  }
});
page.on('requestfailed', (r) => events.failed.push(`page: ${r.url()} ${r.failure()?.errorText}`));

const pageIds = () => page.$$eval('tr[data-id]', (rows) => rows.map((r) => r.dataset.id).sort().join(','));
const pageLists = () => page.$$eval('table[data-list]', (t) => t.map((x) => x.dataset.list).sort().join(','));
const synced = () => page.$eval('#status', (s) => s.dataset.synced === 'true');
const connected = () => page.$eval('#status', (s) => s.dataset.connected === 'true');

try {
  await page.goto(`${env('PAGE_URL')}?user=${user}`);
  const firstSync = await until(synced, Number(env('FIRST_SYNC_MS', '60000')));
  check('the first sync completes in the browser', firstSync, 'the page never reported a completed sync');
  if (!firstSync) throw new Error('no first sync');
  const want = oracle();
  const got = await until(async () => ((await pageIds()) === want ? want : undefined), 10000);
  check("the page's todos equal the SQL oracle", got === want, `page ${await pageIds()} oracle ${want}`);
  check("the page's lists equal the oracle", (await pageLists()) === oracleLists(), `${await pageLists()} vs ${oracleLists()}`);

  // a row inserted with psql renders without a reload
  sql(`INSERT INTO todos (id, list_id, org_id, description, created_by)
       VALUES ('t-psql', 'l-${user}', NULL, 'inserted with psql', '${user}')`);
  const live = await until(() => page.$('tr[data-id="t-psql"]'), 30000);
  check('a row inserted with psql renders without a reload', !!live, 'it never appeared');

  // completing a todo in the page reaches Postgres
  await page.click('input[data-todo="t-psql"]');
  const done = await until(async () => sql("SELECT completed FROM todos WHERE id = 't-psql'") === 't', 30000);
  check('completing a todo in the page reaches Postgres', done, 'completed stayed false');

  // a todo added while Ferry is down lands in Postgres once it is back
  execFileSync(env('FERRYCTL'), ['stop']);
  await until(async () => !(await connected()), 30000);
  await page.selectOption('#list', `l-${user}`);
  await page.fill('#description', 'added while ferry was down');
  await page.click('#add button');
  await until(() => page.$('tr td.desc:text("added while ferry was down")'), 10000);
  const before = sql("SELECT count(*) FROM todos WHERE description = 'added while ferry was down'");
  check('the offline todo shows at once in the page', !!(await page.$('td.desc:text("added while ferry was down")')), 'not shown');
  check('and is not in Postgres while ferry is down', before === '0', `count ${before}`);
  execFileSync(env('FERRYCTL'), ['start']);
  const landed = await until(
    async () => sql("SELECT count(*) FROM todos WHERE description = 'added while ferry was down'") === '1', 60000);
  check('the offline todo lands in Postgres after ferry is back', landed, 'it never arrived');
  const again = await until(async () => ((await pageIds()) === oracle() ? true : undefined), 30000);
  check('the page equals the oracle again', again, `${await pageIds()} vs ${oracle()}`);
  const back = await until(connected, 60000);
  check('the status shows the page connected again', back, 'still offline');
  await page.screenshot({ path: env('SCREENSHOT', 'web-demo.png'), fullPage: true });
  ok(`screenshot saved (${env('SCREENSHOT', 'web-demo.png')})`);
} catch (e) {
  fail('the run', e.message.split('\n')[0]);
}
check('the SharedWorker was observed (its requests reached Ferry)',
  events.requests.some((u) => u.includes('/sync/stream')), `requests seen: ${events.requests.length}`);
check('no request failed CORS in the worker or the page', events.corsErrors.length === 0,
  events.corsErrors.slice(0, 3).join(' | '));
for (const f of events.failed.slice(0, 5)) console.log(`# failed request: ${f}`);
for (const c of events.console.slice(0, 5)) console.log(`# console error: ${c.slice(0, 300)}`);
console.log(`cors_errors=${events.corsErrors.length}`);
await browser.close();
process.exit(failures === 0 ? 0 : 1);
