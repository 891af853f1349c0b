// Compile-only checks of the published types, as an application sees them: imported by the
// package's name (through `exports` and the `.d.ts` files in dist/). `npm test` runs
// `tsc -p test/tsconfig.json`; a line marked @ts-expect-error must stay an error.

import WebSocket from 'ws';
import {
  Occupancy,
  OccupancyError,
  type DisplacedReason,
  type ErrorCode,
  type JoinedEvent,
  type Person,
  type PresenceEvent,
  type Request,
  type ServerEvent,
  type View,
} from 'occupancy-client';
import { Occupancy as SocketIoOccupancy } from 'occupancy-client/socketio';
import { OccupancyProvider, useRoom, useStatus, useWatch, type RoomState } from 'occupancy-client/react';

// The `ws` package's WebSocket (and the browser's) are accepted implementations.
const occ = new Occupancy('ws://127.0.0.1:3000/occupancy', {
  WebSocket,
  params: { user: 'ann', name: 'Ann' },
  storage: null,
});
new Occupancy('/occupancy', { WebSocket: globalThis.WebSocket });

async function flow(): Promise<void> {
  const joined: JoinedEvent = await occ.join('document-1', { name: 'Ann' });
  const position: number = joined.position;
  const holder: Person = joined.holder;
  const since: number = holder.since;
  await occ.update('document-1', { status: 'editing' });
  await occ.active('document-1');
  await occ.takeover('document-1');
  const watching = await occ.watch('document-2');
  const heldSince: number | null = watching.held_since;
  const left = await occ.unwatch('document-2');
  const wasMember: boolean = left.was_member;
  await occ.leave('document-1');
  await occ.ping();
  void [position, since, heldSince, wasMember];
  try {
    await occ.join('');
  } catch (e) {
    if (e instanceof OccupancyError) {
      const code: ErrorCode = e.code;
      void code;
    }
  }
}
void flow;

occ.on('room', (room: string, view: View) => {
  const stale: boolean = view.stale;
  const holding: boolean = view.holding;
  const position: number | null = view.position;
  const held: number | null = view.held_since;
  void [room, stale, holding, position, held];
});
occ.on('status', (s) => {
  const ok: 'connecting' | 'open' | 'reconnecting' | 'closed' = s;
  void ok;
});
occ.on('displaced', (ev) => {
  const reason: DisplacedReason = ev.reason;
  // @ts-expect-error: reasons are a closed list
  const wrong: typeof ev.reason = 'kicked';
  void [reason, wrong];
});
// @ts-expect-error: no such event
occ.on('nope', () => {});

function describe(ev: ServerEvent): string {
  switch (ev.ev) {
    case 'presence': {
      const p: PresenceEvent = ev;
      return String(p.position ?? 'watching');
    }
    case 'displaced':
      return ev.reason;
    case 'error':
      return ev.code;
    default:
      return ev.ev;
  }
}
void describe;

const req: Request = { op: 'update', room: 'r', meta: { a: 1 } };
// @ts-expect-error: update needs meta
const bad: Request = { op: 'update', room: 'r' };
void [req, bad];

const sio = new SocketIoOccupancy('http://127.0.0.1:9000', {
  params: { meta: { name: 'Ann' } },
  socket: { transports: ['websocket'] },
});
sio.on('room', (_room, view) => void view.stale);
void sio.join('document-1').then((j) => j.holding);

// The hooks work with either client.
void OccupancyProvider({ client: occ, leaveDelayMs: 100 });
void OccupancyProvider({ client: sio });
function useDoc(id: string): string {
  const r: RoomState = useRoom(`document-${id}`, { meta: { name: 'Ann' }, active: 2000 });
  const watched = useWatch(['a', 'b']);
  const status: 'connecting' | 'open' | 'reconnecting' | 'closed' = useStatus();
  void useRoom(null);
  void useRoom('document-2', { watch: true });
  if (r.stale) return `stale (${status})`;
  return r.holding ? 'holding' : `${r.view?.position} ${watched['a']?.holder?.id}`;
}
void useDoc;
