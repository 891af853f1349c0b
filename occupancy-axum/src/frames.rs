//! What one frame from a client leads to, without a socket: the per-connection gate (frame kind,
//! size limit, message rate, violation count) that lets a well-formed request through to
//! [`Session::execute`](occupancy_core::Session::execute). The connection loop (`connection.rs`) feeds every received frame through
//! [`Gate::on_frame`] and carries out the [`Outcome`]; the `axum_frames` fuzz target
//! (`testing::fuzz::frames`, feature `testing`) drives the same code with generated frames and a
//! fake clock, so what is fuzzed is what runs in production.
//!
//! The rules, in order, for each frame:
//!
//! - ping and pong: ignored (pings are answered by the WebSocket layer; any frame proves
//!   liveness); close: the peer is gone — on purpose with 1000, 1001 (what a browser sends when a
//!   page closes or navigates away) or no code, so the session keeps its places for the close
//!   grace only ([`Ending::Closed`](occupancy_core::Ending)); with any other code as if the
//!   connection were lost (the full grace);
//! - binary: a violation, answered `bad_message`;
//! - text over `max_frame_bytes`: a violation, answered `frame_too_large` (closing with 1009);
//! - text over the message rate (a token taken per text frame within the size limit): a
//!   violation, answered `rate_limited`;
//! - text that does not parse: a violation, answered with the parse error (`bad_message`,
//!   `unknown_op`, `meta_invalid`);
//! - otherwise the request is run (`Session::execute`) and answered with exactly one reply.
//!
//! Every violation takes a strike token (`max_violations` in a burst, one back per second); a
//! violation with none left closes the connection with 1008 (1009 for an oversized frame)
//! instead of being answered. Refused text frames still get their `ref` echoed when it can be
//! read.

use std::time::Instant;

use occupancy_core::protocol::{Event, Ref, Request};
use occupancy_core::{Ending, Error, Rate, TokenBucket};

use crate::close_code;
use crate::settings::Settings;

/// One received WebSocket frame, as far as the gate cares (a text frame's text; the payload of
/// the others does not matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A text frame (already UTF-8, checked by the WebSocket layer).
    Text(&'a str),
    /// A binary frame: not part of the protocol.
    Binary,
    /// A WebSocket ping.
    Ping,
    /// A WebSocket pong.
    Pong,
    /// The peer's close frame, with its status code if it has one.
    Close(Option<u16>),
}

/// What the connection must do with one frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Nothing (ping, pong, or a frame after the connection was already ending).
    Ignore,
    /// The peer closed: stop, the session is disconnected as this says (its grace starts).
    Gone(Ending),
    /// Send this event (the error answering a violation); the connection stays open.
    Reply(Event),
    /// Run this request with [`Session::execute`](occupancy_core::Session::execute) and send its
    /// reply.
    Dispatch(Request),
    /// Too many violations: close the connection with this code and reason, then stop as
    /// [`Outcome::Gone`].
    Close {
        /// The WebSocket close code: [`close_code::POLICY`] or [`close_code::TOO_BIG`].
        code: u16,
        /// The close reason (short, fits in a close frame).
        reason: &'static str,
    },
}

/// What a close frame with this status code says about the session: 1000 (normal), 1001 (going
/// away: a page closed or navigated) and no code at all are a client leaving on purpose; any other
/// code (an error the client reports, a policy close) is treated as a lost connection.
pub(crate) fn ending_of(code: Option<u16>) -> Ending {
    match code {
        None | Some(1000) | Some(1001) => Ending::Closed,
        Some(_) => Ending::Lost,
    }
}

/// The per-connection frame gate: its two token buckets. The settings it applies are passed in
/// with each frame (the endpoint's; every connection keeps a gate for its whole life).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    rate: TokenBucket,
    strikes: TokenBucket,
    /// A `Gone` or `Close` was returned: every later frame is ignored.
    done: bool,
}

/// The message rate of `settings`.
fn message_rate(settings: &Settings) -> Rate {
    Rate::new(
        f64::from(settings.messages_per_second),
        settings.message_burst,
    )
}

/// The violations `settings` tolerate: `max_violations` at once, one forgiven per second.
fn strike_rate(settings: &Settings) -> Rate {
    Rate::new(1.0, settings.max_violations)
}

impl Gate {
    /// A gate for a connection opened at `now`, with full buckets.
    pub(crate) fn new(settings: &Settings, now: Instant) -> Self {
        Gate {
            rate: message_rate(settings).full(now),
            strikes: strike_rate(settings).full(now),
            done: false,
        }
    }

    /// Decides what `frame`, received at `now`, leads to under `settings` (the ones the gate was
    /// made with; see the module docs for the rules). After an [`Outcome::Gone`] or
    /// [`Outcome::Close`] every frame is [`Outcome::Ignore`]d.
    pub(crate) fn on_frame(
        &mut self,
        settings: &Settings,
        frame: Frame<'_>,
        now: Instant,
    ) -> Outcome {
        if self.done {
            return Outcome::Ignore;
        }
        let outcome = self.decide(settings, frame, now);
        if matches!(outcome, Outcome::Gone(_) | Outcome::Close { .. }) {
            self.done = true;
        }
        outcome
    }

    fn decide(&mut self, settings: &Settings, frame: Frame<'_>, now: Instant) -> Outcome {
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Binary => {
                return self.violation(
                    settings,
                    Event::Error {
                        r#ref: None,
                        code: "bad_message",
                        message:
                            "binary frames are not part of the protocol; send JSON text frames"
                                .into(),
                    },
                    close_code::POLICY,
                    now,
                );
            }
            // Pings are answered by the WebSocket layer; pongs only prove liveness.
            Frame::Ping | Frame::Pong => return Outcome::Ignore,
            Frame::Close(code) => return Outcome::Gone(ending_of(code)),
        };
        if text.len() > settings.max_frame_bytes {
            let message = format!(
                "frame of {} bytes is over the limit of {} bytes",
                text.len(),
                settings.max_frame_bytes
            );
            return self.violation(
                settings,
                Event::Error {
                    r#ref: ref_of(text),
                    code: "frame_too_large",
                    message,
                },
                close_code::TOO_BIG,
                now,
            );
        }
        if !self.rate.try_take(&message_rate(settings), now) {
            let err = Error::RateLimited {
                per_second: settings.messages_per_second,
            };
            let event = Event::error(ref_of(text), &err);
            return self.violation(settings, event, close_code::POLICY, now);
        }
        match Request::parse(text) {
            Ok(req) => Outcome::Dispatch(req),
            Err(e) => self.violation(settings, e.to_event(), close_code::POLICY, now),
        }
    }

    /// Answers a violation with its error, or closes the connection once the peer keeps
    /// violating past the limit.
    fn violation(&mut self, settings: &Settings, event: Event, code: u16, now: Instant) -> Outcome {
        if self.strikes.try_take(&strike_rate(settings), now) {
            return Outcome::Reply(event);
        }
        let reason = match code {
            close_code::TOO_BIG => "too many frames over the size limit",
            _ => "too many bad or rate-limited messages",
        };
        Outcome::Close { code, reason }
    }
}

/// The `ref` of a request that is refused before it is looked at (too large, over the rate),
/// so the client can still match the error to its request.
pub(crate) fn ref_of(text: &str) -> Option<Ref> {
    match Request::parse(text) {
        Ok(req) => req.r#ref,
        Err(e) => e.r#ref,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> Settings {
        Settings {
            max_frame_bytes: 256,
            messages_per_second: 2,
            message_burst: 2,
            max_violations: 2,
            ..Settings::default()
        }
    }

    fn code(o: &Outcome) -> &'static str {
        match o {
            Outcome::Reply(Event::Error { code, .. }) => code,
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn the_ref_of_a_refused_request_is_still_read() {
        assert_eq!(
            ref_of(r#"{"op":"join","room":"r","ref":5}"#),
            Some(Ref::Int(5))
        );
        assert_eq!(
            ref_of(r#"{"op":"nope","ref":"a"}"#),
            Some(Ref::Str("a".into()))
        );
        assert_eq!(ref_of("not json"), None);
    }

    #[test]
    fn control_frames_are_ignored_and_close_is_gone_and_final() {
        let t0 = Instant::now();
        let s = settings();
        let mut g = Gate::new(&s, t0);
        assert_eq!(g.on_frame(&s, Frame::Ping, t0), Outcome::Ignore);
        assert_eq!(g.on_frame(&s, Frame::Pong, t0), Outcome::Ignore);
        assert_eq!(
            g.on_frame(&s, Frame::Close(Some(1001)), t0),
            Outcome::Gone(Ending::Closed)
        );
        let ping = r#"{"op":"ping"}"#;
        assert_eq!(g.on_frame(&s, Frame::Text(ping), t0), Outcome::Ignore);
        assert_eq!(g.on_frame(&s, Frame::Close(None), t0), Outcome::Ignore);
    }

    #[test]
    fn a_close_frame_says_whether_the_client_left_on_purpose() {
        for (code, ending) in [
            (None, Ending::Closed),
            (Some(1000), Ending::Closed),
            (Some(1001), Ending::Closed),
            (Some(1002), Ending::Lost),
            (Some(1011), Ending::Lost),
            (Some(4000), Ending::Lost),
        ] {
            let t0 = Instant::now();
            let s = settings();
            let mut g = Gate::new(&s, t0);
            assert_eq!(
                g.on_frame(&s, Frame::Close(code), t0),
                Outcome::Gone(ending),
                "{code:?}"
            );
        }
    }

    #[test]
    fn violations_are_answered_then_close_and_refill_with_time() {
        let t0 = Instant::now();
        let s = settings();
        let mut g = Gate::new(&s, t0);
        assert_eq!(code(&g.on_frame(&s, Frame::Binary, t0)), "bad_message");
        assert_eq!(
            code(&g.on_frame(&s, Frame::Text("nope"), t0)),
            "bad_message"
        );
        // A second later one strike is forgiven.
        let t1 = t0 + Duration::from_secs(1);
        let big = format!(r#"{{"op":"ping","ref":7,"pad":"{}"}}"#, "x".repeat(300));
        match g.on_frame(&s, Frame::Text(&big), t1) {
            Outcome::Reply(Event::Error { r#ref, code, .. }) => {
                assert_eq!(code, "frame_too_large");
                assert_eq!(r#ref, Some(Ref::Int(7)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            g.on_frame(&s, Frame::Text(&big), t1),
            Outcome::Close {
                code: close_code::TOO_BIG,
                reason: "too many frames over the size limit"
            }
        );
        assert_eq!(g.on_frame(&s, Frame::Binary, t1), Outcome::Ignore);
    }

    #[test]
    fn the_rate_applies_to_text_frames_within_the_size_limit() {
        let t0 = Instant::now();
        let s = settings();
        let mut g = Gate::new(&s, t0);
        let ping = r#"{"op":"ping","ref":"a"}"#;
        for _ in 0..2 {
            assert!(matches!(
                g.on_frame(&s, Frame::Text(ping), t0),
                Outcome::Dispatch(_)
            ));
        }
        assert_eq!(code(&g.on_frame(&s, Frame::Text(ping), t0)), "rate_limited");
        // Half a second at 2/s: one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(matches!(
            g.on_frame(&s, Frame::Text(ping), t1),
            Outcome::Dispatch(_)
        ));
        // Strikes: 1 left, plus half a one.
        assert_eq!(code(&g.on_frame(&s, Frame::Text(ping), t1)), "rate_limited");
        assert_eq!(
            g.on_frame(&s, Frame::Text(ping), t1),
            Outcome::Close {
                code: close_code::POLICY,
                reason: "too many bad or rate-limited messages"
            }
        );
    }
}
