//! One WebSocket connection: the session it speaks for, `hello`, then a loop that turns frames
//! into Hub calls and notices into frames, sends WebSocket pings, drops a peer that stops
//! answering, and carries out what the frame gate (`frames.rs`: frame size, message rate,
//! violation limit, dispatch) decides for each frame. No room logic lives here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::future::{Either, Ready, ready};
use tokio::time::{Instant, Sleep, sleep, sleep_until, timeout};
use tracing::{Instrument, Span};

use occupancy_core::protocol::{Event, PROTOCOL_VERSION, Request};
use occupancy_core::{Ending, Error, Identity, Notice, Notices, ResumeToken, Session};

use crate::close_code;
use crate::frames::{Frame, Gate, Outcome};
use crate::settings::Settings;

/// What every connection of one endpoint shares: its Hub and its settings. (The endpoint
/// keeps these and its upgrade-time hooks; a connection needs nothing else of it.)
pub(crate) struct Shared {
    pub(crate) hub: occupancy_core::Hub,
    pub(crate) settings: Settings,
}

/// How the connection ended, deciding what happens to the session.
enum Exit {
    /// The peer closed or the stream failed: disconnect as this says, the session's grace
    /// (for that ending) starts.
    Gone(Ending),
    /// Nothing heard within the liveness timeout: the peer is dead, close the session now.
    Dead,
    /// The Hub ended the session (slow consumer, resumed elsewhere): nothing left to do.
    Ended,
}

/// Why the loop must stop right after a frame.
struct Stop(Exit);

/// A connection's own state. It and the wait in [`run`]'s loop are what an idle connection's
/// task holds, so every byte here is paid by every idle connection (the test
/// `an_idle_connection_task_stays_small` keeps the count): the settings are read through the
/// endpoint, the gate keeps only its buckets, one timer serves the pings and the liveness
/// deadline, a write makes its timer only when it has to wait, and the large or rare steps (a Hub
/// request, starting and ending the session, a close) are boxed while they run instead of being
/// sized into the task.
struct Conn {
    socket: WebSocket,
    ep: Arc<Shared>,
    gate: Gate,
}

/// What `start` hands over: the session, its notices, whether it was resumed, and why a resume
/// token was refused.
type Started = (Session, Notices, bool, Option<Error>);

/// Runs one upgraded connection to its end: starts the session (`started`, made before the
/// upgrade), says `hello`, then waits for a frame, a notice or the timer and reacts, until the
/// connection ends. Not an `async fn`: the arguments of one stay in its future after they are
/// moved out (a second copy of the socket in every task), where an `async move` block uses what
/// it captures in place; and the loop is written here rather than in a method of its own, which
/// made the task 16 bytes larger (enough to cross a 128-byte step of tokio's task cells).
pub(crate) fn run(
    socket: WebSocket,
    ep: Arc<Shared>,
    started: Starting,
) -> impl Future<Output = ()> + Send {
    let gate = Gate::new(&ep.settings, std::time::Instant::now());
    let mut conn = Conn { socket, ep, gate };
    async move {
        let (session, mut notices, resumed, resume_error) = match started.await {
            Ok(started) => started,
            Err((code, reason)) => {
                conn.close(code, &reason).await;
                return;
            }
        };
        span(&session).in_scope(|| tracing::debug!(resumed, "connection open"));
        let exit = 'serve: {
            if let Err(Stop(exit)) = conn.hello(&session, resumed, resume_error).await {
                break 'serve exit;
            }
            let s = &conn.ep.settings;
            let opened = Instant::now();
            let mut clock = Clock {
                ping_due: opened + s.ping_interval,
                deadline: opened + s.liveness_timeout,
            };
            let timer = sleep_until(clock.ping_due.min(clock.deadline));
            tokio::pin!(timer);
            loop {
                let wake = tokio::select! {
                    frame = conn.socket.recv() => Wake::Frame(frame),
                    notice = notices.recv() => Wake::Notice(notice),
                    () = &mut timer => Wake::Timer,
                };
                let step = conn.react(&session, &mut notices, wake, &mut clock, timer.as_mut());
                // The step is decided; only it is held while it runs.
                if let Err(Stop(exit)) = step.await {
                    break 'serve exit;
                }
            }
        };
        drop(notices);
        let span = span(&session);
        Box::pin(finish(session, exit).instrument(span)).await;
    }
}

/// Starting the session, made before the upgrade (its future is boxed: it awaits the Hub and the
/// backend, and would otherwise be sized into every connection's task).
pub(crate) type Starting = Pin<Box<dyn Future<Output = Result<Started, (u16, String)>> + Send>>;

/// The session of a connection that is about to be upgraded: [`start`], boxed.
pub(crate) fn starting(ep: Arc<Shared>, identity: Identity, resume: Option<String>) -> Starting {
    Box::pin(start(ep, identity, resume))
}

/// The session: resumed with the token, or new. Otherwise the close code and reason.
async fn start(
    ep: Arc<Shared>,
    identity: Identity,
    resume: Option<String>,
) -> Result<Started, (u16, String)> {
    let mut resume_error = None;
    if let Some(token) = resume {
        match token.parse::<ResumeToken>() {
            Err(e) => resume_error = Some(e),
            // Only a session of the same principal: someone else's token is refused by the Hub
            // and changes nothing.
            Ok(token) => match ep.hub.resume_as(token, identity.principal.as_deref()).await {
                Ok((session, notices, _)) => return Ok((session, notices, true, None)),
                Err(Error::ResumeInvalid) => resume_error = Some(Error::ResumeInvalid),
                // Not the token's fault (the backend is down): keep it usable for a retry.
                Err(e) => return Err((close_code::TRY_AGAIN_LATER, e.to_string())),
            },
        }
    }
    match ep.hub.connect(identity.principal, identity.meta).await {
        Ok((session, notices)) => Ok((session, notices, false, resume_error)),
        Err(e) => {
            tracing::warn!(error = %e, "could not start a session");
            // The backend being down is worth a retry; anything else (metadata from the
            // identify hook over the limit, say) is the server's own fault.
            let code = match e {
                Error::Unavailable { .. } => close_code::TRY_AGAIN_LATER,
                _ => close_code::INTERNAL,
            };
            Err((code, e.to_string()))
        }
    }
}

/// The span of what one connection does: every event logged while the connection runs a
/// request (the Hub's included), closes or ends carries its session and principal (absent when
/// anonymous).
///
/// It is opened for each of those steps, not held for the connection's life. A span held open
/// costs the subscriber its record for as long as the connection lives: measured (`idle_conns
/// --join --n 10000` against the documents example, two runs each) with its `fmt` subscriber at
/// `info`, 4.04 → 4.60 KiB per idle connection, and with the span disabled (`RUST_LOG=warn`)
/// 4.04 → 4.15 KiB (the `Span` value, 40 bytes, pushed the task over a 128-byte step of tokio's
/// task cells), against a goal of 4 KiB. Opened per step, an idle
/// connection holds no span; a step pays for making one (with a subscriber that records it, its
/// fields formatted into a string; with none, a check of a cached interest) beside the Hub
/// request it wraps. Frames and notices that are only forwarded (pings, pongs, notice writes)
/// log nothing and open none.
fn span(session: &Session) -> Span {
    tracing::info_span!(
        "occupancy_connection",
        session = %session.id(),
        principal = session.principal(),
    )
}

/// What the end of the connection means for the session.
async fn finish(session: Session, exit: Exit) {
    match exit {
        Exit::Gone(ending) => session.disconnect_as(ending).await,
        Exit::Dead => {
            tracing::debug!("liveness timeout: closing the session");
            session.close().await;
        }
        Exit::Ended => {}
    }
}

/// The ping after one due at `due` and sent at `now`, as a `tokio::time::Interval` with
/// `MissedTickBehavior::Delay` would schedule it: a period later, counted from `now` when the
/// tick came late.
fn next_ping(due: Instant, now: Instant, period: Duration) -> Instant {
    if now > due + Duration::from_millis(5) {
        now + period
    } else {
        due + period
    }
}

/// A frame to send: the event's JSON as a text frame.
fn text(event: &Event) -> Message {
    Message::Text(Utf8Bytes::from(event.to_json()))
}

/// A notice's text frame (a presence's shared part is encoded once per change).
fn notice_frame(n: &Notice) -> Message {
    Message::Text(Utf8Bytes::from(Event::notice_json(n)))
}

/// What woke a waiting connection.
enum Wake {
    Frame(Option<Result<Message, axum::Error>>),
    Notice(Option<Notice>),
    Timer,
}

/// The connection's one timer serves both the pings and the liveness deadline: it is set for
/// whichever comes first. A message moves the deadline without touching the timer: when the
/// timer fires before the moved deadline, it is only set again.
struct Clock {
    ping_due: Instant,
    deadline: Instant,
}

type Boxed<'a> = Pin<Box<dyn Future<Output = Result<(), Stop>> + Send + 'a>>;

/// What a connection does after a wake-up: nothing more, forward notices, send a ping, or a
/// boxed step (a request, a close).
type Step<'a, F> = Either<
    Ready<Result<(), Stop>>,
    Either<F, Either<Within<futures_util::sink::Send<'a, WebSocket, Message>>, Boxed<'a>>>,
>;

fn done<'a, F>(r: Result<(), Stop>) -> Step<'a, F> {
    Either::Left(ready(r))
}

/// A step that runs in the connection's [`span`] (boxed: the span is carried on the heap with
/// it, never in the task).
fn boxed<'a, F>(span: Span, f: impl Future<Output = Result<(), Stop>> + Send + 'a) -> Step<'a, F> {
    Either::Right(Either::Right(Either::Right(Box::pin(f.instrument(span)))))
}

impl Conn {
    /// What to do after a wake-up, decided before anything is awaited: neither what woke the
    /// connection nor the gate's outcome is kept while a write or a request waits.
    fn react<'a>(
        &'a mut self,
        session: &'a Session,
        notices: &'a mut Notices,
        wake: Wake,
        clock: &mut Clock,
        timer: Pin<&mut Sleep>,
    ) -> Step<'a, impl Future<Output = Result<(), Stop>> + Send + 'a> {
        match wake {
            Wake::Frame(None) => done(Err(Stop(Exit::Gone(Ending::Lost)))),
            Wake::Frame(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("Space limit exceeded") || text.contains("too long") {
                    boxed(span(session), async move {
                        self.close(close_code::TOO_BIG, "frame over the size limit")
                            .await;
                        Err(Stop(Exit::Gone(Ending::Lost)))
                    })
                } else {
                    span(session)
                        .in_scope(|| tracing::debug!(error = %text, "WebSocket read failed"));
                    done(Err(Stop(Exit::Gone(Ending::Lost))))
                }
            }
            Wake::Frame(Some(Ok(msg))) => {
                clock.deadline = Instant::now() + self.ep.settings.liveness_timeout;
                match self.decide(&msg) {
                    Outcome::Ignore => done(Ok(())),
                    Outcome::Gone(ending) => done(Err(Stop(Exit::Gone(ending)))),
                    outcome => boxed(span(session), self.carry_out(session, outcome, notices)),
                }
            }
            Wake::Notice(Some(n)) => Either::Right(Either::Left(self.forward(n, notices))),
            Wake::Notice(None) => {
                let (code, reason) = match notices.close_reason() {
                    Some(Error::SessionReplaced) => (
                        close_code::REPLACED,
                        "session resumed by another connection".to_string(),
                    ),
                    Some(e @ Error::SlowConsumer { .. }) => (close_code::POLICY, e.to_string()),
                    Some(e @ Error::Kicked) => (close_code::KICKED, e.to_string()),
                    Some(e) => (close_code::INTERNAL, e.to_string()),
                    None => (1000, "session ended".to_string()),
                };
                boxed(span(session), async move {
                    self.close(code, &reason).await;
                    Err(Stop(Exit::Ended))
                })
            }
            Wake::Timer => {
                let now = Instant::now();
                if now >= clock.deadline {
                    return boxed(span(session), async move {
                        self.close(close_code::LIVENESS, "no pong within the liveness timeout")
                            .await;
                        Err(Stop(Exit::Dead))
                    });
                }
                let ping = now >= clock.ping_due;
                if ping {
                    let period = self.ep.settings.ping_interval;
                    clock.ping_due = next_ping(clock.ping_due, now, period);
                }
                timer.reset(clock.ping_due.min(clock.deadline));
                if !ping {
                    return done(Ok(()));
                }
                let ping = Message::Ping(Default::default());
                Either::Right(Either::Right(Either::Left(
                    self.write(|socket| SinkExt::send(socket, ping)),
                )))
            }
        }
    }

    /// `hello`, and the error of a resume that was refused.
    async fn hello(
        &mut self,
        session: &Session,
        resumed: bool,
        resume_error: Option<Error>,
    ) -> Result<(), Stop> {
        let hello = text(&Event::Hello {
            session: session.id(),
            resume: session.resume_token(),
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: u64::try_from(self.ep.settings.ping_interval.as_millis())
                .unwrap_or(u64::MAX),
            resumed,
        });
        self.feed(hello).await?;
        if let Some(e) = resume_error {
            let error = text(&Event::error(None, &e));
            self.feed(error).await?;
        }
        self.flush().await
    }

    /// Sends a notice's frame and those of the others already waiting, with one flush.
    fn forward<'a>(
        &'a mut self,
        first: Notice,
        notices: &'a mut Notices,
    ) -> impl Future<Output = Result<(), Stop>> + 'a {
        // Only a frame is held while a write waits (a notice is larger than its frame).
        let mut frame = notice_frame(&first);
        drop(first);
        async move {
            let mut batch = 1;
            loop {
                self.feed(frame).await?;
                if batch == 64 {
                    break;
                }
                match notices.try_recv() {
                    Some(n) => frame = notice_frame(&n),
                    None => break,
                }
                batch += 1;
            }
            self.flush().await
        }
    }

    /// What the gate decides for one frame (see `frames.rs`).
    fn decide(&mut self, msg: &Message) -> Outcome {
        let frame = match msg {
            Message::Text(text) => Frame::Text(text.as_str()),
            Message::Binary(_) => Frame::Binary,
            Message::Ping(_) => Frame::Ping,
            Message::Pong(_) => Frame::Pong,
            Message::Close(c) => Frame::Close(c.as_ref().map(|c| c.code)),
        };
        self.gate
            .on_frame(&self.ep.settings, frame, std::time::Instant::now())
    }

    /// Carries out an outcome that has to write: an error reply, a request to run and answer,
    /// a close. Boxed by the caller: a request to the Hub is by far the largest step of a
    /// connection (about 1 KiB of future), and sizing it into the task would make every idle
    /// connection pay for it. One allocation per request, beside those the request makes in the
    /// Hub; control frames (pings, pongs) and notices make none.
    async fn carry_out(
        &mut self,
        session: &Session,
        outcome: Outcome,
        notices: &mut Notices,
    ) -> Result<(), Stop> {
        match outcome {
            Outcome::Ignore => Ok(()),
            Outcome::Gone(ending) => Err(Stop(Exit::Gone(ending))),
            Outcome::Close { code, reason } => {
                self.close(code, reason).await;
                Err(Stop(Exit::Gone(Ending::Lost)))
            }
            Outcome::Reply(event) => {
                self.feed(text(&event)).await?;
                self.flush().await
            }
            Outcome::Dispatch(req) => self.dispatch(session, req, notices).await,
        }
    }

    /// Runs a request and sends its reply.
    async fn dispatch(
        &mut self,
        session: &Session,
        req: Request,
        notices: &mut Notices,
    ) -> Result<(), Stop> {
        let reply = text(&session.execute(req).await);
        // Notices already queued were produced before this reply (another session's change
        // that came first, or this request's own): they go out first, so a client never hears
        // about a room after the `left` that answered its leave (the churn soak caught exactly
        // that).
        while let Some(n) = notices.try_recv() {
            let notice = notice_frame(&n);
            drop(n);
            self.feed(notice).await?;
        }
        self.feed(reply).await?;
        self.flush().await
    }

    fn feed(&mut self, msg: Message) -> impl Future<Output = Result<(), Stop>> + '_ {
        self.write(|socket| socket.feed(msg))
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), Stop>> + '_ {
        self.write(|socket| socket.flush())
    }

    /// A write that must complete within the liveness timeout, else the peer counts as dead.
    fn write<'a, W>(&'a mut self, write: impl FnOnce(&'a mut WebSocket) -> W) -> Within<W> {
        Within {
            write: write(&mut self.socket),
            limit: self.ep.settings.liveness_timeout,
            timer: None,
        }
    }

    /// Sends a close frame and waits briefly for the peer's, so that the peer reads the reason
    /// (closing a socket with unread input makes the kernel send a reset instead). Boxed while it
    /// runs (its timeouts would otherwise be sized into every connection's task); a connection
    /// closes once.
    async fn close(&mut self, code: u16, reason: &str) {
        Box::pin(self.close_now(code, reason)).await;
    }

    async fn close_now(&mut self, code: u16, reason: &str) {
        let reason = truncate_reason(reason);
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        let grace = Duration::from_secs(1);
        if timeout(grace, self.socket.send(Message::Close(Some(frame))))
            .await
            .is_err()
        {
            return;
        }
        let _ = timeout(grace, async {
            while let Some(Ok(msg)) = self.socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A write with a time limit: [`tokio::time::timeout`] without the timer inside. The timer is
/// made (and boxed) only when the write has to wait, which it does not while the peer reads its
/// frames; a `Timeout` would size its timer into every connection's task.
struct Within<W> {
    write: W,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<W: Future<Output = Result<(), axum::Error>> + Unpin> Future for Within<W> {
    type Output = Result<(), Stop>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.write).poll(cx) {
            return Poll::Ready(r.map_err(|_| Stop(Exit::Gone(Ending::Lost))));
        }
        let limit = this.limit;
        let timer = this.timer.get_or_insert_with(|| Box::pin(sleep(limit)));
        timer.as_mut().poll(cx).map(|()| Err(Stop(Exit::Dead)))
    }
}

/// WebSocket close reasons are limited to 123 bytes.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_in_a_close_frame() {
        let long = "é".repeat(100);
        let r = truncate_reason(&long);
        assert!(r.len() <= 123);
        assert!(long.starts_with(&r));
        assert_eq!(truncate_reason("short"), "short");
    }
}

#[cfg(test)]
mod size {
    use super::*;
    use crate::endpoint::Endpoint;
    use occupancy_core::Hub;

    /// What an idle connection's task holds is [`run`]'s future (inside axum's upgrade task and
    /// tokio's task cell, rounded up to 128 bytes): 904 bytes on Rust 1.95 in release (3,568
    /// before the connection was made small; the bare socket's `recv` loop is about 400). The
    /// bound leaves some room for compiler versions; a step that is sized into the task instead
    /// of boxed (a Hub call is about 1 KiB) fails it. Release only: debug builds lay futures out
    /// without overlapping their states.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        if cfg!(debug_assertions) {
            return;
        }
        let ep = Endpoint::new(Hub::new());
        let inner = ep.inner.conn.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let app = axum::Router::new().route(
            "/ws",
            axum::routing::get(move |ws: axum::extract::WebSocketUpgrade| {
                let inner = inner.clone();
                let tx = tx.lock().unwrap().take();
                async move {
                    ws.on_upgrade(move |socket| async move {
                        let starting = starting(inner.clone(), Identity::anonymous(), None);
                        let task = run(socket, inner, starting);
                        let _ = tx.expect("one upgrade").send(std::mem::size_of_val(&task));
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        let size = rx.await.unwrap();
        assert!(size <= 1024, "run's future is {size} bytes");
    }
}
