// A holder whose network silently drops (it stops answering the server's pings, its TCP
// connection stays open) is detected by the ping timeout and the next in line is released: the
// article's bug 8.
//
//   node tests/socketio-node/liveness.test.mjs http://127.0.0.1:PORT
//
// The server must use short ping settings (e.g. 200 ms interval and timeout) and a zero grace
// period (run by occupancy-socketio/tests/node.rs).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { call, closeAll, connect, connected, disconnected, got, room, sync, waitFor } from "./lib.mjs";

const url = process.argv[2];
if (!url) {
  console.error("usage: node liveness.test.mjs <server url>");
  process.exit(2);
}

after(() => closeAll());

/** Makes the client deaf to pings: engine.io-client answers each `ping` with a `pong`. */
function goSilent(socket) {
  const engine = socket.io.engine;
  const send = engine._sendPacket.bind(engine);
  engine._sendPacket = (type, ...rest) => (type === "pong" ? undefined : send(type, ...rest));
}

for (const transport of ["websocket", "polling"]) {
  test(`[${transport}] a silent holder is dropped by the ping timeout and the next in line released`, { timeout: 20000 }, async () => {
    const doc = room("document");
    const a = connect(url, { transport });
    a.emit("join_document_room", doc);
    await connected(a);
    await sync(a);
    const b = connect(url, { transport });
    b.emit("join_document_room", doc);
    await waitFor(b, "is_occupied");
    const hello = await waitFor(b, "occupancy:hello");
    assert.ok(hello.heartbeat_ms <= 1000, `short pings configured: ${hello.heartbeat_ms}`);
    goSilent(a);
    assert.equal(await waitFor(b, "is_released", () => true, 10000), "this is released");
    await sync(b);
    assert.equal(got(b, "is_released").length, 1);
    // The live client is unaffected by the pings it answers.
    const r = await call(b, "occupancy:join", doc);
    assert.deepEqual([r.holding, r.position], [true, 0]);
    assert.ok(b.connected);
    a.disconnect();
    b.disconnect();
    await disconnected(b);
  });
}
