// The messages of occupancy protocol v1, as TypeScript types (no runtime code).
//
// The axum adapter sends them as JSON text frames over a WebSocket; the Socket.IO adapter uses
// the same objects: a request without `op` is the payload of the acked event `occupancy:<op>`,
// the reply is the acknowledgement, and every other event is pushed as `occupancy:<ev>`.
// The reference is the `occupancy-axum` crate documentation (tables of every request and event).

/** A request's correlation id, echoed in its reply: an integer, or a string of at most 64 bytes. */
export type Ref = number | string;

/** Public metadata of an occupant in a room (a display name, a status): a small JSON object. */
export type Meta = { [key: string]: unknown };

/**
 * Wherever a person appears. `id` is the principal (the user id the server's identify hook
 * gave), or `~` followed by the session id for an anonymous occupant.
 */
export interface Person {
  id: string;
  meta: Meta;
  /** When this occupant entered the room's line: Unix time in milliseconds, server clock. */
  since: number;
}

// ----- client → server -----------------------------------------------------------------------

/** Stand in the room's line. `meta` overrides the connection's metadata in this room. */
export interface JoinRequest {
  op: 'join';
  room: string;
  meta?: Meta;
  ref?: Ref;
}
/** Leave the room's line (idempotent). */
export interface LeaveRequest {
  op: 'leave';
  room: string;
  ref?: Ref;
}
/** Take the room over from its holder (you must have joined it). */
export interface TakeoverRequest {
  op: 'takeover';
  room: string;
  ref?: Ref;
}
/** Watch the room without standing in line. */
export interface WatchRequest {
  op: 'watch';
  room: string;
  ref?: Ref;
}
/** Stop watching. */
export interface UnwatchRequest {
  op: 'unwatch';
  room: string;
  ref?: Ref;
}
/** Replace your metadata in a room you stand in, without leaving it. */
export interface UpdateRequest {
  op: 'update';
  room: string;
  meta: Meta;
  ref?: Ref;
}
/** "Still working here": refreshes the holder's idle clock. */
export interface ActiveRequest {
  op: 'active';
  room: string;
  ref?: Ref;
}
/** Application-level ping (browsers cannot send WebSocket pings). */
export interface PingRequest {
  op: 'ping';
  ref?: Ref;
}

/** Every request of protocol v1. */
export type Request =
  | JoinRequest
  | LeaveRequest
  | TakeoverRequest
  | WatchRequest
  | UnwatchRequest
  | UpdateRequest
  | ActiveRequest
  | PingRequest;

/** The `op` of a request. */
export type Op = Request['op'];

// ----- server → client -----------------------------------------------------------------------

/** First message of every connection. */
export interface HelloEvent {
  ev: 'hello';
  /** This connection's session id (the same after a resume). */
  session: string;
  /** The single-use secret to reconnect with (`?resume=` / Socket.IO `auth.resume`). */
  resume: string;
  /** 1. */
  protocol: number;
  /** How often a client should ping to notice a dead server (ms). */
  heartbeat_ms: number;
  /** True when this connection took back an earlier session and its places. */
  resumed: boolean;
}

/** Reply to `join`, `takeover`, `update` and `active`: your place. */
export interface JoinedEvent {
  ev: 'joined';
  ref?: Ref;
  room: string;
  holding: boolean;
  /** 0 = holding, 1 = next in line. */
  position: number;
  version: number;
  holder: Person;
}

/** You joined and someone else holds the room. */
export interface OccupiedEvent {
  ev: 'occupied';
  room: string;
  version: number;
  holder: Person;
  position: number;
}

/** You now hold the room: once per hand-over, to every connection of the new holder. */
export interface ReleasedEvent {
  ev: 'released';
  room: string;
  version: number;
}

/** The room changed. */
export interface PresenceEvent {
  ev: 'presence';
  room: string;
  version: number;
  holder: Person | null;
  /** Your place; absent for a watcher. */
  position?: number;
  /** How many stand behind the holder. */
  waiting: number;
  /** The first few occupants, holder first. */
  occupants: Person[];
  /** When the holder was granted the room (Unix ms, server clock); null when nobody holds it. */
  held_since: number | null;
}

/** Why you no longer hold a room. */
export type DisplacedReason = 'takeover' | 'idle' | 'server';

/** You no longer hold the room and are now `position` in line. */
export interface DisplacedEvent {
  ev: 'displaced';
  room: string;
  version: number;
  /** Who took it over (`takeover`), or the next in line who got it (`idle`, `server`). */
  by: Person;
  position: number;
  reason: DisplacedReason;
}

/** Reply to `leave` and `unwatch`. */
export interface LeftEvent {
  ev: 'left';
  ref?: Ref;
  room: string;
  /** False when you were not in the room (both are idempotent). */
  was_member: boolean;
}

/** Reply to `watch`, with the room's presence. */
export interface WatchingEvent {
  ev: 'watching';
  ref?: Ref;
  room: string;
  version: number;
  holder: Person | null;
  waiting: number;
  occupants: Person[];
  held_since: number | null;
}

/** Reply to `ping`. */
export interface PongEvent {
  ev: 'pong';
  ref?: Ref;
}

/** The error codes the server sends; stable, never renamed. */
export type ServerErrorCode =
  | 'bad_message'
  | 'unknown_op'
  | 'frame_too_large'
  | 'room_invalid'
  | 'too_many_rooms'
  | 'room_full'
  | 'meta_too_large'
  | 'meta_invalid'
  | 'not_in_room'
  | 'not_member'
  | 'forbidden'
  | 'rate_limited'
  | 'unavailable'
  | 'resume_invalid'
  | 'unknown_session';

/**
 * The codes of an `OccupancyError`: the server's, and the client's own — `timeout` (no reply
 * within `requestTimeoutMs`), `disconnected` (the connection was lost before the reply; the
 * request may or may not have been carried out), `closed` (`close()` was called).
 */
export type ErrorCode = ServerErrorCode | 'timeout' | 'disconnected' | 'closed';

/** A request failed and changed nothing; `ref` when the request's could be read. */
export interface ErrorEvent {
  ev: 'error';
  ref?: Ref;
  code: ServerErrorCode;
  message: string;
}

/** Every event of protocol v1. */
export type ServerEvent =
  | HelloEvent
  | JoinedEvent
  | OccupiedEvent
  | ReleasedEvent
  | PresenceEvent
  | DisplacedEvent
  | LeftEvent
  | WatchingEvent
  | PongEvent
  | ErrorEvent;
