//! One socket's life: the connect middleware that opens its Hub session and registers its event
//! handlers before the client is told it is connected, the ordered inbox those handlers feed, and
//! the worker task that runs the requests one by one and turns notices into events.
//!
//! # Why an inbox
//!
//! socketioxide spawns every event handler in its own task, so two events of one socket (a join
//! and the leave right after it) could reach the Hub in either order. The handlers here do their
//! work *synchronously*, in the closure body that socketioxide calls in packet order on the
//! connection's receive path: they validate the payload and push it into a bounded per-socket
//! queue. One worker per socket pops the queue, so the Hub sees each socket's requests in the order
//! the client sent them, and the socket's disconnect is handled after (never during) a request.
//!
//! # Why a connect middleware
//!
//! socketioxide sends the Socket.IO CONNECT packet before it runs (in another task) the connect
//! handler, so handlers registered there can miss an event the client emits right after
//! `connect` (the article's React hook does exactly that). Middlewares run before CONNECT is sent,
//! so every handler is registered here. The worker itself starts in the connect handler, once the
//! socket may emit.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use occupancy_core::protocol::{Event, OpKind, PROTOCOL_VERSION, Request};
use occupancy_core::{
    Ending, Error, Hub, Notice, NoticeKind, Notices, ResumeToken, RoomId, Session, SessionId,
    TokenBucket,
};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError};
use tokio::sync::Notify;
use tracing::{Instrument, Span, debug};

use crate::identify::{Handshake, IdentifyHook};
use crate::names::EventNames;
use crate::{RateLimit, SocketHook};

/// Everything the sockets of one attached namespace share.
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) names: EventNames,
    pub(crate) article: bool,
    pub(crate) identify: IdentifyHook,
    pub(crate) identify_timeout: std::time::Duration,
    pub(crate) queue: usize,
    pub(crate) rate: RateLimit,
    pub(crate) heartbeat_ms: u64,
    pub(crate) on_socket: Option<SocketHook>,
}

/// Registers the namespace: the middleware does the work, the handler starts the worker.
pub(crate) fn register(io: &SocketIo, namespace: std::borrow::Cow<'static, str>, shared: Shared) {
    let shared = Arc::new(shared);
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let shared = shared.clone();
        async move { connecting(shared, s, auth).await }
    };
    let handler = |s: SocketRef| async move {
        let pending = s.extensions.remove::<Pending>();
        let worker =
            pending.and_then(|p| p.0.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(worker) = worker {
            worker.run(s).await;
        }
    };
    io.ns(namespace, handler.with(middleware));
}

/// A request kind as the adapter receives it: which op, and whether through the article's events.
#[derive(Debug, Clone, Copy)]
struct Op {
    kind: OpKind,
    article: bool,
}

/// The connect middleware: identify, open (or resume) the session, register the handlers.
async fn connecting(
    shared: Arc<Shared>,
    s: SocketRef,
    auth: Result<Value, socketioxide::ParserError>,
) -> Result<(), String> {
    let auth = auth.map_err(|e| format!("bad_message: the auth payload is not JSON ({e})"))?;
    let handshake = Handshake {
        auth: &auth,
        request: s.req_parts(),
    };
    let identity = shared
        .identify
        .run(&handshake, shared.identify_timeout)
        .await?;
    let refuse = |e: Error| format!("{}: {e}", e.code());
    let token = auth
        .get("resume")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<ResumeToken>().ok());
    let resumed = match token {
        Some(token) => match shared
            .hub
            .resume_as(token, identity.principal.as_deref())
            .await
        {
            Ok((session, notices, _)) => Some((session, notices)),
            Err(Error::ResumeInvalid) => None,
            Err(e) => return Err(refuse(e)),
        },
        None => None,
    };
    let was_resumed = resumed.is_some();
    let (session, notices) = match resumed {
        Some(pair) => pair,
        None => shared
            .hub
            .connect(identity.principal, identity.meta)
            .await
            .map_err(refuse)?,
    };

    let inbox = Arc::new(Inbox {
        queue: Mutex::new(Queue::default()),
        wake: Notify::new(),
        bucket: Mutex::new(shared.rate.rate().full(Instant::now())),
        shared: shared.clone(),
        who: Who {
            session: session.id(),
            principal: session.principal().map(Box::from),
        },
    });
    for (name, kind, article) in shared.names.incoming(shared.article) {
        let inbox = inbox.clone();
        let op = Op { kind, article };
        s.on(
            name.clone(),
            move |s: SocketRef, reply: Reply, TryData(payload): TryData<Value>| {
                // Synchronous, in packet order: see the module docs.
                inbox.push(&s, op, payload, reply);
                std::future::ready(())
            },
        );
    }
    let closed = Arc::new(Closed::default());
    s.on_disconnect({
        let closed = closed.clone();
        move |reason: DisconnectReason| {
            closed.set(reason);
            std::future::ready(())
        }
    });
    span(session.id(), session.principal()).in_scope(|| {
        if let Some(hook) = &shared.on_socket {
            hook(&s, &session);
        }
        debug!(socket = %s.id, resumed = was_resumed, "socket connected");
    });
    let worker = Worker {
        shared: shared.clone(),
        session,
        notices,
        inbox,
        closed,
        resumed: was_resumed,
        // A resumed client is a rich client: the article's frontend has no resume token.
        rich: was_resumed,
        article: false,
    };
    s.extensions
        .insert(Pending(Arc::new(Mutex::new(Some(worker)))));
    Ok(())
}

/// The span of what one socket does: every event logged while its worker runs a request (the
/// Hub's included), answers, forwards or ends carries its session and principal (absent when
/// anonymous).
///
/// It is opened for each of those steps rather than held for the socket's life, as the axum
/// adapter does (where a span held open measured 0.55 KiB more per idle connection with a `fmt`
/// subscriber, against a 4 KiB goal): an idle socket holds none, a step pays for making one
/// beside the Hub request it wraps (with no subscriber, a check of a cached interest). The
/// handlers themselves only queue, and open one only to log a refusal they answer.
fn span(session: SessionId, principal: Option<&str>) -> Span {
    tracing::info_span!("occupancy_connection", %session, principal)
}

/// A socket's session, for [`span`] where the [`Session`] is not at hand (the handlers).
struct Who {
    session: SessionId,
    principal: Option<Box<str>>,
}

impl Who {
    fn span(&self) -> Span {
        span(self.session, self.principal.as_deref())
    }
}

/// The worker, handed from the middleware to the connect handler on the socket's extensions (so it
/// is freed with the socket if the handler never runs).
#[derive(Clone)]
struct Pending(Arc<Mutex<Option<Worker>>>);

/// How the socket ended, set by its disconnect handler.
#[derive(Default)]
struct Closed {
    notify: Notify,
    reason: Mutex<Option<DisconnectReason>>,
}

impl Closed {
    fn set(&self, reason: DisconnectReason) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        // Stores a permit when the worker is not waiting yet (or never started).
        self.notify.notify_one();
    }

    fn reason(&self) -> Option<DisconnectReason> {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The acknowledgement callback of an event, when the client asked for one.
pub(crate) struct Reply(Option<AckSender>);

impl FromMessageParts<LocalAdapter> for Reply {
    type Error = Infallible;

    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Reply(match ack_id {
            Some(_) => Some(AckSender::from_message_parts(s, v, ack_id)?),
            None => None,
        }))
    }
}

/// Sends `ev` as the acknowledgement if the client asked for one; otherwise sends an error as the
/// error event (a success without a callback needs no answer: the pushes say the rest).
fn answer(names: &EventNames, s: &SocketRef, reply: Reply, ev: &Event) {
    let sent = match reply.0 {
        Some(ack) => ack.send(ev),
        None if matches!(ev, Event::Error { .. }) => s.emit(&*names.error, ev),
        None => Ok(()),
    };
    if let Err(e) = sent {
        debug!(socket = %s.id, "could not answer: {e}");
    }
}

/// What the worker is asked to do.
enum Body {
    /// A well-formed request.
    Request(Request),
    /// The payload was refused before the queue (bad type, bad room id, meta too large): only an
    /// answer, in order with the others.
    Refused(Box<Event>),
}

struct Cmd {
    op: Op,
    body: Body,
    reply: Reply,
}

/// The per-socket queue: the handlers push, the worker pops. A plain deque (empty until used,
/// bounded by [`Shared::queue`]) rather than a channel, which would allocate a block of slots for
/// every connection up front.
struct Inbox {
    queue: Mutex<Queue>,
    wake: Notify,
    bucket: Mutex<TokenBucket>,
    shared: Arc<Shared>,
    who: Who,
}

#[derive(Default)]
struct Queue {
    cmds: VecDeque<Cmd>,
    /// The worker ended: nothing is queued any more.
    closed: bool,
}

impl Inbox {
    fn push(
        &self,
        s: &SocketRef,
        op: Op,
        payload: Result<Value, socketioxide::ParserError>,
        reply: Reply,
    ) {
        let limited = || {
            Event::error(
                None,
                &Error::RateLimited {
                    per_second: self.shared.rate.per_second,
                },
            )
        };
        let allowed = self
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take(&self.shared.rate.rate(), Instant::now());
        if !allowed {
            let _span = self.who.span().entered();
            return answer(&self.shared.names, s, reply, &limited());
        }
        let body = self.shared.prepare(op, payload);
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.closed {
            // The worker is gone: the socket is disconnecting.
            return;
        }
        if q.cmds.len() >= self.shared.queue {
            drop(q);
            let _span = self.who.span().entered();
            return answer(&self.shared.names, s, reply, &limited());
        }
        q.cmds.push_back(Cmd { op, body, reply });
        drop(q);
        // Stores a permit when the worker is busy, so the push is never missed.
        self.wake.notify_one();
    }

    /// The next request, in arrival order. Cancel safe: a request is only taken in the poll that
    /// returns it.
    async fn next(&self) -> Cmd {
        loop {
            if let Some(cmd) = self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .cmds
                .pop_front()
            {
                return cmd;
            }
            self.wake.notified().await;
        }
    }

    /// Stops queueing and drops what waits (their acknowledgements hold the socket).
    fn close(&self) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.closed = true;
        q.cmds.clear();
        q.cmds.shrink_to_fit();
    }
}

impl Shared {
    /// Checks a payload before it is queued, so that the queue only ever holds small requests (a
    /// megabyte room id is answered here and dropped). The Hub checks everything again.
    fn prepare(&self, op: Op, payload: Result<Value, socketioxide::ParserError>) -> Body {
        let bad = |message: &str| {
            Body::Refused(Box::new(Event::Error {
                r#ref: None,
                code: "bad_message",
                message: message.to_owned(),
            }))
        };
        let Ok(payload) = payload else {
            return bad("the payload could not be decoded; send a room string or a JSON object");
        };
        if op.article && !payload.is_string() {
            return bad("expected the room id as a string, e.g. \"document-1\"");
        }
        let limits = &self.hub.config().limits;
        // Look at a bare string before it is copied.
        if let Value::String(room) = &payload
            && let Err(e) = RoomId::check(room, limits.max_room_id_len)
        {
            return Body::Refused(Box::new(Event::error(None, &e)));
        }
        let req = match Request::from_payload(op.kind, &payload) {
            Ok(req) => req,
            Err(e) => return Body::Refused(Box::new(e.to_event())),
        };
        // A ping names no room.
        if req.op != OpKind::Ping
            && let Err(e) = RoomId::check(&req.room, limits.max_room_id_len)
        {
            return Body::Refused(Box::new(Event::error(req.r#ref, &e)));
        }
        if let Some(Err(e)) = req.meta.as_ref().map(|m| m.check(limits.max_meta_bytes)) {
            return Body::Refused(Box::new(Event::error(req.r#ref, &e)));
        }
        Body::Request(req)
    }
}

/// The per-socket task: runs requests in order and forwards notices as events.
struct Worker {
    shared: Arc<Shared>,
    session: Session,
    notices: Notices,
    inbox: Arc<Inbox>,
    closed: Arc<Closed>,
    resumed: bool,
    /// The socket used a rich event: it gets the `occupancy:*` pushes.
    rich: bool,
    /// The socket used an article event: it gets `is_occupied` / `is_released`.
    article: bool,
}

/// Why the worker stopped.
enum End {
    /// The socket disconnected (reason from socketioxide).
    Socket(Option<DisconnectReason>),
    /// The Hub ended the session (slow consumer, replaced by a resume) or the socket cannot keep
    /// up with its events: the socket is disconnected by the server.
    Kicked,
}

impl Worker {
    async fn run(mut self, s: SocketRef) {
        let shared = self.shared.clone();
        let names = &shared.names;
        let hello = Event::Hello {
            session: self.session.id(),
            resume: self.session.resume_token(),
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: self.shared.heartbeat_ms,
            resumed: self.resumed,
        };
        if let Err(e) = s.emit(&*names.hello, &hello) {
            self.span()
                .in_scope(|| debug!(socket = %s.id, "could not send hello: {e}"));
        }
        let end = loop {
            tokio::select! {
                biased;
                () = self.closed.notify.notified() => break End::Socket(self.closed.reason()),
                notice = self.notices.recv() => match notice {
                    Some(n) => {
                        if let Err(e) = self.forward(&s, &n) {
                            self.span().in_scope(|| {
                                debug!(socket = %s.id, "cannot deliver a notice ({e}); disconnecting");
                            });
                            break End::Kicked;
                        }
                    }
                    None => {
                        if let Some(e) = self.notices.close_reason() {
                            let _ = s.emit(&*names.error, &Event::error(None, &e));
                        }
                        break End::Kicked;
                    }
                },
                cmd = self.inbox.next() => {
                    let span = self.span();
                    if self.handle(&s, cmd).instrument(span).await.is_err() {
                        break End::Kicked;
                    }
                }
            }
        };
        self.inbox.close();
        let span = self.span();
        self.end(s, end).instrument(span).await;
    }

    /// The span of this socket's next step.
    fn span(&self) -> Span {
        span(self.session.id(), self.session.principal())
    }

    /// What the end of the socket means for its session.
    async fn end(&self, s: SocketRef, end: End) {
        match end {
            End::Socket(Some(DisconnectReason::ServerNSDisconnect)) => {
                // The application disconnected the socket: a sign-out, leave at once.
                self.session.close().await;
            }
            End::Socket(Some(
                DisconnectReason::ClientNSDisconnect | DisconnectReason::TransportClose,
            )) => {
                // The client left on purpose (`socket.disconnect()`, a page closing): its places
                // are kept for the close grace only, long enough for a reload to resume.
                self.session.disconnect_as(Ending::Closed).await;
            }
            End::Socket(_) => self.session.disconnect().await,
            End::Kicked => {
                self.session.disconnect().await;
                let _ = s.disconnect();
            }
        }
        debug!("socket worker ended");
    }

    /// Emits the events for one notice.
    fn forward(&self, s: &SocketRef, n: &Notice) -> Result<(), SendError> {
        let names = &self.shared.names;
        if self.article {
            match n.kind {
                NoticeKind::Occupied { .. } => {
                    emit(s, &names.article_occupied, &*names.article_occupied_message)?
                }
                NoticeKind::Released { .. } => {
                    emit(s, &names.article_released, &*names.article_released_message)?
                }
                _ => {}
            }
        }
        if self.rich {
            let name = match n.kind {
                NoticeKind::Occupied { .. } => &names.occupied,
                NoticeKind::Released { .. } => &names.released,
                NoticeKind::Presence(_) => &names.presence,
                NoticeKind::Displaced { .. } => &names.displaced,
                // A kind this adapter does not name yet (the core adds kinds together with its
                // adapters): nothing to send under a name clients would not listen for.
                _ => return Ok(()),
            };
            emit(s, name, &Event::from_notice(n))?;
        }
        Ok(())
    }

    /// Runs one request and answers it. Notices already queued go out before the answer: they
    /// were produced before the request was answered (another session's change that happened
    /// first, or this request's own), so a client never hears about a room after the `left`
    /// that answered its leave.
    async fn handle(&mut self, s: &SocketRef, cmd: Cmd) -> Result<(), SendError> {
        let ev = match cmd.body {
            Body::Refused(ev) => *ev,
            Body::Request(req) => {
                if cmd.op.article {
                    self.article = true;
                } else {
                    self.rich = true;
                }
                self.session.execute(req).await
            }
        };
        while let Some(n) = self.notices.try_recv() {
            if let Err(e) = self.forward(s, &n) {
                debug!(socket = %s.id, "cannot deliver a notice ({e}); disconnecting");
                return Err(e);
            }
        }
        answer(&self.shared.names, s, cmd.reply, &ev);
        Ok(())
    }
}

fn emit<T: serde::Serialize + ?Sized>(
    s: &SocketRef,
    name: &str,
    data: &T,
) -> Result<(), SendError> {
    match s.emit(name, data) {
        // The socket is closing: its disconnect handler stops the worker.
        Err(SendError::Socket(SocketError::Closed)) => Ok(()),
        other => other,
    }
}
