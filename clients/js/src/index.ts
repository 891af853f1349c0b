// occupancy-client: the client of occupancy protocol v1 over a WebSocket (the axum adapter), and
// the transport-independent core the Socket.IO client (occupancy-client/socketio) shares.
// Source of the npm package occupancy-client (clients/js/src/index.ts in the occupancy
// repository). Its build, dist/index.js, is self-contained: examples/static/occupancy.js is a copy
// of it (`npm run build:example` in clients/js; CI checks that it is up to date), which the
// documents example serves as /occupancy.js. Edit the source, not the copy.
//
//   import { Occupancy } from 'occupancy-client';        // or '/occupancy.js' in the example
//   const occ = new Occupancy('/occupancy', { params: { name: 'Ann' } });
//   occ.on('room', (room, view) => render(room, view));   // view: holding, position, holder, stale, ...
//   occ.on('status', (status) => show(status));           // connecting | open | reconnecting | closed
//   const joined = await occ.join('document-1');          // resolves with the `joined` reply
//   await occ.takeover('document-1');                     // rejects with an OccupancyError on `error`
//
// What it does for you:
// - matches replies to requests by `ref` (every call returns a Promise), and keeps requests made
//   while the connection is not open until it is;
// - reconnects with exponential backoff and jitter, and resumes the session with the resume token
//   from `hello` (kept in sessionStorage, so a page reload keeps your place in line); when the
//   server could not resume (grace over, server restarted), it joins and watches your rooms again;
// - keeps a per-room view (merging joined/occupied/released/presence/displaced/watching, dropping
//   notices older than the room version it has) and emits `room` whenever it changes;
// - is honest: while the connection is not open every view is `stale` (a `room` event says so the
//   moment it drops) and `holding` is false; a view is fresh again only once the server has
//   confirmed the place (a resumed session's presence, or the reply to the re-join);
// - sends the `ping` op every `heartbeat_ms` (from `hello`) and reconnects when a pong does not
//   come back, so a dead server or network is noticed even while TCP looks fine.

import type {
  DisplacedEvent,
  ErrorCode,
  ErrorEvent,
  HelloEvent,
  JoinedEvent,
  LeftEvent,
  Meta,
  OccupiedEvent,
  Person,
  PongEvent,
  PresenceEvent,
  Ref,
  ReleasedEvent,
  ServerEvent,
  WatchingEvent,
} from './protocol.js';

export type * from './protocol.js';

// ----- the transport-independent client ------------------------------------------------------

/** A request failed: `code` is the server's error code, or `timeout`, `disconnected`, `closed`. */
export class OccupancyError extends Error {
  readonly code: ErrorCode;
  readonly ref: Ref | undefined;
  constructor(code: ErrorCode, message?: string, ref?: Ref) {
    super(message || code);
    this.name = 'OccupancyError';
    this.code = code;
    this.ref = ref;
  }
}

/** What this client knows about one room it stands in or watches. */
export interface View {
  room: string;
  /**
   * You hold the room, and the server has confirmed it on the open connection. Always false
   * while `stale`: a hold the client cannot vouch for is never presented as one.
   */
  holding: boolean;
  /**
   * Your place: 0 = holding, 1 = next in line, ...; null when you only watch the room. While
   * `stale`, the last place the server confirmed.
   */
  position: number | null;
  /** Who holds the room (null: nobody). */
  holder: Person | null;
  /** How many stand in line behind the holder. */
  waiting: number;
  /** The first few occupants, holder first. */
  occupants: Person[];
  /** The room's version of the last change applied (older notices are dropped). */
  version: number;
  /** When the holder was granted the room (Unix ms, server clock); null when unknown or empty. */
  held_since: number | null;
  /**
   * The connection is not open, or the server has not yet confirmed your place since it
   * reopened: what the view shows may be out of date. It becomes false once the server
   * confirms (a resumed session's presence, or the reply to the client's own re-join).
   */
  stale: boolean;
}

/** The connection's state. */
export type Status = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** An `error` event that answered no request (or a re-join that failed after a reconnection). */
export type UnansweredError = ErrorEvent & { room?: string };

/** The events of `on(name, listener)`. */
export interface ClientEvents {
  /** A room's view changed (including becoming stale or fresh again). */
  room: (room: string, view: View) => void;
  /** The connection's status changed. */
  status: (status: Status) => void;
  /** Every (re)connection; `hello.resumed` says whether the places were kept. */
  hello: (hello: HelloEvent) => void;
  occupied: (ev: OccupiedEvent) => void;
  released: (ev: ReleasedEvent) => void;
  presence: (ev: PresenceEvent) => void;
  displaced: (ev: DisplacedEvent) => void;
  /** An `error` the server sent that answers no pending request. */
  error: (ev: UnansweredError) => void;
  /** Every event received, raw. */
  message: (ev: ServerEvent) => void;
}

/** Something like `sessionStorage`. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Options shared by both transports. */
export interface BaseOptions {
  /**
   * Where the resume token is kept, so a page reload keeps its places. Default: `sessionStorage`
   * when there is one (per tab), else none (resume still works while this object lives).
   */
  storage?: StorageLike | null;
  /** The key in `storage` (default `occupancy.resume`). */
  storageKey?: string;
  /** How long a request waits for its reply before it fails with `timeout` (default 10 000 ms). */
  requestTimeoutMs?: number;
  /** Backoff between reconnection attempts: from `minBackoffMs` (250) doubling to `maxBackoffMs` (10 000), with jitter. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/** A request as sent, with the client's ref. */
export interface Sent {
  op: string;
  room?: string;
  meta?: Meta;
  ref: number;
}

interface Pending {
  ok: (ev: any) => void;
  fail: (e: OccupancyError) => void;
  timer: ReturnType<typeof setTimeout>;
  msg: Sent;
}

/** One room this client stands in (`joined`) and/or watches (`watched`). */
interface Entry {
  joined: boolean;
  watched: boolean;
  /** The metadata to join with again after a new session. */
  meta: Meta | undefined;
  view: View | undefined;
  /** A new session began (a server restart resets versions): accept the next version as it is. */
  fresh: boolean;
}

type Listener = (...args: any[]) => void;

/** The transport-independent client. Use `Occupancy` from `occupancy-client` or `occupancy-client/socketio`. */
export abstract class Client {
  /** The connection's state. */
  status: Status = 'connecting';
  /** The session id from the last `hello` (the same after a resume). */
  session: string | null = null;
  /** The connection is open (`hello` received) and requests are sent at once. */
  protected open = false;
  /** `close()` was called. */
  protected closed = false;
  protected readonly opts: Required<BaseOptions>;
  private readonly entries = new Map<string, Entry>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly pending = new Map<Ref, Pending>();
  private outbox: Sent[] = [];
  private nextRef = 1;
  private token: string | null = null;

  constructor(options: BaseOptions) {
    this.opts = {
      storage: typeof sessionStorage != 'undefined' ? sessionStorage : null,
      storageKey: 'occupancy.resume',
      requestTimeoutMs: 10000,
      minBackoffMs: 250,
      maxBackoffMs: 10000,
      ...options,
    };
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(fn);
    return () => this.off(name, fn);
  }

  /** Removes a listener. */
  off<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): void {
    this.listeners.get(name)?.delete(fn);
  }

  /**
   * Stands in the room's line (idempotent). Resolves with `joined`; the room's view follows in
   * `room` events. The room is joined again by itself after a reconnection that lost the session.
   */
  join(room: string, meta?: Meta): Promise<JoinedEvent> {
    const e = this.entry(room);
    e.joined = true;
    e.meta = meta;
    return this.request({ op: 'join', room, meta });
  }

  /** Leaves the room's line. Resolves with `left` (`was_member`). */
  leave(room: string): Promise<LeftEvent> {
    this.forget(room, false);
    return this.request({ op: 'leave', room });
  }

  /** Takes the room over from its holder (you must have joined it). Resolves with `joined`. */
  takeover(room: string): Promise<JoinedEvent> {
    return this.request({ op: 'takeover', room });
  }

  /** Watches the room without standing in line. Resolves with `watching`. */
  watch(room: string): Promise<WatchingEvent> {
    this.entry(room).watched = true;
    return this.request({ op: 'watch', room });
  }

  /** Stops watching. Resolves with `left`. */
  unwatch(room: string): Promise<LeftEvent> {
    this.forget(room, true);
    return this.request({ op: 'unwatch', room });
  }

  /**
   * Replaces your metadata in a room you stand in ("viewing" → "editing"). Resolves with
   * `joined`; fails with `not_member` when you do not stand in the room.
   */
  update(room: string, meta: Meta): Promise<JoinedEvent> {
    const e = this.entries.get(room);
    if (e?.joined) e.meta = meta;
    return this.request({ op: 'update', room, meta });
  }

  /**
   * "Still working here" (call it on user input, throttled): refreshes your idle clock in the
   * room. Resolves with `joined`; fails with `not_member` when you do not stand in the room.
   */
  active(room: string): Promise<JoinedEvent> {
    return this.request({ op: 'active', room });
  }

  /** A round trip to the server. Resolves with `pong`. */
  ping(): Promise<PongEvent> {
    return this.request({ op: 'ping' });
  }

  /** The current view of a room this client stands in or watches. */
  room(room: string): View | undefined {
    return this.entries.get(room)?.view;
  }

  /**
   * Closes the connection for good. The server keeps the places for its close grace (2 s by
   * default); `leave` first to give them up at once. Pending requests fail with `closed`.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.open = false;
    this.shut();
    this.outbox = [];
    this.fail('closed');
    this.stale();
    this.setStatus('closed');
  }

  // ----- for transports ----------------------------------------------------------------------

  /** Sends a request on the open connection. */
  protected abstract send(msg: Sent): void;
  /** Closes the connection for good (from `close()`). */
  protected abstract shut(): void;
  /** The connection is open (`hello` arrived): e.g. start a heartbeat. */
  protected opened(_hello: HelloEvent): void {}

  protected setStatus(status: Status): void {
    if (this.status != status) {
      this.status = status;
      this.emit('status', status);
    }
  }

  /** The resume token to connect with, if any. */
  protected resumeToken(): string | null {
    try {
      const s = this.opts.storage;
      return s ? s.getItem(this.opts.storageKey) : this.token;
    } catch {
      return this.token;
    }
  }

  /** The delay before reconnection attempt `attempt` (0, 1, ...): exponential, with jitter. */
  protected backoff(attempt: number): number {
    const exp = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** Math.min(attempt, 16));
    return exp / 2 + (Math.random() * exp) / 2;
  }

  /**
   * The connection was lost: requests waiting for a reply fail with `disconnected` (those still
   * in the outbox wait for the next connection) and every view turns stale at once.
   */
  protected dropped(): void {
    if (this.closed) return;
    this.open = false;
    this.fail('disconnected');
    this.stale();
  }

  /** An event from the server. */
  protected handle(ev: ServerEvent): void {
    this.emit('message', ev);
    if (ev.ev == 'hello') return this.hello(ev);
    const ref = 'ref' in ev ? ev.ref : undefined;
    const p = ref != null ? this.pending.get(ref) : undefined;
    if (p) {
      this.pending.delete(ref!);
      clearTimeout(p.timer);
    }
    switch (ev.ev) {
      case 'joined':
        this.apply(ev, true, { position: ev.position, holder: ev.holder });
        break;
      case 'watching':
        this.apply(ev, false, {
          holder: ev.holder,
          waiting: ev.waiting,
          occupants: ev.occupants,
          held_since: ev.held_since,
        });
        break;
      case 'occupied':
        this.apply(ev, true, { position: ev.position, holder: ev.holder });
        break;
      case 'released':
        this.apply(ev, true, { position: 0 });
        break;
      case 'presence': {
        const patch: Partial<View> = {
          holder: ev.holder,
          waiting: ev.waiting,
          occupants: ev.occupants,
          held_since: ev.held_since,
        };
        if (ev.position != null) patch.position = ev.position;
        this.apply(ev, ev.position != null, patch);
        break;
      }
      case 'displaced':
        this.apply(ev, true, { position: ev.position, holder: ev.by });
        break;
      case 'error':
        if (!p) return this.emit('error', ev);
        // A join the server refused (and never confirmed before) is not joined again later.
        if (p.msg.op == 'join') {
          const e = this.entries.get(p.msg.room!);
          if (e && !e.view) this.forget(p.msg.room!, false);
        }
        return p.fail(new OccupancyError(ev.code, ev.message, ref));
    }
    if (ev.ev == 'occupied' || ev.ev == 'released' || ev.ev == 'presence' || ev.ev == 'displaced') {
      this.emit(ev.ev, ev as any);
    }
    p?.ok(ev);
  }

  /** A reply whose request is still waiting (a late acknowledgement from an earlier connection is dropped). */
  protected reply(ev: ServerEvent & { ref: number }): void {
    if (this.pending.has(ev.ref)) this.handle(ev);
  }

  // ----- internals ---------------------------------------------------------------------------

  private emit(name: string, ...args: unknown[]): void {
    for (const fn of [...(this.listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (e) {
        console.error('occupancy listener failed', e);
      }
    }
  }

  private entry(room: string): Entry {
    let e = this.entries.get(room);
    if (!e) {
      e = { joined: false, watched: false, meta: undefined, view: undefined, fresh: false };
      this.entries.set(room, e);
    }
    return e;
  }

  /** Stops standing in (`watch` false) or watching (`watch` true) the room. */
  private forget(room: string, watch: boolean): void {
    const e = this.entries.get(room);
    if (!e) return;
    if (watch) e.watched = false;
    else e.joined = false;
    if (!e.joined && !e.watched) this.entries.delete(room);
    else if (!watch && e.view) this.show(e, { ...e.view, position: null });
  }

  private hello(h: HelloEvent): void {
    this.session = h.session;
    this.token = h.resume;
    try {
      this.opts.storage?.setItem(this.opts.storageKey, h.resume);
    } catch {
      // storage full or disabled: resume still works while this object lives
    }
    this.open = true;
    this.setStatus('open');
    this.emit('hello', h);
    this.opened(h);
    if (h.resumed) {
      // The server tells a resumed session where it stands with a presence per kept room, before
      // it answers anything: after this round trip, a room still unconfirmed was not kept (a join
      // lost with the old connection); ask for it.
      this.ping().then(() => this.renew(), () => {});
    } else {
      // A new session: nothing is kept, versions may have started over (a restarted server).
      for (const e of this.entries.values()) e.fresh = true;
      this.renew();
    }
    const queued = this.outbox;
    this.outbox = [];
    for (const msg of queued) this.send(msg);
  }

  /** Joins and watches again every room whose place the server has not confirmed. */
  private renew(): void {
    for (const [room, e] of this.entries) {
      const op = e.joined ? 'join' : 'watch';
      if ((e.view && !e.view.stale) || this.outbox.some((m) => m.room == room && m.op == op)) continue;
      const req = e.joined
        ? this.request<JoinedEvent>({ op: 'join', room, meta: e.meta })
        : this.request<WatchingEvent>({ op: 'watch', room });
      req.catch((err: OccupancyError) => {
        if (err.code != 'disconnected' && err.code != 'closed') {
          this.emit('error', { ev: 'error', code: err.code, message: err.message, room });
        }
      });
    }
  }

  /**
   * Applies a room event. `placed`: it tells your place (joined, occupied, released, displaced,
   * a member's presence), which is what confirms a room you stand in; any event confirms a room
   * you only watch.
   */
  private apply(
    ev: { room: string; version: number },
    placed: boolean,
    patch: Partial<View>,
  ): void {
    const e = this.entries.get(ev.room);
    if (!e) return;
    const prev = e.view;
    if (prev && !e.fresh && ev.version < prev.version) return; // older than what we have
    const confirms = this.open && (placed || !e.joined);
    if (!prev && !confirms) return;
    if (confirms) e.fresh = false;
    this.show(e, {
      room: ev.room,
      holding: false,
      position: null,
      holder: null,
      waiting: 0,
      occupants: [],
      held_since: null,
      ...prev,
      ...patch,
      version: ev.version,
      stale: prev ? prev.stale && !confirms : false,
    });
  }

  /** Sets and announces a view: a new object on every change; `holding` only when vouched for. */
  private show(e: Entry, view: View): void {
    view.holding = !view.stale && view.position === 0;
    e.view = view;
    this.emit('room', view.room, view);
  }

  /** Every view turns stale (the connection is not open). */
  private stale(): void {
    for (const e of this.entries.values()) {
      if (e.view && !e.view.stale) this.show(e, { ...e.view, stale: true });
    }
  }

  private request<T>(fields: { op: string; room?: string; meta?: Meta | undefined }): Promise<T> {
    const msg: Sent = { op: fields.op, ref: this.nextRef++ };
    if (fields.room != null) msg.room = fields.room;
    if (fields.meta) msg.meta = fields.meta;
    return new Promise<T>((ok, fail) => {
      if (this.closed) return fail(new OccupancyError('closed', 'client closed', msg.ref));
      const timer = setTimeout(() => {
        this.outbox = this.outbox.filter((m) => m != msg);
        if (this.pending.delete(msg.ref)) fail(new OccupancyError('timeout', 'no reply in time', msg.ref));
      }, this.opts.requestTimeoutMs);
      this.pending.set(msg.ref, { ok, fail, timer, msg });
      if (this.open) this.send(msg);
      else this.outbox.push(msg);
    });
  }

  /** Fails every request waiting for a reply (not those still in the outbox, unless closing). */
  private fail(code: ErrorCode): void {
    for (const [ref, p] of this.pending) {
      if (code != 'closed' && this.outbox.includes(p.msg)) continue;
      clearTimeout(p.timer);
      this.pending.delete(ref);
      p.fail(new OccupancyError(code, 'connection ' + code, ref));
    }
  }
}

// ----- the WebSocket transport ------------------------------------------------------------------

/** What the client needs of a WebSocket: the browser's, or the npm `ws` package's. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  /** `ws` only: drop the connection at once, without a closing handshake. */
  terminate?(): void;
}

/** A WebSocket constructor (`WebSocket` in browsers; `import WebSocket from 'ws'` in Node). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Options of the WebSocket client. */
export interface Options extends BaseOptions {
  /** Extra query parameters of the connection URL (what the server's identify hook reads). */
  params?: Record<string, string | number | boolean | null | undefined>;
  /** The WebSocket implementation (default: the global `WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /**
   * Send `ping` every `heartbeat_ms` of `hello` (or every `heartbeat` ms when a number) and
   * reconnect when a pong does not come back within twice that (at least 1 s), so a dead
   * server or network is noticed (default true). The same `requestTimeoutMs` bounds the wait
   * for `hello` on a new connection.
   */
  heartbeat?: boolean | number;
}

/**
 * A protocol v1 client over one WebSocket: reconnected with backoff, resumed with the token from
 * `hello`, its rooms joined again when the session could not be resumed.
 */
export class Occupancy extends Client {
  /** The endpoint's URL (without the query parameters added per connection). */
  readonly url: string;
  private readonly params: Options['params'];
  private readonly Impl: WebSocketConstructor | undefined;
  private readonly beat: boolean | number;
  private ws: WebSocketLike | null = null;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private beatTimer: ReturnType<typeof setInterval> | undefined;
  private helloTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param url `ws://` or `wss://` URL, an `http(s)://` one, or a path like `/occupancy`
   *   (resolved against the page's location).
   */
  constructor(url: string, options: Options = {}) {
    super(options);
    const loc = (globalThis as any).location;
    const u = new URL(url, loc && loc.href); // throws on a bad URL (or a path outside a page)
    u.protocol = u.protocol.replace('http', 'ws');
    this.url = u.href;
    this.params = options.params;
    this.Impl = options.WebSocket || (globalThis as any).WebSocket;
    this.beat = options.heartbeat ?? true;
    this.connect();
  }

  protected send(msg: Sent): void {
    try {
      this.ws!.send(JSON.stringify(msg));
    } catch {
      // the close handler fails the request
    }
  }

  protected shut(): void {
    clearTimeout(this.retryTimer);
    this.lost(this.ws, 1000);
  }

  protected override opened(hello: HelloEvent): void {
    this.attempt = 0;
    const ms = typeof this.beat == 'number' ? this.beat : this.beat ? hello.heartbeat_ms : 0;
    const ws = this.ws;
    if (!(ms > 0)) return;
    let out = false;
    this.beatTimer = setInterval(() => {
      if (out) return;
      out = true;
      // No pong in time: the server or the network is gone, whatever TCP says.
      const timer = setTimeout(() => this.lost(ws, 4002), Math.max(2 * ms, 1000));
      const done = () => {
        out = false;
        clearTimeout(timer);
      };
      this.ping().then(done, done);
    }, ms);
  }

  private href(): string {
    const u = new URL(this.url);
    for (const [k, v] of Object.entries(this.params || {})) {
      if (v != null && v !== '') u.searchParams.set(k, String(v));
    }
    const token = this.resumeToken();
    if (token) u.searchParams.set('resume', token);
    return u.href;
  }

  private connect(): void {
    if (this.closed) return;
    let ws: WebSocketLike;
    try {
      ws = new this.Impl!(this.href());
    } catch {
      return this.retry();
    }
    this.ws = ws;
    // A connection that does not say hello in time (a server that accepts and hangs) is retried.
    this.helloTimer = setTimeout(() => this.lost(ws, 4002), this.opts.requestTimeoutMs);
    ws.onmessage = (e) => {
      if (this.ws != ws) return;
      clearTimeout(this.helloTimer);
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return;
      }
      this.handle(ev);
    };
    ws.onclose = () => {
      if (this.ws == ws) {
        this.lost(ws);
        this.retry();
      }
    };
    ws.onerror = () => {}; // onclose follows
  }

  /**
   * Gives up on connection `ws`: closes it with `code` (when given) without waiting for a
   * closing handshake a dead peer would never answer, and turns everything stale.
   */
  private lost(ws: WebSocketLike | null, code?: number): void {
    if (!ws || this.ws != ws) return;
    this.ws = null;
    clearInterval(this.beatTimer);
    clearTimeout(this.helloTimer);
    try {
      // A dead peer would never answer a closing handshake: `ws` drops it at once.
      if (code == 4002 && ws.terminate) ws.terminate();
      else if (code) ws.close(code);
    } catch {
      // already closing
    }
    if (this.closed) return;
    this.dropped();
    if (code == 4002) this.retry();
  }

  private retry(): void {
    if (this.closed) return;
    this.setStatus('reconnecting');
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), this.backoff(this.attempt++));
  }
}
