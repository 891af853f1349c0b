// occupancy.js: a small, dependency-free browser client for occupancy protocol v1 (the axum
// WebSocket adapter). An ES module; no build step. Served by the `documents` example at
// /occupancy.js; copy it into your own frontend as it is.
//
//   import { Occupancy } from '/occupancy.js';
//   const occ = new Occupancy('/occupancy', { params: { name: 'Ann' } });
//   occ.on('room', (room, view) => render(room, view));   // holder, position, waiting, occupants
//   occ.on('status', (status) => showStatus(status));     // 'connecting' | 'open' | 'reconnecting' | 'closed'
//   const joined = await occ.join('document-1');          // resolves with the `joined` reply
//   await occ.takeover('document-1');                     // rejects with an OccupancyError on `error`
//
// What it does for you:
// - matches replies to requests by `ref` (every call returns a Promise);
// - reconnects with exponential backoff and jitter, and resumes the session with the resume token
//   from `hello` (kept in sessionStorage, so a page reload keeps your place in line); when the
//   server could not resume (grace over), it joins and watches your rooms again by itself;
// - keeps a per-room view (merging joined/occupied/released/presence/displaced, dropping notices
//   older than the room version it has) and emits `room` whenever it changes;
// - sends the app-level `ping` op every `heartbeat_ms` (from `hello`) and reconnects when a pong
//   does not come back, so a dead server or network is noticed on the client side too.
//
// Events (`on(name, fn)` returns a function that removes the listener):
//   'room'      (room, view)      view = {room, holding, position, holder, waiting, occupants, version,
//                                 held_since}; every person is {id, meta, since} (since, held_since:
//                                 Unix ms, server clock)
//   'status'    (status)          connection status changes
//   'hello'     (hello)           every (re)connection; hello.resumed tells whether places were kept
//   'occupied' | 'released' | 'presence' | 'displaced'   (event)   the raw protocol notices
//   'error'     (event)           an `error` event that answers no pending request
//   'message'   (event)           every event received, raw

/** An `error` reply, as a rejected Promise's reason: `code` is the protocol's error code. */
export class OccupancyError extends Error {
  constructor(code, message, ref) {
    super(message || code);
    this.name = 'OccupancyError';
    this.code = code;
    this.ref = ref;
  }
}

const DEFAULTS = {
  params: {},
  storage: typeof sessionStorage !== 'undefined' ? sessionStorage : null,
  storageKey: 'occupancy.resume',
  minBackoffMs: 250,
  maxBackoffMs: 10000,
  requestTimeoutMs: 10000,
  WebSocket: typeof WebSocket !== 'undefined' ? WebSocket : null,
};

/** A protocol v1 client: one WebSocket, reconnected and resumed as needed. */
export class Occupancy {
  /**
   * @param {string} url  ws:// or wss:// URL, or a path like '/occupancy' (resolved against the page).
   * @param {object} [options]  params (extra query parameters), storage (null: no resume across
   *   reloads), storageKey, minBackoffMs, maxBackoffMs, requestTimeoutMs, WebSocket (an implementation).
   */
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = url;
    this.status = 'connecting';
    this.session = null;
    this.rooms = new Map(); // room -> view
    this._joined = new Map(); // room -> meta: rooms this client stands in (to rejoin)
    this._watched = new Set();
    this._listeners = new Map();
    this._pending = new Map(); // ref -> {resolve, reject, timer, msg}
    this._outbox = []; // requests made while not connected
    this._nextRef = 1;
    this._attempt = 0;
    this._closedByUser = false;
    this._ws = null;
    this._open = false;
    this._heartbeat = null;
    this._reconnectTimer = null;
    this._connect();
  }

  /** Adds a listener; returns a function that removes it. */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }

  /** Removes a listener. */
  off(name, fn) {
    const set = this._listeners.get(name);
    if (set) set.delete(fn);
  }

  /** Stands in the room's line. Resolves with `joined` ({holding, position, holder, version}). */
  join(room, meta) {
    this._joined.set(room, meta);
    const msg = { op: 'join', room };
    if (meta) msg.meta = meta;
    return this._request(msg);
  }

  /** Leaves the room's line. Resolves with `left` ({was_member}). */
  leave(room) {
    this._joined.delete(room);
    this.rooms.delete(room);
    return this._request({ op: 'leave', room });
  }

  /**
   * Replaces your metadata in a room you stand in, without leaving it ("viewing" → "editing").
   * Resolves with `joined` (your unchanged place); rejects with code `not_member` otherwise. A
   * re-join after a lost session uses the new metadata.
   */
  update(room, meta) {
    if (this._joined.has(room)) this._joined.set(room, meta);
    return this._request({ op: 'update', room, meta });
  }

  /**
   * "Still working here": refreshes your idle clock in a room you hold (call it on user input,
   * throttled; a server with an idle timeout displaces a holder who stays silent while someone
   * waits). Resolves with `joined`; rejects with code `not_member` when you are not in the room.
   */
  active(room) {
    return this._request({ op: 'active', room });
  }

  /** Takes the room over (you must have joined it). Resolves with `joined`. */
  takeover(room) {
    return this._request({ op: 'takeover', room });
  }

  /** Watches the room without standing in line. Resolves with `watching`. */
  watch(room) {
    this._watched.add(room);
    return this._request({ op: 'watch', room });
  }

  /** Stops watching. Resolves with `left`. */
  unwatch(room) {
    this._watched.delete(room);
    this.rooms.delete(room);
    return this._request({ op: 'unwatch', room });
  }

  /** App-level ping. Resolves with `pong`. */
  ping() {
    return this._request({ op: 'ping' });
  }

  /** The current view of a room, or undefined. */
  room(room) {
    return this.rooms.get(room);
  }

  /** Closes the connection for good (no reconnect). The server keeps the places for its grace
   * period; call leave() first to give them up at once. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    this._stopHeartbeat();
    if (this._ws) this._ws.close(1000, 'client closed');
    this._failPending('closed');
    this._setStatus('closed');
  }

  // ----- internals ------------------------------------------------------------------------

  _emit(name, ...args) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        console.error('occupancy listener failed', e);
      }
    }
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit('status', status);
  }

  _wsUrl() {
    let base;
    if (/^wss?:\/\//.test(this.url)) {
      base = new URL(this.url);
    } else {
      const loc = globalThis.location;
      base = new URL(this.url, loc ? loc.href : 'http://localhost/');
      base.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:';
    }
    for (const [k, v] of Object.entries(this.options.params || {})) {
      if (v !== undefined && v !== null && v !== '') base.searchParams.set(k, String(v));
    }
    const token = this._loadToken();
    if (token) base.searchParams.set('resume', token);
    return base.toString();
  }

  _loadToken() {
    try {
      return this.options.storage ? this.options.storage.getItem(this.options.storageKey) : this._token;
    } catch {
      return this._token;
    }
  }

  _saveToken(token) {
    this._token = token;
    try {
      if (this.options.storage) this.options.storage.setItem(this.options.storageKey, token);
    } catch {
      // storage full or disabled: resume still works within this page's lifetime
    }
  }

  _connect() {
    if (this._closedByUser) return;
    this._setStatus(this._attempt === 0 && !this.session ? 'connecting' : 'reconnecting');
    const Impl = this.options.WebSocket;
    let ws;
    try {
      ws = new Impl(this._wsUrl());
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.onmessage = (e) => {
      if (this._ws !== ws) return;
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return;
      }
      this._handle(ev);
    };
    ws.onclose = () => this._drop(ws);
    ws.onerror = () => {
      // onclose follows
    };
  }

  // The connection `ws` is gone (closed, or given up on): fail what waits on it and reconnect.
  _drop(ws) {
    if (this._ws !== ws) return;
    this._ws = null;
    this._open = false;
    this._stopHeartbeat();
    this._failPending('disconnected');
    if (!this._closedByUser) this._scheduleReconnect();
  }

  _scheduleReconnect() {
    if (this._closedByUser) return;
    this._setStatus('reconnecting');
    const { minBackoffMs, maxBackoffMs } = this.options;
    const exp = Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(this._attempt, 16));
    const delay = exp / 2 + Math.random() * (exp / 2);
    this._attempt += 1;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._connect(), delay);
  }

  _handle(ev) {
    this._emit('message', ev);
    if (ev.ev === 'hello') {
      this._onHello(ev);
      return;
    }
    const hasRef = ev.ref !== undefined && ev.ref !== null;
    const pending = hasRef ? this._pending.get(ev.ref) : undefined;
    if (pending) {
      this._pending.delete(ev.ref);
      clearTimeout(pending.timer);
    }
    switch (ev.ev) {
      case 'joined':
        this._update(ev.room, ev.version, {
          holding: ev.holding,
          position: ev.position,
          holder: ev.holder,
        });
        break;
      case 'watching':
        this._update(ev.room, ev.version, {
          holding: false,
          position: null,
          holder: ev.holder,
          waiting: ev.waiting,
          occupants: ev.occupants,
          held_since: ev.held_since ?? null,
        });
        break;
      case 'occupied':
        this._update(ev.room, ev.version, { holding: false, position: ev.position, holder: ev.holder });
        this._emit('occupied', ev);
        break;
      case 'released':
        this._update(ev.room, ev.version, { holding: true, position: 0 });
        this._emit('released', ev);
        break;
      case 'presence': {
        const patch = {
          holder: ev.holder,
          waiting: ev.waiting,
          occupants: ev.occupants,
          held_since: ev.held_since ?? null,
        };
        if (ev.position !== undefined) {
          patch.position = ev.position;
          patch.holding = ev.position === 0;
        }
        this._update(ev.room, ev.version, patch);
        this._emit('presence', ev);
        break;
      }
      case 'displaced':
        this._update(ev.room, ev.version, { holding: false, position: ev.position, holder: ev.by });
        this._emit('displaced', ev);
        break;
      case 'error':
        if (pending) {
          pending.reject(new OccupancyError(ev.code, ev.message, ev.ref));
          return;
        }
        this._emit('error', ev);
        return;
      default:
        break;
    }
    if (pending) pending.resolve(ev);
  }

  _onHello(hello) {
    this.session = hello.session;
    this._saveToken(hello.resume);
    this._attempt = 0;
    this._open = true;
    this._setStatus('open');
    this._emit('hello', hello);
    if (!hello.resumed) {
      // A new session: stand in line and watch again (join and watch are idempotent).
      for (const [room, meta] of this._joined) {
        const msg = { op: 'join', room };
        if (meta) msg.meta = meta;
        this._request(msg).catch((e) => this._emit('error', { ev: 'error', code: e.code, message: e.message, room }));
      }
      for (const room of this._watched) {
        this._request({ op: 'watch', room }).catch(() => {});
      }
    }
    const queued = this._outbox;
    this._outbox = [];
    for (const msg of queued) this._sendNow(msg);
    this._startHeartbeat(hello.heartbeat_ms);
  }

  _update(room, version, patch) {
    if (!this._joined.has(room) && !this._watched.has(room)) return;
    const prev = this.rooms.get(room);
    if (prev && typeof version === 'number' && version < prev.version) return; // stale
    const view = {
      room,
      holding: false,
      position: null,
      holder: null,
      waiting: 0,
      occupants: [],
      version: 0,
      held_since: null,
      ...prev,
      ...patch,
    };
    if (typeof version === 'number') view.version = version;
    this.rooms.set(room, view);
    this._emit('room', room, view);
  }

  _request(msg) {
    const ref = this._nextRef++;
    msg.ref = ref;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this._pending.delete(ref)) reject(new OccupancyError('timeout', 'no reply in time', ref));
        this._outbox = this._outbox.filter((m) => m.ref !== ref);
      }, this.options.requestTimeoutMs);
      this._pending.set(ref, { resolve, reject, timer, msg });
      if (this._open && this._ws) this._sendNow(msg);
      else this._outbox.push(msg);
    });
  }

  _sendNow(msg) {
    try {
      this._ws.send(JSON.stringify(msg));
    } catch {
      // the close handler fails the request
    }
  }

  _failPending(code) {
    for (const [ref, p] of this._pending) {
      // Requests still waiting in the outbox are sent after the next hello.
      if (this._outbox.some((m) => m.ref === ref)) continue;
      clearTimeout(p.timer);
      this._pending.delete(ref);
      p.reject(new OccupancyError(code, `connection ${code}`, ref));
    }
  }

  _startHeartbeat(ms) {
    this._stopHeartbeat();
    if (!ms || ms <= 0) return;
    let waiting = false;
    this._heartbeat = setInterval(() => {
      if (waiting) return; // the previous ping is still out; its timer below decides
      waiting = true;
      const ws = this._ws;
      const timer = setTimeout(() => {
        if (waiting && this._ws === ws && ws) {
          // Do not wait for a closing handshake that a dead peer will never answer.
          this._drop(ws);
          try {
            ws.close(4002, 'heartbeat timeout');
          } catch {
            // already closing
          }
        }
      }, Math.max(2 * ms, 2000));
      this.ping()
        .then(() => {
          waiting = false;
          clearTimeout(timer);
        })
        .catch(() => {
          waiting = false;
          clearTimeout(timer);
        });
    }, ms);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeat);
    this._heartbeat = null;
  }
}
