//! What the application holds: a [`Session`] handle to act with and its [`Notices`] stream to
//! read. Both share the connection's [`Conn`], so once the Hub closes it (disconnect, close, kick,
//! resume elsewhere) every clone fails fast and the stream ends, without asking the registry.
//! Dropping the last handle cannot run async code, so it queues a disconnect instead.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use crate::config::Ending;
use crate::error::Error;
use crate::ids::{Meta, ResumeToken, RoomId, SessionId};
use crate::machine::{Joined, Left};
use crate::notice::{Notice, PresenceBody};
use crate::protocol::{Event, OpKind, Request};
use crate::queue;

use super::registry::{Cmd, Conn};
use super::{Action, HubInner, log_error, metrics};

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
    /// The handle and the notice stream of a new connection, whose slot is in the registry.
    pub(super) fn open(
        hub: Arc<HubInner>,
        id: SessionId,
        token: ResumeToken,
        principal: Option<Arc<str>>,
        conn: Arc<Conn>,
        rx: queue::Receiver,
    ) -> (Session, Notices) {
        let session = Session {
            inner: Arc::new(SessionInner {
                hub,
                id,
                token,
                principal,
                conn: conn.clone(),
            }),
        };
        (session, Notices { rx, conn })
    }

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
        started: Instant,
        r: Result<T, Error>,
    ) -> Result<T, Error> {
        hub.after_op().await;
        if let Err(e) = &r {
            log_error(op, self.inner.id, room, e);
        }
        metrics::request(op, started, &r);
        r
    }

    /// Stands in `room`'s line (idempotent). `meta` overrides the session's metadata for this
    /// room. Asks the authorization hook first.
    pub async fn join(&self, room: &str, meta: Option<Meta>) -> Result<Joined, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = match hub
            .authorize(self.inner.principal.as_ref(), room, Action::Join)
            .await
        {
            Ok(()) => hub.backend.join(self.inner.id, room, meta).await,
            Err(e) => Err(e),
        };
        if let Ok(j) = &r {
            debug!(session = %self.inner.id, room, position = j.position, version = j.version, "joined");
        }
        self.finish(hub, "join", room, started, r).await
    }

    /// Changes the metadata this session's occupant shows in `room` ("viewing" → "editing")
    /// without leaving: same place; everyone whose view shows the occupant gets a presence.
    /// [`Error::NotMember`] unless this session stands in the room; the metadata limits of
    /// `join` apply. Not asked of the authorization hook (the session is already in the room).
    pub async fn update(&self, room: &str, meta: Meta) -> Result<Joined, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = hub.backend.update(self.inner.id, room, meta).await;
        if let Ok(j) = &r {
            debug!(session = %self.inner.id, room, version = j.version, "updated");
        }
        self.finish(hub, "update", room, started, r).await
    }

    /// "The person is still working here" (the page calls it on user input, throttled):
    /// refreshes the idle clock of this session's occupant in `room` when it holds it
    /// ([`Config::idle_timeout`](crate::Config::idle_timeout)); tells nobody anything.
    /// [`Error::NotMember`] unless this session stands in the room. Returns its place.
    pub async fn active(&self, room: &str) -> Result<Joined, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = hub.backend.active(self.inner.id, room).await;
        self.finish(hub, "active", room, started, r).await
    }

    /// Leaves `room`'s line (idempotent). When the holder leaves, the next in line is released.
    pub async fn leave(&self, room: &str) -> Result<Left, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = hub.backend.leave(self.inner.id, room).await;
        if let Ok(l) = &r {
            debug!(session = %self.inner.id, room, was_member = l.was_member, "left");
        }
        self.finish(hub, "leave", room, started, r).await
    }

    /// Takes `room` over from its holder (who is told it was displaced). Requires standing in the
    /// line, and the authorization hook's consent.
    pub async fn takeover(&self, room: &str) -> Result<Joined, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = match hub
            .authorize(self.inner.principal.as_ref(), room, Action::Takeover)
            .await
        {
            Ok(()) => hub.backend.takeover(self.inner.id, room).await,
            Err(e) => Err(e),
        };
        if let Ok(j) = &r {
            debug!(session = %self.inner.id, room, version = j.version, "took over");
        }
        self.finish(hub, "takeover", room, started, r).await
    }

    /// Watches `room` without standing in line; returns its current presence.
    pub async fn watch(&self, room: &str) -> Result<PresenceBody, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = match hub
            .authorize(self.inner.principal.as_ref(), room, Action::Watch)
            .await
        {
            Ok(()) => hub.backend.watch(self.inner.id, room).await,
            Err(e) => Err(e),
        };
        self.finish(hub, "watch", room, started, r).await
    }

    /// Stops watching `room`; false when it was not watching it.
    pub async fn unwatch(&self, room: &str) -> Result<bool, Error> {
        let started = Instant::now();
        let hub = self.hub()?;
        let r = hub.backend.unwatch(self.inner.id, room).await;
        self.finish(hub, "unwatch", room, started, r).await
    }

    /// Runs one protocol v1 request and returns its reply: `joined` (join, take over, update, active), `left`
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
            // A request built by hand without metadata: what parsing would have refused.
            OpKind::Update => match meta {
                Some(meta) => self
                    .update(&room, meta)
                    .await
                    .map(|j| Event::joined(r#ref.clone(), &j)),
                None => Err(Error::MetaInvalid),
            },
            OpKind::Active => self
                .active(&room)
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

    /// This connection was lost ([`Ending::Lost`]): the session's grace starts now (its places
    /// are kept until it ends or the session is resumed). Idempotent; afterwards every call on
    /// any clone fails with [`Error::UnknownSession`] and the [`Notices`] ends.
    pub async fn disconnect(&self) {
        self.disconnect_as(Ending::Lost).await
    }

    /// This connection ended as `ending` says; the session keeps its places for the grace of
    /// that ending ([`Config::grace_for`](crate::Config::grace_for)). Adapters call it with
    /// [`Ending::Closed`] when the client closed the connection on purpose (a page closed:
    /// the next in line is told after `close_grace`, 2 s by default, not the full `grace`).
    /// Otherwise as [`Session::disconnect`].
    pub async fn disconnect_as(&self, ending: Ending) {
        let hub = &self.inner.hub;
        hub.disconnect(self.inner.id, &self.inner.conn, ending)
            .await;
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
        let q = self.rx.recv().await?;
        if self.conn.is_closed() {
            return None;
        }
        metrics::handover(q.released_at);
        Some(q.notice)
    }

    /// The next notice if one is waiting.
    pub fn try_recv(&mut self) -> Option<Notice> {
        if self.conn.is_closed() {
            return None;
        }
        let q = self.rx.try_recv()?;
        metrics::handover(q.released_at);
        Some(q.notice)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::backend::NoticeSink;
    use crate::hub::{AuthRequest, Hub};
    use crate::memory::MemoryBackend;
    use crate::notice::NoticeKind;

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn released(session: SessionId, version: u64) -> Notice {
        Notice {
            session,
            room: RoomId::parse("doc", 64).unwrap(),
            kind: NoticeKind::Released { version },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_after_disconnect_fail_without_asking_the_hook_or_the_backend() {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let backend = MemoryBackend::new();
        let hub = Hub::builder()
            .backend(backend.clone())
            .authorize(move |_: &AuthRequest<'_>| {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .build()
            .unwrap();
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        a.join("doc", None).await.unwrap();
        let other = a.clone();
        a.disconnect().await;
        let asked_before = asked.load(Ordering::Relaxed);

        let unknown = Some(Error::UnknownSession);
        assert_eq!(other.join("doc", None).await.err(), unknown);
        assert_eq!(other.takeover("doc").await.err(), unknown);
        assert_eq!(other.watch("w").await.err(), unknown);
        assert_eq!(other.leave("doc").await.err(), unknown);
        let req = Request::parse(r#"{"op":"leave","room":"doc","ref":"r1"}"#).unwrap();
        assert_eq!(
            other.execute(req.clone()).await,
            Event::error(req.r#ref, &Error::UnknownSession)
        );
        assert_eq!(
            asked.load(Ordering::Relaxed),
            asked_before,
            "the hook is not asked"
        );
        // The grace keeps the place: the refused leave did not reach the backend.
        assert_eq!(backend.with_machine(|m| m.position(a.id(), "doc")), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_clone_queues_a_disconnect() {
        let backend = MemoryBackend::new();
        let hub = Hub::builder().backend(backend.clone()).build().unwrap();
        let (a, mut an) = hub.connect(None, Meta::empty()).await.unwrap();
        let id = a.id();
        let clone = a.clone();
        drop(a);
        settle().await;
        assert!(clone.is_live(), "a clone is left");
        assert_eq!(hub.live_connections(), 1);

        drop(clone);
        assert!(
            hub.inner.registry.lock().slots[&id].tx.is_some(),
            "not run inline"
        );
        let queued = hub.inner.registry.take_cmds(false);
        assert!(
            matches!(&queued[..], [Cmd::Disconnect { id: d, conn }] if *d == id && !conn.is_closed()),
            "one disconnect, not run yet"
        );
        // Run it as the timer task would have.
        hub.inner.registry.push_cmds(queued);
        settle().await;
        assert_eq!(hub.live_connections(), 0);
        assert!(hub.inner.registry.lock().slots[&id].grace_until.is_some());
        assert!(backend.with_machine(|m| m.contains_session(id) && !m.is_live(id)));
        assert_eq!(an.recv().await.map(|n| n.version()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handle_dropped_after_a_disconnect_or_close_queues_nothing() {
        let hub = Hub::new();
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
        a.disconnect().await;
        b.close().await;
        drop((a, b));
        assert!(hub.inner.registry.take_cmds(false).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn notices_end_at_once_after_a_kick_with_notices_still_queued() {
        let backend = MemoryBackend::new();
        let hub = Hub::builder()
            .backend(backend.clone())
            .notice_buffer(1)
            .build()
            .unwrap();
        let (a, mut an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
        // The backend overflows a's buffer of one.
        hub.inner
            .registry
            .deliver(&mut [released(a.id(), 1), released(a.id(), 2)].into_iter());

        assert!(!a.is_live());
        assert_eq!(an.close_reason(), Some(Error::SlowConsumer { capacity: 1 }));
        assert_eq!(
            an.try_recv().map(|n| n.version()),
            None,
            "the queued one is not read"
        );
        let next = tokio::time::timeout(Duration::from_secs(1), an.recv()).await;
        assert_eq!(
            next.map(|n| n.map(|n| n.version())),
            Ok(None),
            "ends, does not hang"
        );
        assert_eq!(a.join("doc", None).await.err(), Some(Error::UnknownSession));
        // The next call (of any session) runs the kick before it returns.
        b.join("doc", None).await.unwrap();
        assert!(!backend.with_machine(|m| m.contains_session(a.id())));
    }
}
