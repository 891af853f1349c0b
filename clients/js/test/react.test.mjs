// occupancy-client/react: the hooks rendered with React Testing Library in jsdom, against the
// real `documents` example server (the client speaks through the npm `ws` package).

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { JSDOM } from 'jsdom';
import WebSocket from 'ws';

// A browser-like global scope, set before React and Testing Library are loaded.
const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: 'http://localhost/' });
for (const key of ['window', 'document', 'HTMLElement', 'Element', 'Node', 'Text', 'Event', 'KeyboardEvent', 'MouseEvent', 'getComputedStyle']) {
  globalThis[key] = key === 'window' ? dom.window : dom.window[key];
}
Object.defineProperty(globalThis, 'navigator', { value: dom.window.navigator, configurable: true });

const React = await import('react');
// ci.sh runs these tests twice: on the package's React 19, and with test/react18.mjs on 18.
if (process.env.EXPECT_REACT) {
  assert.ok(React.version.startsWith(`${process.env.EXPECT_REACT}.`), `React ${React.version}`);
}
const { render, screen, waitFor, fireEvent, cleanup, act } = await import('@testing-library/react');
// The views change when the server speaks, not inside act(): Testing Library's act() and
// waitFor() switch React's act environment on and off themselves.
globalThis.IS_REACT_ACT_ENVIRONMENT = false;
const { Occupancy } = await import('../dist/index.js');
const { OccupancyProvider, useRoom, useWatch } = await import('../dist/react.js');
const { Server, next, roomId, sleep, view } = await import('./support.mjs');

const h = React.createElement;
const LEAVE_DELAY = 150;

const clients = [];
/** A client as `user`; `c.sent` records every request it sends, `c.sockets` its WebSockets. */
function connect(server, user) {
  const sent = [];
  const sockets = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  const c = new Occupancy(server.ws, {
    WebSocket: Recording,
    storage: null,
    params: { user, name: user.toUpperCase() },
    minBackoffMs: 20,
    maxBackoffMs: 300,
    requestTimeoutMs: 5000,
  });
  c.sent = sent;
  c.sockets = sockets;
  clients.push(c);
  return c;
}
const ops = (c, op, room) => c.sent.filter((m) => m.op === op && m.room === room).length;

/** A document page: who holds it and your place. */
function Doc({ room, name, active }) {
  const r = useRoom(room, { meta: name ? { name } : undefined, active });
  let text;
  if (r.error) text = `error ${r.error.code}`;
  else if (r.stale) text = 'connection lost — reconnecting';
  else if (r.holding) text = 'you hold it';
  else text = `${r.view.holder?.meta.name} holds it; you are ${r.view.position} in line`;
  return h('p', { 'data-testid': 'doc' }, text);
}

/** A list of documents with who holds each. */
function List({ rooms }) {
  const views = useWatch(rooms);
  return h(
    'ul',
    null,
    rooms.map((r) => h('li', { key: r, 'data-testid': r }, views[r] ? views[r].holder?.meta.name ?? 'nobody' : '…')),
  );
}

function app(client, child, strict = true) {
  const tree = h(OccupancyProvider, { client, leaveDelayMs: LEAVE_DELAY }, child);
  return strict ? h(React.StrictMode, null, tree) : tree;
}

const text = () => screen.getByTestId('doc').textContent;
const until = (expected, timeout = 5000) => waitFor(() => assert.equal(text(), expected), { timeout });

describe('React hooks against the documents example', () => {
  const server = new Server('documents', { GRACE_MS: '10000', CLOSE_GRACE_MS: '300' });
  before(() => server.start());
  afterEach(() => cleanup());
  after(async () => {
    for (const c of clients.splice(0)) c.close();
    await server.kill();
  });

  test('StrictMode mounts twice: one join, no leave, one place', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    render(app(ann, h(Doc, { room })));
    await until('you hold it');
    await sleep(LEAVE_DELAY + 100);
    assert.equal(ops(ann, 'join', room), 1);
    assert.equal(ops(ann, 'leave', room), 0);
    const bob = connect(server, 'bob');
    assert.equal((await bob.join(room)).position, 1);
    await until('you hold it');
  });

  test('a second page waits and sees the holder; unmounting hands over after the delay', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    await ann.join(room);
    const { unmount } = render(app(bob, h(Doc, { room, name: 'Bob' })));
    await until('ANN holds it; you are 1 in line');
    const released = next(bob, 'released', (ev) => ev.room === room);
    await ann.leave(room);
    await released;
    await until('you hold it');
    // Bob's page goes away: the room is left after the delay and Ann, waiting again, gets it.
    await ann.join(room);
    const annReleased = next(ann, 'released', (ev) => ev.room === room);
    unmount();
    assert.equal(ops(bob, 'leave', room), 0, 'not at once');
    await annReleased;
    assert.equal(ops(bob, 'leave', room), 1);
  });

  test('a remount of the same room keeps the place; a route to another room leaves the first', async () => {
    const room = roomId();
    const other = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    const { rerender } = render(app(ann, h(Doc, { key: 1, room })));
    await until('you hold it');
    await bob.join(room);
    let bobReleased = false;
    bob.on('released', (ev) => ev.room === room && (bobReleased = true));
    // The route shows something else for a moment (a loading page), then the same room again
    // in a new component instance.
    rerender(app(ann, h('p', { 'data-testid': 'doc' }, 'loading')));
    await until('loading');
    rerender(app(ann, h(Doc, { key: 2, room })));
    await until('you hold it');
    await sleep(LEAVE_DELAY + 100);
    assert.equal(ops(ann, 'leave', room), 0);
    assert.equal(ops(ann, 'join', room), 1);
    assert.equal(bobReleased, false);
    // Another document: the first is left (after the delay) and Bob gets it.
    const released = next(bob, 'released', (ev) => ev.room === room);
    rerender(app(ann, h(Doc, { key: 3, room: other })));
    await until('you hold it');
    await released;
    assert.equal(ops(ann, 'leave', room), 1);
  });

  test('a dropped connection shows stale, then the place again', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    render(app(ann, h(Doc, { room })));
    await until('you hold it');
    act(() => ann.sockets.at(-1).terminate());
    await until('connection lost — reconnecting');
    await until('you hold it');
  });

  test('active on user input, throttled, only while holding; meta changes are updates', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    const a = render(app(ann, h(Doc, { room, name: 'Ann', active: 60000 }), false));
    const annText = () => a.container.textContent;
    await waitFor(() => assert.equal(annText(), 'you hold it'));
    fireEvent.keyDown(document.body, { key: 'a' });
    fireEvent.pointerDown(document.body);
    assert.equal(ops(ann, 'active', room), 1, 'one active per throttle window');
    // A waiting page (a second tree on the same document) sends none.
    const b = render(app(bob, h(Doc, { room, name: 'Bob', active: true }), false));
    await waitFor(() => assert.equal(b.container.textContent, 'Ann holds it; you are 1 in line'));
    fireEvent.keyDown(document.body, { key: 'b' });
    assert.equal(ops(bob, 'active', room), 0);
    assert.equal(ops(ann, 'active', room), 1);
    // A new meta for the holder is an update, seen by the others.
    a.rerender(app(ann, h(Doc, { room, name: 'Ann (editing)', active: 60000 }), false));
    await view(bob, room, (v) => v.holder?.meta.name === 'Ann (editing)', 'bob sees the new name');
    assert.equal(ops(ann, 'update', room), 1);
    assert.equal(ops(ann, 'join', room), 1);
  });

  test('a refused join is shown as an error', async () => {
    const ann = connect(server, 'ann');
    render(app(ann, h(Doc, { room: 'x'.repeat(300) })));
    await until('error room_invalid');
  });

  test('useWatch follows several rooms', async () => {
    const a = roomId();
    const b = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    const wes = connect(server, 'wes');
    await ann.join(a);
    await bob.join(a);
    render(app(wes, h(List, { rooms: [a, b] })));
    await waitFor(() => {
      assert.equal(screen.getByTestId(a).textContent, 'ANN');
      assert.equal(screen.getByTestId(b).textContent, 'nobody');
    });
    await ann.leave(a);
    await bob.join(b);
    await waitFor(() => {
      assert.equal(screen.getByTestId(a).textContent, 'BOB');
      assert.equal(screen.getByTestId(b).textContent, 'BOB');
    });
    assert.equal(ops(wes, 'watch', a), 1);
  });
});
