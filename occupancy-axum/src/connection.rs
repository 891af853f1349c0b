//! One WebSocket connection: the session it speaks for, `hello`, then a loop that turns frames
//! into Hub calls and notices into frames, sends WebSocket pings, drops a peer that stops
//! answering, and carries out what the frame gate (`frames.rs`: frame size, message rate,
//! violation limit, dispatch) decides for each frame. No room logic lives here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};

use occupancy_core::protocol::{Event, PROTOCOL_VERSION};
use occupancy_core::{Error, Notices, ResumeToken, Session};

use crate::endpoint::Inner;
use crate::frames::{Frame, Gate, Outcome};
use crate::identity::Identity;
use crate::settings::Settings;

/// Close codes this adapter uses (besides 1000 and 1001).
pub mod close_code {
    /// Policy violation: too many bad or rate-limited messages, or a slow consumer.
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The Hub ended the session for a reason of its own, or could not start it (for example
    /// metadata from the identify hook over the limit).
    pub const INTERNAL: u16 = 1011;
    /// The server could not set the session up (backend unavailable): retry later, with the same
    /// resume token.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session was resumed by another connection (the same resume token used twice).
    pub const REPLACED: u16 = 4000;
    /// Nothing arrived within the liveness timeout.
    pub const LIVENESS: u16 = 4001;
}

/// How the connection ended, deciding what happens to the session.
enum Exit {
    /// The peer closed or the stream failed: disconnect, the session's grace starts.
    Gone,
    /// Nothing heard within the liveness timeout: the peer is dead, close the session now.
    Dead,
    /// The Hub ended the session (slow consumer, resumed elsewhere): nothing left to do.
    Ended,
}

/// Why the loop must stop right after a frame.
struct Stop(Exit);

struct Conn {
    socket: WebSocket,
    settings: Settings,
    gate: Gate,
}

/// Runs one upgraded connection to its end.
pub(crate) async fn run(
    socket: WebSocket,
    ep: Arc<Inner>,
    identity: Identity,
    resume: Option<String>,
) {
    let now = std::time::Instant::now();
    let s = ep.settings.clone();
    let mut conn = Conn {
        socket,
        gate: Gate::new(&s, now),
        settings: s,
    };

    // The session: resumed with the token, or new.
    let mut resume_error = None;
    let mut started = None;
    if let Some(token) = resume {
        match token.parse::<ResumeToken>() {
            Err(e) => resume_error = Some(e),
            // Only a session of the same principal: someone else's token is refused by the Hub
            // and changes nothing.
            Ok(token) => match ep.hub.resume_as(token, identity.principal.as_deref()).await {
                Ok((session, notices, _)) => started = Some((session, notices, true)),
                Err(Error::ResumeInvalid) => resume_error = Some(Error::ResumeInvalid),
                Err(e) => {
                    // Not the token's fault (the backend is down): keep it usable for a retry.
                    conn.close(close_code::TRY_AGAIN_LATER, &e.to_string())
                        .await;
                    return;
                }
            },
        }
    }
    let (session, notices, resumed) = match started {
        Some(s) => s,
        None => match ep.hub.connect(identity.principal, identity.meta).await {
            Ok((session, notices)) => (session, notices, false),
            Err(e) => {
                tracing::warn!(error = %e, "could not start a session");
                // The backend being down is worth a retry; anything else (metadata from the
                // identify hook over the limit, say) is the server's own fault.
                let code = match e {
                    Error::Unavailable { .. } => close_code::TRY_AGAIN_LATER,
                    _ => close_code::INTERNAL,
                };
                conn.close(code, &e.to_string()).await;
                return;
            }
        },
    };
    tracing::debug!(session = %session.id(), resumed, "connection open");

    let exit = conn.serve(&session, notices, resumed, resume_error).await;
    match exit {
        Exit::Gone => session.disconnect().await,
        Exit::Dead => {
            tracing::debug!(session = %session.id(), "liveness timeout: closing the session");
            session.close().await;
        }
        Exit::Ended => {}
    }
}

impl Conn {
    async fn serve(
        &mut self,
        session: &Session,
        mut notices: Notices,
        resumed: bool,
        resume_error: Option<Error>,
    ) -> Exit {
        let hello = Event::Hello {
            session: session.id(),
            resume: session.resume_token(),
            protocol: PROTOCOL_VERSION,
            heartbeat_ms: u64::try_from(self.settings.ping_interval.as_millis())
                .unwrap_or(u64::MAX),
            resumed,
        };
        if let Err(Stop(exit)) = self.feed(&hello).await {
            return exit;
        }
        if let Some(e) = resume_error
            && let Err(Stop(exit)) = self.feed(&Event::error(None, &e)).await
        {
            return exit;
        }
        if let Err(Stop(exit)) = self.flush().await {
            return exit;
        }

        let s = self.settings.clone();
        let mut ping = tokio::time::interval_at(Instant::now() + s.ping_interval, s.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let deadline = sleep(s.liveness_timeout);
        tokio::pin!(deadline);

        loop {
            let step = tokio::select! {
                frame = self.socket.recv() => match frame {
                    None => Err(Stop(Exit::Gone)),
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("Space limit exceeded") || text.contains("too long") {
                            self.close(close_code::TOO_BIG, "frame over the size limit").await;
                        } else {
                            tracing::debug!(error = %text, "WebSocket read failed");
                        }
                        Err(Stop(Exit::Gone))
                    }
                    Some(Ok(msg)) => {
                        deadline.as_mut().reset(Instant::now() + s.liveness_timeout);
                        self.on_message(session, msg, &mut notices).await
                    }
                },
                notice = notices.recv() => match notice {
                    Some(n) => self.forward(&n, &mut notices).await,
                    None => {
                        let (code, reason) = match notices.close_reason() {
                            Some(Error::SessionReplaced) => (close_code::REPLACED, "session resumed by another connection".to_string()),
                            Some(e @ Error::SlowConsumer { .. }) => (close_code::POLICY, e.to_string()),
                            Some(e) => (close_code::INTERNAL, e.to_string()),
                            None => (1000, "session ended".to_string()),
                        };
                        self.close(code, &reason).await;
                        Err(Stop(Exit::Ended))
                    }
                },
                _ = ping.tick() => {
                    match timeout(s.liveness_timeout, self.socket.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(Stop(Exit::Gone)),
                        Err(_) => Err(Stop(Exit::Dead)),
                    }
                },
                () = &mut deadline => {
                    self.close(close_code::LIVENESS, "no pong within the liveness timeout").await;
                    Err(Stop(Exit::Dead))
                },
            };
            if let Err(Stop(exit)) = step {
                return exit;
            }
        }
    }

    /// Sends a notice and every other one already waiting, with one flush.
    async fn forward(
        &mut self,
        first: &occupancy_core::Notice,
        notices: &mut Notices,
    ) -> Result<(), Stop> {
        self.feed(&Event::from_notice(first)).await?;
        let mut batch = 1;
        while batch < 64
            && let Some(n) = notices.try_recv()
        {
            self.feed(&Event::from_notice(&n)).await?;
            batch += 1;
        }
        self.flush().await
    }

    /// Carries out the gate's decision for one frame (see `frames.rs`).
    async fn on_message(
        &mut self,
        session: &Session,
        msg: Message,
        notices: &mut Notices,
    ) -> Result<(), Stop> {
        let frame = match &msg {
            Message::Text(text) => Frame::Text(text.as_str()),
            Message::Binary(_) => Frame::Binary,
            Message::Ping(_) => Frame::Ping,
            Message::Pong(_) => Frame::Pong,
            Message::Close(_) => Frame::Close,
        };
        let reply = match self.gate.on_frame(frame, std::time::Instant::now()) {
            Outcome::Ignore => return Ok(()),
            Outcome::Gone => return Err(Stop(Exit::Gone)),
            Outcome::Close { code, reason } => {
                self.close(code, reason).await;
                return Err(Stop(Exit::Gone));
            }
            Outcome::Reply(event) => event,
            Outcome::Dispatch(req) => {
                let reply = session.execute(req).await;
                // Notices already queued were produced before this reply (another session's
                // change that came first, or this request's own): they go out first, so a client
                // never hears about a room after the `left` that answered its leave (the churn
                // soak caught exactly that).
                while let Some(n) = notices.try_recv() {
                    self.feed(&Event::from_notice(&n)).await?;
                }
                reply
            }
        };
        self.feed(&reply).await?;
        self.flush().await
    }

    async fn feed(&mut self, event: &Event) -> Result<(), Stop> {
        let msg = Message::Text(Utf8Bytes::from(event.to_json()));
        match timeout(self.settings.liveness_timeout, self.socket.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop(Exit::Gone)),
            Err(_) => Err(Stop(Exit::Dead)),
        }
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        match timeout(self.settings.liveness_timeout, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop(Exit::Gone)),
            Err(_) => Err(Stop(Exit::Dead)),
        }
    }

    /// Sends a close frame and waits briefly for the peer's, so that the peer reads the reason
    /// (closing a socket with unread input makes the kernel send a reset instead).
    async fn close(&mut self, code: u16, reason: &str) {
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
