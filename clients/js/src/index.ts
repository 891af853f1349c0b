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
   * Send `ping` every `heartbeat_ms` of `hello` and reconnect when a pong does not come back
   * within twice that (at least 2 s), so a dead server or network is noticed (default true).
   */
  heartbeat?: boolean;
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
  private readonly beat: boolean;
  private ws: WebSocketLike | null = null;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private beatTimer: ReturnType<typeof setInterval> | undefined;

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
    const ms = hello.heartbeat_ms;
    const ws = this.ws;
    if (!this.beat || !(ms > 0)) return;
    let out = 0;
    this.beatTimer = setInterval(() => {
      // The previous ping is still out after twice the interval: the server or network is gone.
      if (out && Date.now() - out > Math.max(2 * ms, 2000)) return this.lost(ws, 4002);
      if (out) return;
      out = Date.now();
      this.ping().then(
        () => (out = 0),
        () => (out = 0),
      );
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
    ws.onmessage = (e) => {
      if (this.ws != ws) return;
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
    if (code) {
      try {
        ws.close(code);
      } catch {
        // already closing
      }
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
