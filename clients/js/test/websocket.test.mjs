// occupancy-client over a WebSocket, against the real `documents` example server, driven with
// the npm `ws` package.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

import { Occupancy, OccupancyError } from '../dist/index.js';
import { Server, next, record, roomId, sleep, until, view } from './support.mjs';

const clients = [];
/** A client of `server` as `user` (the demo server reads `?user=` and `?name=`). */
function connect(server, user, options = {}) {
  // The client's `ws` WebSockets, which a test can cut without a close frame.
  const sockets = [];
  class TrackedWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const c = new Occupancy(server.ws, {
    WebSocket: TrackedWebSocket,
    storage: null,
    params: user ? { user, name: user.toUpperCase() } : {},
    minBackoffMs: 20,
    maxBackoffMs: 300,
    requestTimeoutMs: 5000,
    ...options,
  });
  c.sockets = sockets;
  clients.push(c);
  return c;
}

function closeAll() {
  for (const c of clients.splice(0)) c.close();
}

/** The WebSocket a client uses now (the last one it opened). */
function socketOf(c) {
  const ws = c.sockets.at(-1);
  assert.ok(ws, 'the client opened a WebSocket');
  return ws;
}

describe('WebSocket client against the documents example', () => {
  const server = new Server('documents', { GRACE_MS: '10000', CLOSE_GRACE_MS: '300' });
  before(() => server.start());
  after(async () => {
    closeAll();
    await server.kill();
  });

  test('the first holds, the second waits behind it; leave hands the room over', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');

    const a = await ann.join(room);
    assert.equal(a.ev, 'joined');
    assert.equal(a.holding, true);
    assert.equal(a.position, 0);
    assert.equal(a.holder.id, 'ann');
    const av = ann.room(room);
    assert.equal(av.holding, true);
    assert.equal(av.stale, false);

    const b = await bob.join(room, { name: 'Bob the second' });
    assert.equal(b.holding, false);
    assert.equal(b.position, 1);
    assert.equal(b.holder.id, 'ann');
    const bv = await view(bob, room, (v) => v.waiting === 1 && v.occupants.length === 2, 'bob sees the line');
    assert.equal(bv.holding, false);
    assert.equal(bv.position, 1);
    assert.equal(bv.stale, false);
    assert.equal(bv.holder.meta.name, 'ANN');
    assert.equal(typeof bv.holder.since, 'number');
    assert.equal(typeof bv.held_since, 'number');
    assert.deepEqual(
      bv.occupants.map((p) => [p.id, p.meta.name]),
      [
        ['ann', 'ANN'],
        ['bob', 'Bob the second'],
      ],
    );
    await view(ann, room, (v) => v.waiting === 1, 'ann sees bob waiting');

    const released = next(bob, 'released', (ev) => ev.room === room);
    const left = await ann.leave(room);
    assert.equal(left.ev, 'left');
    assert.equal(left.was_member, true);
    assert.equal(ann.room(room), undefined);
    assert.equal((await released).room, room);
    const now = await view(bob, room, (v) => v.holder?.id === 'bob', 'bob holds');
    assert.equal(now.holding, true);
    assert.equal(now.position, 0);
    assert.equal(now.waiting, 0);
    assert.equal((await ann.leave(room)).was_member, false);
  });

  test('join is idempotent (a double mount is one place)', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const [x, y] = await Promise.all([ann.join(room), ann.join(room)]);
    assert.equal(x.position, 0);
    assert.equal(y.position, 0);
    const bob = connect(server, 'bob');
    assert.equal((await bob.join(room)).position, 1);
    const v = await view(bob, room, (v) => v.occupants.length === 2, 'two occupants');
    assert.equal(v.waiting, 1);
  });

  test('a closed client hands over after the close grace, and its views go stale', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    await ann.join(room);
    await bob.join(room);
    const annSeen = record(ann, room);
    const statuses = [];
    ann.on('status', (s) => statuses.push(s));
    ann.close();
    assert.equal(ann.status, 'closed');
    assert.deepEqual(statuses, ['closed']);
    assert.deepEqual(
      annSeen.map((v) => [v.stale, v.holding]),
      [[true, false]],
    );
    await assert.rejects(ann.ping(), (e) => e instanceof OccupancyError && e.code === 'closed');
    await view(bob, room, (v) => v.holding, 'bob holds after ann closed');
  });

  test('takeover displaces the holder with reason "takeover"', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    await ann.join(room);
    await bob.join(room);
    const displaced = next(ann, 'displaced', (ev) => ev.room === room);
    const t = await bob.takeover(room);
    assert.equal(t.ev, 'joined');
    assert.equal(t.holding, true);
    const d = await displaced;
    assert.equal(d.reason, 'takeover');
    assert.equal(d.by.id, 'bob');
    assert.equal(d.position, 1);
    const av = await view(ann, room, (v) => v.holder?.id === 'bob', 'ann sees bob holding');
    assert.equal(av.holding, false);
    assert.equal(av.position, 1);
    const bv = await view(bob, room, (v) => v.holding, 'bob holds');
    assert.equal(bv.position, 0);
  });

  test('errors reject with an OccupancyError carrying the code', async () => {
    const room = roomId();
    const cat = connect(server, 'cat');
    await assert.rejects(cat.takeover(room), (e) => {
      assert.ok(e instanceof OccupancyError);
      assert.equal(e.code, 'not_in_room');
      assert.equal(typeof e.message, 'string');
      return true;
    });
    await assert.rejects(cat.active(room), (e) => e instanceof OccupancyError && e.code === 'not_member');
    await assert.rejects(cat.update(room, { name: 'x' }), (e) => e.code === 'not_member');
    // A refused join is not kept: no view, and it is not joined again after a reconnection.
    await assert.rejects(cat.join(''), (e) => e.code === 'room_invalid');
    assert.equal(cat.room(''), undefined);
    await assert.rejects(cat.join('x'.repeat(300)), (e) => e.code === 'room_invalid');
    // The connection survives its errors.
    assert.equal((await cat.ping()).ev, 'pong');
    assert.equal(cat.status, 'open');
  });

  test('update changes your metadata for everyone who sees you; active refreshes', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    await ann.join(room, { name: 'Ann', status: 'viewing' });
    await bob.join(room);
    await view(bob, room, (v) => v.holder?.meta.status === 'viewing', 'bob sees ann viewing');
    const u = await ann.update(room, { name: 'Ann', status: 'editing' });
    assert.equal(u.ev, 'joined');
    assert.equal(u.holding, true);
    const bv = await view(bob, room, (v) => v.holder?.meta.status === 'editing', 'bob sees ann editing');
    assert.equal(bv.occupants[0].meta.status, 'editing');
    const a = await ann.active(room);
    assert.equal(a.ev, 'joined');
    assert.equal(a.holding, true);
    assert.equal((await bob.active(room)).position, 1);
  });

  test('watch shows a room without standing in line; unwatch stops it', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    const wes = connect(server, 'wes');
    await ann.join(room);
    await bob.join(room);
    const w = await wes.watch(room);
    assert.equal(w.ev, 'watching');
    assert.equal(w.holder.id, 'ann');
    assert.equal(w.waiting, 1);
    const wv = wes.room(room);
    assert.equal(wv.position, null);
    assert.equal(wv.holding, false);
    assert.equal(wv.stale, false);
    assert.equal(wv.holder.id, 'ann');
    await ann.leave(room);
    await view(wes, room, (v) => v.holder?.id === 'bob' && v.waiting === 0, 'wes sees bob holding');
    assert.equal(wes.room(room).holding, false);
    const left = await wes.unwatch(room);
    assert.equal(left.was_member, true);
    assert.equal(wes.room(room), undefined);
    // The line never counted the watcher.
    const c = await connect(server, 'cat').join(room);
    assert.equal(c.position, 1);
  });

  test('a dropped connection goes stale at once, resumes its place and is fresh again', async () => {
    const room = roomId();
    const other = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    await ann.join(room);
    await bob.join(room);
    await view(ann, room, (v) => v.waiting === 1, 'ann sees bob');
    const session = ann.session;
    const seen = record(ann, room);
    let bobReleased = false;
    bob.on('released', () => (bobReleased = true));
    const hello = next(ann, 'hello');

    // Cut the TCP connection without a close frame (a network drop): the server keeps the
    // session for its grace (10 s here).
    const stale = next(ann, 'room', (r, v) => r === room && v.stale);
    socketOf(ann).terminate();
    const [, sv] = await stale;
    assert.equal(sv.holding, false, 'a stale view never claims the hold');
    assert.equal(sv.position, 0, 'it keeps the last confirmed place');
    assert.notEqual(ann.status, 'open');
    // A request made while disconnected waits for the connection.
    const joinedOther = ann.join(other);

    const h = await hello;
    assert.equal(h.resumed, true);
    assert.equal(h.session, session);
    const v = await view(ann, room, (v) => !v.stale, 'ann fresh again');
    assert.equal(v.holding, true);
    assert.equal(v.position, 0);
    assert.equal((await joinedOther).holding, true);
    await view(ann, other, (v) => !v.stale && v.holding, 'the other room held');
    assert.deepEqual(
      seen.map((v) => [v.stale, v.holding]).filter((x, i, a) => i === 0 || String(x) !== String(a[i - 1])),
      [
        [true, false],
        [false, true],
      ],
    );
    // Bob never got the room meanwhile.
    const bv = await view(bob, room, (v) => !v.stale, 'bob fresh');
    assert.equal(bv.holder.id, 'ann');
    assert.equal(bv.position, 1);
    assert.equal(bobReleased, false);
  });

  test('a join lost with its connection is asked for again after the resume', async () => {
    const room = roomId();
    const lost = roomId();
    const ann = connect(server, 'ann');
    await ann.join(room);
    const ws = socketOf(ann);
    // The network swallows what the client sends from now on, then the connection drops.
    ws.send = () => {};
    const join = ann.join(lost);
    const hello = next(ann, 'hello');
    ws.terminate();
    await assert.rejects(join, (e) => e instanceof OccupancyError && e.code === 'disconnected');
    assert.equal((await hello).resumed, true);
    // The kept room is confirmed by the resume; the lost join is sent again and answered.
    const v = await view(ann, lost, (v) => !v.stale, 'the lost join confirmed');
    assert.equal(v.holding, true);
    assert.equal((await view(ann, room, (v) => !v.stale, 'the kept room confirmed')).holding, true);
  });
});

describe('WebSocket client across a server restart', () => {
  const server = new Server('documents', { GRACE_MS: '10000', CLOSE_GRACE_MS: '300' });
  before(() => server.start());
  after(async () => {
    closeAll();
    await server.kill();
  });

  test('views go stale when the server dies and fresh after the rooms are joined again', async () => {
    const room = roomId();
    const watched = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    const wes = connect(server, 'wes');
    await ann.join(room);
    await bob.join(room);
    await wes.watch(room);
    await bob.join(watched);
    await wes.watch(watched);
    // Move the versions on, so that the restarted server's (which start over) are lower.
    for (let i = 0; i < 3; i++) await ann.update(room, { name: 'Ann', n: i });
    await view(wes, room, (v) => v.holder?.meta.n === 2, 'wes sees the last update');
    const before = ann.room(room).version;
    const errors = [];
    ann.on('error', (e) => errors.push(e.code));

    const staleAll = Promise.all([
      view(ann, room, (v) => v.stale, 'ann stale'),
      view(bob, room, (v) => v.stale, 'bob stale'),
      view(wes, room, (v) => v.stale, 'wes stale'),
      view(wes, watched, (v) => v.stale, 'wes stale on the other room'),
    ]);
    await server.kill();
    const stale = await staleAll;
    assert.ok(stale.every((v) => !v.holding));
    assert.equal(ann.room(room).position, 0);

    const hellos = Promise.all([ann, bob, wes].map((c) => next(c, 'hello', () => true, 15000)));
    await server.start();
    const [ha] = await hellos;
    assert.equal(ha.resumed, false, 'a restarted server knows no session');

    const [av, bv] = await Promise.all([
      view(ann, room, (v) => !v.stale && v.waiting === 1, 'ann fresh', 15000),
      view(bob, room, (v) => !v.stale && v.waiting === 1, 'bob fresh', 15000),
    ]);
    // Whoever came back first holds; the other waits behind them, and both agree on who.
    assert.equal([av, bv].filter((v) => v.holding).length, 1);
    assert.deepEqual([av.position, bv.position].sort(), [0, 1]);
    assert.equal(av.holder.id, bv.holder.id);
    assert.ok(av.version <= before, `versions started over (${av.version} <= ${before})`);
    const wv = await view(wes, room, (v) => !v.stale && v.holder?.id === av.holder.id && v.waiting === 1, 'wes fresh', 15000);
    assert.equal(wv.position, null);
    const ww = await view(wes, watched, (v) => !v.stale && v.holder?.id === 'bob', 'wes fresh on the other room', 15000);
    assert.equal(ww.waiting, 0);
    assert.ok(errors.includes('resume_invalid'), `resume_invalid reported (${errors})`);
  });
});

describe('WebSocket client and a silent server', () => {
  const server = new Server('documents', { GRACE_MS: '10000', CLOSE_GRACE_MS: '300' });
  before(() => server.start());
  after(async () => {
    closeAll();
    await server.kill();
  });

  test('the heartbeat notices a server that stopped answering: stale, then fresh when it is back', async () => {
    const room = roomId();
    // A quick heartbeat and hello timeout, so the test does not wait for the server's 4 s.
    const ann = connect(server, 'ann', { heartbeat: 200, requestTimeoutMs: 1000 });
    const bob = connect(server, 'bob');
    await ann.join(room);
    await bob.join(room);
    await view(ann, room, (v) => v.waiting === 1, 'ann sees bob');
    server.freeze();
    try {
      // TCP stays up; only the missing pongs tell.
      const sv = await view(ann, room, (v) => v.stale, 'ann stale while the server is silent', 10000);
      assert.equal(sv.holding, false);
      assert.notEqual(ann.status, 'open');
    } finally {
      server.thaw();
    }
    const v = await view(ann, room, (v) => !v.stale, 'ann fresh once the server answers', 20000);
    assert.equal(v.holding, true, 'ann (the same user) still holds');
    const bv = await view(bob, room, (v) => !v.stale && v.holder?.id === 'ann', 'bob still waits', 20000);
    assert.equal(bv.position, 1);
  });
});

describe('WebSocket client with idle expiry', () => {
  const server = new Server('documents', { IDLE_MS: '300' });
  before(() => server.start());
  after(async () => {
    closeAll();
    await server.kill();
  });

  test('an idle holder is displaced with reason "idle" once someone waits', async () => {
    const room = roomId();
    const ann = connect(server, 'ann');
    const bob = connect(server, 'bob');
    await ann.join(room);
    await sleep(600); // longer than IDLE_MS: ann is idle
    const displaced = next(ann, 'displaced', (ev) => ev.room === room);
    await bob.join(room);
    const d = await displaced;
    assert.equal(d.reason, 'idle');
    assert.equal(d.by.id, 'bob');
    await view(bob, room, (v) => v.holding, 'bob holds');
    const av = await view(ann, room, (v) => v.position === 1, 'ann waits');
    assert.equal(av.holding, false);
  });
});

describe('WebSocket client without a server', () => {
  test('keeps trying with backoff and fails requests on timeout, without claiming anything', async () => {
    const c = new Occupancy('ws://127.0.0.1:1/occupancy', {
      WebSocket,
      storage: null,
      minBackoffMs: 10,
      maxBackoffMs: 50,
      requestTimeoutMs: 200,
    });
    try {
      await until(c, 'status', () => c.status === 'reconnecting', 'reconnecting');
      await assert.rejects(c.join('doc'), (e) => e instanceof OccupancyError && e.code === 'timeout');
      assert.equal(c.room('doc'), undefined);
    } finally {
      c.close();
    }
    assert.equal(c.status, 'closed');
  });

  test('a path needs a page to resolve against', () => {
    assert.throws(() => new Occupancy('/occupancy', { WebSocket, storage: null }), TypeError);
  });
});
