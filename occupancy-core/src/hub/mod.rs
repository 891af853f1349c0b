//! The async runtime: [`Hub`] owns a [`Backend`], hands out [`Session`]s that each carry a bounded
//! stream of [`Notices`], runs the grace timers and calls the authorization hook. It moves data;
//! every decision is the state machine's.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{Instrument, debug, warn};

use crate::backend::{Backend, NoticeSink};
use crate::config::{Config, Limits};
use crate::error::Error;
use crate::ids::{Meta, Person, ResumeToken, RoomId, SessionId};
use crate::machine::IdHash;
use crate::machine::{Joined, Left, Resumed, Stats};
use crate::memory::MemoryBackend;
use crate::notice::{Notice, NoticeKind, PresenceBody};
use crate::protocol::{Event, OpKind, Request};
use crate::queue;
use crate::state::RoomState;

/// Default size of each session's notice buffer.
pub const DEFAULT_NOTICE_BUFFER: usize = 256;

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

// ----- authorization --------------------------------------------------------------------------

/// What a session asks to do in a room, for the [`Authorize`] hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Stand in the room's line.
    Join,
    /// Take the room over from its holder.
    Takeover,
    /// Watch the room without standing in line.
    Watch,
}

/// The question put to the [`Authorize`] hook.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The session's authenticated principal, if any.
    pub principal: Option<&'a str>,
    /// The room (already validated as a room id).
    pub room: &'a str,
    /// What the session asks to do.
    pub action: Action,
}

/// The application's policy: may this principal join, take over or watch this room? Return the
/// reason on refusal; the caller gets [`Error::Forbidden`] and nothing changes.
///
/// Implemented for closures:
/// ```
/// # use occupancy_core::{Action, AuthRequest, Hub};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = Hub::builder()
///     .authorize(|req: &AuthRequest<'_>| match req.action {
///         Action::Takeover if req.principal != Some("admin") => Err("only admins take over".into()),
///         _ => Ok(()),
///     })
///     .build()
///     .unwrap();
/// # }
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// `Ok(())` to allow, `Err(reason)` to refuse.
    fn authorize(&self, req: &AuthRequest<'_>) -> Result<(), String>;
}

impl<F> Authorize for F
where
    F: Fn(&AuthRequest<'_>) -> Result<(), String> + Send + Sync + 'static,
{
    fn authorize(&self, req: &AuthRequest<'_>) -> Result<(), String> {
        self(req)
    }
}

// ----- connections and the registry -----------------------------------------------------------

/// One connection of a session (a resume makes a new one). Shared by the session handle, its
/// notice receiver and the registry.
#[derive(Default)]
struct Conn {
    closed: AtomicBool,
    reason: Mutex<Option<Error>>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the connection; true if it was open (only then is the reason recorded).
    fn close(&self, reason: Option<Error>) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        *r = reason;
        self.closed.store(true, Ordering::Release);
        true
    }

    fn reason(&self) -> Option<Error> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Work for the timer task (or the next Hub call) that cannot be done where it is noticed.
enum Cmd {
    /// The last handle of a live connection was dropped: start its grace.
    Disconnect { id: SessionId, conn: Arc<Conn> },
    /// The connection overflowed its notice buffer: close the session.
    Kick { id: SessionId, conn: Arc<Conn> },
}

struct Slot {
    token: ResumeToken,
    principal: Option<Arc<str>>,
    /// `None` while in grace (notices are dropped) or after the connection overflowed.
    tx: Option<queue::Sender>,
    conn: Arc<Conn>,
    grace_until: Option<Instant>,
}

#[derive(Default)]
struct RegState {
    // Ids and tokens are the Hub's own random numbers: the fast hasher is safe for them, and a
    // hand-over in a busy room looks up every waiting session here.
    slots: HashMap<SessionId, Slot, IdHash>,
    tokens: HashMap<ResumeToken, SessionId, IdHash>,
    /// Grace deadlines of this Hub's sessions, so their slots are forgotten when grace ends.
    grace: BTreeSet<(Instant, SessionId)>,
}

impl RegState {
    fn remove(&mut self, id: SessionId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        self.tokens.remove(&slot.token);
        if let Some(d) = slot.grace_until {
            self.grace.remove(&(d, id));
        }
        Some(slot)
    }
}

/// The Hub's table of connections; also the [`NoticeSink`] handed to the backend.
struct Registry {
    state: Mutex<RegState>,
    cmds: Mutex<Vec<Cmd>>,
    /// Set while a kick is queued (checked after every call, without a lock).
    pending_kicks: AtomicBool,
    wake: Arc<Notify>,
    capacity: usize,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, RegState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_cmds(&self, cmds: impl IntoIterator<Item = Cmd>) {
        let mut q = self.cmds.lock().unwrap_or_else(|p| p.into_inner());
        for cmd in cmds {
            if matches!(cmd, Cmd::Kick { .. }) {
                self.pending_kicks.store(true, Ordering::Release);
            }
            q.push(cmd);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Takes the queued work: everything, or only the kicks (leaving disconnects of dropped
    /// handles to the timer task, so that no caller waits for another session's disconnect).
    fn take_cmds(&self, kicks_only: bool) -> Vec<Cmd> {
        let mut q = self.cmds.lock().unwrap_or_else(|p| p.into_inner());
        self.pending_kicks.store(false, Ordering::Release);
        if kicks_only {
            let (kicks, rest) = std::mem::take(&mut *q)
                .into_iter()
                .partition(|c| matches!(c, Cmd::Kick { .. }));
            *q = rest;
            kicks
        } else {
            std::mem::take(&mut *q)
        }
    }

    /// Removes the slot of `id` if it still belongs to `conn`.
    fn remove_if_conn(&self, id: SessionId, conn: &Arc<Conn>) -> bool {
        let mut st = self.lock();
        if st
            .slots
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(&s.conn, conn))
        {
            st.remove(id);
            true
        } else {
            false
        }
    }
}

impl NoticeSink for Registry {
    fn deliver(&self, notices: &mut dyn Iterator<Item = Notice>) {
        let mut kicked = Vec::new();
        {
            let mut st = self.lock();
            for n in notices {
                let Some(slot) = st.slots.get_mut(&n.session) else {
                    continue;
                };
                let Some(tx) = &slot.tx else { continue };
                if let NoticeKind::Released { version } = n.kind {
                    debug!(session = %n.session, room = %n.room, version, "released");
                }
                let session = n.session;
                match tx.try_send(n) {
                    Ok(()) => {}
                    Err(queue::TrySendError::Full) => {
                        slot.tx = None;
                        let reason = Error::SlowConsumer {
                            capacity: self.capacity,
                        };
                        if slot.conn.close(Some(reason)) {
                            kicked.push(Cmd::Kick {
                                id: session,
                                conn: slot.conn.clone(),
                            });
                        }
                    }
                    // The application dropped the receiver but keeps the session: stop sending.
                    Err(queue::TrySendError::Closed) => slot.tx = None,
                }
            }
        }
        if !kicked.is_empty() {
            self.push_cmds(kicked);
        }
    }

    fn is_local(&self, session: SessionId) -> bool {
        self.lock()
            .slots
            .get(&session)
            .is_some_and(|s| s.tx.is_some())
    }

    fn session_ended(&self, session: SessionId, reason: Option<Error>) {
        let slot = self.lock().remove(session);
        if let Some(slot) = slot {
            debug!(%session, ?reason, "session ended by the backend");
            slot.conn.close(reason);
        }
    }
}

// ----- the hub --------------------------------------------------------------------------------

struct HubInner {
    config: Config,
    backend: Arc<dyn Backend>,
    registry: Arc<Registry>,
    authorize: Option<Arc<dyn Authorize>>,
    /// Serializes connection lifecycle changes (disconnect, close, resume, expiry, kicks).
    lifecycle: tokio::sync::Mutex<()>,
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
/// - Each connection has a bounded tokio channel. Backends deliver notices through the Hub's
///   [`NoticeSink`] while holding their own lock, with `try_send`, so each session receives each
///   room's notices in version order however many tasks call at once, and a full channel never
///   blocks anyone: the session is marked a slow consumer, its channel is dropped, and it is closed
///   (its rooms left, the next in line released) right after, with
///   [`Error::SlowConsumer`] as its [`Notices::close_reason`].
/// - Dropping the last clone of a [`Session`] queues a disconnect (its grace starts); a timer task
///   (which holds only a weak reference to the Hub and ends with it) runs queued work and the
///   backend's timers, woken early when a disconnect sets an earlier deadline.
/// - Lifecycle changes of connections (disconnect, close, resume, expiry, slow-consumer kicks) are
///   serialized by one async lock, so a resume never races the disconnect of the connection it
///   replaces. Joins, leaves and the rest do not take it.
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
    authorize: Option<Arc<dyn Authorize>>,
    backend: Option<Arc<dyn Backend>>,
}

impl Default for HubBuilder {
    fn default() -> Self {
        HubBuilder {
            config: Config::default(),
            notice_buffer: DEFAULT_NOTICE_BUFFER,
            authorize: None,
            backend: None,
        }
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("config", &self.config)
            .field("notice_buffer", &self.notice_buffer)
            .field("authorize", &self.authorize.is_some())
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// How long a disconnected session keeps its places (default 5 s; zero: none).
    pub fn grace(mut self, d: Duration) -> Self {
        self.config.grace = d;
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
        self.authorize = Some(Arc::new(a));
        self
    }

    /// Where the state lives (default: a new [`MemoryBackend`]).
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
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("a Hub must be built inside a tokio runtime".into()))?;
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::new(MemoryBackend::new()));
        let wake = Arc::new(Notify::new());
        let registry = Arc::new(Registry {
            state: Mutex::new(RegState::default()),
            cmds: Mutex::new(Vec::new()),
            pending_kicks: AtomicBool::new(false),
            wake: wake.clone(),
            capacity: self.notice_buffer,
        });
        backend.attach(&self.config, registry.clone())?;
        let inner = Arc::new(HubInner {
            config: self.config,
            backend,
            registry,
            authorize: self.authorize,
            lifecycle: tokio::sync::Mutex::new(()),
        });
        runtime.spawn(
            timer_task(Arc::downgrade(&inner), wake)
                .instrument(tracing::debug_span!("occupancy_hub_timers")),
        );
        Ok(Hub { inner })
    }
}

impl Hub {
    /// A builder with the defaults: 5 s grace, default limits, buffers of 256, no authorization
    /// hook, a [`MemoryBackend`].
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
                if st.slots.contains_key(&id) || st.tokens.contains_key(&token) {
                    continue;
                }
                st.tokens.insert(token, id);
                st.slots.insert(
                    id,
                    Slot {
                        token,
                        principal: principal.clone(),
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
        let hub = &self.inner;
        let _lifecycle = hub.lifecycle.lock().await;
        let local = {
            let st = hub.registry.lock();
            st.tokens
                .get(&token)
                .map(|id| (*id, st.slots[id].principal.clone()))
        };
        let (id, principal) = match local {
            Some(found) => found,
            None => match hub.backend.session_for_token(token).await? {
                Some((id, p)) => (id, p.map(Arc::from)),
                None => return Err(Error::ResumeInvalid),
            },
        };
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
            let mut st = hub.registry.lock();
            if st.tokens.contains_key(&new_token) {
                return Err(Error::SessionExists);
            }
            let old = st.slots.remove(&id);
            st.tokens.insert(new_token, id);
            st.slots.insert(
                id,
                Slot {
                    token: new_token,
                    principal: principal.clone(),
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
                    let mut st = hub.registry.lock();
                    st.tokens.remove(&old.token);
                    if let Some(d) = old.grace_until {
                        st.grace.remove(&(d, id));
                    }
                    drop(st);
                    old.conn.close(Some(Error::SessionReplaced));
                }
                debug!(session = %id, was_live = resumed.was_live, rooms = resumed.rooms.len(), "resumed");
                let session = self.handle(id, new_token, principal, conn, rx);
                Ok((session.0, session.1, resumed))
            }
            Err(e) => {
                let mut st = hub.registry.lock();
                st.slots.remove(&id);
                st.tokens.remove(&new_token);
                match (e == Error::ResumeInvalid, old) {
                    (false, Some(old)) => {
                        st.slots.insert(id, old);
                    }
                    (true, Some(old)) => {
                        st.tokens.remove(&old.token);
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

    /// Counts for metrics (of the backend: with a shared backend, of every node).
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.inner.backend.stats().await
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
        let session = Session {
            inner: Arc::new(SessionInner {
                hub: self.inner.clone(),
                id,
                token,
                principal,
                conn: conn.clone(),
            }),
        };
        (session, Notices { rx, conn })
    }
}

impl HubInner {
    fn authorize(&self, principal: Option<&str>, room: &str, action: Action) -> Result<(), Error> {
        if let Some(hook) = &self.authorize {
            RoomId::check(room, self.config.limits.max_room_id_len)?;
            hook.authorize(&AuthRequest {
                principal,
                room,
                action,
            })
            .map_err(|reason| Error::Forbidden { reason })?;
        }
        Ok(())
    }

    /// Closes the slow consumers this call overflowed (if any) before it returns, so that when a
    /// call returns, the sessions it overflowed have left their rooms.
    async fn after_op(&self) {
        if self.registry.pending_kicks.load(Ordering::Acquire) {
            self.process_cmds(true).await;
        }
    }

    async fn process_cmds(&self, kicks_only: bool) {
        loop {
            let cmds = self.registry.take_cmds(kicks_only);
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                match cmd {
                    Cmd::Disconnect { id, conn } => self.disconnect(id, &conn).await,
                    Cmd::Kick { id, conn } => self.kick(id, &conn).await,
                }
            }
        }
    }

    async fn disconnect(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.lock().await;
        if !conn.close(None) {
            return;
        }
        let now = now();
        let deadline = (!self.config.grace.is_zero()).then(|| now + self.config.grace);
        {
            let mut st = self.registry.lock();
            if !st
                .slots
                .get(&id)
                .is_some_and(|s| Arc::ptr_eq(&s.conn, conn))
            {
                return;
            }
            match deadline {
                Some(d) => {
                    let slot = st.slots.get_mut(&id).expect("checked");
                    slot.tx = None;
                    slot.grace_until = Some(d);
                    st.grace.insert((d, id));
                }
                None => {
                    st.remove(id);
                }
            }
        }
        match self.backend.disconnect(id, now).await {
            Ok(()) => debug!(session = %id, grace = ?self.config.grace, "disconnected"),
            Err(e) => {
                self.registry.lock().remove(id);
                log_error("disconnect", id, "", &e);
            }
        }
        // The grace deadline may be earlier than what the timer task sleeps for.
        self.registry.wake.notify_one();
    }

    async fn close(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.lock().await;
        if !conn.close(None) {
            return;
        }
        if !self.registry.remove_if_conn(id, conn) {
            return;
        }
        match self.backend.close(id).await {
            Ok(()) | Err(Error::UnknownSession) => debug!(session = %id, "closed"),
            Err(e) => log_error("close", id, "", &e),
        }
    }

    async fn kick(&self, id: SessionId, conn: &Arc<Conn>) {
        let _lifecycle = self.lifecycle.lock().await;
        // A resume may have replaced the connection meanwhile: then the session stays.
        if !self.registry.remove_if_conn(id, conn) {
            return;
        }
        warn!(session = %id, capacity = self.registry.capacity, "closing a slow consumer: its notice buffer overflowed");
        match self.backend.close(id).await {
            Ok(()) | Err(Error::UnknownSession) => {}
            Err(e) => log_error("close", id, "", &e),
        }
    }

    /// Expires due graces; returns when the timer task should look again.
    async fn run_timers(&self) -> Option<Instant> {
        let next = |backend: Option<Instant>, reg: &Registry| {
            let local = reg.lock().grace.first().map(|&(d, _)| d);
            match (backend, local) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let now = now();
        let due = next(self.backend.poll_timeout().await, &self.registry);
        if due.is_none_or(|t| t > now) {
            return due;
        }
        {
            let _lifecycle = self.lifecycle.lock().await;
            match self.backend.handle_timeout(now).await {
                Ok(0) => {}
                Ok(n) => debug!(expired = n, "grace ended"),
                Err(e) => {
                    warn!(error = %e, "backend timers failed; retrying");
                    return Some(now + Duration::from_millis(100));
                }
            }
            let mut st = self.registry.lock();
            while let Some(&(d, id)) = st.grace.first() {
                if d > now {
                    break;
                }
                st.remove(id);
            }
        }
        let due = next(self.backend.poll_timeout().await, &self.registry);
        // Never spin on a backend that keeps reporting a past deadline.
        due.map(|t| t.max(now + Duration::from_millis(1)))
    }
}

async fn timer_task(hub: Weak<HubInner>, wake: Arc<Notify>) {
    loop {
        let due = {
            let Some(hub) = hub.upgrade() else { return };
            hub.process_cmds(false).await;
            hub.run_timers().await
        };
        match due {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(t)) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
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

// ----- sessions -------------------------------------------------------------------------------

struct SessionInner {
    hub: Arc<HubInner>,
    id: SessionId,
    token: ResumeToken,
    principal: Option<Arc<str>>,
    conn: Arc<Conn>,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        if !self.conn.is_closed() {
            self.hub.registry.push_cmds([Cmd::Disconnect {
                id: self.id,
                conn: self.conn.clone(),
            }]);
        }
    }
}

/// One connection's handle on the Hub. Cheap to clone (an `Arc` inside); when the last clone is
/// dropped the session is disconnected (its grace starts), as with [`Session::disconnect`].
///
/// Calls may be made from many tasks at once; each returns the session's place after it ran.
/// After a disconnect, a close, a slow-consumer kick or a resume by another connection, every
/// call fails with [`Error::UnknownSession`].
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("principal", &self.inner.principal)
            .field("closed", &self.inner.conn.is_closed())
            .finish()
    }
}

impl Session {
    /// The session id (the same after a resume).
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The token to resume this session after its connection drops (single use: a resume hands
    /// out a new one).
    pub fn resume_token(&self) -> ResumeToken {
        self.inner.token
    }

    /// The authenticated principal given at connect.
    pub fn principal(&self) -> Option<&str> {
        self.inner.principal.as_deref()
    }

    /// True until this connection is disconnected, closed, kicked or replaced.
    pub fn is_live(&self) -> bool {
        !self.inner.conn.is_closed()
    }

    fn hub(&self) -> Result<&HubInner, Error> {
        if self.inner.conn.is_closed() {
            Err(Error::UnknownSession)
        } else {
            Ok(&self.inner.hub)
        }
    }

    async fn finish<T>(
        &self,
        hub: &HubInner,
        op: &'static str,
        room: &str,
        r: Result<T, Error>,
    ) -> Result<T, Error> {
        hub.after_op().await;
        if let Err(e) = &r {
            log_error(op, self.inner.id, room, e);
        }
        r
    }

    /// Stands in `room`'s line (idempotent). `meta` overrides the session's metadata for this
    /// room. Asks the authorization hook first.
    pub async fn join(&self, room: &str, meta: Option<Meta>) -> Result<Joined, Error> {
        let hub = self.hub()?;
        let r = match hub.authorize(self.principal(), room, Action::Join) {
            Ok(()) => hub.backend.join(self.inner.id, room, meta).await,
            Err(e) => Err(e),
        };
        if let Ok(j) = &r {
            debug!(session = %self.inner.id, room, position = j.position, version = j.version, "joined");
        }
        self.finish(hub, "join", room, r).await
    }

    /// Leaves `room`'s line (idempotent). When the holder leaves, the next in line is released.
    pub async fn leave(&self, room: &str) -> Result<Left, Error> {
        let hub = self.hub()?;
        let r = hub.backend.leave(self.inner.id, room).await;
        if let Ok(l) = &r {
            debug!(session = %self.inner.id, room, was_member = l.was_member, "left");
        }
        self.finish(hub, "leave", room, r).await
    }

    /// Takes `room` over from its holder (who is told it was displaced). Requires standing in the
    /// line, and the authorization hook's consent.
    pub async fn takeover(&self, room: &str) -> Result<Joined, Error> {
        let hub = self.hub()?;
        let r = match hub.authorize(self.principal(), room, Action::Takeover) {
            Ok(()) => hub.backend.takeover(self.inner.id, room).await,
            Err(e) => Err(e),
        };
        if let Ok(j) = &r {
            debug!(session = %self.inner.id, room, version = j.version, "took over");
        }
        self.finish(hub, "takeover", room, r).await
    }

    /// Watches `room` without standing in line; returns its current presence.
    pub async fn watch(&self, room: &str) -> Result<PresenceBody, Error> {
        let hub = self.hub()?;
        let r = match hub.authorize(self.principal(), room, Action::Watch) {
            Ok(()) => hub.backend.watch(self.inner.id, room).await,
            Err(e) => Err(e),
        };
        self.finish(hub, "watch", room, r).await
    }

    /// Stops watching `room`; false when it was not watching it.
    pub async fn unwatch(&self, room: &str) -> Result<bool, Error> {
        let hub = self.hub()?;
        let r = hub.backend.unwatch(self.inner.id, room).await;
        self.finish(hub, "unwatch", room, r).await
    }

    /// Runs one protocol v1 request and returns its reply: `joined` (join, take over), `left`
    /// (leave, unwatch), `watching`, `pong`, or `error` with the request's `ref`. What an adapter
    /// does with a request it has parsed ([`Request::parse`] for text frames,
    /// [`Request::from_payload`] for Socket.IO payloads); both adapters use it.
    pub async fn execute(&self, req: Request) -> Event {
        let Request {
            r#ref,
            op,
            room,
            meta,
        } = req;
        // The room id was checked by the operation itself when it succeeded.
        let id = |room: &str| RoomId::parse(room, usize::MAX);
        let result = match op {
            OpKind::Join => self
                .join(&room, meta)
                .await
                .map(|j| Event::joined(r#ref.clone(), &j)),
            OpKind::Takeover => self
                .takeover(&room)
                .await
                .map(|j| Event::joined(r#ref.clone(), &j)),
            OpKind::Leave => self
                .leave(&room)
                .await
                .map(|l| Event::left(r#ref.clone(), &l)),
            OpKind::Watch => match self.watch(&room).await {
                Ok(p) => id(&room).map(|id| Event::watching(r#ref.clone(), id, &p)),
                Err(e) => Err(e),
            },
            OpKind::Unwatch => match self.unwatch(&room).await {
                Ok(was) => id(&room).map(|id| Event::unwatched(r#ref.clone(), id, was)),
                Err(e) => Err(e),
            },
            OpKind::Ping => Ok(Event::Pong {
                r#ref: r#ref.clone(),
            }),
        };
        result.unwrap_or_else(|e| Event::error(r#ref, &e))
    }

    /// Ends this connection: the session's grace starts now (its places are kept until it ends
    /// or the session is resumed). Idempotent; afterwards every call on any clone fails with
    /// [`Error::UnknownSession`] and the [`Notices`] ends.
    pub async fn disconnect(&self) {
        let hub = &self.inner.hub;
        hub.disconnect(self.inner.id, &self.inner.conn).await;
        hub.after_op().await;
    }

    /// Ends the session now, without grace: it leaves every room (an explicit sign-out). The
    /// resume token becomes invalid.
    pub async fn close(&self) {
        let hub = &self.inner.hub;
        hub.close(self.inner.id, &self.inner.conn).await;
        hub.after_op().await;
    }
}

/// A session's notices: a bounded stream, in version order per room.
///
/// Ends (`None`) once the connection is disconnected, closed, kicked as a slow consumer or
/// replaced by a resume; [`Notices::close_reason`] says why when it was not the application's
/// own doing.
pub struct Notices {
    rx: queue::Receiver,
    conn: Arc<Conn>,
}

impl fmt::Debug for Notices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notices")
            .field("buffered", &self.rx.len())
            .field("closed", &self.conn.is_closed())
            .finish()
    }
}

impl Notices {
    /// The next notice; `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Notice> {
        if self.conn.is_closed() {
            return None;
        }
        let n = self.rx.recv().await?;
        (!self.conn.is_closed()).then_some(n)
    }

    /// The next notice if one is waiting.
    pub fn try_recv(&mut self) -> Option<Notice> {
        if self.conn.is_closed() {
            return None;
        }
        self.rx.try_recv()
    }

    /// How many notices are waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when no notice is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.len() == 0
    }

    /// Why the connection was closed by the Hub: [`Error::SlowConsumer`] after an overflow,
    /// [`Error::SessionReplaced`] after a resume by another connection. `None` while open and
    /// after a disconnect or close by the application.
    pub fn close_reason(&self) -> Option<Error> {
        self.conn.reason()
    }
}
