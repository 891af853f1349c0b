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
// ----- the transport-independent client ------------------------------------------------------
/** A request failed: `code` is the server's error code, or `timeout`, `disconnected`, `closed`. */
export class OccupancyError extends Error {
    constructor(code, message, ref) {
        super(message || code);
        this.name = 'OccupancyError';
        this.code = code;
        this.ref = ref;
    }
}
/** The transport-independent client. Use `Occupancy` from `occupancy-client` or `occupancy-client/socketio`. */
export class Client {
    constructor(options) {
        /** The connection's state. */
        this.status = 'connecting';
        /** The session id from the last `hello` (the same after a resume). */
        this.session = null;
        /** The connection is open (`hello` received) and requests are sent at once. */
        this.open = false;
        /** `close()` was called. */
        this.closed = false;
        this.entries = new Map();
        this.listeners = new Map();
        this.pending = new Map();
        this.outbox = [];
        this.nextRef = 1;
        this.token = null;
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
    on(name, fn) {
        let set = this.listeners.get(name);
        if (!set)
            this.listeners.set(name, (set = new Set()));
        set.add(fn);
        return () => this.off(name, fn);
    }
    /** Removes a listener. */
    off(name, fn) {
        this.listeners.get(name)?.delete(fn);
    }
    /**
     * Stands in the room's line (idempotent). Resolves with `joined`; the room's view follows in
     * `room` events. The room is joined again by itself after a reconnection that lost the session.
     */
    join(room, meta) {
        const e = this.entry(room);
        e.joined = true;
        e.meta = meta;
        return this.request({ op: 'join', room, meta });
    }
    /** Leaves the room's line. Resolves with `left` (`was_member`). */
    leave(room) {
        this.forget(room, false);
        return this.request({ op: 'leave', room });
    }
    /** Takes the room over from its holder (you must have joined it). Resolves with `joined`. */
    takeover(room) {
        return this.request({ op: 'takeover', room });
    }
    /** Watches the room without standing in line. Resolves with `watching`. */
    watch(room) {
        this.entry(room).watched = true;
        return this.request({ op: 'watch', room });
    }
    /** Stops watching. Resolves with `left`. */
    unwatch(room) {
        this.forget(room, true);
        return this.request({ op: 'unwatch', room });
    }
    /**
     * Replaces your metadata in a room you stand in ("viewing" → "editing"). Resolves with
     * `joined`; fails with `not_member` when you do not stand in the room.
     */
    update(room, meta) {
        const e = this.entries.get(room);
        if (e?.joined)
            e.meta = meta;
        return this.request({ op: 'update', room, meta });
    }
    /**
     * "Still working here" (call it on user input, throttled): refreshes your idle clock in the
     * room. Resolves with `joined`; fails with `not_member` when you do not stand in the room.
     */
    active(room) {
        return this.request({ op: 'active', room });
    }
    /** A round trip to the server. Resolves with `pong`. */
    ping() {
        return this.request({ op: 'ping' });
    }
    /** The current view of a room this client stands in or watches. */
    room(room) {
        return this.entries.get(room)?.view;
    }
    /**
     * Closes the connection for good. The server keeps the places for its close grace (2 s by
     * default); `leave` first to give them up at once. Pending requests fail with `closed`.
     */
    close() {
        if (this.closed)
            return;
        this.closed = true;
        this.open = false;
        this.shut();
        this.outbox = [];
        this.fail('closed');
        this.stale();
        this.setStatus('closed');
    }
    /** The connection is open (`hello` arrived): e.g. start a heartbeat. */
    opened(_hello) { }
    setStatus(status) {
        if (this.status != status) {
            this.status = status;
            this.emit('status', status);
        }
    }
    /** The resume token to connect with, if any. */
    resumeToken() {
        try {
            const s = this.opts.storage;
            return s ? s.getItem(this.opts.storageKey) : this.token;
        }
        catch {
            return this.token;
        }
    }
    /** The delay before reconnection attempt `attempt` (0, 1, ...): exponential, with jitter. */
    backoff(attempt) {
        const exp = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** Math.min(attempt, 16));
        return exp / 2 + (Math.random() * exp) / 2;
    }
    /**
     * The connection was lost: requests waiting for a reply fail with `disconnected` (those still
     * in the outbox wait for the next connection) and every view turns stale at once.
     */
    dropped() {
        if (this.closed)
            return;
        this.open = false;
        this.fail('disconnected');
        this.stale();
    }
    /** An event from the server. */
    handle(ev) {
        this.emit('message', ev);
        if (ev.ev == 'hello')
            return this.hello(ev);
        const ref = 'ref' in ev ? ev.ref : undefined;
        const p = ref != null ? this.pending.get(ref) : undefined;
        if (p) {
            this.pending.delete(ref);
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
                const patch = {
                    holder: ev.holder,
                    waiting: ev.waiting,
                    occupants: ev.occupants,
                    held_since: ev.held_since,
                };
                if (ev.position != null)
                    patch.position = ev.position;
                this.apply(ev, ev.position != null, patch);
                break;
            }
            case 'displaced':
                this.apply(ev, true, { position: ev.position, holder: ev.by });
                break;
            case 'error':
                if (!p)
                    return this.emit('error', ev);
                // A join the server refused (and never confirmed before) is not joined again later.
                if (p.msg.op == 'join') {
                    const e = this.entries.get(p.msg.room);
                    if (e && !e.view)
                        this.forget(p.msg.room, false);
                }
                return p.fail(new OccupancyError(ev.code, ev.message, ref));
        }
        if (ev.ev == 'occupied' || ev.ev == 'released' || ev.ev == 'presence' || ev.ev == 'displaced') {
            this.emit(ev.ev, ev);
        }
        p?.ok(ev);
    }
    /** A reply whose request is still waiting (a late acknowledgement from an earlier connection is dropped). */
    reply(ev) {
        if (this.pending.has(ev.ref))
            this.handle(ev);
    }
    // ----- internals ---------------------------------------------------------------------------
    emit(name, ...args) {
        for (const fn of [...(this.listeners.get(name) || [])]) {
            try {
                fn(...args);
            }
            catch (e) {
                console.error('occupancy listener failed', e);
            }
        }
    }
    entry(room) {
        let e = this.entries.get(room);
        if (!e) {
            e = { joined: false, watched: false, meta: undefined, view: undefined, fresh: false };
            this.entries.set(room, e);
        }
        return e;
    }
    /** Stops standing in (`watch` false) or watching (`watch` true) the room. */
    forget(room, watch) {
        const e = this.entries.get(room);
        if (!e)
            return;
        if (watch)
            e.watched = false;
        else
            e.joined = false;
        if (!e.joined && !e.watched)
            this.entries.delete(room);
        else if (!watch && e.view)
            this.show(e, { ...e.view, position: null });
    }
    hello(h) {
        this.session = h.session;
        this.token = h.resume;
        try {
            this.opts.storage?.setItem(this.opts.storageKey, h.resume);
        }
        catch {
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
            this.ping().then(() => this.renew(), () => { });
        }
        else {
            // A new session: nothing is kept, versions may have started over (a restarted server).
            for (const e of this.entries.values())
                e.fresh = true;
            this.renew();
        }
        const queued = this.outbox;
        this.outbox = [];
        for (const msg of queued)
            this.send(msg);
    }
    /** Joins and watches again every room whose place the server has not confirmed. */
    renew() {
        for (const [room, e] of this.entries) {
            const op = e.joined ? 'join' : 'watch';
            if ((e.view && !e.view.stale) || this.outbox.some((m) => m.room == room && m.op == op))
                continue;
            const req = e.joined
                ? this.request({ op: 'join', room, meta: e.meta })
                : this.request({ op: 'watch', room });
            req.catch((err) => {
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
    apply(ev, placed, patch) {
        const e = this.entries.get(ev.room);
        if (!e)
            return;
        const prev = e.view;
        if (prev && !e.fresh && ev.version < prev.version)
            return; // older than what we have
        const confirms = this.open && (placed || !e.joined);
        if (!prev && !confirms)
            return;
        if (confirms)
            e.fresh = false;
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
    show(e, view) {
        view.holding = !view.stale && view.position === 0;
        e.view = view;
        this.emit('room', view.room, view);
    }
    /** Every view turns stale (the connection is not open). */
    stale() {
        for (const e of this.entries.values()) {
            if (e.view && !e.view.stale)
                this.show(e, { ...e.view, stale: true });
        }
    }
    request(fields) {
        const msg = { op: fields.op, ref: this.nextRef++ };
        if (fields.room != null)
            msg.room = fields.room;
        if (fields.meta)
            msg.meta = fields.meta;
        return new Promise((ok, fail) => {
            if (this.closed)
                return fail(new OccupancyError('closed', 'client closed', msg.ref));
            const timer = setTimeout(() => {
                this.outbox = this.outbox.filter((m) => m != msg);
                if (this.pending.delete(msg.ref))
                    fail(new OccupancyError('timeout', 'no reply in time', msg.ref));
            }, this.opts.requestTimeoutMs);
            this.pending.set(msg.ref, { ok, fail, timer, msg });
            if (this.open)
                this.send(msg);
            else
                this.outbox.push(msg);
        });
    }
    /** Fails every request waiting for a reply (not those still in the outbox, unless closing). */
    fail(code) {
        for (const [ref, p] of this.pending) {
            if (code != 'closed' && this.outbox.includes(p.msg))
                continue;
            clearTimeout(p.timer);
            this.pending.delete(ref);
            p.fail(new OccupancyError(code, 'connection ' + code, ref));
        }
    }
}
/**
 * A protocol v1 client over one WebSocket: reconnected with backoff, resumed with the token from
 * `hello`, its rooms joined again when the session could not be resumed.
 */
export class Occupancy extends Client {
    /**
     * @param url `ws://` or `wss://` URL, an `http(s)://` one, or a path like `/occupancy`
     *   (resolved against the page's location).
     */
    constructor(url, options = {}) {
        super(options);
        this.ws = null;
        this.attempt = 0;
        const loc = globalThis.location;
        const u = new URL(url, loc && loc.href); // throws on a bad URL (or a path outside a page)
        u.protocol = u.protocol.replace('http', 'ws');
        this.url = u.href;
        this.params = options.params;
        this.Impl = options.WebSocket || globalThis.WebSocket;
        this.beat = options.heartbeat ?? true;
        this.connect();
    }
    send(msg) {
        try {
            this.ws.send(JSON.stringify(msg));
        }
        catch {
            // the close handler fails the request
        }
    }
    shut() {
        clearTimeout(this.retryTimer);
        this.lost(this.ws, 1000);
    }
    opened(hello) {
        this.attempt = 0;
        const ms = typeof this.beat == 'number' ? this.beat : this.beat ? hello.heartbeat_ms : 0;
        const ws = this.ws;
        if (!(ms > 0))
            return;
        let out = false;
        this.beatTimer = setInterval(() => {
            if (out)
                return;
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
    href() {
        const u = new URL(this.url);
        for (const [k, v] of Object.entries(this.params || {})) {
            if (v != null && v !== '')
                u.searchParams.set(k, String(v));
        }
        const token = this.resumeToken();
        if (token)
            u.searchParams.set('resume', token);
        return u.href;
    }
    connect() {
        if (this.closed)
            return;
        let ws;
        try {
            ws = new this.Impl(this.href());
        }
        catch {
            return this.retry();
        }
        this.ws = ws;
        // A connection that does not say hello in time (a server that accepts and hangs) is retried.
        this.helloTimer = setTimeout(() => this.lost(ws, 4002), this.opts.requestTimeoutMs);
        ws.onmessage = (e) => {
            if (this.ws != ws)
                return;
            clearTimeout(this.helloTimer);
            let ev;
            try {
                ev = JSON.parse(e.data);
            }
            catch {
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
        ws.onerror = () => { }; // onclose follows
    }
    /**
     * Gives up on connection `ws`: closes it with `code` (when given) without waiting for a
     * closing handshake a dead peer would never answer, and turns everything stale.
     */
    lost(ws, code) {
        if (!ws || this.ws != ws)
            return;
        this.ws = null;
        clearInterval(this.beatTimer);
        clearTimeout(this.helloTimer);
        try {
            // A dead peer would never answer a closing handshake: `ws` drops it at once.
            if (code == 4002 && ws.terminate)
                ws.terminate();
            else if (code)
                ws.close(code);
        }
        catch {
            // already closing
        }
        if (this.closed)
            return;
        this.dropped();
        if (code == 4002)
            this.retry();
    }
    retry() {
        if (this.closed)
            return;
        this.setStatus('reconnecting');
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => this.connect(), this.backoff(this.attempt++));
    }
}
