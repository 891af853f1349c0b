//! The Lua scripts: one per transition, each run atomically by Redis in one round trip
//! (`EVALSHA`, through [`redis::Script`]). They share a prelude of helpers (key names, room and
//! session records, version bumps, counters, publishing); see the crate docs for the data layout.
//! Each script is a file of its own in `src/lua/` (`prelude.lua`, then one per operation), pulled
//! in with `include_str!`; each file starts with a comment naming the
//! [`Machine`](occupancy_core::Machine) rule it reproduces, then its arguments and reply.
//!
//! Every script takes `ARGV[1]` = key prefix and `ARGV[2]` = the calling node's version floor (the
//! highest room version it has seen), then its own arguments from `ARGV[3]`. Every script replies
//! with one JSON string: `e` (an error code) when refused, `c` (the rooms it changed, as
//! `[room, version, state]` triples, in the order it changed them; the sweep leaves the state
//! empty, see `SWEEP`), the state of the room it was about after the call and fields of its own.
//! That state travels once: when the script changed the room last by a published save, the reply
//! says which entry of `c` it is (`ri`, 1-based); otherwise it carries the stored state (`r`).
//!
//! Published messages on `{prefix}:ch` (every node of a prefix must run the same version):
//! - `d<room>\n<prev>\n<version>\n<edit>`: a change one small edit describes, made on the state
//!   at version `prev` (`edit` in `prelude.lua`): `{"e":"j","o":<occupant>}` (an occupant
//!   appended), `{"e":"s","i":<place>,"k":<key>,"s":<session>}` (a session added to the occupant
//!   at that 0-based place), `{"e":"x",...}` (a session removed, the occupant too when it was its
//!   last: a leave, close, disconnect; also the holder's, a hand-over that moves every place by
//!   one), `{"e":"m","i","k","m":<meta>}` (one occupant's metadata); each with the room's `h` and
//!   `a` after it. Sized by the change, whatever the line's length. A node applies it only on
//!   the state at `prev`; otherwise (one was lost or is late, or it never read the room) it
//!   re-reads the room.
//! - `r<room>\n<version>\n<state>`: any other change (take over, displacement, a sweep, a
//!   restore, a room's first state) when the new state is at most 16 KiB (`FULL_MAX`); the
//!   version first, so that a node can drop a state it does not need without decoding it.
//! - `v<room>\n<version>`: the same when the state is longer: the nodes that follow the room
//!   re-read it (one GET per following node; nodes that do not follow it get a few bytes instead
//!   of the line). A change that moves many places must reach every follower's sessions anyway,
//!   and a follower needs the new line to tell them, so it reads it once.
//!
//! Watching and unwatching publish nothing (watchers are each node's own), and neither do the
//! idle clock refreshes. Other messages:
//! `s<session>\n<node>` (the session was resumed on that node) and `x<node>\n<session>,...`
//! (sessions of that node closed by a sweep).
//!
//! Times (`since` of an occupant `t`, `held_since` of a room `h`, the holder's idle clock `a`,
//! grace deadlines, leases) are Redis `TIME` in milliseconds, read inside the script: one clock
//! for every node, so the order of `since` stamps is the order of the changes, and an idle
//! deadline is checked against the same clock that stamped it, whatever the nodes' clocks say.
//!
//! Each script names the [`Machine`](occupancy_core::Machine) rule it reproduces; the grant of a
//! room (`held_since`, idle clock, pending forced release) is done in one place, `save_room`,
//! whenever the occupant at the front changed, as `Machine`'s `grant` is called wherever the
//! holder changes.
//!
//! A session belongs to one node at a time (its record's `n`; a resume on another node moves it).
//! Every script that acts on an existing session takes the calling node and refuses with
//! `not_owner` when another node owns it: the caller's connection is a stale one that a resume
//! elsewhere replaced (its node has not processed the `s` message yet), and must not close,
//! disconnect or change the session the new node now serves.

/// Helpers shared by every script.
const PRELUDE: &str = include_str!("lua/prelude.lua");

/// `connect(sid, node, has_principal, principal, meta, token)`: Machine::connect.
pub(crate) const CONNECT: &str = include_str!("lua/connect.lua");

/// `disconnect(sid, node, grace_ms)`: Machine::disconnect_as; grace 0 closes at once.
pub(crate) const DISCONNECT: &str = include_str!("lua/disconnect.lua");

/// `close(sid, node)`: Machine::close.
pub(crate) const CLOSE: &str = include_str!("lua/close.lua");

/// `expire(sid, node)`: Machine::handle_timeout's grace expiry. The owning node's grace timer
/// ran out; closes the session if it is still in grace and still owned by that node (a resume on
/// another node moved it).
pub(crate) const EXPIRE: &str = include_str!("lua/expire.lua");

/// `join(sid, node, room, meta, max_rooms, max_occupants, idle_ms)` (`idle_ms` 0: no idle
/// expiry).
///
/// Machine::join: idempotent for a session already in line; a new occupant stands at the back
/// with `since` (`t`) now. A join by any session of the holder (also an idempotent one) refreshes
/// its idle clock. A join that makes someone wait behind a holder a forced release found alone
/// (`p`), or behind an idle holder, is followed at once by a second change (and publish):
/// displacing the holder (reason `server` / `idle`); the reply gives the place after both.
pub(crate) const JOIN: &str = include_str!("lua/join.lua");

/// `update(sid, node, room, meta, idle_ms)`: Machine::update, the occupant's metadata in a room
/// the session stands in; the same metadata again changes nothing (no version, no publish). An
/// update by a session of the holder refreshes its idle clock (stored without a publish: nobody
/// sees it).
pub(crate) const UPDATE: &str = include_str!("lua/update.lua");

/// `leave(sid, node, room)`: Machine::leave (the next in line is granted the room in
/// `save_room` when the holder left).
pub(crate) const LEAVE: &str = include_str!("lua/leave.lua");

/// `takeover(sid, node, room)`: Machine::takeover (the room is granted to the caller in
/// `save_room`; no `r`: the reason is a take over).
pub(crate) const TAKEOVER: &str = include_str!("lua/takeover.lua");

/// `active(sid, node, room, idle_ms)`: Machine::active. `not_member` unless this session stands
/// in the room; when its occupant holds and idle expiry is on, its idle clock is now (stored
/// without a publish: no version, nobody is told).
pub(crate) const ACTIVE: &str = include_str!("lua/active.lua");

/// `idle(room, idle_ms)`: Machine::handle_timeout's idle expiry, run by a node that hosts a
/// session of the holder when its local deadline comes due. Re-checks under Redis's atomicity:
/// if someone waits and the holder's idle clock plus `idle_ms` has passed, displaces the holder
/// (reason `idle`, one change, one publish; `n` = 1); if the holder was active meanwhile (or was
/// granted the room since), replies `d` = milliseconds until its deadline; otherwise (nobody
/// waits, nobody holds) nothing.
pub(crate) const IDLE: &str = include_str!("lua/idle.lua");

/// `release(room)`: Machine::release, a forced release. Nobody in line: `k` = `vacant`. The
/// holder alone: `pending` (`p` stored, no version, no publish; the next join that makes someone
/// wait displaces the holder, see `join`). Two or more: the holder is displaced (reason
/// `server`), `handed`, and `r` is the new state.
pub(crate) const RELEASE: &str = include_str!("lua/release.lua");

/// `watch(sid, node, room, max_rooms)`: Machine::watch.
pub(crate) const WATCH: &str = include_str!("lua/watch.lua");

/// `unwatch(sid, node, room)`: Machine::unwatch.
pub(crate) const UNWATCH: &str = include_str!("lua/unwatch.lua");

/// `resume(token, new_token, node)`: Machine::resume. Moves the session to `node` (publishing
/// `s` so its old node closes the old connection), returns its rooms' states.
pub(crate) const RESUME: &str = include_str!("lua/resume.lua");

/// `session_for_token(token)`.
pub(crate) const TOKEN: &str = include_str!("lua/token.lua");

/// `renew(node, lease_ms)`: extends the node's lease. `s` = 1 (fine), 0 (the registration was
/// lost: Redis lost its data; restore), -1 (another node swept this one: its sessions are gone).
/// `x` lists the nodes to sweep: those whose lease has ended and those a sweep has begun on and
/// not finished (any node may carry on a sweep another one began). `d` is Redis time (ms: the
/// node's estimate of its clock's offset, for idle deadlines) and `ne` the earliest lease end of
/// the other nodes (Redis ms), so that the node looks again right when that lease ends instead of
/// at its next renewal: a dead node is swept promptly after its lease, whatever the lease.
pub(crate) const RENEW: &str = include_str!("lua/renew.lua");

/// `sweep(dead_node, max_sessions, max_units, budget_us, small_bytes)`: Machine::close_many
/// over the dead node's sessions, run as a series of bounded calls so that no call blocks Redis
/// for long, whatever the number of sessions or the length of their lines. The caller repeats it
/// while the reply says `m` = 1 (more to do); any node can carry on a sweep another began (what
/// is left is kept in Redis). Each call:
///
/// 1. **Sessions**: takes up to `max_sessions` of the dead node's sessions (fewer when half of
///    `budget_us` of Redis time is used up) and forgets them (record, token, counters: they can
///    no longer be resumed). Their removals are merged per room: each room they were in changes
///    once in this call — one version, one publish, its next in line granted the room by
///    `save_room` as for any change — if its stored state is at most `small_bytes` long (and
///    time is left). A longer room's removals are queued instead (`{prefix}:rx:{<room hex>}`:
///    `o<session><occupant key>` or `w<session>`; the room listed in `{prefix}:sweep:rooms`),
///    so that a long line is read and rewritten once per sweep, not once per call. One `x`
///    message per call names the sessions, for the dead node if it was only cut off.
/// 2. **Queued rooms**, once no session is left: each loses all its queued removals at once (one
///    version, one publish), until `max_units` (rooms plus the line lengths read) or the budget
///    is used up. A room is never split: one room whose line alone takes longer than the budget
///    is one call of its own.
///
/// The first call (the node's lease has ended) takes the node out of the lease set, marks it
/// dead (its `renew` answers -1 if it comes back) and moves its session set aside
/// (`{prefix}:sw:{<node>}`), so that sessions a node that comes back creates under the same id
/// are not swept. Replies `n` (sessions closed by this call) and `m`; `c` lists the changed
/// rooms with their versions but not their states (they reach every node by pub/sub, and the
/// sweeping node rarely follows the rooms of a dead node).
pub(crate) const SWEEP: &str = include_str!("lua/sweep.lua");

/// `prune(room)`: drops expired placeholders (see `restore`).
pub(crate) const PRUNE: &str = include_str!("lua/prune.lua");

/// `reregister(sid, node, has_principal, principal, meta, token, joined, watching, grace_ms)`:
/// writes a local session's record back after Redis lost it.
pub(crate) const REREGISTER: &str = include_str!("lua/reregister.lua");

/// `restore(room, last_seen_state, my_sessions, my_watchers, lease_ms)`: after Redis lost its
/// data, puts a room back from the state this node saw last. If the room is missing, the whole
/// line is written back in its old order; the other nodes' sessions are kept as placeholders for
/// one lease (their nodes confirm them with their own restore, or they are dropped). If it
/// exists, this node's occupants are merged in at their old place (by their order key `q`).
/// Only where this node's sessions still are: the node wrote their records back first and keeps
/// serving meanwhile, so one that left the room (or stopped watching it, or ended) since the
/// node's snapshot is not put back (its record says so).
pub(crate) const RESTORE: &str = include_str!("lua/restore.lua");

/// `check()`: the invariants (tests only; O(everything), uses KEYS). Replies `x`: problems.
pub(crate) const CHECK: &str = include_str!("lua/check.lua");

/// A script with the prelude.
pub(crate) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}\n{body}"))
}
