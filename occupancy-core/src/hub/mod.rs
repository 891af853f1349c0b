//! The async runtime: [`Hub`] owns a [`Backend`], hands out [`Session`]s that each carry a bounded
//! stream of [`Notices`], runs the grace timers and calls the authorization hook. It moves data;
//! every decision is the state machine's.
//!
//! This file builds the Hub and runs connect and resume; the rest is split by what it guards:
//! [`authorize`] (the application's policy), [`registry`] (the connections, and the sink the
//! backend delivers through), [`lifecycle`] (disconnect, close, kicks, grace timers) and
//! [`session`] (the handles the application holds); [`metrics`] is what it records.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{Instrument, debug, info, warn};

use crate::backend::Backend;
use crate::config::{Config, Limits};
use crate::error::Error;
use crate::ids::{Meta, Person, ResumeToken, SessionId};
use crate::machine::{ForcedRelease, Resumed, Stats};
use crate::memory::MemoryBackend;
use crate::queue;
use crate::sharded::ShardedBackend;
use crate::state::{RoomState, RoomSummary};

mod authorize;
mod changes;
mod lifecycle;
mod metrics;
mod registry;
mod session;

pub use authorize::{Action, AuthFuture, AuthQuery, AuthRequest, Authorize, AuthorizeAsync};
pub use changes::{RoomChange, RoomChanges};
pub use session::{Notices, Session};

use lifecycle::timer_task;
use registry::{Conn, Registry, Slot};

/// Default size of each session's notice buffer.
pub const DEFAULT_NOTICE_BUFFER: usize = 256;

/// The runtime's clock: tokio's, so that tests with paused time move it (the backends stamp
/// their machines with it too).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

// ----- the hub --------------------------------------------------------------------------------

struct HubInner {
    config: Config,
    backend: Arc<dyn Backend>,
    registry: Arc<Registry>,
    authorize: Option<authorize::Hook>,
    /// How long an async hook may take.
    hook_timeout: Duration,
    /// Orders the lifecycle changes of each session (disconnect, close, resume, expiry, kicks):
    /// see [`lifecycle::Stripes`].
    lifecycle: lifecycle::Stripes,
    /// Held by whoever flushes the queued disconnects, so that a caller whose disconnect another
    /// caller took returns once that caller is done.
    flushing: tokio::sync::Mutex<()>,
    /// Connections that ended and wait for the next batch of disconnects (see
    /// `HubInner::disconnect`).
    disconnecting: std::sync::Mutex<Vec<(SessionId, Arc<registry::Conn>, crate::config::Ending)>>,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        // Let the timer task see that the Hub is gone and end.
        self.registry.wake.notify_one();
    }
}

/// The runtime: owns a [`Backend`], hands out [`Session`]s that each carry a bounded stream of
/// [`Notices`], runs the grace timers and calls the authorization hook. It moves data; every
/// decision is the state machine's. Cheap to clone (an `Arc` inside).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), occupancy_core::Error> {
/// use occupancy_core::{Hub, Meta, NoticeKind};
///
/// let hub = Hub::new();
/// let (alice, _alice_notices) = hub.connect(Some("alice".into()), Meta::empty()).await?;
/// let (bob, mut bob_notices) = hub.connect(Some("bob".into()), Meta::empty()).await?;
/// assert!(alice.join("doc-1", None).await?.holding);
/// assert_eq!(bob.join("doc-1", None).await?.position, 1);
/// alice.leave("doc-1").await?;
/// let mut released = false;
/// while let Some(n) = bob_notices.try_recv() {
///     released |= matches!(n.kind, NoticeKind::Released { .. });
/// }
/// assert!(released);
/// # Ok(()) }
/// ```
///
/// # How it works
///
/// - Each connection has a bounded notice queue that keeps only the latest presence per room.
///   Backends deliver notices through the Hub's [`NoticeSink`] one delivery at a time per room
///   (the memory backend after releasing its state lock, urgent notices first), with `try_send`,
///   so each session receives each room's notices in version order however many tasks call at
///   once, and a full queue never blocks anyone: the session is marked a slow consumer, its queue
///   is dropped, and it is closed (its rooms left, the next in line released) right after, with
///   [`Error::SlowConsumer`] as its [`Notices::close_reason`].
/// - Dropping the last clone of a [`Session`] queues a disconnect (its grace starts); a timer task
///   (which holds only a weak reference to the Hub and ends with it) runs queued work and the
///   backend's timers, woken early when a disconnect sets an earlier deadline.
/// - Lifecycle changes of a session (disconnect, close, resume, expiry, slow-consumer kicks) are
///   ordered by an async lock of its own (one of 64 striped by session id), so a resume never
///   races the disconnect of the connection it replaces, while the lifecycles of other sessions
///   proceed in parallel. Joins, leaves and the rest do not take it.
///
/// [`NoticeSink`]: crate::NoticeSink
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    /// Same as [`Hub::new`].
    fn default() -> Self {
        Hub::new()
    }
}

/// Builds a [`Hub`]: see [`Hub::builder`].
pub struct HubBuilder {
    config: Config,
    notice_buffer: usize,
    authorize: Option<authorize::Hook>,
    hook_timeout: Duration,
    backend: Option<Arc<dyn Backend>>,
    shards: Option<usize>,
}

impl Default for HubBuilder {
    fn default() -> Self {
        HubBuilder {
            config: Config::default(),
            notice_buffer: DEFAULT_NOTICE_BUFFER,
            authorize: None,
            hook_timeout: authorize::DEFAULT_HOOK_TIMEOUT,
            backend: None,
            shards: None,
        }
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("config", &self.config)
            .field("notice_buffer", &self.notice_buffer)
            .field("authorize", &self.authorize.is_some())
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// How long a disconnected session keeps its places (default 5 s; zero: none).
    ///
    /// A resume is accepted until the grace ends. The session is then removed from its rooms at
    /// most 1/64 of the grace later (at most 100 ms; 78 ms of the default), so that graces ending
    /// close together — a storm of dropped connections — end in one batch, and each remaining
    /// occupant is told its new place once rather than once per expiry.
    pub fn grace(mut self, d: Duration) -> Self {
        self.config.grace = d;
        self
    }

    /// Idle expiry ([`Config::idle_timeout`]): a holder none of whose sessions joined, updated
    /// or said `active` in the room for `d` gives way to the next in line once someone waits
    /// (`displaced` with reason `"idle"`). Off unless set.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = Some(d);
        self
    }

    /// How long a session keeps its places after its client closed the connection on purpose
    /// (default 2 s; capped by [`HubBuilder::grace`]): a closed page hands over after this,
    /// while a reload still comes back in time. See [`Ending`](crate::Ending).
    pub fn close_grace(mut self, d: Duration) -> Self {
        self.config.close_grace = d;
        self
    }

    /// The limits (rooms per session, occupants per room, room id length, metadata size).
    pub fn limits(mut self, l: Limits) -> Self {
        self.config.limits = l;
        self
    }

    /// How many occupants (from the front) a presence notice lists (default 8).
    pub fn presence_occupants(mut self, n: usize) -> Self {
        self.config.presence_occupants = n;
        self
    }

    /// Runs the state machine's invariant checks after every operation (default off; see
    /// [`Config::check_invariants`]: for tests and soak runs, never for production).
    pub fn check_invariants(mut self, on: bool) -> Self {
        self.config.check_invariants = on;
        self
    }

    /// The whole machine configuration at once.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Size of each session's notice buffer (default 256, at least 1). A session whose buffer
    /// overflows is closed as a slow consumer. A presence still queued is replaced by the same
    /// room's next presence (it is only out of date), so a busy room cannot overflow a reader
    /// that is merely behind; `occupied`, `released` and `displaced` are never merged.
    pub fn notice_buffer(mut self, n: usize) -> Self {
        self.notice_buffer = n;
        self
    }

    /// The authorization hook, asked before every join, take over and watch.
    pub fn authorize(mut self, a: impl Authorize) -> Self {
        self.authorize = Some(authorize::Hook::Sync(Arc::new(a)));
        self
    }

    /// The authorization hook, for a policy that has to wait (see [`AuthorizeAsync`]); replaces
    /// [`HubBuilder::authorize`]. An answer later than [`HubBuilder::hook_timeout`] is not waited
    /// for: the request fails with [`Error::Unavailable`] and changes nothing.
    pub fn authorize_async(mut self, a: impl AuthorizeAsync) -> Self {
        self.authorize = Some(authorize::Hook::Async(Arc::new(a)));
        self
    }

    /// How long an [`AuthorizeAsync`] hook may take before the request fails with
    /// [`Error::Unavailable`] (default 2 s, at most 60 s, not zero).
    pub fn hook_timeout(mut self, d: Duration) -> Self {
        self.hook_timeout = d;
        self
    }

    /// How many shards the built-in in-memory backend spreads rooms over, so that independent
    /// rooms are changed in parallel (1 ..= [`MAX_SHARDS`](crate::MAX_SHARDS); default 1: one
    /// [`MemoryBackend`]). With more than one, a [`ShardedBackend`]: the same rules, a lock per
    /// shard. A good value is the runtime's worker count when many rooms are busy at once.
    /// Measured on 2 cores (`cargo bench --bench hub`, four runs): two tasks in distinct rooms
    /// got 16–52% more throughput with 2 shards than with one, one room contended by two tasks
    /// 6–31% less, and each session costs about 0.33 KiB more (the shards' session table: 4.27
    /// KiB per idle connection instead of 3.94); hence one shard by default. Not for a Hub given
    /// its own backend ([`HubBuilder::backend`]): [`HubBuilder::build`] then refuses.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Where the state lives (default: the built-in in-memory backend, see
    /// [`HubBuilder::shards`]).
    pub fn backend(mut self, b: impl Backend) -> Self {
        self.backend = Some(Arc::new(b));
        self
    }

    /// Same as [`HubBuilder::backend`] for a backend already behind an `Arc`.
    pub fn backend_arc(mut self, b: Arc<dyn Backend>) -> Self {
        self.backend = Some(b);
        self
    }

    /// Builds the Hub and spawns its timer task. Must be called inside a tokio runtime.
    /// [`Error::Config`] on bad values, outside a runtime, or when the backend refuses.
    pub fn build(self) -> Result<Hub, Error> {
        self.config.validate()?;
        if self.notice_buffer == 0 {
            return Err(Error::Config("notice_buffer must be at least 1".into()));
        }
        if self.hook_timeout.is_zero() || self.hook_timeout > Duration::from_secs(60) {
            return Err(Error::Config(format!(
                "hook_timeout is {:?}; it must be more than zero and at most 60 s",
                self.hook_timeout
            )));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("a Hub must be built inside a tokio runtime".into()))?;
        let backend: Arc<dyn Backend> = match (self.backend, self.shards) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "HubBuilder::shards is for the built-in memory backend; a backend given with \
                     HubBuilder::backend has its own layout (leave shards out, or build a \
                     ShardedBackend yourself)"
                        .into(),
                ));
            }
            (Some(b), None) => b,
            (None, shards) => match shards.unwrap_or(1) {
                1 => Arc::new(MemoryBackend::new()),
                n => Arc::new(ShardedBackend::new(n)?),
            },
        };
        let wake = Arc::new(Notify::new());
        let registry = Arc::new(Registry::new(self.notice_buffer, wake.clone()));
        backend.attach(&self.config, registry.clone())?;
        let inner = Arc::new(HubInner {
            config: self.config,
            backend,
            registry,
            authorize: self.authorize,
            hook_timeout: self.hook_timeout,
            lifecycle: lifecycle::Stripes::default(),
            flushing: tokio::sync::Mutex::new(()),
            disconnecting: std::sync::Mutex::new(Vec::new()),
        });
        runtime.spawn(
            timer_task(Arc::downgrade(&inner), wake)
                .instrument(tracing::debug_span!("occupancy_hub_timers")),
        );
        Ok(Hub { inner })
    }
}

impl Hub {
    /// A builder with the defaults: 5 s grace, 2 s close grace, default limits, buffers of 256,
    /// no authorization hook, the built-in in-memory backend with one shard
    /// ([`HubBuilder::shards`]).
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// A Hub with the defaults. Must be called inside a tokio runtime (it spawns the timer task);
    /// panics otherwise.
    pub fn new() -> Hub {
        Hub::builder()
            .build()
            .expect("Hub::new must be called inside a tokio runtime")
    }

    /// The configuration (limits, grace, presence_occupants).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The backend (for diagnostics and tests; calling its operations directly bypasses the Hub's
    /// connections and authorization).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The size of each session's notice buffer.
    pub fn notice_buffer(&self) -> usize {
        self.inner.registry.capacity
    }

    /// A new session for one connection. `principal` is the authenticated user, if any (sessions
    /// of one principal are one occupant); `meta` is its public metadata (a display name).
    pub async fn connect(
        &self,
        principal: Option<String>,
        meta: Meta,
    ) -> Result<(Session, Notices), Error> {
        let hub = &self.inner;
        let principal: Option<Arc<str>> = principal.map(Arc::from);
        // Random ids collide with negligible probability; retry a few times all the same.
        for _ in 0..4 {
            let id = SessionId(random_u64()?);
            let token = random_token()?;
            let conn = Arc::new(Conn::default());
            let (tx, rx) = queue::channel(hub.registry.capacity);
            {
                let mut st = hub.registry.lock();
                if st.slots.contains_key(&id) {
                    continue;
                }
                st.slots.insert(
                    id,
                    Slot {
                        token,
                        tx: Some(tx),
                        conn: conn.clone(),
                        grace_until: None,
                    },
                );
            }
            match hub
                .backend
                .connect(id, principal.as_deref(), meta.clone(), token)
                .await
            {
                Ok(()) => {
                    debug!(session = %id, principal = principal.as_deref(), "connected");
                    metrics::connected();
                    return Ok(self.handle(id, token, principal, conn, rx));
                }
                Err(e) => {
                    hub.registry.lock().remove(id);
                    if e != Error::SessionExists {
                        log_error("connect", id, "", &e);
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::SessionExists)
    }

    /// Takes a disconnected session back with its resume token, within its grace: same id, same
    /// places, a new token and a new notice stream (which starts with a presence notice for each
    /// of its rooms). If the old connection was still live, its [`Notices`] ends with
    /// [`Error::SessionReplaced`] and its [`Session`] handles fail with
    /// [`Error::UnknownSession`].
    pub async fn resume(&self, token: ResumeToken) -> Result<(Session, Notices, Resumed), Error> {
        self.resume_checked(token, None).await
    }

    /// [`Hub::resume`] for a connection whose identity is known: the token only resumes a session
    /// of the same `principal` (`None` = anonymous). A token presented by someone else — a leaked
    /// or stolen one — is refused with [`Error::ResumeInvalid`] and changes nothing: the session
    /// keeps its places, its connection and its token. Adapters use this one.
    pub async fn resume_as(
        &self,
        token: ResumeToken,
        principal: Option<&str>,
    ) -> Result<(Session, Notices, Resumed), Error> {
        self.resume_checked(token, Some(principal)).await
    }

    async fn resume_checked(
        &self,
        token: ResumeToken,
        expected: Option<Option<&str>>,
    ) -> Result<(Session, Notices, Resumed), Error> {
        let r = self.try_resume(token, expected).await;
        match &r {
            Ok(_) => metrics::resume(true),
            Err(Error::ResumeInvalid) => metrics::resume(false),
            Err(_) => {}
        }
        r
    }

    async fn try_resume(
        &self,
        token: ResumeToken,
        expected: Option<Option<&str>>,
    ) -> Result<(Session, Notices, Resumed), Error> {
        let hub = &self.inner;
        // The session's lifecycle lock needs its id: ask the backend whose token it is, lock, and
        // (for a session of this Hub) check its slot still has that token: a resume or close that
        // held the lock meanwhile may have spent it. A token of another node's session is
        // checked by the backend's resume itself.
        let Some((id, principal)) = hub.backend.session_for_token(token).await? else {
            return Err(Error::ResumeInvalid);
        };
        let principal: Option<Arc<str>> = principal.map(Arc::from);
        let slot_token = || hub.registry.lock().slots.get(&id).map(|s| s.token);
        let ours = slot_token().is_some();
        let _lifecycle = hub.lifecycle.of(id).lock().await;
        if ours && slot_token() != Some(token) {
            return Err(Error::ResumeInvalid);
        }
        if let Some(expected) = expected
            && principal.as_deref() != expected
        {
            debug!(session = %id, "resume refused: the token belongs to another principal");
            return Err(Error::ResumeInvalid);
        }
        let new_token = random_token()?;
        let conn = Arc::new(Conn::default());
        let (tx, rx) = queue::channel(hub.registry.capacity);
        // Install the new channel first, so the presence notices the resume produces reach it.
        let old = {
            // A new token that collides with another session's is refused by the backend's
            // resume (`SessionExists`), which puts the old slot back below.
            let mut st = hub.registry.lock();
            let old = st.slots.remove(&id);
            st.slots.insert(
                id,
                Slot {
                    token: new_token,
                    tx: Some(tx),
                    conn: conn.clone(),
                    grace_until: None,
                },
            );
            old
        };
        match hub.backend.resume(token, new_token, now()).await {
            Ok(resumed) => {
                debug_assert_eq!(resumed.session, id);
                if let Some(old) = old {
                    if let Some(d) = old.grace_until {
                        hub.registry.lock().grace.remove(&(d, id));
                    }
                    old.conn.close(Some(Error::SessionReplaced));
                }
                debug!(session = %id, was_live = resumed.was_live, rooms = resumed.rooms.len(), "resumed");
                let session = self.handle(id, new_token, principal, conn, rx);
                Ok((session.0, session.1, resumed))
            }
            Err(e) => {
                let mut st = hub.registry.lock();
                st.slots.remove(&id);
                match (e == Error::ResumeInvalid, old) {
                    (false, Some(old)) => {
                        st.slots.insert(id, old);
                    }
                    (true, Some(old)) => {
                        if let Some(d) = old.grace_until {
                            st.grace.remove(&(d, id));
                        }
                        old.conn.close(None);
                    }
                    (_, None) => {}
                }
                drop(st);
                log_error("resume", id, "", &e);
                Err(e)
            }
        }
    }

    /// A room's current state (`None` when nobody stands in or watches it).
    pub async fn room(&self, room: &str) -> Result<Option<RoomState>, Error> {
        self.inner.backend.room(room).await
    }

    /// Who holds a room.
    pub async fn holder(&self, room: &str) -> Result<Option<Person>, Error> {
        Ok(self
            .room(room)
            .await?
            .and_then(|s| s.holder().map(|o| o.person())))
    }

    /// Everyone in a room's line, holder first.
    pub async fn occupants(&self, room: &str) -> Result<Vec<Person>, Error> {
        Ok(self
            .room(room)
            .await?
            .map(|s| s.occupants.iter().map(|o| o.person()).collect())
            .unwrap_or_default())
    }

    /// A room's version (0 when the room does not exist).
    pub async fn version(&self, room: &str) -> Result<u64, Error> {
        Ok(self.room(room).await?.map_or(0, |s| s.version))
    }

    /// Forces a release of `room` (an administrator unlocking a document): its holder is told
    /// `displaced` with reason `"server"` and the next in line is released; a holder alone keeps
    /// the room until someone joins, who is granted it at once ([`ForcedRelease::Pending`]).
    /// Not asked of the authorization hook: guard whatever calls this (the documents example
    /// serves it behind a bearer token).
    pub async fn release(&self, room: &str) -> Result<ForcedRelease, Error> {
        let r = self.inner.backend.release(room).await;
        self.inner.after_op().await;
        match &r {
            Ok(outcome) => {
                metrics::forced_release();
                info!(room, ?outcome, "forced release");
            }
            Err(e) => debug!(room, code = e.code(), "forced release refused"),
        }
        r
    }

    /// A room at a glance: version, holder, `held_since`, how many wait and watch (`None` when
    /// nobody stands in or watches it). O(1) on the memory backends.
    pub async fn summary(&self, room: &str) -> Result<Option<RoomSummary>, Error> {
        self.inner.backend.summary(room).await
    }

    /// One page of the rooms, in order of their ids: up to `limit` rooms after `after` (`None`:
    /// from the first); pass the last one's id as the next page's `after`. For an admin page, not
    /// a hot path: each page costs O(all rooms) (on Redis a `SCAN` of the room keys, then one read
    /// per listed room).
    pub async fn rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, Error> {
        self.inner.backend.rooms(after, limit).await
    }

    /// Subscribes to room changes (for audit logs, webhooks, dashboards): every room whose line
    /// changes is reported with its newest version and, when read, its state then. Bounded: a
    /// subscriber that lags behind holds one entry per changed room, the latest. Nothing is
    /// recorded while nobody subscribes. Changes made through this Hub's backend are reported (on
    /// Redis: only those of this node).
    pub fn changes(&self) -> RoomChanges {
        RoomChanges {
            feed: self.inner.registry.changes.subscribe(),
            hub: self.clone(),
        }
    }

    /// Ends a session at once (an administrator removing someone): it leaves every room without
    /// grace (the next in line is released), its connection is closed with [`Error::Kicked`]
    /// (close code 4002 on a WebSocket; `occupancy:error` with code `kicked` on Socket.IO) and its
    /// resume token stops working. Returns false when there was no such session.
    pub async fn kick(&self, session: SessionId) -> Result<bool, Error> {
        let conn = self
            .inner
            .registry
            .lock()
            .slots
            .get(&session)
            .map(|s| s.conn.clone());
        let kicked = match conn {
            Some(conn) => {
                conn.close(Some(Error::Kicked));
                self.inner
                    .kick(session, &conn, "kicked by the application")
                    .await
            }
            None => match self.inner.backend.close(session).await {
                Ok(()) => true,
                Err(Error::UnknownSession) => false,
                Err(e) => return Err(e),
            },
        };
        if kicked {
            metrics::kicked();
            info!(%session, "kicked");
        }
        Ok(kicked)
    }

    /// Counts for metrics (of the backend: with a shared backend, of every node).
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.inner.backend.stats().await
    }

    /// Sets the gauges of [`metrics`](crate#metrics) (rooms, occupants, watchers, sessions,
    /// sessions in grace, this Hub's live connections) from the backend's [`Hub::stats`]: call it
    /// before rendering a scrape (the examples' `GET /metrics` does). Counters and latencies are
    /// recorded as things happen; gauges only when asked, so an idle Hub does no work for them.
    pub async fn record_gauges(&self) -> Result<(), Error> {
        let stats = self.stats().await?;
        metrics::gauges(&stats, self.live_connections());
        Ok(())
    }

    /// How many connections of this Hub are live (not in grace).
    pub fn live_connections(&self) -> usize {
        self.inner
            .registry
            .lock()
            .slots
            .values()
            .filter(|s| s.tx.is_some())
            .count()
    }

    fn handle(
        &self,
        id: SessionId,
        token: ResumeToken,
        principal: Option<Arc<str>>,
        conn: Arc<Conn>,
        rx: queue::Receiver,
    ) -> (Session, Notices) {
        Session::open(self.inner.clone(), id, token, principal, conn, rx)
    }
}

fn log_error(op: &'static str, session: SessionId, room: &str, e: &Error) {
    match e {
        Error::Unavailable { .. } => warn!(%session, room, error = %e, op, "backend unavailable"),
        _ => debug!(%session, room, code = e.code(), op, "refused"),
    }
}

fn random_u64() -> Result<u64, Error> {
    getrandom::u64().map_err(|e| Error::Unavailable {
        reason: format!("no randomness: {e}"),
    })
}

fn random_token() -> Result<ResumeToken, Error> {
    Ok(ResumeToken(
        (u128::from(random_u64()?) << 64) | u128::from(random_u64()?),
    ))
}
