// occupancy-client/socketio: the same client over the Socket.IO adapter's acked `occupancy:*`
// events (socket.io-client v4, a peer dependency).
//
//   import { Occupancy } from 'occupancy-client/socketio';
//   const occ = new Occupancy('http://localhost:9000', { params: { meta: { name: 'Ann' } } });
//   occ.on('room', (room, view) => render(room, view));
//   await occ.join('document-1');
//
// A request is emitted as `occupancy:<op>` with the protocol v1 request (without `op`) as its
// payload, and its acknowledgement is the reply; the server pushes `occupancy:hello`,
// `occupancy:occupied`, `occupancy:released`, `occupancy:presence`, `occupancy:displaced` and
// `occupancy:error`. socket.io-client reconnects by itself; the resume token rides in `auth`.

import { io, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';
import { Client, type BaseOptions, type Sent } from './index.js';
import type { ServerEvent } from './protocol.js';

export { OccupancyError } from './index.js';
export type { BaseOptions, Client, ClientEvents, Status, StorageLike, UnansweredError, View } from './index.js';
export type * from './protocol.js';

/** Options of the Socket.IO client. */
export interface Options extends BaseOptions {
  /**
   * The handshake's `auth` payload, what the server's identify hook reads (the default hook
   * takes the metadata from `auth.meta`); the client adds `resume`.
   */
  params?: Record<string, unknown>;
  /** Options for socket.io-client's `io()` (`path`, `transports`, ...); `auth` is the client's. */
  socket?: Partial<ManagerOptions & SocketOptions>;
  /** The prefix of the event names, as configured on the server (default `occupancy:`). */
  prefix?: string;
}

const PUSHES = ['hello', 'occupied', 'released', 'presence', 'displaced', 'error'];

/**
 * The occupancy client over Socket.IO: the same API and views as the WebSocket client.
 * `ping()` is a round trip through the socket's request queue on the server (`occupancy:ping`);
 * liveness is Socket.IO's own.
 */
export class Occupancy extends Client {
  /** The underlying socket.io-client socket. */
  readonly socket: Socket;
  private readonly prefix: string;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;

  /** @param url the Socket.IO server (and namespace), as for socket.io-client's `io(url)`. */
  constructor(url: string, options: Options = {}) {
    super(options);
    const p = (this.prefix = options.prefix ?? 'occupancy:');
    const s = (this.socket = io(url, {
      ...options.socket,
      auth: (cb) => {
        const token = this.resumeToken();
        cb(token ? { ...options.params, resume: token } : { ...options.params });
      },
    }));
    for (const name of PUSHES) s.on(p + name, (ev: ServerEvent) => this.handle(ev));
    s.on('connect', () => (this.attempt = 0));
    s.on('disconnect', () => {
      this.dropped();
      this.again();
    });
    s.on('connect_error', () => this.again());
  }

  protected send(msg: Sent): void {
    const { op: name, ref, ...payload } = msg;
    this.socket.emit(this.prefix + name, { ...payload, ref }, (ack: ServerEvent) =>
      this.reply({ ...ack, ref } as ServerEvent & { ref: number }),
    );
  }

  protected shut(): void {
    clearTimeout(this.retryTimer);
    this.socket.disconnect();
  }

  /**
   * The socket is down: socket.io-client reconnects by itself unless the server refused or
   * disconnected it (`socket.active` false); then the client tries again with its own backoff.
   */
  private again(): void {
    if (this.closed) return;
    this.setStatus('reconnecting');
    if (this.socket.active) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.socket.connect(), this.backoff(this.attempt++));
  }
}
