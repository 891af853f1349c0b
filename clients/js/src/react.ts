// occupancy-client/react: React hooks over either client (WebSocket or Socket.IO).
//
//   const occ = new Occupancy('/occupancy');           // once, outside components
//   <OccupancyProvider client={occ}><App /></OccupancyProvider>
//   const { view, holding, stale } = useRoom(`document-${id}`, { meta: { name }, active: true });
//
// Components share the client's places: a room is joined once however many components (or
// StrictMode's double mount) use it, and left a short while after the last one unmounts, so a
// remount of the same room (StrictMode, a route that renders it again) keeps the place.

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react';
import type { Client, Status, View } from './index.js';
import type { OccupancyError } from './index.js';
import type { JoinedEvent, Meta } from './protocol.js';

interface Context {
  client: Client;
  leaveDelayMs: number;
}

const Ctx = createContext<Context | null>(null);

/** Props of `OccupancyProvider`. */
export interface ProviderProps {
  /** The client (`new Occupancy(...)` from `occupancy-client` or `occupancy-client/socketio`), made once. */
  client: Client;
  /**
   * How long a room stays joined (or watched) after the last component using it unmounted
   * (default 300 ms): a remount in that time keeps the place.
   */
  leaveDelayMs?: number;
  children?: ReactNode;
}

/** Makes `client` available to the hooks below it. The application owns the client (and closes it). */
export function OccupancyProvider({ client, leaveDelayMs = 300, children }: ProviderProps) {
  return createElement(Ctx.Provider, { value: { client, leaveDelayMs } }, children);
}

function useCtx(): Context {
  const ctx = useContext(Ctx);
  if (!ctx) throw new Error('occupancy-client/react: no <OccupancyProvider> above this component');
  return ctx;
}

/** The client of the nearest `OccupancyProvider`. */
export function useOccupancy(): Client {
  return useCtx().client;
}

// ----- shared places: joined once, left after the last user is gone ----------------------------

type Kind = 'join' | 'watch';
interface Hold {
  users: number;
  ask: Promise<unknown>;
  timer: ReturnType<typeof setTimeout> | undefined;
}
const holds = new WeakMap<Client, Map<string, Hold>>();

function acquire(c: Client, kind: Kind, room: string, meta?: Meta): Promise<unknown> {
  let m = holds.get(c);
  if (!m) holds.set(c, (m = new Map()));
  const key = kind + ' ' + room;
  let h = m.get(key);
  if (h) {
    clearTimeout(h.timer);
    h.timer = undefined;
    h.users++;
  } else {
    m.set(key, (h = { users: 1, ask: kind == 'join' ? c.join(room, meta) : c.watch(room), timer: undefined }));
  }
  return h.ask;
}

function release(c: Client, kind: Kind, room: string, delay: number): void {
  const m = holds.get(c);
  const key = kind + ' ' + room;
  const h = m?.get(key);
  if (!m || !h || --h.users > 0) return;
  h.timer = setTimeout(() => {
    m.delete(key);
    (kind == 'join' ? c.leave(room) : c.unwatch(room)).catch(() => {});
  }, delay);
}

// ----- hooks -----------------------------------------------------------------------------------

/** The connection's status. */
export function useStatus(): Status {
  const c = useOccupancy();
  const subscribe = useCallback((notify: () => void) => c.on('status', notify), [c]);
  return useSyncExternalStore(subscribe, () => c.status, () => c.status);
}

/** Options of `useRoom`. */
export interface RoomOptions {
  /** Your public metadata in the room; a change later is sent as `update`. */
  meta?: Meta;
  /** Watch the room instead of standing in its line. */
  watch?: boolean;
  /**
   * Tell the server you are active (`active`) on user input — key presses, pointer and touch,
   * input, wheel anywhere in the document — while you hold the room, at most once per
   * `active` ms when a number (default 5 000; keep it well below the server's idle timeout).
   */
  active?: boolean | number;
}

/** What `useRoom` returns. */
export interface RoomState {
  /** The room's view; undefined until the server has answered. */
  view: View | undefined;
  /** You hold the room and the server confirmed it on the open connection. */
  holding: boolean;
  /** Nothing confirmed on the open connection (no view yet, or `view.stale`): do not let the user edit. */
  stale: boolean;
  /** The connection's status. */
  status: Status;
  /** Why the join (or watch) failed, until the room is confirmed. */
  error: OccupancyError | undefined;
  /** Takes the room over from its holder. */
  takeover(): Promise<JoinedEvent>;
  /** "Still working here" (throttled like the `active` option; a no-op unless holding). */
  active(): void;
}

/**
 * Stands in a room's line (or watches it) while the component is mounted, and follows its view.
 * `room` null or undefined: nothing.
 */
export function useRoom(room: string | null | undefined, options: RoomOptions = {}): RoomState {
  const { client: c, leaveDelayMs } = useCtx();
  const kind: Kind = options.watch ? 'watch' : 'join';
  const status = useStatus();
  const subscribe = useCallback(
    (notify: () => void) => c.on('room', (r) => void (r === room && notify())),
    [c, room],
  );
  const read = () => (room ? c.room(room) : undefined);
  const view = useSyncExternalStore(subscribe, read, read);
  const [error, setError] = useState<OccupancyError | undefined>();

  const meta = options.meta;
  const metaKey = JSON.stringify(meta ?? null);
  const metaNow = useRef(meta);
  metaNow.current = meta;
  const metaSent = useRef<string | undefined>(undefined);

  useEffect(() => {
    if (!room) return;
    let live = true;
    setError(undefined);
    metaSent.current = metaKey;
    acquire(c, kind, room, metaNow.current).catch((e: OccupancyError) => live && setError(e));
    return () => {
      live = false;
      metaSent.current = undefined;
      release(c, kind, room, leaveDelayMs);
    };
    // metaKey is read, not followed: a change of meta is an update (below), not a new join.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [c, kind, room, leaveDelayMs]);

  useEffect(() => {
    if (!room || kind != 'join' || metaSent.current === undefined || metaSent.current === metaKey) return;
    metaSent.current = metaKey;
    c.update(room, metaNow.current || {}).catch(() => {});
  }, [c, kind, room, metaKey]);

  const throttle = typeof options.active == 'number' ? options.active : 5000;
  const last = useRef(0);
  const active = useCallback(() => {
    if (!room || kind != 'join' || !c.room(room)?.holding) return;
    const now = Date.now();
    if (now - last.current < throttle) return;
    last.current = now;
    c.active(room).catch(() => {});
  }, [c, kind, room, throttle]);

  const listen = !!options.active;
  useEffect(() => {
    if (!listen || typeof document == 'undefined') return;
    const events = ['keydown', 'pointerdown', 'touchstart', 'input', 'wheel'];
    for (const e of events) document.addEventListener(e, active, { capture: true, passive: true });
    return () => {
      for (const e of events) document.removeEventListener(e, active, { capture: true });
    };
  }, [listen, active]);

  const takeover = useCallback(() => {
    if (!room) return Promise.reject(new Error('useRoom: no room'));
    return c.takeover(room);
  }, [c, room]);

  const stale = !view || view.stale;
  return {
    view,
    holding: !!view?.holding,
    stale,
    status,
    error: stale ? error : undefined,
    takeover,
    active,
  };
}

/**
 * Watches several rooms while the component is mounted (a list of documents with who is
 * editing each). Returns each room's view, undefined until the server has answered.
 */
export function useWatch(rooms: readonly string[]): Record<string, View | undefined> {
  const { client: c, leaveDelayMs } = useCtx();
  const key = rooms.join('\n'); // a room id has no control characters
  const [views, setViews] = useState<Record<string, View | undefined>>({});
  useEffect(() => {
    const list = key ? key.split('\n') : [];
    const read = () => {
      const out: Record<string, View | undefined> = {};
      for (const r of list) out[r] = c.room(r);
      return out;
    };
    setViews(read());
    const off = c.on('room', (r) => {
      if (list.includes(r)) setViews(read());
    });
    for (const r of list) acquire(c, 'watch', r).catch(() => {});
    return () => {
      off();
      for (const r of list) release(c, 'watch', r, leaveDelayMs);
    };
  }, [c, key, leaveDelayMs]);
  return views;
}
