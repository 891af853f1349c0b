//! # occupancy-redis
//!
//! A [`Backend`](occupancy_core::Backend) on Redis, so several server instances ("nodes") share
//! one ordered queue per room: a holder on one node and a waiter on another see one line, and
//! the waiter is released the moment the holder leaves — or, if the holder's node dies, once
//! that node's lease ends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), occupancy_core::Error> {
//! use occupancy_core::Hub;
//! use occupancy_redis::{RedisBackend, RedisConfig};
//!
//! let backend = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! let hub = Hub::builder().backend(backend).build()?;
//! # let _ = hub; Ok(()) }
//! ```
//!
//! ## How it works
//!
//! - **Redis is the truth.** Each transition (join, update, active, leave, take over, watch,
//!   unwatch, forced release, connect, disconnect, close, resume, grace expiry, idle expiry) is
//!   one Lua script run with `EVALSHA`: one round trip, atomic. The scripts reproduce [`Machine`](occupancy_core::Machine)'s rules and
//!   errors exactly; the shared conformance suite and a differential property test (same random
//!   operations through the memory backend and this one) check it.
//! - **Full states, not deltas.** Every script that changes a room publishes the room's whole
//!   new state on one channel (`{prefix}:ch`), its version ahead of it in the message. Each
//!   node keeps the last state it saw of every room it *follows* (has local sessions or
//!   watchers in, or a call in flight on) and decodes a published state only for such a room and
//!   only when its version is newer than the last seen: the other rooms' states cost it a look
//!   at the version. It computes the notices of a change with the core's pure
//!   [`room_notices`](occupancy_core::room_notices) over (last seen, new), for its own sessions
//!   only (over views of both states that keep every occupant but only this node's sessions:
//!   the same notices for those sessions, none computed for the others'). A node's own calls take
//!   the same path with the state the script returns (once: the reply points at the published
//!   state instead of carrying it twice), so a local call and a remote change produce the same
//!   notices, and a lost message is healed by the next state (and by a re-read of every followed
//!   room after the subscription reconnects).
//! - **Versions** are `max(stored + 1, Redis TIME in µs, the node's highest seen version + 1)`:
//!   strictly increasing per room, also after the room was emptied (its key is deleted) and after
//!   Redis restarted empty.
//! - **Times** (`since` of each occupant, `held_since` of the room, the holder's idle clock) are
//!   Redis `TIME` in milliseconds, read inside the scripts as versions are: one clock for every
//!   node, so `since` follows the order of arrival whichever node served it, and an idle deadline
//!   is checked against the clock that stamped it. A room is *granted* (its `held_since` stamped,
//!   the new holder's idle clock started, a pending forced release dropped) in one place, the
//!   scripts' `save_room`, whenever the occupant at the front changed.
//! - **Idle expiry** ([`Config::idle_timeout`](occupancy_core::Config::idle_timeout)): the
//!   holder's last join, update or `active` is kept in the room (`a`, without a new version or a
//!   publish: nobody sees it). A join that makes someone wait behind a holder whose timeout has
//!   passed (or one a forced release found alone) displaces it in the same script, as a second
//!   change and a second publish. While someone waits, every node that hosts a session of the
//!   holder keeps a deadline for the room (from the last state it saw; Redis time is converted to
//!   the node's clock with the offset measured at each lease renewal) and runs the idle script
//!   when it comes due; the script re-checks atomically and, if the holder was active meanwhile,
//!   answers how long is left (the node waits again). A holder's node that died is swept after
//!   its lease, as before.
//! - **Forced release** ([`Hub::release`](occupancy_core::Hub::release)) is one script, on any
//!   node (it need not host anyone in the room): the holder displaced with reason `server`, or a
//!   pending flag (`p`) the next join acts on when the holder is alone.
//! - **Grace** deadlines are kept by the node that owns the session: it runs the timer and calls
//!   the expiry script (which does nothing if the session was resumed elsewhere meanwhile). The
//!   session record also holds the deadline in Redis time, so a resume on another node after the
//!   deadline is refused.
//! - **One owner per session.** The session record names the node that serves it (`n`); a
//!   resume on another node moves it there and publishes `s`, on which the old node ends the
//!   replaced connection. Until that message is processed, the old connection could still act, so
//!   every script that acts on a session (disconnect, close, join, leave, take over, watch,
//!   unwatch, expiry) takes the calling node and refuses when another node owns the session; the
//!   old node then ends its stale connection with
//!   [`Error::SessionReplaced`](occupancy_core::Error::SessionReplaced) and the call fails with
//!   [`Error::UnknownSession`](occupancy_core::Error::UnknownSession). The new node's session is
//!   untouched.
//! - **Node leases.** Each node renews its entry in a sorted set (`{prefix}:nodes`, score = lease
//!   end in Redis ms) every third of the lease (default lease 10 s). A renewal also returns the
//!   nodes whose lease has ended (and those whose sweep is not finished) and when the next lease
//!   of another node ends; the node looks again right after that, so a dead node is found a few
//!   milliseconds after its lease, not up to a third of a lease later. The survivors sweep it:
//!   Machine's `close_many` over its sessions, as a series of short script calls (each takes a
//!   few hundred sessions at most, or about 2 ms of Redis time), the removals merged per room so
//!   that each room changes once per call — and a long line, whose state is queued until the
//!   node's sessions are all taken, once per sweep — with one publish per change; the next in
//!   line is released as for any leave. Redis serves every other client between two calls. The
//!   sweep's progress is kept in Redis, so any survivor carries on one another began. Each call
//!   publishes `x` naming the sessions it closed, so a node that was only cut off learns its
//!   sessions are gone.
//! - **Redis unavailable**: every call is bounded by [`RedisConfig::op_timeout`] and fails with
//!   [`Error::Unavailable`](occupancy_core::Error::Unavailable); nothing panics, nothing hangs.
//! - **Redis back, even restarted empty**: a node notices (its lease renewal finds its entry
//!   gone without a "swept" mark, or a script does not know a session the node has live, or the
//!   subscription reconnects) and writes back its sessions and, for every room it follows, the
//!   last state it saw: if the room is missing, the whole line in its old order, the other
//!   nodes' sessions held as placeholders for one lease until their own nodes confirm them (or
//!   dropped); if the room exists, its own occupants merged in at their old place (each occupant
//!   carries an order key `q`). Nobody jumps the queue and nobody is told a hand-over that did
//!   not happen.
//!
//! ## TLS and your own client
//!
//! With the `tls` feature, `rediss://` URLs work (redis-rs over rustls with the `ring` provider,
//! the system's root certificates). [`RedisBackend::connect_with_client`] takes a
//! `redis::Client` the application built (this crate re-exports [`redis`]): a private CA or a
//! client certificate with `redis::Client::build_with_tls`, or any other setting of its own.
//!
//! ## Data layout (prefix `occ` by default)
//!
//! | key | type | content |
//! |---|---|---|
//! | `occ:r:{<hex of room id>}` | string | the room: JSON `{"v": version, "o": [occupant], "w": [watcher session], "h"?: held_since, "a"?: holder's idle clock, "p"?: "1" when a forced release is pending, "r"?: "idle" or "server"}`; occupant `{"k": "u:<user>" or "a:<session>", "m": meta JSON, "q": order key, "s": [session], "t": since, "x"?/"u"?: placeholder deadline and unconfirmed sessions}` |
//! | `occ:s:{<session hex>}` | hash | `n` owning node, `p` principal, `m` meta, `t` resume token, `j` joined rooms (JSON, in order), `w` watched rooms, `g` grace deadline (Redis ms, 0 = live) |
//! | `occ:t:{<token hex>}` | string | the session of a resume token |
//! | `occ:ns:{<node>}` | set | the node's sessions (for the sweep) |
//! | `occ:nodes` | sorted set | node → lease end (Redis ms) |
//! | `occ:dead:{<node>}` | string | "swept" mark (1 day) |
//! | `occ:sweeping` | set | nodes whose sweep has begun and is not over |
//! | `occ:sw:{<node>}` | set | the sessions of a dead node not swept yet |
//! | `occ:sweep:rooms` | set | rooms with removals queued by a sweep |
//! | `occ:rx:{<hex of room id>}` | set | a room's queued removals: `o<session><occupant key>`, `w<session>` |
//! | `occ:stats` | hash | counts: rooms, sessions, grace, occupants, watchers |
//! | `occ:ch` | channel | `r<room>\n<version>\n<state JSON>`, `s<session>\n<node>` (resumed elsewhere), `x<node>\n<session>,<session>,...` (swept) |
//!
//! Times (`h`, `a`, `t`) are Redis `TIME` in Unix milliseconds, stored as decimal strings like
//! the version. `h` is there whenever someone stands in line and gone when nobody does, as are
//! `a` (present once the holder refreshed its idle clock after the grant; until then `h` is its
//! clock) and `p`. `r` is why the change that made this version displaced the holder (absent: a
//! take over, or nobody was displaced); it lets [`room_notices`](occupancy_core::room_notices)
//! name the reason from two states. Rooms stored by a version without these fields still
//! decode: `since` 0, no `held_since`, and no idle clock (such a holder is not expired for
//! idleness until the room is granted again).
//!
//! Room ids are arbitrary UTF-8 (and may contain `{`/`}`): the hash tag of a room's key is the hex
//! of its bytes, so the tag is always well formed and distinct rooms never share a key.
//!
//! ## Redis Cluster
//!
//! Not supported yet. The scripts compute key names inside Lua and a join or a close touches the
//! room key, the session key and the counters — in one Redis that is one atomic script; in a
//! cluster they live in different slots. Cluster support would need one script per room touched
//! (disconnect = one script per room of the session), session records updated separately, the
//! counters dropped or made per slot, and sharded pub/sub (`SSUBSCRIBE`) per room.
//!
//! ## Limits of the design
//!
//! - A room is one JSON string: every script decodes and re-encodes it, and the session
//!   scripts find the caller's occupant by walking the decoded line, so each operation costs
//!   O(line) inside Redis whatever the edit (the grant, idle and forced-release steps add O(1)).
//!   `active` by the holder with idle expiry on rewrites the room too (no publish): pages should
//!   throttle it, as the protocol says.
//! - A sweep call is bounded by its budget or by one rewrite of the longest line it touches,
//!   whichever is more: a room is one string, rewritten whole. At 10,000 occupants in one room
//!   that rewrite (decode, filter, encode, publish) took 45-72 ms of Redis time on a loaded
//!   2-core test machine — once per sweep, where a join into that room already costs about 35 ms
//!   each. Calls over small rooms took 2-4 ms (5.4 ms at most) there (`examples/sweep.rs`).
//! - One channel carries every room's states to every node: each node reads the room and the
//!   version of every message and decodes only the rooms it follows, but Redis still sends every
//!   state to every node. Fine for a few nodes; per-room sharded channels would scale further.
//! - All nodes sharing a prefix must run the same version of this crate: the scripts, the
//!   published messages and the keys of a sweep in progress are not versioned.
//! - A node cut off from Redis for longer than its lease is swept: when it comes back its
//!   sessions are ended ([`Error::Unavailable`](occupancy_core::Error::Unavailable) as their
//!   close reason) rather than put back in front of people who were released meanwhile.
#![warn(missing_docs)]
// On docs.rs (nightly, `--cfg docsrs`): badges saying which feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod lua;
mod node;
mod tasks;
mod wire;

pub use backend::RedisBackend;
pub use config::RedisConfig;
/// The redis-rs crate this backend is built on, for [`RedisBackend::connect_with_client`]: build
/// the `redis::Client` with this version (e.g. `redis::Client::build_with_tls` for a private CA).
pub use redis;
