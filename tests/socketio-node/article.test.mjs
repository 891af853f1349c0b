// The article's flows, and each of its bugs fixed, driven by the real socket.io-client v4 over
// WebSocket, over HTTP long-polling, and over the default (polling, then upgrade).
//
//   node tests/socketio-node/article.test.mjs http://127.0.0.1:PORT
//
// The server must run occupancy-socketio with a zero grace period (a disconnect releases at
// once) and payload limits of at least 2 MiB (run by occupancy-socketio/tests/node.rs).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORTS, call, closeAll, connect, connected, disconnected, got, room, sync, waitFor,
} from "./lib.mjs";

const url = process.argv[2];
if (!url) {
  console.error("usage: node article.test.mjs <server url>");
  process.exit(2);
}

after(() => closeAll());

for (const transport of TRANSPORTS) {
  const opts = { transport };

  test(`[${transport}] the article's hook: emit before connect, late joiner is_occupied, next in line is_released`, { timeout: 20000 }, async () => {
    const doc = room("document");
    // Exactly what useDocumentOccupied does: emit right away (socket.io-client buffers it and
    // sends it the moment CONNECT arrives).
    const a = connect(url, opts);
    a.emit("join_document_room", doc);
    await connected(a);
    const b = connect(url, opts);
    b.emit("join_document_room", doc);
    assert.equal(await waitFor(b, "is_occupied"), "Its occupied");
    await sync(a);
    assert.equal(got(a, "is_occupied").length, 0, "the first joiner holds the room");
    a.disconnect();
    assert.equal(await waitFor(b, "is_released"), "this is released");
    await sync(b);
    assert.equal(got(b, "is_released").length, 1);
    assert.equal(got(b, "is_occupied").length, 1);
    b.disconnect();
  });

  test(`[${transport}] bug 1: joining twice (React StrictMode) queues once`, { timeout: 20000 }, async () => {
    const doc = room("document");
    const a = connect(url, opts);
    a.emit("join_document_room", doc);
    a.emit("join_document_room", doc);
    await connected(a);
    const b = connect(url, opts);
    b.emit("join_document_room", doc);
    b.emit("join_document_room", doc);
    await waitFor(b, "is_occupied");
    const c = connect(url, opts);
    c.emit("join_document_room", doc);
    await waitFor(c, "is_occupied");
    await sync(b);
    assert.equal(got(b, "is_occupied").length, 1, "the second join sends nothing");
    // The article would now have [a, a, b, c]: a's leftover entry kept the document occupied.
    a.disconnect();
    await waitFor(b, "is_released");
    b.disconnect();
    await waitFor(c, "is_released");
    await sync(c);
    assert.equal(got(c, "is_released").length, 1);
    const joined = await call(c, "occupancy:join", doc);
    assert.equal(joined.holding, true);
    assert.equal(joined.position, 0);
    c.disconnect();
  });

  test(`[${transport}] bug 2: an explicit leave hands over without a disconnect`, { timeout: 20000 }, async () => {
    const doc = room("document");
    const a = connect(url, opts);
    a.emit("join_document_room", doc);
    await connected(a);
    await sync(a);
    const b = connect(url, opts);
    b.emit("join_document_room", doc);
    await waitFor(b, "is_occupied");
    // A single-page app navigates away: the socket stays connected.
    a.emit("leave_document_room", doc);
    assert.equal(await waitFor(b, "is_released"), "this is released");
    assert.ok(a.connected);
    // Leave is idempotent and the leaver can come back, behind b now.
    a.emit("leave_document_room", doc);
    a.emit("join_document_room", doc);
    await waitFor(a, "is_occupied");
    await sync(a);
    await sync(b);
    assert.equal(got(b, "is_released").length, 1);
    assert.equal(got(a, "is_released").length, 0);
    a.disconnect();
    b.disconnect();
  });

  test(`[${transport}] a third client after a non-first disconnect`, { timeout: 20000 }, async () => {
    const doc = room("document");
    const a = connect(url, opts);
    a.emit("join_document_room", doc);
    await connected(a);
    await sync(a);
    const b = connect(url, opts);
    b.emit("join_document_room", doc);
    await waitFor(b, "is_occupied");
    b.disconnect();
    await disconnected(b);
    const c = connect(url, opts);
    c.emit("join_document_room", doc);
    assert.equal(await waitFor(c, "is_occupied"), "Its occupied");
    const place = await call(c, "occupancy:join", doc);
    assert.equal(place.position, 1, "b's departure moved c up: it is next in line");
    a.disconnect();
    await waitFor(c, "is_released");
    await sync(c);
    assert.equal(got(c, "is_released").length, 1);
    c.disconnect();
  });

  test(`[${transport}] bug 4: junk payloads get a clear error, store nothing, harm nobody`, { timeout: 30000 }, async () => {
    const doc = room("document");
    const bystander = connect(url, opts);
    bystander.emit("join_document_room", doc);
    await connected(bystander);
    await sync(bystander);
    const j = connect(url, opts);
    await connected(j);
    const huge = "x".repeat(1 << 20);
    const junk = [
      [42, "bad_message"],
      [{ room: doc }, "bad_message"], // the article's event takes the room string
      [null, "bad_message"],
      [[doc], "bad_message"],
      [huge, "room_invalid"],
      ["", "room_invalid"],
      ["bad\u0000room", "room_invalid"],
    ];
    for (const [payload] of junk) j.emit("join_document_room", payload);
    await sync(j);
    const errors = got(j, "occupancy:error");
    assert.deepEqual(errors.map((e) => e.code), junk.map(([, code]) => code));
    for (const e of errors) {
      assert.equal(e.ev, "error");
      assert.ok(e.message.length > 0 && e.message.length < 300, e.message);
    }
    // The acked event answers in its ack.
    const acked = [
      [42, "bad_message"],
      [{ nope: 1 }, "bad_message"],
      [null, "bad_message"],
      [[1, 2], "bad_message"],
      [{ room: 7 }, "bad_message"],
      [huge, "room_invalid"],
      [{ room: huge }, "room_invalid"],
      ["\u0007", "room_invalid"],
      [{ room: doc, meta: "Ann" }, "meta_invalid"],
    ];
    for (const [payload, code] of acked) {
      const r = await call(j, "occupancy:join", payload);
      assert.equal(r.ev, "error", JSON.stringify(r).slice(0, 200));
      assert.equal(r.code, code);
    }
    assert.ok(j.connected, "junk does not cost the connection");
    assert.equal(got(j, "is_occupied").length, 0, "nothing was joined");
    // The bystander still holds, and hears nothing about any of it.
    await sync(bystander);
    assert.equal(got(bystander, "occupancy:error").length, 0);
    const r = await call(j, "occupancy:join", doc);
    assert.equal(r.position, 1, "the only occupant before was the bystander");
    bystander.disconnect();
    await waitFor(j, "occupancy:released");
    j.disconnect();
  });

  test(`[${transport}] rich events: acked joins, presence, take over, watch`, { timeout: 20000 }, async () => {
    const doc = room("doc");
    const w = connect(url, opts);
    const a = connect(url, { ...opts, auth: { meta: { name: "Ann" } } });
    const b = connect(url, { ...opts, auth: { meta: { name: "Bob" } } });
    await Promise.all([connected(w), connected(a), connected(b)]);
    const hello = await waitFor(a, "occupancy:hello");
    assert.equal(hello.protocol, 1);
    assert.equal(hello.resume.length, 32);
    const watching = await call(w, "occupancy:watch", { room: doc, ref: 1 });
    assert.deepEqual([watching.ev, watching.ref, watching.holder], ["watching", 1, null]);
    const ja = await call(a, "occupancy:join", { room: doc, ref: "x" });
    assert.deepEqual([ja.ev, ja.holding, ja.position, ja.ref], ["joined", true, 0, "x"]);
    assert.equal(ja.holder.meta.name, "Ann");
    const jb = await call(b, "occupancy:join", { room: doc });
    assert.deepEqual([jb.holding, jb.position, jb.holder.meta.name], [false, 1, "Ann"]);
    await waitFor(w, "occupancy:presence", (p) => p.waiting === 1 && p.occupants.length === 2);
    const t = await call(b, "occupancy:takeover", doc);
    assert.deepEqual([t.ev, t.holding], ["joined", true]);
    const d = await waitFor(a, "occupancy:displaced");
    assert.equal(d.by.meta.name, "Bob");
    const left = await call(b, "occupancy:leave", doc);
    assert.deepEqual([left.ev, left.was_member], ["left", true]);
    await waitFor(a, "occupancy:released");
    const un = await call(w, "occupancy:unwatch", doc);
    assert.deepEqual([un.ev, un.was_member], ["left", true]);
    for (const s of [w, a, b]) s.disconnect();
  });
}

test("the connect race: 40 clients emit before connect, none is lost", { timeout: 30000 }, async () => {
  const doc = room("race");
  const clients = [];
  const acks = [];
  for (let i = 0; i < 40; i++) {
    const s = connect(url, { transport: i % 2 ? "polling" : "websocket" });
    s.emit("join_document_room", doc);
    acks.push(s.timeout(10000).emitWithAck("occupancy:join", `${doc}-${i}`));
    clients.push(s);
  }
  const replies = await Promise.all(acks);
  for (const r of replies) assert.deepEqual([r.ev, r.holding], ["joined", true]);
  const place = await Promise.all(clients.map((s) => call(s, "occupancy:join", doc)));
  assert.equal(place.filter((p) => p.holding).length, 1, "exactly one holder");
  assert.deepEqual(
    place.map((p) => p.position).sort((x, y) => x - y),
    [...Array(40).keys()],
    "every client stands in line exactly once",
  );
  await Promise.all(clients.map(async (s, i) => {
    if (!place[i].holding) await waitFor(s, "is_occupied");
    await sync(s);
    assert.equal(got(s, "is_occupied").length, place[i].holding ? 0 : 1, `client ${i}`);
  }));
  for (const s of clients) s.disconnect();
});
