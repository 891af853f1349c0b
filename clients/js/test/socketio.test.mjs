// occupancy-client/socketio against the real `socketio_documents` example server, driven with
// socket.io-client in Node.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Occupancy, OccupancyError } from '../dist/socketio.js';
import { Server, next, record, roomId, sleep, view } from './support.mjs';

const clients = [];
/** An anonymous client of `server` named `name` (the example's identify hook reads `auth.meta`). */
function connect(server, name, options = {}) {
  const c = new Occupancy(server.http, {
    storage: null,
    params: { meta: { name } },
    requestTimeoutMs: 5000,
    socket: { transports: ['websocket'], reconnectionDelay: 20, reconnectionDelayMax: 300 },
    ...options,
  });
  clients.push(c);
  return c;
}

function closeAll() {
  for (const c of clients.splice(0)) c.close();
}

/** The id the server gives an anonymous occupant. */
const idOf = (c) => '~' + c.session;

describe('Socket.IO client against the socketio_documents example', () => {
  const server = new Server('socketio_documents', { GRACE_MS: '10000', CLOSE_GRACE_MS: '300' });
  before(() => server.start());
  after(async () => {
    closeAll();
    await server.kill();
  });

  test('the first holds, the second waits; leave hands the room over', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const bob = connect(server, 'Bob');
    const a = await ann.join(room);
    assert.equal(a.ev, 'joined');
    assert.equal(a.holding, true);
    assert.equal(a.holder.id, idOf(ann));
    assert.equal(ann.status, 'open');
    const b = await bob.join(room);
    assert.equal(b.position, 1);
    assert.equal(b.holder.meta.name, 'Ann');
    const bv = await view(bob, room, (v) => v.waiting === 1 && v.occupants.length === 2, 'bob sees the line');
    assert.equal(bv.holding, false);
    assert.equal(bv.stale, false);
    assert.equal(typeof bv.held_since, 'number');
    assert.deepEqual(
      bv.occupants.map((p) => p.meta.name),
      ['Ann', 'Bob'],
    );
    const released = next(bob, 'released', (ev) => ev.room === room);
    assert.equal((await ann.leave(room)).was_member, true);
    await released;
    const now = await view(bob, room, (v) => v.holder?.id === idOf(bob), 'bob holds');
    assert.equal(now.holding, true);
    assert.equal(ann.room(room), undefined);
  });

  test('takeover displaces the holder with reason "takeover"', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const bob = connect(server, 'Bob');
    await ann.join(room);
    await bob.join(room);
    const displaced = next(ann, 'displaced', (ev) => ev.room === room);
    assert.equal((await bob.takeover(room)).holding, true);
    const d = await displaced;
    assert.equal(d.reason, 'takeover');
    assert.equal(d.by.id, idOf(bob));
    assert.equal(d.position, 1);
    const av = await view(ann, room, (v) => v.position === 1, 'ann waits');
    assert.equal(av.holding, false);
  });

  test('update, active, and errors as OccupancyError with the code', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const bob = connect(server, 'Bob');
    const cat = connect(server, 'Cat');
    await ann.join(room);
    await bob.join(room);
    const u = await ann.update(room, { name: 'Ann', status: 'editing' });
    assert.equal(u.ev, 'joined');
    await view(bob, room, (v) => v.holder?.meta.status === 'editing', 'bob sees ann editing');
    assert.equal((await ann.active(room)).holding, true);
    await assert.rejects(cat.active(room), (e) => e instanceof OccupancyError && e.code === 'not_member');
    await assert.rejects(cat.update(room, { name: 'x' }), (e) => e.code === 'not_member');
    await assert.rejects(cat.takeover(room), (e) => e.code === 'not_in_room');
    await assert.rejects(cat.join(''), (e) => e.code === 'room_invalid');
    assert.equal(cat.room(''), undefined);
    assert.equal((await cat.ping()).ev, 'pong');
  });

  test('watch shows a room without standing in line', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const wes = connect(server, 'Wes');
    await ann.join(room);
    const w = await wes.watch(room);
    assert.equal(w.ev, 'watching');
    assert.equal(w.holder.meta.name, 'Ann');
    assert.equal(wes.room(room).position, null);
    const bob = connect(server, 'Bob');
    await bob.join(room);
    await view(wes, room, (v) => v.waiting === 1, 'wes sees bob waiting');
    await ann.leave(room);
    await view(wes, room, (v) => v.holder?.meta.name === 'Bob', 'wes sees bob holding');
    assert.equal((await wes.unwatch(room)).was_member, true);
    assert.equal(wes.room(room), undefined);
  });

  test('a dropped transport goes stale at once, resumes its place and is fresh again', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const bob = connect(server, 'Bob');
    await ann.join(room);
    await bob.join(room);
    await view(ann, room, (v) => v.waiting === 1, 'ann sees bob');
    const session = ann.session;
    const seen = record(ann, room);
    let bobReleased = false;
    bob.on('released', () => (bobReleased = true));
    const hello = next(ann, 'hello');
    const stale = next(ann, 'room', (r, v) => r === room && v.stale);
    // Cut the engine's WebSocket without a close frame (a network drop).
    ann.socket.io.engine.transport.ws.terminate();
    const [, sv] = await stale;
    assert.equal(sv.holding, false);
    assert.equal(sv.position, 0);
    const h = await hello;
    assert.equal(h.resumed, true);
    assert.equal(h.session, session);
    const v = await view(ann, room, (v) => !v.stale, 'ann fresh again');
    assert.equal(v.holding, true);
    assert.deepEqual(
      seen.map((v) => [v.stale, v.holding]).filter((x, i, a) => i === 0 || String(x) !== String(a[i - 1])),
      [
        [true, false],
        [false, true],
      ],
    );
    assert.equal((await view(bob, room, (v) => !v.stale, 'bob fresh')).position, 1);
    assert.equal(bobReleased, false);
  });

  test('close hands over after the close grace', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const bob = connect(server, 'Bob');
    await ann.join(room);
    await bob.join(room);
    ann.close();
    assert.equal(ann.status, 'closed');
    assert.equal(ann.room(room).stale, true);
    assert.equal(ann.room(room).holding, false);
    await view(bob, room, (v) => v.holding, 'bob holds after ann closed');
  });
});

describe('Socket.IO client across a server restart', () => {
  const server = new Server('socketio_documents', { GRACE_MS: '10000', CLOSE_GRACE_MS: '300' });
  before(() => server.start());
  after(async () => {
    closeAll();
    await server.kill();
  });

  test('views go stale when the server dies and fresh after the rooms are joined again', async () => {
    const room = roomId();
    const ann = connect(server, 'Ann');
    const bob = connect(server, 'Bob');
    await ann.join(room);
    await bob.join(room);
    for (let i = 0; i < 3; i++) await ann.update(room, { name: 'Ann', n: i });
    await view(bob, room, (v) => v.holder?.meta.n === 2, 'bob sees the last update');
    const staleAll = Promise.all([
      view(ann, room, (v) => v.stale, 'ann stale'),
      view(bob, room, (v) => v.stale, 'bob stale'),
    ]);
    await server.kill();
    assert.ok((await staleAll).every((v) => !v.holding));
    const hellos = Promise.all([ann, bob].map((c) => next(c, 'hello', () => true, 15000)));
    await sleep(100);
    await server.start();
    const [ha] = await hellos;
    assert.equal(ha.resumed, false);
    const [av, bv] = await Promise.all([
      view(ann, room, (v) => !v.stale && v.waiting === 1, 'ann fresh', 15000),
      view(bob, room, (v) => !v.stale && v.waiting === 1, 'bob fresh', 15000),
    ]);
    assert.equal([av, bv].filter((v) => v.holding).length, 1);
    assert.equal(av.holder.id, bv.holder.id);
  });
});
