// Helpers for the Node tests: real socket.io-client v4 sockets that record what they receive,
// and waits that are always bounded.
import { io } from "socket.io-client";

export const TIMEOUT_MS = 5000;

const open = new Set();

/** A socket that records every event it receives in `socket.got` (name -> array of payloads). */
export function connect(url, { transport = "websocket", auth, ...opts } = {}) {
  const socket = io(url, {
    transports: transport === "default" ? ["polling", "websocket"] : [transport],
    reconnection: false,
    forceNew: true,
    timeout: TIMEOUT_MS,
    ...(auth ? { auth } : {}),
    ...opts,
  });
  socket.got = new Map();
  socket.onAny((event, payload) => {
    if (!socket.got.has(event)) socket.got.set(event, []);
    socket.got.get(event).push(payload);
  });
  open.add(socket);
  return socket;
}

/** All payloads of `event` received so far. */
export function got(socket, event) {
  return socket.got.get(event) ?? [];
}

/** Resolves with the first payload of `event` matching `pred` (already received or to come). */
export function waitFor(socket, event, pred = () => true, ms = TIMEOUT_MS) {
  const seen = got(socket, event).find(pred);
  if (seen !== undefined) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.offAny(listener);
      reject(new Error(`timed out after ${ms} ms waiting for ${event}; got ${JSON.stringify([...socket.got.keys()])}`));
    }, ms);
    const listener = (name, payload) => {
      if (name === event && pred(payload)) {
        clearTimeout(timer);
        socket.offAny(listener);
        resolve(payload);
      }
    };
    socket.onAny(listener);
  });
}

/** Resolves when connected (or rejects on connect_error), bounded. */
export function connected(socket, ms = TIMEOUT_MS) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("connect timed out")), ms);
    socket.once("connect", () => { clearTimeout(timer); resolve(); });
    socket.once("connect_error", (e) => { clearTimeout(timer); reject(e); });
  });
}

/** Resolves when the socket is disconnected, bounded. */
export function disconnected(socket, ms = TIMEOUT_MS) {
  if (!socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("disconnect timed out")), ms);
    socket.once("disconnect", (reason) => { clearTimeout(timer); resolve(reason); });
  });
}

/** An acked call, bounded. */
export function call(socket, event, payload, ms = TIMEOUT_MS) {
  return socket.timeout(ms).emitWithAck(event, payload);
}

/**
 * A round trip through the socket's ordered queue on the server: every event the server had
 * queued for this socket before answering has arrived when this resolves.
 */
export async function sync(socket) {
  const r = await call(socket, "occupancy:unwatch", "sync-probe");
  if (r.ev !== "left") throw new Error(`sync failed: ${JSON.stringify(r)}`);
}

/** Closes every socket opened through `connect`. */
export function closeAll() {
  for (const s of open) s.disconnect();
  open.clear();
}

/** The transports every article test runs over. */
export const TRANSPORTS = ["websocket", "polling", "default"];

/** A unique room name per test and transport. */
let n = 0;
export function room(prefix) {
  n += 1;
  return `${prefix}-${process.pid}-${n}`;
}
