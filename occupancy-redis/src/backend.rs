//! [`RedisBackend`]: the [`Backend`] that keeps room state in Redis, and the node's local side:
//! its sessions, the last state it saw of each room that has local sessions or watchers, the
//! pub/sub subscriber that turns published states into notices, the lease task, and the idle
//! task that fires the idle deadlines of rooms whose holder this node hosts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use occupancy_core::{
    Backend, Config, Ending, Error, ForcedRelease, Joined, Left, Meta, NoticeSink, OccupantKey,
    PresenceBody, ResumeToken, Resumed, RoomId, RoomState, RoomSummary, SessionId, Stats,
    async_trait,
};
use occupancy_core::{Notice, NoticeKind, Presence};
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::config::RedisConfig;
use crate::lua;
use crate::node::{Applied, DeltaOffer, LocalSession, Message, NodeState, Offer, parse_message};
use crate::tasks::{LEASE_END_MARGIN, idle_task, lease_task, subscriber, sweep_task};
use crate::wire::{
    Decoded, Head, Reply, bad, code_error, decode_delta, decode_room, parse_meta, parse_session,
    session_hex,
};

/// Sessions a sweep call takes at most (see `lua::SWEEP`).
const SWEEP_SESSIONS: u32 = 500;
/// Rooms plus line lengths a sweep call reads at most from the queued rooms.
const SWEEP_UNITS: u32 = 4000;
/// Redis time a sweep call may use, in µs, before it stops at the next session or room (half of
/// it for taking sessions). A room is never split: one whose line alone takes longer is a call
/// of its own.
const SWEEP_BUDGET_US: u32 = 2000;
/// Rooms whose stored state is at most this long (about 150 occupants) lose a sweep call's
/// removals in that call; longer ones are queued and changed once per sweep.
const SWEEP_SMALL_BYTES: u32 = 16 * 1024;

struct Scripts {
    connect: redis::Script,
    disconnect: redis::Script,
    close: redis::Script,
    expire: redis::Script,
    join: redis::Script,
    update: redis::Script,
    active: redis::Script,
    idle: redis::Script,
    release: redis::Script,
    leave: redis::Script,
    takeover: redis::Script,
    watch: redis::Script,
    unwatch: redis::Script,
    resume: redis::Script,
    token: redis::Script,
    renew: redis::Script,
    sweep: redis::Script,
    prune: redis::Script,
    reregister: redis::Script,
    restore: redis::Script,
    check: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            connect: lua::script(lua::CONNECT),
            disconnect: lua::script(lua::DISCONNECT),
            close: lua::script(lua::CLOSE),
            expire: lua::script(lua::EXPIRE),
            join: lua::script(lua::JOIN),
            update: lua::script(lua::UPDATE),
            active: lua::script(lua::ACTIVE),
            idle: lua::script(lua::IDLE),
            release: lua::script(lua::RELEASE),
            leave: lua::script(lua::LEAVE),
            takeover: lua::script(lua::TAKEOVER),
            watch: lua::script(lua::WATCH),
            unwatch: lua::script(lua::UNWATCH),
            resume: lua::script(lua::RESUME),
            token: lua::script(lua::TOKEN),
            renew: lua::script(lua::RENEW),
            sweep: lua::script(lua::SWEEP),
            prune: lua::script(lua::PRUNE),
            reregister: lua::script(lua::REREGISTER),
            restore: lua::script(lua::RESTORE),
            check: lua::script(lua::CHECK),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: RedisConfig,
    pub(crate) node: String,
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    scripts: Scripts,
    pub(crate) config: OnceLock<Config>,
    pub(crate) sink: OnceLock<Arc<dyn NoticeSink>>,
    pub(crate) local: Mutex<NodeState>,
    /// The highest room version this node has seen: passed to every script as a floor, so that
    /// versions keep increasing even if Redis restarts empty or its clock steps back.
    pub(crate) high_water: AtomicU64,
    pub(crate) round_trips: AtomicU64,
    pub(crate) recover: tokio::sync::Mutex<()>,
    pub(crate) signals: Arc<Signals>,
    /// Redis time minus this machine's Unix time, in ms (measured at each lease renewal): turns
    /// the idle clocks Redis stamps into local deadlines.
    pub(crate) clock_offset: AtomicI64,
    /// This backend, weakly: `renew` spawns the sweep of a dead node with it.
    pub(crate) me: Weak<Inner>,
    /// The dead nodes this node is sweeping now (one task each).
    pub(crate) sweeping: Mutex<HashSet<String>>,
    /// Room states decoded so far (see [`RedisBackend::states_decoded`]).
    pub(crate) decoded: AtomicU64,
    /// When the lease task looks at the other nodes' leases again (this machine's Unix ms; 0: at
    /// the next renewal): just after the earliest of them ends, so that a dead node is swept
    /// promptly after its lease, not up to a third of a lease later.
    pub(crate) recheck_at: AtomicU64,
}

/// Shared with the background tasks, which hold only a weak reference to the backend.
#[derive(Default)]
pub(crate) struct Signals {
    /// Wakes the lease task (e.g. after the subscriber reconnected).
    pub(crate) poke: Notify,
    /// Wakes the idle task (a new earliest idle deadline).
    pub(crate) idle: Notify,
    pub(crate) closed: AtomicBool,
    pub(crate) stop: Notify,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.signals.closed.store(true, Ordering::Release);
        self.signals.stop.notify_waiters();
    }
}

/// The Redis [`Backend`]: several server instances ("nodes"), each with its own
/// [`Hub`](occupancy_core::Hub), share one world. See the [crate docs](crate) for the design.
///
/// Cheap to clone (an `Arc` inside). Create it with [`RedisBackend::connect`] inside a tokio
/// runtime, then give it to a Hub with `Hub::builder().backend(backend)`.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("node", &self.inner.node)
            .field("prefix", &self.inner.cfg.prefix)
            .finish_non_exhaustive()
    }
}

/// A redo of [`Inner::redo_since`]: a session that is gone (or owned by another node since a
/// resume) has nothing left to undo.
fn ignore_gone(r: Result<Reply, Error>) -> Result<(), Error> {
    match r {
        Ok(_) | Err(Error::UnknownSession | Error::SessionReplaced) => Ok(()),
        Err(e) => Err(e),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: format!("redis: {e}"),
    }
}

/// The runtime's clock (tokio's, as the Hub's).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The client for a URL: `Error::Config` for a malformed one, and for `rediss://` (TLS) when
/// this crate was built without its `tls` feature (redis-rs would refuse it with a less helpful
/// message).
fn open_client(url: &str) -> Result<redis::Client, Error> {
    let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
    if tls && !cfg!(feature = "tls") {
        return Err(Error::Config(format!(
            "redis url {url:?} asks for TLS: enable the `tls` feature of occupancy-redis \
             (`redis-tls` of occupancy)"
        )));
    }
    if tls {
        install_crypto();
    }
    redis::Client::open(url).map_err(|e| {
        Error::Config(format!(
            "redis url {url:?}: {e} (expected redis://host:port, rediss://host:port for TLS)"
        ))
    })
}

/// redis-rs builds its rustls configurations with the process's default crypto provider: installs
/// ring's, unless the application installed one first. Nothing without the `tls` feature.
///
/// ring builds without cmake or OpenSSL; rustls marks it deprecated because it has no
/// post-quantum key exchange. An application that wants one installs the aws-lc-rs provider
/// (`CryptoProvider::install_default`) before connecting, and that one is used.
fn install_crypto() {
    #[cfg(feature = "tls")]
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn random_node_id() -> Result<String, Error> {
    let n = getrandom::u64().map_err(unavailable)?;
    Ok(format!("{n:016x}"))
}

impl RedisBackend {
    /// Connects to Redis at [`RedisConfig::url`] and registers this node (its lease starts).
    /// Fails with [`Error::Unavailable`] when Redis cannot be reached within `op_timeout` (a
    /// failed TLS handshake included, its cause in the message), and [`Error::Config`] on bad
    /// settings (a malformed URL, or a `rediss://` URL without the `tls` feature).
    pub async fn connect(cfg: RedisConfig) -> Result<RedisBackend, Error> {
        cfg.validate()?;
        let client = open_client(&cfg.url)?;
        RedisBackend::connect_with_client(client, cfg).await
    }

    /// Like [`RedisBackend::connect`], with a client the application built: its own TLS
    /// settings (a private CA, a client certificate: `redis::Client::build_with_tls`, with the
    /// `tls` feature), credentials or protocol from its own configuration. [`RedisConfig::url`]
    /// is not used (the client says where Redis is). The backend opens its connections (one for
    /// calls, one for the subscription) from this client.
    pub async fn connect_with_client(
        client: redis::Client,
        cfg: RedisConfig,
    ) -> Result<RedisBackend, Error> {
        cfg.validate()?;
        install_crypto();
        let mcfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.op_timeout))
            .set_response_timeout(Some(cfg.op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let addr = client.get_connection_info().addr().to_string();
        let conn = tokio::time::timeout(
            cfg.op_timeout,
            ConnectionManager::new_with_config(client.clone(), mcfg),
        )
        .await
        .map_err(|_| unavailable(format!("connecting to {addr} timed out")))?
        .map_err(|e| {
            let hint = if e.to_string().contains("certificate") {
                " (TLS: the server's certificate is not trusted; for a private CA, build the \
                 client with redis::Client::build_with_tls and use \
                 RedisBackend::connect_with_client)"
            } else {
                ""
            };
            unavailable(format!("connecting to {addr}: {e}{hint}"))
        })?;
        let node = random_node_id()?;
        let backend = RedisBackend {
            inner: Arc::new_cyclic(|me| Inner {
                node,
                cfg,
                client,
                conn,
                scripts: Scripts::new(),
                config: OnceLock::new(),
                sink: OnceLock::new(),
                local: Mutex::new(NodeState::default()),
                high_water: AtomicU64::new(0),
                round_trips: AtomicU64::new(0),
                recover: tokio::sync::Mutex::new(()),
                signals: Arc::default(),
                clock_offset: AtomicI64::new(0),
                me: me.clone(),
                sweeping: Mutex::new(HashSet::new()),
                decoded: AtomicU64::new(0),
                recheck_at: AtomicU64::new(0),
            }),
        };
        backend.inner.renew().await?;
        Ok(backend)
    }

    /// This node's id (random, hex).
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The settings.
    pub fn redis_config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// Stops this node's background work (lease renewals, the subscription, sweeps, idle checks)
    /// without telling Redis or its sessions anything, as if its process had been killed: the
    /// other nodes sweep its sessions once its lease ends. For tests and drills of a node's
    /// death inside one process; do not use the backend afterwards.
    pub fn freeze(&self) {
        self.inner.signals.closed.store(true, Ordering::Release);
        self.inner.signals.stop.notify_waiters();
    }

    /// How many requests this node has sent to Redis so far (scripts and reads, including the
    /// background lease and subscriber work). For benchmarks: one operation is one request.
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// How many room states this node has decoded so far (published states, script replies,
    /// reads). For tests and benchmarks: a node decodes a published state only for a room it
    /// follows (one it has a session, a watcher or a call in flight in) and only when it is newer
    /// than the last state it saw.
    pub fn states_decoded(&self) -> u64 {
        self.inner.decoded.load(Ordering::Relaxed)
    }
}

type Args = Vec<Vec<u8>>;

fn args() -> Args {
    Vec::with_capacity(8)
}

trait Push {
    fn a(self, v: impl AsRef<[u8]>) -> Self;
}

impl Push for Args {
    fn a(mut self, v: impl AsRef<[u8]>) -> Self {
        self.push(v.as_ref().to_vec());
        self
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, NodeState> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> Result<&Config, Error> {
        self.config
            .get()
            .ok_or_else(|| Error::Config("RedisBackend is not attached to a Hub".into()))
    }

    fn limits(&self) -> occupancy_core::Limits {
        self.config
            .get()
            .map(|c| c.limits.clone())
            .unwrap_or_default()
    }

    fn presence_occupants(&self) -> usize {
        self.config.get().map_or(8, |c| c.presence_occupants)
    }

    /// [`Config::idle_timeout`] in ms (at least 1), `None` when idle expiry is off.
    fn idle_ms(&self) -> Option<u64> {
        self.config
            .get()
            .and_then(|c| c.idle_timeout)
            .map(|d| (d.as_millis() as u64).max(1))
    }

    /// The idle timeout as a script argument: ms, 0 = off.
    fn idle_arg(&self) -> String {
        self.idle_ms().unwrap_or(0).to_string()
    }

    /// Recomputes a followed room's idle deadline from its last state seen: when this node
    /// hosts a session of a holder someone waits behind, the holder's idle clock plus the
    /// timeout, converted from Redis time to this machine's clock. Wakes the idle task when the
    /// deadline is the earliest.
    fn rearm_idle(&self, local: &mut NodeState, room: &str) {
        let at = self.idle_ms().and_then(|idle| {
            let t = local.rooms.get(room)?;
            if !local.hosts_waited_on_holder(t) {
                return None;
            }
            let due = t.active_at?.saturating_add(idle) as i64;
            let redis_now = unix_ms() as i64 + self.clock_offset.load(Ordering::Relaxed);
            let wait = due.saturating_sub(redis_now).max(0) as u64;
            Some(now() + Duration::from_millis(wait))
        });
        if local.set_idle(room, at) {
            self.signals.idle.notify_one();
        }
    }

    /// Runs the idle script for every room whose local deadline came due; returns the next
    /// deadline. A room whose holder was active meanwhile gets its deadline back, at the time the
    /// script says is left; a displaced holder's room is re-armed (for its new holder, if this
    /// node hosts it) by the published state, like any change.
    pub(crate) async fn fire_idle(&self) -> Option<Instant> {
        let start = now();
        let due: Vec<RoomId> = {
            let mut local = self.lock();
            let mut due = Vec::new();
            while let Some((at, _)) = local.idle.first()
                && *at <= start
            {
                let (_, room) = local.idle.pop_first().expect("just looked");
                if let Some(t) = local.rooms.get_mut(room.as_str()) {
                    t.idle_at = None;
                }
                due.push(room);
            }
            due
        };
        for room in due {
            let Some(idle) = self.idle_ms() else { break };
            let r = self
                .run(
                    &self.scripts.idle,
                    args().a(room.as_str()).a(idle.to_string()),
                )
                .await;
            let again = match r {
                Ok(reply) => reply.d.map(Duration::from_millis),
                Err(e) => {
                    warn!(room = %room, error = %e, "idle check failed; retrying");
                    Some(Duration::from_millis(200))
                }
            };
            if let Some(wait) = again {
                let mut local = self.lock();
                let rearm = local
                    .rooms
                    .get(room.as_str())
                    .is_some_and(|t| t.idle_at.is_none() && local.hosts_waited_on_holder(t));
                if rearm {
                    local.set_idle(room.as_str(), Some(now() + wait));
                }
            }
        }
        self.lock().idle.first().map(|(at, _)| *at)
    }

    /// Decodes a room state (counted, see [`RedisBackend::states_decoded`]).
    fn decode(&self, raw: &str) -> Result<Decoded, Error> {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        decode_room(raw)
    }

    /// Runs a script: one round trip, bounded by `op_timeout`. Applies the rooms it changed
    /// (also when it refused), fills [`Reply::head`] (and [`Reply::state`] when the reply
    /// carried the state itself), then maps its error code.
    async fn run(&self, script: &redis::Script, rest: Args) -> Result<Reply, Error> {
        let mut inv = script.prepare_invoke();
        inv.arg(self.cfg.prefix.as_str())
            .arg(self.high_water.load(Ordering::Acquire));
        for a in &rest {
            inv.arg(a.as_slice());
        }
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let raw: String = tokio::time::timeout(self.cfg.op_timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)?;
        let mut reply: Reply = serde_json::from_str(&raw).map_err(bad)?;
        self.apply_changes(&mut reply);
        if let Some(code) = &reply.e {
            return Err(code_error(code, &self.limits()));
        }
        if let Some(raw) = reply.r.take() {
            let d = self.decode(&raw)?;
            reply.head = Some(Head::of(&d.state));
            reply.state = Some(d);
        }
        Ok(reply)
    }

    /// Applies the room states a script returned (each dropped unless newer than the last seen).
    /// Decodes only the rooms this node follows, and the one the call was about (`ri`: its head
    /// goes into [`Reply::head`]); the others only raise the version floor and are reported.
    fn apply_changes(&self, reply: &mut Reply) {
        if reply.c.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut reply.c);
        let wanted: Vec<bool> = {
            let local = self.lock();
            changed
                .iter()
                .enumerate()
                .map(|(i, (room, _, raw))| {
                    !raw.is_empty()
                        && (reply.ri == Some(i + 1) || local.rooms.contains_key(room.as_str()))
                })
                .collect()
        };
        // The changes this node's own call made, for the Hub's change stream (`Hub::changes`):
        // states published by other nodes are theirs to report.
        let reporting = self.sink.get().is_some_and(|s| s.wants_changes());
        let mut report: Vec<(RoomId, u64)> = Vec::new();
        let mut decoded = Vec::new();
        for (i, (room, version, raw)) in changed.into_iter().enumerate() {
            let Ok(version) = version.parse::<u64>() else {
                warn!(room, version, "undecodable room version");
                continue;
            };
            self.high_water.fetch_max(version, Ordering::AcqRel);
            if reporting && let Ok(id) = RoomId::parse(&room, usize::MAX) {
                report.push((id, version));
            }
            if !wanted[i] {
                continue;
            }
            match self.decode(&raw) {
                Ok(d) => {
                    if reply.ri == Some(i + 1) {
                        reply.head = Some(Head::of(&d.state));
                    }
                    decoded.push((room, d));
                }
                Err(e) => warn!(room, error = %e, "undecodable room state"),
            }
        }
        let mut local = self.lock();
        for (room, d) in decoded {
            self.apply_locked(&mut local, &room, d);
        }
        drop(local);
        if !report.is_empty()
            && let Some(sink) = self.sink.get()
        {
            sink.rooms_changed(&report);
        }
    }

    /// Takes a room's new state if it is newer than the last seen, and delivers the notices of
    /// the change to this node's sessions (see [`NodeState::apply`]).
    fn apply_locked(&self, local: &mut NodeState, room: &str, d: Decoded) {
        self.high_water.fetch_max(d.state.version, Ordering::AcqRel);
        let mut out = Vec::new();
        if local.apply(room, d, self.presence_occupants(), &mut out) != Applied::Changed {
            return;
        }
        self.delivered_locked(local, room, out);
    }

    /// Delivers the notices of a change this node took (a state or a delta) and re-arms the
    /// room's idle deadline.
    fn delivered_locked(&self, local: &mut NodeState, room: &str, out: Vec<Notice>) {
        if !out.is_empty()
            && let Some(sink) = self.sink.get()
        {
            sink.deliver(&mut out.into_iter());
        }
        self.rearm_idle(local, room);
    }

    /// Adopts a room's state seen for the first time (no notices: nobody here was in it).
    fn adopt_locked(&self, local: &mut NodeState, room: &RoomId, d: &Decoded) {
        local.adopt(room, d);
        self.high_water.fetch_max(d.state.version, Ordering::AcqRel);
        self.rearm_idle(local, room.as_str());
    }

    /// The local, live session's occupant key, meta and principal; `UnknownSession` otherwise.
    fn live(&self, id: SessionId) -> Result<(Option<Arc<str>>, Meta, String), Error> {
        let local = self.lock();
        match local.sessions.get(&id) {
            Some(s) if s.grace_until.is_none() => {
                Ok((s.principal.clone(), s.meta.clone(), s.meta_json.clone()))
            }
            _ => Err(Error::UnknownSession),
        }
    }

    /// Runs a session operation; if Redis says the session is unknown while this node has it
    /// live, Redis lost its data: restore, then try once more. If another node owns the session
    /// (see [`Inner::replaced`]), fails with [`Error::UnknownSession`].
    /// Runs a script that answers the session's place in `room` (take over, update, active) and
    /// applies the room state it returned, if any.
    async fn run_place_op(
        &self,
        session: SessionId,
        room: &str,
        script: &redis::Script,
        rest: Args,
    ) -> Result<Joined, Error> {
        let room_id = RoomId::parse(room, usize::MAX)?;
        let reply = self.run_session_op(session, script, rest).await?;
        let (joined, d) = self.joined_from(&room_id, reply)?;
        if let Some(d) = d {
            let mut local = self.lock();
            self.apply_locked(&mut local, room, d);
        }
        Ok(joined)
    }

    async fn run_session_op(
        &self,
        id: SessionId,
        script: &redis::Script,
        rest: Args,
    ) -> Result<Reply, Error> {
        let r = match self.run(script, rest.clone()).await {
            Err(Error::UnknownSession) if self.live(id).is_ok() => {
                self.recover_now().await?;
                self.run(script, rest).await
            }
            r => r,
        };
        match r {
            Err(Error::SessionReplaced) => {
                self.replaced(id);
                Err(Error::UnknownSession)
            }
            r => r,
        }
    }

    /// A script refused to act on a session because another node owns it: a resume there
    /// replaced this node's connection, and this node acted before it processed the `s` message
    /// that says so (or lost it). Ends the local session as that message would have, so the Hub
    /// closes the stale connection with [`Error::SessionReplaced`]. The caller then fails with
    /// [`Error::UnknownSession`], as every call on a replaced connection's handle does.
    fn replaced(&self, id: SessionId) {
        let forgotten = self.lock().forget(id).is_some();
        if forgotten && let Some(sink) = self.sink.get() {
            debug!(session = %id, "session owned by another node: ending the stale connection");
            sink.session_ended(id, Some(Error::SessionReplaced));
        }
    }

    fn pending(&self, room: &RoomId, delta: isize) {
        let mut local = self.lock();
        let t = local.track(room);
        t.pending = t.pending.saturating_add_signed(delta);
        if delta < 0 {
            local.untrack_if_idle(room.as_str());
        }
    }

    /// The place a join (update, active, take over) reply gives, and the room's state when the
    /// reply carried it (the call changed nothing: the caller applies it, it may be newer than
    /// the last seen; a change was applied by [`Inner::run`]).
    fn joined_from(
        &self,
        room: &RoomId,
        mut reply: Reply,
    ) -> Result<(Joined, Option<Decoded>), Error> {
        let head = reply.head.take().ok_or_else(|| bad("no room state"))?;
        let position = reply.p.ok_or_else(|| bad("no position"))?;
        let holder = head.holder.ok_or_else(|| bad("empty room after join"))?;
        Ok((
            Joined {
                room: room.clone(),
                holding: position == 0,
                position,
                version: head.version,
                holder,
            },
            reply.state,
        ))
    }

    // ----- lease, sweep, recovery -----------------------------------------------------------

    /// Renews the lease; handles a lost registration; starts sweeping the nodes whose lease
    /// ended (each in a task of its own, see [`sweep_task`]: a long sweep must not hold up
    /// this node's renewals); notes when the next lease of another node ends.
    async fn renew(&self) -> Result<(), Error> {
        let lease_ms = self.cfg.lease.as_millis().to_string();
        let reply = self
            .run(&self.scripts.renew, args().a(&self.node).a(&lease_ms))
            .await?;
        if let Some(redis_ms) = reply.d {
            self.clock_offset
                .store(redis_ms as i64 - unix_ms() as i64, Ordering::Relaxed);
            // Just after the earliest other lease ends. Live nodes renew long before their lease
            // ends, so while they live this comes after this node's next renewal and changes
            // nothing; once one stops renewing, it is looked at as soon as its lease is over.
            let at = reply.ne.map_or(0, |end| {
                unix_ms() + end.saturating_sub(redis_ms) + LEASE_END_MARGIN.as_millis() as u64
            });
            self.recheck_at.store(at, Ordering::Relaxed);
        }
        match reply.s {
            Some(0) => self.restore().await?,
            Some(-1) => self.swept(),
            _ => {}
        }
        for dead in reply.x {
            if dead == self.node {
                continue;
            }
            if !self
                .sweeping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(dead.clone())
            {
                continue;
            }
            tokio::spawn(sweep_task(self.me.clone(), self.signals.clone(), dead));
        }
        Ok(())
    }

    /// One call of a dead node's sweep (see `lua::SWEEP`); true when there is more to do.
    pub(crate) async fn sweep_step(&self, dead: &str) -> Result<(bool, u64), Error> {
        let r = self
            .run(
                &self.scripts.sweep,
                args()
                    .a(dead)
                    .a(SWEEP_SESSIONS.to_string())
                    .a(SWEEP_UNITS.to_string())
                    .a(SWEEP_BUDGET_US.to_string())
                    .a(SWEEP_SMALL_BYTES.to_string()),
            )
            .await?;
        Ok((r.m == Some(1), r.n.unwrap_or(0)))
    }

    pub(crate) async fn recover_now(&self) -> Result<(), Error> {
        let _g = self.recover.lock().await;
        self.renew().await
    }

    /// Another node swept this one (its lease ended while it could not reach Redis): its sessions
    /// are gone from every room; end them here too.
    fn swept(&self) {
        let ids: Vec<SessionId> = {
            let mut local = self.lock();
            let ids: Vec<_> = local.sessions.keys().copied().collect();
            for id in &ids {
                local.forget(*id);
            }
            ids
        };
        warn!(
            sessions = ids.len(),
            "this node's lease ended and its sessions were swept by another node"
        );
        if let Some(sink) = self.sink.get() {
            for id in ids {
                sink.session_ended(
                    id,
                    Some(Error::Unavailable {
                        reason: "this server lost its lease on the shared state".into(),
                    }),
                );
            }
        }
    }

    /// Redis lost its data (restarted empty): writes this node's sessions and rooms back, every
    /// occupant at its old place.
    ///
    /// The node keeps serving while it writes back (one script per session and per room). A
    /// session that left a room since the snapshot is not put back in it (`lua::RESTORE` reads
    /// the session's record, written back first); a session that ended since the snapshot was
    /// written back from it all the same, so it is closed again once everything is written.
    async fn restore(&self) -> Result<(), Error> {
        let now = Instant::now();
        let (sessions, rooms, snapshot) = {
            let local = self.lock();
            let snapshot: Vec<SessionId> = local.sessions.keys().copied().collect();
            let sessions: Vec<_> = local
                .sessions
                .iter()
                .map(|(id, s)| {
                    let rooms = |v: &[RoomId]| {
                        serde_json::to_string(&v.iter().map(RoomId::as_str).collect::<Vec<_>>())
                            .unwrap_or_else(|_| "[]".into())
                    };
                    let grace = s
                        .grace_until
                        .map_or(0, |d| d.saturating_duration_since(now).as_millis().max(1));
                    args()
                        .a(session_hex(*id))
                        .a(&self.node)
                        .a(if s.principal.is_some() { "1" } else { "0" })
                        .a(s.principal.as_deref().unwrap_or(""))
                        .a(&s.meta_json)
                        .a(s.token.to_string())
                        .a(rooms(&s.joined))
                        .a(rooms(&s.watching))
                        .a(grace.to_string())
                })
                .collect();
            let ids = |v: &[SessionId]| {
                serde_json::to_string(&v.iter().map(|s| session_hex(*s)).collect::<Vec<_>>())
                    .unwrap_or_else(|_| "[]".into())
            };
            let rooms: Vec<_> = local
                .rooms
                .values()
                .filter_map(|t| {
                    let raw = t.raw_now()?;
                    Some(
                        args()
                            .a(t.id.as_str())
                            .a(raw.as_bytes())
                            .a(ids(&t.members))
                            .a(ids(&t.watchers))
                            .a(self.cfg.lease.as_millis().to_string()),
                    )
                })
                .collect();
            (sessions, rooms, snapshot)
        };
        if sessions.is_empty() && rooms.is_empty() {
            return Ok(());
        }
        warn!(
            sessions = sessions.len(),
            rooms = rooms.len(),
            "Redis lost this node's registration: writing its sessions and rooms back"
        );
        for a in sessions {
            self.run(&self.scripts.reregister, a).await?;
        }
        for a in rooms {
            self.run(&self.scripts.restore, a).await?;
        }
        self.redo_since(snapshot).await
    }

    /// After [`Inner::restore`]: closes again the sessions of `snapshot` (taken when the
    /// write-back began) that ended since.
    async fn redo_since(&self, snapshot: Vec<SessionId>) -> Result<(), Error> {
        let closes: Vec<SessionId> = {
            let local = self.lock();
            snapshot
                .into_iter()
                .filter(|id| !local.sessions.contains_key(id))
                .collect()
        };
        for id in closes {
            let a = args().a(session_hex(id)).a(&self.node);
            ignore_gone(self.run(&self.scripts.close, a).await)?;
        }
        Ok(())
    }

    /// Re-reads every followed room (after the subscription was re-established: messages may
    /// have been lost) and drops expired placeholders.
    pub(crate) async fn resync(&self) -> Result<(), Error> {
        let rooms: Vec<RoomId> = self.lock().rooms.keys().cloned().collect();
        for room in rooms {
            let raw = self.get_room_raw(room.as_str()).await?;
            if let Some(raw) = raw
                && let Ok(d) = self.decode(&raw)
            {
                let mut local = self.lock();
                self.apply_locked(&mut local, room.as_str(), d);
            }
        }
        Ok(())
    }

    pub(crate) async fn prune_due(&self) -> Result<(), Error> {
        let now_ms = unix_ms();
        let due: Vec<RoomId> = self
            .lock()
            .rooms
            .values()
            .filter(|t| t.placeholder_until.is_some_and(|x| x <= now_ms))
            .map(|t| t.id.clone())
            .collect();
        for room in due {
            self.run(&self.scripts.prune, args().a(room.as_str()))
                .await?;
        }
        Ok(())
    }

    async fn get_room_raw(&self, room: &str) -> Result<Option<String>, Error> {
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let key = room_key(&self.cfg.prefix, room);
        tokio::time::timeout(
            self.cfg.op_timeout,
            redis::cmd("GET").arg(key).query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable("timed out"))?
        .map_err(unavailable)
    }

    // ----- messages ---------------------------------------------------------------------

    /// A message on the channel (parsed by [`parse_message`]). A room's state is decoded only
    /// when this node follows the room and the state is newer than the last it saw
    /// ([`NodeState::offer`]): every node receives every room's states, and most are none of its
    /// business. A followed room whose newer state cannot be decoded is re-read.
    pub(crate) fn on_message(&self, payload: &[u8]) {
        let Some(msg) = parse_message(payload) else {
            warn!("undecodable published message");
            return;
        };
        match msg {
            Message::Room {
                room,
                version,
                state,
            } => {
                self.high_water.fetch_max(version, Ordering::AcqRel);
                let mut local = self.lock();
                if local.defer(room, version) || local.offer(room, version) == Offer::Skip {
                    return;
                }
                drop(local);
                // Decoded outside the lock (a long line takes a while); `apply` checks the
                // version again.
                match self.decode(state) {
                    Ok(d) => {
                        let mut local = self.lock();
                        self.apply_locked(&mut local, room, d);
                    }
                    Err(e) => {
                        warn!(room, error = %e, "undecodable published state; re-reading the room");
                        if self.lock().must_reread(room, version) {
                            self.reread(room.to_owned());
                        }
                    }
                }
            }
            Message::Delta {
                room,
                prev,
                version,
                edit,
            } => {
                self.high_water.fetch_max(version, Ordering::AcqRel);
                let mut local = self.lock();
                if local.defer(room, version) {
                    return;
                }
                let offer = local.offer_delta(room, prev, version);
                drop(local);
                match offer {
                    DeltaOffer::Skip => return,
                    DeltaOffer::Reread => {
                        self.reread(room.to_owned());
                        return;
                    }
                    DeltaOffer::Apply => {}
                }
                let change = match decode_delta(edit) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(room, error = %e, "undecodable published delta; re-reading the room");
                        if self.lock().must_reread(room, version) {
                            self.reread(room.to_owned());
                        }
                        return;
                    }
                };
                let mut local = self.lock();
                let mut out = Vec::new();
                match local.apply_delta(
                    room,
                    prev,
                    version,
                    &change,
                    self.presence_occupants(),
                    &mut out,
                ) {
                    Some(Applied::Changed) => self.delivered_locked(&mut local, room, out),
                    Some(_) => {}
                    None => {
                        drop(local);
                        self.reread(room.to_owned());
                    }
                }
            }
            Message::Changed { room, version } => {
                self.high_water.fetch_max(version, Ordering::AcqRel);
                let mut local = self.lock();
                if !local.defer(room, version) && local.must_reread(room, version) {
                    drop(local);
                    self.reread(room.to_owned());
                }
            }
            Message::Resumed { session, node } => {
                if node != self.node {
                    self.ended_elsewhere(session, Error::SessionReplaced);
                }
            }
            Message::Swept(sessions) => {
                for id in sessions {
                    self.ended_elsewhere(
                        id,
                        Error::Unavailable {
                            reason: "this server lost its lease on the shared state".into(),
                        },
                    );
                }
            }
        }
    }

    /// Re-reads one followed room in a task of its own (the subscriber must not wait for Redis),
    /// and applies what it finds.
    ///
    /// One re-read per room at a time ([`NodeState::start_reread`]): the publishes that come
    /// meanwhile wait for it (a burst of deltas after a lost one asks for one GET, not one per
    /// delta), and if one of them is newer than what the GET found, the room is read again.
    fn reread(&self, room: String) {
        let Some(me) = self.me.upgrade() else { return };
        if !self.lock().start_reread(&room) {
            return;
        }
        tokio::spawn(async move {
            let mut ok = false;
            match me.get_room_raw(&room).await {
                Ok(Some(raw)) => match me.decode(&raw) {
                    Ok(d) => {
                        let mut local = me.lock();
                        me.apply_locked(&mut local, &room, d);
                        ok = true;
                    }
                    Err(e) => warn!(room, error = %e, "undecodable stored room state"),
                },
                Ok(None) => {}
                Err(e) => {
                    debug!(room, error = %e, "re-reading a room failed; the next change heals it")
                }
            }
            if me.lock().reread_done(&room) && ok {
                me.reread(room);
            }
        });
    }

    /// Another node ended a session: resumed it there, or swept it (this node's lease ended).
    /// Ends it here if it is this node's.
    fn ended_elsewhere(&self, id: SessionId, reason: Error) {
        let forgotten = self.lock().forget(id).is_some();
        if forgotten && let Some(sink) = self.sink.get() {
            debug!(session = %id, ?reason, "session ended by another node");
            sink.session_ended(id, Some(reason));
        }
    }
}

/// The key of a room's state: `{prefix}:r:{<hex of the room id>}` (the hex is the hash tag).
/// The room id of a room key (`room_key`'s inverse); `None` for anything else.
fn room_of_key(key: &str) -> Option<String> {
    let hex = key.rsplit_once(":r:{")?.1.strip_suffix('}')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

pub(crate) fn room_key(prefix: &str, room: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + 5 + room.len() * 2);
    k.push_str(prefix);
    k.push_str(":r:{");
    for b in room.bytes() {
        k.push_str(&format!("{b:02x}"));
    }
    k.push('}');
    k
}

#[async_trait]
impl Backend for RedisBackend {
    fn attach(&self, config: &Config, sink: Arc<dyn NoticeSink>) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("attach a RedisBackend inside a tokio runtime".into()))?;
        if self.inner.sink.get().is_some() {
            return Err(Error::Config(
                "this RedisBackend is already attached to a Hub".into(),
            ));
        }
        config.validate()?;
        let _ = self.inner.config.set(config.clone());
        self.inner
            .sink
            .set(sink)
            .map_err(|_| Error::Config("this RedisBackend is already attached to a Hub".into()))?;
        let weak = Arc::downgrade(&self.inner);
        let signals = self.inner.signals.clone();
        runtime.spawn(subscriber(
            weak.clone(),
            signals.clone(),
            self.inner.client.clone(),
            format!("{}:ch", self.inner.cfg.prefix),
            self.inner.cfg.op_timeout,
        ));
        runtime.spawn(lease_task(weak.clone(), signals.clone()));
        runtime.spawn(idle_task(weak, signals));
        Ok(())
    }

    async fn connect(
        &self,
        session: SessionId,
        principal: Option<&str>,
        meta: Meta,
        token: ResumeToken,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        meta.check(inner.config()?.limits.max_meta_bytes)?;
        if inner.lock().sessions.contains_key(&session) {
            return Err(Error::SessionExists);
        }
        let meta_json = serde_json::to_string(&meta).map_err(bad)?;
        inner
            .run(
                &inner.scripts.connect,
                args()
                    .a(session_hex(session))
                    .a(&inner.node)
                    .a(if principal.is_some() { "1" } else { "0" })
                    .a(principal.unwrap_or(""))
                    .a(&meta_json)
                    .a(token.to_string()),
            )
            .await?;
        inner.lock().sessions.insert(
            session,
            LocalSession {
                principal: principal.map(Arc::from),
                meta,
                meta_json,
                token,
                joined: Vec::new(),
                watching: Vec::new(),
                grace_until: None,
            },
        );
        Ok(())
    }

    async fn disconnect(
        &self,
        session: SessionId,
        now: Instant,
        ending: Ending,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let grace = inner.config()?.grace_for(ending);
        {
            let local = inner.lock();
            match local.sessions.get(&session) {
                None => return Err(Error::UnknownSession),
                Some(s) if s.grace_until.is_some() => return Ok(()),
                Some(_) => {}
            }
        }
        let ms = if grace.is_zero() {
            0
        } else {
            grace.as_millis().max(1)
        };
        let r = inner
            .run_session_op(
                session,
                &inner.scripts.disconnect,
                args()
                    .a(session_hex(session))
                    .a(&inner.node)
                    .a(ms.to_string()),
            )
            .await;
        let mut local = inner.lock();
        if grace.is_zero() {
            if r.is_ok() {
                local.forget(session);
            }
        } else if let Some(s) = local.sessions.get_mut(&session)
            && s.grace_until.is_none()
        {
            // Also when Redis failed: the local timer closes the session at the deadline.
            let d = now + grace;
            s.grace_until = Some(d);
            local.timers.insert((d, session));
        }
        r.map(|_| ())
    }

    async fn close(&self, session: SessionId) -> Result<(), Error> {
        let inner = &self.inner;
        let r = inner
            .run(
                &inner.scripts.close,
                args().a(session_hex(session)).a(&inner.node),
            )
            .await;
        match r {
            Ok(_) => {
                inner.lock().forget(session);
                Ok(())
            }
            Err(Error::SessionReplaced) => {
                inner.replaced(session);
                Err(Error::UnknownSession)
            }
            Err(Error::UnknownSession) => {
                let known = inner.lock().forget(session).is_some();
                if known {
                    Ok(())
                } else {
                    Err(Error::UnknownSession)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn resume(
        &self,
        token: ResumeToken,
        new_token: ResumeToken,
        now: Instant,
    ) -> Result<Resumed, Error> {
        let inner = &self.inner;
        // A local session whose grace ended but whose timer has not run yet is gone.
        let expired = {
            let local = inner.lock();
            local
                .sessions
                .iter()
                .find(|(_, s)| s.token == token)
                .and_then(|(id, s)| s.grace_until.filter(|d| *d <= now).map(|_| *id))
        };
        if let Some(id) = expired {
            let _ = inner
                .run(
                    &inner.scripts.expire,
                    args().a(session_hex(id)).a(&inner.node),
                )
                .await?;
            inner.lock().forget(id);
            return Err(Error::ResumeInvalid);
        }
        let reply = inner
            .run(
                &inner.scripts.resume,
                args()
                    .a(token.to_string())
                    .a(new_token.to_string())
                    .a(&inner.node),
            )
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(Error::ResumeInvalid) => {
                // Gone in Redis: forget it here too.
                let mut local = inner.lock();
                let id = local
                    .sessions
                    .iter()
                    .find(|(_, s)| s.token == token)
                    .map(|(id, _)| *id);
                if let Some(id) = id {
                    local.forget(id);
                }
                return Err(Error::ResumeInvalid);
            }
            Err(e) => return Err(e),
        };
        let id = parse_session(reply.i.as_deref().ok_or_else(|| bad("no session"))?)?;
        let principal: Option<Arc<str>> = reply.pr.as_deref().map(Arc::from);
        let meta_json = reply.me.clone().unwrap_or_else(|| "{}".into());
        let meta = parse_meta(&meta_json)?;
        let decode = |v: &[(String, String)]| -> Result<Vec<(RoomId, Option<Decoded>)>, Error> {
            v.iter()
                .map(|(room, raw)| {
                    let id = RoomId::parse(room, usize::MAX)?;
                    let d = if raw.is_empty() {
                        None
                    } else {
                        Some(inner.decode(raw)?)
                    };
                    Ok((id, d))
                })
                .collect()
        };
        let joined = decode(&reply.j)?;
        let watching = decode(&reply.w)?;
        let key = OccupantKey::of(id, principal.as_ref());
        let presence_occupants = inner.presence_occupants();
        let mut rooms = Vec::with_capacity(joined.len());
        let mut notices = Vec::new();
        {
            let mut local = inner.lock();
            if let Some(old) = local.sessions.get(&id)
                && let Some(d) = old.grace_until
            {
                local.timers.remove(&(d, id));
            }
            for (room, d) in joined.iter().chain(&watching) {
                let Some(d) = d else { continue };
                let t = local.track(room);
                let fresh = t.raw.is_none();
                if fresh && d.state.version > t.state.version {
                    // First sight: adopt without notices (nobody here was in it).
                    inner.adopt_locked(&mut local, room, d);
                } else {
                    inner.apply_locked(&mut local, room.as_str(), d.clone());
                }
            }
            for (room, d) in &joined {
                let Some(d) = d else { continue };
                let t = local.track(room);
                if !t.members.contains(&id) {
                    t.members.push(id);
                }
                let Some(pos) = d.state.position_of(&key) else {
                    continue;
                };
                let holder = d.state.occupants[0].person();
                rooms.push(Joined {
                    room: room.clone(),
                    holding: pos == 0,
                    position: pos as u32,
                    version: d.state.version,
                    holder,
                });
                notices.push(Notice {
                    session: id,
                    room: room.clone(),
                    kind: NoticeKind::Presence(Presence {
                        body: Arc::new(PresenceBody::of(&d.state, presence_occupants)),
                        position: Some(pos as u32),
                    }),
                });
            }
            for (room, d) in &watching {
                let t = local.track(room);
                if !t.watchers.contains(&id) {
                    t.watchers.push(id);
                }
                // A member who also watches was told above, as a member: a second, place-less
                // presence would replace the first in the session's queue.
                if joined.iter().any(|(r, _)| r == room) {
                    continue;
                }
                let state = match d {
                    Some(d) => d.state.clone(),
                    // Redis has no state for the room: it lost its data and the room is not
                    // written back yet. The last state this node saw, at the highest version it
                    // has seen (never version 0: the watcher may have been told a later one; the
                    // write-back's version will be higher still).
                    None => {
                        let mut last = t.state.clone();
                        last.version = last.version.max(inner.high_water.load(Ordering::Acquire));
                        last
                    }
                };
                notices.push(Notice {
                    session: id,
                    room: room.clone(),
                    kind: NoticeKind::Presence(Presence {
                        body: Arc::new(PresenceBody::of(&state, presence_occupants)),
                        position: None,
                    }),
                });
            }
            local.sessions.insert(
                id,
                LocalSession {
                    principal,
                    meta,
                    meta_json,
                    token: new_token,
                    joined: rooms.iter().map(|j| j.room.clone()).collect(),
                    watching: watching.iter().map(|(r, _)| r.clone()).collect(),
                    grace_until: None,
                },
            );
            if let Some(sink) = inner.sink.get()
                && !notices.is_empty()
            {
                sink.deliver(&mut notices.into_iter());
            }
        }
        Ok(Resumed {
            session: id,
            was_live: reply.lv == Some(1),
            rooms,
            watching: watching.into_iter().map(|(r, _)| r).collect(),
        })
    }

    async fn join(
        &self,
        session: SessionId,
        room: &str,
        meta: Option<Meta>,
    ) -> Result<Joined, Error> {
        let inner = &self.inner;
        let config = inner.config()?;
        RoomId::check(room, config.limits.max_room_id_len)?;
        let (_, default_meta, default_json) = inner.live(session)?;
        let (meta, meta_json) = match meta {
            Some(m) => {
                let j = serde_json::to_string(&m).map_err(bad)?;
                (m, j)
            }
            None => (default_meta, default_json),
        };
        meta.check(config.limits.max_meta_bytes)?;
        let room_id = RoomId::parse(room, usize::MAX)?;
        inner.pending(&room_id, 1);
        let r = inner
            .run_session_op(
                session,
                &inner.scripts.join,
                args()
                    .a(session_hex(session))
                    .a(&inner.node)
                    .a(room)
                    .a(&meta_json)
                    .a(config.limits.max_rooms_per_session.to_string())
                    .a(config.limits.max_occupants_per_room.to_string())
                    .a(inner.idle_arg()),
            )
            .await
            .and_then(|reply| inner.joined_from(&room_id, reply));
        let mut local = inner.lock();
        let result = match r {
            Ok((joined, d)) => {
                let t = local.track(&room_id);
                if !t.members.contains(&session) {
                    t.members.push(session);
                }
                if let Some(s) = local.sessions.get_mut(&session)
                    && !s.joined.contains(&room_id)
                {
                    s.joined.push(room_id.clone());
                }
                if let Some(d) = d {
                    inner.apply_locked(&mut local, room, d);
                }
                Ok(joined)
            }
            Err(e) => Err(e),
        };
        let reread = local.call_done(&room_id);
        drop(local);
        if reread {
            inner.reread(room.to_owned());
        }
        result
    }

    async fn leave(&self, session: SessionId, room: &str) -> Result<Left, Error> {
        let inner = &self.inner;
        RoomId::check(room, inner.config()?.limits.max_room_id_len)?;
        inner.live(session)?;
        let room_id = RoomId::parse(room, usize::MAX)?;
        let reply = inner
            .run_session_op(
                session,
                &inner.scripts.leave,
                args().a(session_hex(session)).a(&inner.node).a(room),
            )
            .await?;
        let was_member = reply.wm == Some(1);
        let mut local = inner.lock();
        if let Some(s) = local.sessions.get_mut(&session)
            && let Some(i) = s.joined.iter().position(|r| r == &room_id)
        {
            s.joined.remove(i);
        }
        if let Some(t) = local.rooms.get_mut(room) {
            t.members.retain(|&m| m != session);
        }
        local.untrack_if_idle(room);
        Ok(Left {
            room: room_id,
            was_member,
        })
    }

    async fn update(&self, session: SessionId, room: &str, meta: Meta) -> Result<Joined, Error> {
        let inner = &self.inner;
        let config = inner.config()?;
        // In the machine's order: the room id, the session, the metadata, then membership.
        RoomId::check(room, config.limits.max_room_id_len)?;
        inner.live(session)?;
        meta.check(config.limits.max_meta_bytes)?;
        let meta_json = serde_json::to_string(&meta).map_err(bad)?;
        inner
            .run_place_op(
                session,
                room,
                &inner.scripts.update,
                args()
                    .a(session_hex(session))
                    .a(&inner.node)
                    .a(room)
                    .a(&meta_json)
                    .a(inner.idle_arg()),
            )
            .await
    }

    async fn active(&self, session: SessionId, room: &str) -> Result<Joined, Error> {
        let inner = &self.inner;
        // In the machine's order: the room id, the session, then membership.
        RoomId::check(room, inner.config()?.limits.max_room_id_len)?;
        inner.live(session)?;
        inner
            .run_place_op(
                session,
                room,
                &inner.scripts.active,
                args()
                    .a(session_hex(session))
                    .a(&inner.node)
                    .a(room)
                    .a(inner.idle_arg()),
            )
            .await
    }

    async fn release(&self, room: &str) -> Result<ForcedRelease, Error> {
        let inner = &self.inner;
        RoomId::check(room, inner.config()?.limits.max_room_id_len)?;
        let reply = inner.run(&inner.scripts.release, args().a(room)).await?;
        match reply.k.as_deref() {
            Some("vacant") => Ok(ForcedRelease::Vacant),
            Some("pending") => Ok(ForcedRelease::Pending),
            Some("handed") => {
                // The change was applied by `run` (to the room if this node follows it).
                let head = reply.head.ok_or_else(|| bad("no room state"))?;
                let to = head
                    .holder
                    .ok_or_else(|| bad("empty room after a release"))?;
                Ok(ForcedRelease::HandedOver {
                    version: head.version,
                    to,
                })
            }
            other => Err(bad(format_args!("release outcome {other:?}"))),
        }
    }

    async fn takeover(&self, session: SessionId, room: &str) -> Result<Joined, Error> {
        let inner = &self.inner;
        RoomId::check(room, inner.config()?.limits.max_room_id_len)?;
        inner.live(session)?;
        inner
            .run_place_op(
                session,
                room,
                &inner.scripts.takeover,
                args().a(session_hex(session)).a(&inner.node).a(room),
            )
            .await
    }

    async fn watch(&self, session: SessionId, room: &str) -> Result<PresenceBody, Error> {
        let inner = &self.inner;
        RoomId::check(room, inner.config()?.limits.max_room_id_len)?;
        inner.live(session)?;
        let room_id = RoomId::parse(room, usize::MAX)?;
        let max = inner.config()?.limits.max_rooms_per_session;
        inner.pending(&room_id, 1);
        let r = inner
            .run_session_op(
                session,
                &inner.scripts.watch,
                args()
                    .a(session_hex(session))
                    .a(&inner.node)
                    .a(room)
                    .a(max.to_string()),
            )
            .await
            .map(|mut reply| reply.state.take());
        let mut local = inner.lock();
        let result = match r {
            Ok(d) => {
                let body = match d {
                    Some(d) => {
                        let body = PresenceBody::of(&d.state, inner.presence_occupants());
                        let t = local.track(&room_id);
                        if t.raw.is_none() && d.state.version >= t.state.version {
                            inner.adopt_locked(&mut local, &room_id, &d);
                        } else {
                            inner.apply_locked(&mut local, room, d);
                        }
                        body
                    }
                    // The script changed the room by a publish (it dropped expired
                    // placeholders), which `run` applied: the room is followed (the call is in
                    // flight), so its last state seen is that one.
                    None => {
                        PresenceBody::of(&local.track(&room_id).state, inner.presence_occupants())
                    }
                };
                let t = local.track(&room_id);
                if !t.watchers.contains(&session) {
                    t.watchers.push(session);
                }
                if let Some(s) = local.sessions.get_mut(&session)
                    && !s.watching.contains(&room_id)
                {
                    s.watching.push(room_id.clone());
                }
                Ok(body)
            }
            Err(e) => Err(e),
        };
        let reread = local.call_done(&room_id);
        drop(local);
        if reread {
            inner.reread(room.to_owned());
        }
        result
    }

    async fn unwatch(&self, session: SessionId, room: &str) -> Result<bool, Error> {
        let inner = &self.inner;
        RoomId::check(room, inner.config()?.limits.max_room_id_len)?;
        inner.live(session)?;
        let reply = inner
            .run_session_op(
                session,
                &inner.scripts.unwatch,
                args().a(session_hex(session)).a(&inner.node).a(room),
            )
            .await?;
        let mut local = inner.lock();
        if let Some(s) = local.sessions.get_mut(&session)
            && let Some(i) = s.watching.iter().position(|r| r.as_str() == room)
        {
            s.watching.swap_remove(i);
        }
        if let Some(t) = local.rooms.get_mut(room) {
            t.watchers.retain(|&m| m != session);
        }
        local.untrack_if_idle(room);
        Ok(reply.wm == Some(1))
    }

    async fn room(&self, room: &str) -> Result<Option<RoomState>, Error> {
        let raw = self.inner.get_room_raw(room).await?;
        raw.map(|r| self.inner.decode(&r).map(|d| d.state))
            .transpose()
    }

    async fn summary(&self, room: &str) -> Result<Option<RoomSummary>, Error> {
        let Some(raw) = self.inner.get_room_raw(room).await? else {
            return Ok(None);
        };
        let state = self.inner.decode(&raw)?.state;
        Ok(Some(RoomSummary {
            room: RoomId::parse(room, usize::MAX)?,
            version: state.version,
            holder: state.holder().map(|o| o.person()),
            held_since: state.holder().and(state.held_since),
            waiting: state.waiting() as u32,
            watchers: crate::wire::watcher_count(&raw)?,
        }))
    }

    /// Lists rooms with `SCAN` over the room keys (Redis walks every key of the prefix), then one
    /// read per listed room: O(all rooms) per page, as on the memory backends. For admin pages.
    async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomSummary>, Error> {
        let inner = &self.inner;
        let pattern = format!("{}:r:*", inner.cfg.prefix);
        let mut conn = inner.conn.clone();
        let mut ids: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            inner.round_trips.fetch_add(1, Ordering::Relaxed);
            let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
                inner.cfg.op_timeout,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn),
            )
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)?;
            ids.extend(
                keys.iter()
                    .filter_map(|k| room_of_key(k))
                    .filter(|id| after.is_none_or(|a| id.as_str() > a)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // SCAN may return a key twice.
        ids.sort_unstable();
        ids.dedup();
        let mut page = Vec::with_capacity(limit.min(ids.len()));
        for id in ids {
            if page.len() == limit {
                break;
            }
            // A room emptied since the scan is skipped.
            if let Some(summary) = self.summary(&id).await? {
                page.push(summary);
            }
        }
        Ok(page)
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner.round_trips.fetch_add(1, Ordering::Relaxed);
        let m: HashMap<String, i64> = tokio::time::timeout(
            inner.cfg.op_timeout,
            redis::cmd("HGETALL")
                .arg(format!("{}:stats", inner.cfg.prefix))
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable("timed out"))?
        .map_err(unavailable)?;
        let get = |k: &str| m.get(k).copied().unwrap_or(0).max(0) as usize;
        Ok(Stats {
            rooms: get("rooms"),
            sessions: get("sessions"),
            sessions_in_grace: get("grace"),
            occupants: get("occupants"),
            watchers: get("watchers"),
            ..Stats::default()
        })
    }

    async fn poll_timeout(&self) -> Option<Instant> {
        self.inner.lock().timers.first().map(|&(t, _)| t)
    }

    async fn handle_timeout(&self, now: Instant) -> Result<usize, Error> {
        let inner = &self.inner;
        let due: Vec<SessionId> = inner
            .lock()
            .timers
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|&(_, id)| id)
            .collect();
        let mut n = 0;
        for id in due {
            inner
                .run(
                    &inner.scripts.expire,
                    args().a(session_hex(id)).a(&inner.node),
                )
                .await?;
            inner.lock().forget(id);
            n += 1;
        }
        Ok(n)
    }

    async fn session_for_token(
        &self,
        token: ResumeToken,
    ) -> Result<Option<(SessionId, Option<String>)>, Error> {
        let inner = &self.inner;
        let r = inner
            .run(&inner.scripts.token, args().a(token.to_string()))
            .await?;
        match r.i {
            Some(i) => Ok(Some((parse_session(&i)?, r.pr))),
            None => Ok(None),
        }
    }

    async fn check_invariants(&self) -> Result<(), String> {
        let inner = &self.inner;
        let r = inner
            .run(&inner.scripts.check, args())
            .await
            .map_err(|e| e.to_string())?;
        if !r.x.is_empty() {
            return Err(r.x.join("; "));
        }
        let local = inner.lock();
        for (id, s) in &local.sessions {
            for r in s.joined.iter().chain(&s.watching) {
                if !local.rooms.contains_key(r.as_str()) {
                    return Err(format!(
                        "local session {id:?} in {r:?}, which is not followed"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_connecting() {
        let tls = open_client("rediss://127.0.0.1:6380");
        if cfg!(feature = "tls") {
            assert!(tls.is_ok());
        } else {
            let Err(Error::Config(m)) = tls else {
                panic!("rediss:// without the tls feature must be refused")
            };
            assert!(m.contains("`tls` feature"), "{m}");
        }
        let Err(Error::Config(m)) = open_client("http://127.0.0.1") else {
            panic!("a URL that is not Redis must be refused")
        };
        assert!(m.contains("redis://host:port"), "{m}");
    }
}
