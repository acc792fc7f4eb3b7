// server.mjs -- the web demo's own origin: serves dist/ and mints demo tokens (demo only)
//
//   node server.mjs   with FERRY_ENDPOINT (Ferry's URL, another origin), DEMO_SECRET and DEMO_KID
//                     (an HS256 key of Ferry's auth.keys), DEMO_AUDIENCE (auth.audience, "ferry"),
//                     DEMO_USERS ("alice,bob,carol"), DEMO_WEB_PORT (0: any free port)
//
// Binds 127.0.0.1 only and prints "web demo: http://127.0.0.1:PORT/" once listening. GET /token
// ?user=NAME answers {"token": …} for a user of DEMO_USERS: anyone who reaches this port can
// be any demo user, which is why it never listens beyond loopback. Ferry itself has no token
// endpoint; a real app gets its tokens from its own auth server.
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), 'dist');
const env = (k, d) => process.env[k] ?? d;
const endpoint = env('FERRY_ENDPOINT', 'http://127.0.0.1:8080');
const secret = env('DEMO_SECRET');
const kid = env('DEMO_KID', 'dev');
const audience = env('DEMO_AUDIENCE', 'ferry');
const users = env('DEMO_USERS', 'alice,bob,carol').split(',');
if (!secret) {
  console.error('web demo: DEMO_SECRET (the HS256 secret of a key in ferry.yaml) is not set');
  process.exit(2);
}

const b64url = (s) => Buffer.from(s).toString('base64url');
function mint(sub) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid }));
  const body = b64url(JSON.stringify({ sub, aud: audience, iat: now, exp: now + 3600 }));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm', '.map': 'application/json', '.json': 'application/json',
};

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain', 'GET only\n');
  if (url.pathname === '/config.json')
    return send(res, 200, types['.json'], JSON.stringify({ endpoint, users }));
  if (url.pathname === '/token') {
    const user = url.searchParams.get('user');
    if (!users.includes(user)) return send(res, 404, types['.json'], '{"error":"no such demo user"}');
    return send(res, 200, types['.json'], JSON.stringify({ token: mint(user) }));
  }
  const path = normalize(url.pathname === '/' ? '/index.html' : url.pathname);
  if (path.includes('..')) return send(res, 400, 'text/plain', 'bad path\n');
  try {
    const body = await readFile(join(root, path));
    send(res, 200, types[extname(path)] ?? 'application/octet-stream', body);
  } catch {
    send(res, 404, 'text/plain', 'not found\n');
  }
});
server.listen(Number(env('DEMO_WEB_PORT', '0')), '127.0.0.1', () => {
  console.log(`web demo: http://127.0.0.1:${server.address().port}/`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
