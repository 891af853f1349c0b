// Browser end-to-end test of the React example in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core), against the real documents example:
//
//   node e2e.mjs [<screenshot-dir>]
//
// It starts the documents example (the binary `cargo build --example documents` leaves in
// ${CARGO_TARGET_DIR:-target}/debug/examples/), and `vite preview` of the development build in
// dist-dev/ (`NODE_ENV=development vite build --mode development --outDir dist-dev`: React's
// StrictMode mounts twice only in development), which forwards /occupancy to it. Then: a page in
// StrictMode holds with one join, a second page waits behind it, a reload keeps the place, a route
// to the list leaves (the other page holds after the hook's delay), a closed page hands over, a
// server that goes away makes the page say so and disables editing until it is back, and a take
// over tells the displaced holder who took it.
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { Server } from '../../clients/js/test/support.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const shots = process.argv[2] || join(here, '../../target/tmp/react-e2e');
mkdirSync(shots, { recursive: true });
const WAIT = 30000;
const step = (s) => console.log(`react-e2e: ${s}`);
const watchdog = setTimeout(() => {
  console.error('react-e2e: overall timeout');
  process.exit(1);
}, 180000);

// The documents example: a long grace for lost connections, the default close grace (2 s).
const server = new Server('documents', { GRACE_MS: '60000' });
await server.start();

const freePort = () =>
  new Promise((ok, fail) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });
const port = await freePort();
const preview = spawn(
  process.execPath,
  [join(here, 'node_modules/vite/bin/vite.js'), 'preview', '--outDir', 'dist-dev', '--host', '127.0.0.1', '--port', String(port), '--strictPort'],
  { cwd: here, env: { ...process.env, OCCUPANCY_URL: server.http }, stdio: ['ignore', 'pipe', 'pipe'] },
);
let previewLog = '';
preview.stdout.on('data', (d) => (previewLog += d));
preview.stderr.on('data', (d) => (previewLog += d));
const base = `http://127.0.0.1:${port}`;
for (let i = 0; ; i++) {
  try {
    if ((await fetch(base + '/')).ok) break;
  } catch {
    // not listening yet
  }
  if (i > 200) throw new Error(`vite preview did not start:\n${previewLog}`);
  await new Promise((r) => setTimeout(r, 100));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});

const errors = [];
async function open(user, path = '/document/1') {
  const context = await browser.newContext({ viewport: { width: 720, height: 640 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(`[${user}] ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && !/WebSocket|ERR_CONNECTION_REFUSED|502/.test(m.text()) && errors.push(`[${user}] ${m.text()}`));
  const name = user[0].toUpperCase() + user.slice(1);
  await page.goto(`${base}${path}?user=${user}&name=${name}`);
  return { context, page };
}
async function expectText(page, id, pattern, what, timeout = WAIT) {
  const loc = page.locator(`[data-testid="${id}"]`);
  try {
    await loc.filter({ hasText: pattern }).waitFor({ timeout });
  } catch {
    throw new Error(`${what}: [${id}] is ${JSON.stringify(await loc.innerText().catch(() => '(absent)'))}, expected ${pattern}`);
  }
}
const editable = (page) => page.locator('[data-testid="editor"]').isEnabled();

let failed = false;
try {
  const ann = await open('ann');
  await expectText(ann.page, 'position', /You hold this document/, 'the first page holds');
  await expectText(ann.page, 'status', /live/, 'the first page is connected');
  const mounts = await ann.page.evaluate(() => window.mounts);
  if (mounts !== 2) throw new Error(`StrictMode should mount the page twice (development build), it did ${mounts}`);
  if (!(await editable(ann.page))) throw new Error('the holder cannot type');
  step('Ann holds document 1 (StrictMode mounted the page twice)');

  const bob = await open('bob');
  await expectText(bob.page, 'position', /You are #1 in line/, 'the second page waits right behind: one place for Ann');
  await expectText(bob.page, 'holder', /Held by Ann since/, 'the second page shows the holder');
  await expectText(bob.page, 'queue', /Bob \(you\)/, 'and itself in the line');
  await expectText(ann.page, 'queue', /Bob/, 'the holder sees who waits');
  if (await editable(bob.page)) throw new Error('a waiting page can type');
  const left = await ann.page.evaluate(() => window.received.filter((ev) => ev === 'left').length);
  if (left !== 0) throw new Error(`the double mount left the room ${left} times`);
  step('Bob waits (#1) and sees Ann; the double mount sent no leave');

  await ann.page.reload();
  await expectText(ann.page, 'position', /You hold this document/, 'a reload keeps the place');
  await expectText(bob.page, 'position', /You are #1 in line/, 'the other page is unchanged by the reload');
  step('Ann reloaded and still holds');

  // A route change: Ann goes to the list (no reload); the hook leaves after its short delay.
  await ann.page.locator('[data-testid="back"]').click();
  await expectText(ann.page, 'state-1', /Bob is editing/, 'the list shows Bob editing once Ann left');
  await expectText(bob.page, 'position', /You hold this document/, 'Bob holds after Ann navigated away');
  await ann.page.locator('[data-testid="open-1"]').click();
  await expectText(ann.page, 'position', /You are #1 in line/, 'back on the document, Ann waits');
  step('Ann navigated to the list: Bob holds; back on the document Ann is #1');

  // A closed page hands over after the close grace (2 s), not the lost-connection grace (60 s).
  const closedAt = Date.now();
  await bob.context.close();
  await expectText(ann.page, 'position', /You hold this document/, 'the next in line holds after the page closed', 20000);
  step(`Bob closed his page; Ann holds ${Date.now() - closedAt} ms later`);

  // The server goes away: the page says so and stops editing at once, then holds again.
  await server.kill();
  await expectText(ann.page, 'position', /Connection lost — reconnecting/, 'a lost connection is shown');
  if (await editable(ann.page)) throw new Error('a stale page can type');
  await ann.page.screenshot({ path: join(shots, 'stale.png') });
  await server.start();
  await expectText(ann.page, 'position', /You hold this document/, 'the place is confirmed again after the server is back');
  if (!(await editable(ann.page))) throw new Error('the confirmed holder cannot type');
  step('the server went away: Ann\'s page said so and was read-only, then held again');

  const carl = await open('carl');
  await expectText(carl.page, 'position', /You are #1 in line/, 'a third page waits');
  await carl.page.locator('[data-testid="takeover"]').click();
  await expectText(carl.page, 'position', /You hold this document/, 'take over');
  await expectText(ann.page, 'position', /You are #1 in line/, 'the displaced holder is next in line');
  await expectText(ann.page, 'banner', /Carl took the document over from you/, 'the displaced holder is told who');
  await ann.page.screenshot({ path: join(shots, 'displaced.png') });
  step('Carl took over; Ann is #1 and told so');

  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
  console.log(`react-e2e: screenshots in ${shots}`);
} catch (e) {
  failed = true;
  console.error('react-e2e FAILED:', e.message);
  try {
    for (const [i, ctx] of browser.contexts().entries()) {
      for (const [j, p] of ctx.pages().entries()) await p.screenshot({ path: join(shots, `failure-${i}-${j}.png`) });
    }
  } catch {
    // best effort
  }
} finally {
  clearTimeout(watchdog);
  await browser.close();
  preview.kill();
  await server.kill();
}
console.log(failed ? 'react-e2e: 0 passed, 1 failed' : 'react-e2e: 1 passed, 0 failed');
process.exit(failed ? 1 : 0);
