// Browser end-to-end test of the documents example in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core). Run by tests/browser.rs:
//
//   node tests/browser/e2e.mjs <base-url> <screenshot-dir> [<idle-server-url> <idle-ms>]
//
// Two pages open the same document: the first holds it, the second shows who holds it and its
// place in line. A reload of the holder keeps its place (resume). Then the holder's tab is
// closed and the second page must show that it now holds the document, after the close grace
// (2 s) and well before the grace of a lost connection (60 s on the test's server). Finally a third page
// joins and takes the document over. On the idle server (an idle timeout of <idle-ms>), a holder
// who keeps typing keeps the document while someone waits, and loses it once it stops: the other
// page holds and the first says it was idle. Screenshots go to <screenshot-dir>.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, shots = 'target/browser-e2e', idleBase, idleMs] = process.argv.slice(2);
if (!base) {
  console.error('usage: node e2e.mjs <base-url> [screenshot-dir]');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const WAIT = 30000; // for anything the server does at once, with room to spare
// A closed tab is handed over after the close grace (2 s); the server's grace for lost
// connections is 60 s, so a hand-over within this wait can only be the close grace's.
const CLOSED_WAIT = 20000;
const step = (s) => console.log(`e2e: ${s}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // playwright-core gives every launch a fresh temporary profile (--user-data-dir).
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
  ],
});
const watchdog = setTimeout(() => {
  console.error('e2e: overall timeout');
  process.exit(1);
}, 180000);

async function open(name, url = `${base}/doc/1?name=${encodeURIComponent(name)}`) {
  const context = await browser.newContext({ viewport: { width: 720, height: 640 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e.message));
  page.on('console', (m) => m.type() === 'error' && console.error(`[${name}] console:`, m.text()));
  await page.goto(url);
  return { context, page };
}

const text = (page, id) => page.locator(`[data-testid="${id}"]`).innerText();
async function expectText(page, id, pattern, what, timeout = WAIT) {
  const loc = page.locator(`[data-testid="${id}"]`);
  try {
    await loc.filter({ hasText: pattern }).waitFor({ timeout });
  } catch (e) {
    throw new Error(`${what}: [${id}] is ${JSON.stringify(await loc.innerText())}, expected ${pattern}`);
  }
}

let failed = false;
try {
  // The list page shows the documents.
  {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${base}/`);
    await page.locator('[data-testid="documents"] li').first().waitFor({ timeout: WAIT });
    const n = await page.locator('[data-testid="documents"] li').count();
    if (n < 3) throw new Error(`the list shows ${n} documents`);
    step(`list page shows ${n} documents`);
    await context.close();
  }

  // Two windows of one browser without a name are two people, each with a name of its own.
  {
    const context = await browser.newContext();
    const one = await context.newPage();
    const two = await context.newPage();
    await one.goto(`${base}/doc/9`);
    await two.goto(`${base}/doc/9`);
    await one.locator('[data-testid="me"]').filter({ hasText: /\S/ }).waitFor({ timeout: WAIT });
    await two.locator('[data-testid="me"]').filter({ hasText: /\S/ }).waitFor({ timeout: WAIT });
    const [n1, n2] = [await text(one, 'me'), await text(two, 'me')];
    if (n1 === n2) throw new Error(`two windows got the same default name ${n1}`);
    await expectText(two, 'holder', new RegExp(`Held by ${n1}`), 'the second window sees the first by its name');
    if ((await one.locator('link[rel="icon"]').count()) !== 1) throw new Error('no favicon');
    step(`two windows without a name are ${n1} and ${n2}`);
    await context.close();
  }

  const ann = await open('Ann');
  await expectText(ann.page, 'position', /You hold this document/, 'first page holds');
  await expectText(ann.page, 'status', /live/, 'first page is connected');
  step('Ann holds document 1');

  const bob = await open('Bob');
  await expectText(bob.page, 'position', /You are #1 in line/, 'second page waits');
  await expectText(bob.page, 'holder', /Held by Ann/, 'second page shows the holder');
  await expectText(ann.page, 'queue', /Bob/, 'holder sees who waits');
  if (!(await bob.page.locator('[data-testid="takeover"]').isVisible())) {
    throw new Error('the waiting page shows no Take over button');
  }
  // "#1 in line" is item 1 of the waiting list (the holder is shown above it, not in it).
  const firstWaiting = (page) => page.locator('[data-testid="queue"] li').first().innerText();
  if ((await firstWaiting(bob.page)) !== 'Bob (you)') {
    throw new Error(`Bob is #1 but the waiting list starts with ${await firstWaiting(bob.page)}`);
  }
  step('Bob waits (#1), sees Ann holding; Ann sees Bob in line');

  // `update`: Ann's page changes her metadata in place; Bob's page shows the new name at once.
  const updated = await ann.page.evaluate(async () => {
    const room = 'document-' + location.pathname.split('/').pop();
    const r = await window.occupancy.update(room, { name: 'Ann (editing)' });
    return [r.ev, r.position];
  });
  if (updated[0] !== 'joined' || updated[1] !== 0) throw new Error(`update answered ${updated}`);
  await expectText(bob.page, 'holder', /Held by Ann \(editing\)/, 'the other page sees the update');
  await ann.page.evaluate(async () => {
    const room = 'document-' + location.pathname.split('/').pop();
    await window.occupancy.update(room, { name: 'Ann' });
  });
  await expectText(bob.page, 'holder', /Held by Ann since [^.]*\.$/, 'and the update back');
  step('Ann updated her metadata in place; Bob saw it');

  // A reload keeps the place (resume token in sessionStorage).
  await ann.page.reload();
  await expectText(ann.page, 'position', /You hold this document/, 'holder keeps its place across a reload');
  await expectText(bob.page, 'position', /You are #1 in line/, 'the other page is unchanged by the reload');
  step('Ann reloaded and still holds');

  // The connection drops under a live page (network change): the client reconnects with backoff
  // and resumes its session, keeping its place without a reload.
  const before = await bob.page.evaluate(() => {
    // Every view the page is shown while the connection is down is stale and claims no hold.
    window.staleViews = [];
    window.occupancy.on('room', (_, v) => v.stale && window.staleViews.push(v));
    return window.occupancy.session;
  });
  await bob.page.evaluate(() => window.occupancy.ws.close());
  await expectText(bob.page, 'status', /reconnecting|live/, 'the client notices the drop');
  await bob.page.waitForFunction(
    (s) => window.occupancy.status === 'open' && window.occupancy.session === s,
    before,
    { timeout: WAIT },
  );
  await expectText(bob.page, 'position', /You are #1 in line/, 'the resumed page keeps its place');
  const stale = await bob.page.evaluate(() => window.staleViews.map((v) => [v.holding, v.position]));
  if (stale.length !== 1 || stale[0][0] !== false || stale[0][1] !== 1) {
    throw new Error(`the drop should show one stale view (not holding, last place 1): ${JSON.stringify(stale)}`);
  }
  step('Bob\'s connection dropped; the client reconnected and resumed the same session');

  await ann.page.screenshot({ path: join(shots, 'holder.png') });
  await bob.page.screenshot({ path: join(shots, 'waiting.png') });

  // The holder's tab closes (the browser sends close code 1001): after the close grace (2 s),
  // not the grace of a lost connection (60 s on this server), Bob holds.
  const closedAt = Date.now();
  await ann.page.close();
  await expectText(bob.page, 'position', /You hold this document/, 'after the holder closed the tab, the next in line holds', CLOSED_WAIT);
  const handover = Date.now() - closedAt;
  await ann.context.close();
  await expectText(bob.page, 'holder', /Held by you/, 'the new holder sees itself holding');
  step(`Ann closed her tab; Bob holds ${handover} ms later`);
  await bob.page.screenshot({ path: join(shots, 'released.png') });

  // A third page joins and takes over: Bob is displaced to #1.
  const carl = await open('Carl');
  await expectText(carl.page, 'position', /You are #1 in line/, 'third page waits');
  await carl.page.locator('[data-testid="takeover"]').click();
  await expectText(carl.page, 'position', /You hold this document/, 'take over');
  await expectText(bob.page, 'position', /You are #1 in line/, 'the displaced holder is next in line');
  await expectText(bob.page, 'banner', /Carl took the document over from you/, 'the displaced holder is told who');
  step('Carl took over; Bob is #1 in line and told so');
  await bob.page.screenshot({ path: join(shots, 'displaced.png') });
  await carl.page.screenshot({ path: join(shots, 'takeover.png') });

  // Bob takes it back: his banner no longer holds and is gone; Carl's says Bob took over.
  await bob.page.locator('[data-testid="takeover"]').click();
  await expectText(bob.page, 'position', /You hold this document/, 'take it back');
  await bob.page.locator('[data-testid="banner"]').waitFor({ state: 'hidden', timeout: WAIT });
  await expectText(carl.page, 'banner', /Bob took the document over from you/, 'the banner follows who took over');
  step('Bob took it back: his banner cleared, Carl\'s names Bob');

  if (idleBase) {
    // Idle expiry: Dee holds and keeps typing (the page says `active`, here at most every
    // 200 ms), for twice the idle timeout, while Eve waits: Dee keeps it. Then Dee stops.
    const idle = Number(idleMs);
    const url = (name) => `${idleBase}/doc/5?name=${name}&active_ms=200`;
    const dee = await open('Dee', url('Dee'));
    await expectText(dee.page, 'position', /You hold this document/, 'Dee holds on the idle server');
    await expectText(dee.page, 'holder', /Held by you \(Dee\) since \d/, 'the holder line says since when');
    const eve = await open('Eve', url('Eve'));
    await expectText(eve.page, 'position', /You are #1 in line/, 'Eve waits');
    const typeUntil = Date.now() + 2 * idle;
    while (Date.now() < typeUntil) {
      await dee.page.locator('[data-testid="editor"]').press('x');
      await dee.page.waitForTimeout(100);
    }
    await expectText(dee.page, 'position', /You hold this document/, 'typing keeps the document');
    step(`Dee typed for ${2 * idle} ms (idle timeout ${idle} ms) and still holds`);
    const stoppedAt = Date.now();
    await expectText(eve.page, 'position', /You hold this document/, 'the idle holder gives way');
    const after = Date.now() - stoppedAt;
    await expectText(dee.page, 'banner', /You were idle, so Eve got the document/, 'the idle holder is told why');
    await expectText(dee.page, 'position', /You are #1 in line/, 'the idle holder is next in line');
    step(`Dee stopped typing; Eve holds ${after} ms later and Dee is told she was idle`);
    await dee.page.screenshot({ path: join(shots, 'idle.png') });
    await dee.context.close();
    await eve.context.close();
  }
  console.log(`e2e: screenshots in ${shots}`);
} catch (e) {
  failed = true;
  console.error('e2e FAILED:', e.message);
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
}
console.log(failed ? 'e2e: 0 passed, 1 failed' : 'e2e: 1 passed, 0 failed');
process.exit(failed ? 1 : 0);
