// occupancy-client: the client of occupancy protocol v1 over a WebSocket (the axum adapter).
//
//   import { Occupancy } from 'occupancy-client';
//   const occ = new Occupancy('/occupancy', { params: { name: 'Ann' } });
//   occ.on('room', (room, view) => render(room, view));
//   await occ.join('document-1');

import { Client, type BaseOptions, type Sent } from './core.js';
import type { HelloEvent } from './protocol.js';

export { OccupancyError } from './core.js';
export type { BaseOptions, Client, ClientEvents, Status, StorageLike, UnansweredError, View } from './core.js';
export type * from './protocol.js';

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
