// build.mjs -- bundle the web demo into dist/: app.js (esbuild), the page and its style, and the
// SDK's prebuilt worker with its WebAssembly (copied as files, loaded by URL at run time)
import { build } from 'esbuild';
import { cp, mkdir, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, 'dist');
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(here, 'src/app.js')],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  outfile: join(out, 'app.js'),
  logLevel: 'warning',
});
await cp(join(here, 'src/index.html'), join(out, 'index.html'));
await cp(join(here, 'src/app.css'), join(out, 'app.css'));
const worker = createRequire(import.meta.url).resolve('@powersync/web/bundled_worker');
await cp(dirname(worker), join(out, '@powersync'), { recursive: true });
console.log(`web demo built in ${out}`);
