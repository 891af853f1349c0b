// What both transports share: requests matched to replies by `ref`, the outbox of requests made
// while the connection is not open, the per-room views and their honesty (`stale`), and getting
// the places back after a reconnection. A transport (the WebSocket client in index.ts, the
// Socket.IO one in socketio.ts) subclasses `Client`: it opens connections, sends requests, and
// hands every event it receives to `handle` and every lost connection to `dropped`.

import type {
  ErrorCode,
  ErrorEvent,
  DisplacedEvent,
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
