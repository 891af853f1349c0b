//! # occupancy-axum
//!
//! The axum 0.8 WebSocket adapter of [`occupancy`](https://docs.rs/occupancy): who is on a page
//! ("room") and who came first, spoken as protocol v1 (JSON text frames) to browsers and other
//! clients. It translates frames to [`Hub`] calls and notices to frames; every queue rule is the
//! Hub's. What lives here are the transport's concerns: the Origin check, who is connecting (your
//! hook), liveness (server pings), frame size, message rate, and resume on reconnect.
//!
//! ## Mounting
//!
//! A ready `Router` to merge into your app:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use occupancy_axum::{Endpoint, Hub, Identity};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::new();
//! let occupancy = Endpoint::builder(hub)
//!     .identify(|req: &axum::http::request::Parts| {
//!         // Your session cookie or token decides who this is (see "Who is connecting").
//!         Ok(Identity::anonymous())
//!     })
//!     .build()
//!     .expect("valid settings");
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .merge(occupancy.router("/occupancy"));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // TCP_NODELAY on every connection: see "Serve with TCP_NODELAY" below.
//! axum::serve(occupancy_axum::nodelay(listener), app).await
//! # }
//! ```
//!
//! Or the [`handler`] with the [`Endpoint`] as state — with your own state type, implement
//! `FromRef<AppState> for Endpoint`:
//!
//! ```
//! # use axum::{Router, routing::get};
//! # use occupancy_axum::{Endpoint, Hub};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app: Router = Router::new()
//!     .route("/occupancy", get(occupancy_axum::handler))
//!     .with_state(Endpoint::new(Hub::new()));
//! # }
//! ```
//!
//! Or call [`Endpoint::upgrade`] from a handler of your own.
//!
//! ## Serve with TCP_NODELAY
//!
//! `axum::serve` leaves Nagle's algorithm on. A WebSocket writes small frames and waits for the
//! answer, so each one then waits for the peer's delayed ACK: a hand-over measured 42 ms instead
//! of well under a millisecond. Serve through [`nodelay`] (`axum::serve(nodelay(listener), app)`),
//! or tap the listener yourself:
//! `axum::serve::ListenerExt::tap_io(listener, |tcp| { let _ = tcp.set_nodelay(true); })`.
//!
//! ## Who is connecting
//!
//! [`EndpointBuilder::identify`] (or [`EndpointBuilder::identify_async`]) gets the upgrade
//! request's head — headers, cookies, query, and the extensions your own auth middleware set —
//! and returns an [`Identity`]: the principal (user id; all connections of one principal are one
//! occupant, so two tabs hold together) and public metadata shown to the others (a display name).
//! It may refuse with a [`Rejection`], whose status is the response (401, 403, ...); a hook that
//! does not answer within [`Settings::identify_timeout`] (2 s) is answered **503** and starts
//! nothing. The default makes every connection anonymous. Whether a principal may join, take over
//! or watch a room is the Hub's authorization hook ([`HubBuilder::authorize`], or
//! [`HubBuilder::authorize_async`] for a policy that has to wait); a refusal is a `forbidden`
//! error, a hook that does not answer in time an `unavailable` one.
//!
//! ## Origins
//!
//! CORS does not protect a WebSocket upgrade: any site's page can open a WebSocket to your server,
//! and the browser sends your users' cookies along (cross-site WebSocket hijacking). A browser
//! always sends `Origin` on an upgrade; an Origin the [`OriginPolicy`] does not allow is refused
//! with **403 before the upgrade**. The default allows only the request's own host (`Origin`'s
//! host and port equal to `Host`); list other origins with [`EndpointBuilder::allowed_origins`]
//! (for example a dev server on `http://localhost:5173`, or behind a proxy that rewrites `Host`).
//! A request without `Origin` is not from a browser and is allowed: it cannot carry a victim's
//! cookies.
//!
//! ## Protocol v1
//!
//! JSON text frames, one message per frame. Client → server messages have an `op`; `ref` (an
//! integer, or a string of at most 64 bytes) is optional and echoed in the reply, so replies can
//! be matched to requests. Unknown fields are ignored. Server → client messages have an `ev`.
//! Wherever a person appears it is `{"id": ..., "meta": {...}}`: `id` is the principal, or `~`
//! and the session id for an anonymous occupant. Every notice carries the room's `version`, which
//! grows with every change of the room: drop a notice older than what you have.
//!
//! ### Requests and their replies
//!
//! | op | request | reply |
//! |---|---|---|
//! | `join` | `{"op":"join","room":"document-1","meta":{"name":"Bob"},"ref":1}` (`meta` optional: overrides the identify hook's for this room) | `joined` |
//! | `leave` | `{"op":"leave","room":"document-1","ref":2}` | `left` |
//! | `takeover` | `{"op":"takeover","room":"document-1","ref":3}` (you must have joined) | `joined` |
//! | `watch` | `{"op":"watch","room":"document-1","ref":4}` | `watching` |
//! | `unwatch` | `{"op":"unwatch","room":"document-1","ref":5}` | `left` |
//! | `update` | `{"op":"update","room":"document-1","meta":{"name":"Bob","status":"editing"},"ref":7}` (`meta` required; you must stand in the room) | `joined` (your unchanged place) |
//! | `active` | `{"op":"active","room":"document-1","ref":8}` (the page sends it on user input, throttled; you must stand in the room) | `joined` (your place; refreshes the holder's idle clock) |
//! | `ping` | `{"op":"ping","ref":6}` | `pong` |
//!
//! `join` and `leave` are idempotent: joining a room you are in returns your place and tells
//! nobody anything; leaving a room you are not in answers `"was_member":false`. `update` replaces
//! your metadata in the room without leaving it ("viewing" → "editing"): everyone whose view shows
//! you (everyone, when you hold or are among the first few listed) gets a `presence`; the same
//! metadata again changes nothing. `active` tells nobody anything: with an idle timeout
//! ([`HubBuilder::idle_timeout`](occupancy_core::HubBuilder::idle_timeout)), a holder none of whose
//! connections joined, updated or sent `active` for that long is displaced (`"reason":"idle"`) as
//! soon as someone waits; `join` and `update` refresh the clock too.
//!
//! Every person is `{"id","meta","since"}`: `since` is when that occupant entered the room's line
//! (Unix time in milliseconds, server clock); `presence` and `watching` carry `held_since`, when
//! the holder was granted the room (`null` when nobody holds it).
//!
//! ### Events
//!
//! | ev | when | example |
//! |---|---|---|
//! | `hello` | first frame of every connection | `{"ev":"hello","session":"5f0c9a3e1b2d4c6f","resume":"0f8b5c2e9d1a47b3a6c4e2f1d0b9a8c7","protocol":1,"heartbeat_ms":4000,"resumed":false}` |
//! | `joined` | reply to `join`, `takeover`, `update` and `active`; `position` 0 = holding, 1 = next in line | `{"ev":"joined","ref":1,"room":"document-1","holding":false,"position":1,"version":7,"holder":{"id":"ann","meta":{"name":"Ann"},"since":1764460800000}}` |
//! | `occupied` | you joined and someone else holds the room (the article's `is_occupied`) | `{"ev":"occupied","room":"document-1","version":7,"holder":{"id":"ann","meta":{"name":"Ann"},"since":1764460800000},"position":1}` |
//! | `released` | you now hold the room (the article's `is_released`): exactly once per hand-over, to every connection of the new holder | `{"ev":"released","room":"document-1","version":9}` |
//! | `presence` | the room changed: holder, your place (absent for a watcher), how many wait, the first few occupants | `{"ev":"presence","room":"document-1","version":9,"holder":{"id":"bob","meta":{"name":"Bob"},"since":1764460805000},"position":0,"waiting":1,"occupants":[{"id":"bob","meta":{"name":"Bob"},"since":1764460805000},{"id":"~5f0c9a3e1b2d4c6f","meta":{},"since":1764460812000}],"held_since":1764460930000}` |
//! | `displaced` | you no longer hold the room and are now `position` in line; `reason` says why: `"takeover"` (`by` took it over), `"idle"` (you were idle while someone waited: `by` is the next in line, who got it), `"server"` (the application forced a release) | `{"ev":"displaced","room":"document-1","version":8,"by":{"id":"bob","meta":{"name":"Bob"},"since":1764460805000},"position":1,"reason":"idle"}` |
//! | `left` | reply to `leave` and `unwatch` | `{"ev":"left","ref":2,"room":"document-1","was_member":true}` |
//! | `watching` | reply to `watch`, with the room's presence | `{"ev":"watching","ref":4,"room":"document-1","version":9,"holder":{"id":"bob","meta":{"name":"Bob"},"since":1764460805000},"waiting":1,"occupants":[{"id":"bob","meta":{"name":"Bob"},"since":1764460805000},{"id":"ann","meta":{"name":"Ann"},"since":1764460800000}],"held_since":1764460930000}` |
//! | `pong` | reply to `ping` | `{"ev":"pong","ref":6}` |
//! | `error` | a request failed and changed nothing; `ref` when the request's could be read | `{"ev":"error","ref":3,"code":"not_in_room","message":"not in this room; join it before taking it over"}` |
//!
//! A join into an empty room answers `joined` with `"holding":true` and `presence`; a join behind
//! a holder answers `joined`, then `occupied` and `presence`; the others in the room whose view
//! changed get `presence`. When the holder leaves or is gone, the next in line gets `released`
//! and `presence`, and everyone else whose place moved gets `presence`.
//!
//! ### Error codes
//!
//! Each is an `error` event; the connection stays open (see "Limits" for when it does not).
//!
//! | code | cause | example |
//! |---|---|---|
//! | `bad_message` | not JSON, not an object, a missing or wrong-typed field, a binary frame | `{"ev":"error","code":"bad_message","message":"not valid JSON: expected value at line 1 column 1"}` |
//! | `unknown_op` | `op` is not one of the eight | `{"ev":"error","ref":2,"code":"unknown_op","message":"unknown op \"fly\"; expected one of join, leave, takeover, watch, unwatch, update, active, ping"}` |
//! | `frame_too_large` | a frame over `max_frame_bytes` (16 KiB); not processed | `{"ev":"error","ref":3,"code":"frame_too_large","message":"frame of 20000 bytes is over the limit of 16384 bytes"}` |
//! | `room_invalid` | room id empty, too long (256 bytes by default) or with control characters | `{"ev":"error","ref":4,"code":"room_invalid","message":"invalid room id: room id is empty; use 1 to the configured maximum bytes of UTF-8 without control characters"}` |
//! | `too_many_rooms` | this connection already joined or watches the maximum (32) | `{"ev":"error","ref":5,"code":"too_many_rooms","message":"this connection is already in 32 rooms, the limit; leave one first"}` |
//! | `room_full` | the room's line is at its maximum length | `{"ev":"error","ref":6,"code":"room_full","message":"room is full (100000 occupants)"}` |
//! | `meta_too_large` | `meta` over the limit (1 KiB of JSON) | `{"ev":"error","ref":7,"code":"meta_too_large","message":"metadata is 2000 bytes of JSON, the limit is 1024"}` |
//! | `meta_invalid` | `meta` is not a JSON object | `{"ev":"error","ref":8,"code":"meta_invalid","message":"meta must be a JSON object (or null)"}` |
//! | `not_in_room` | `takeover` of a room you have not joined | `{"ev":"error","ref":9,"code":"not_in_room","message":"not in this room; join it before taking it over"}` |
//! | `not_member` | `update` or `active` of a room this connection does not stand in | `{"ev":"error","ref":14,"code":"not_member","message":"not a member of this room; join it first"}` |
//! | `forbidden` | the Hub's authorization hook refused | `{"ev":"error","ref":10,"code":"forbidden","message":"forbidden: only editors take over"}` |
//! | `rate_limited` | over the message rate (20/s, bursts of 40); not processed | `{"ev":"error","ref":11,"code":"rate_limited","message":"too many messages; slow down (limit 20/s)"}` |
//! | `unavailable` | the backend (Redis) cannot be reached; retry | `{"ev":"error","ref":12,"code":"unavailable","message":"backend unavailable: connection refused; retry later"}` |
//! | `resume_invalid` | after `hello` on a connection whose `?resume=` token was unknown, used or expired: this is a new session | `{"ev":"error","code":"resume_invalid","message":"resume token is unknown, used or expired; connect as a new session"}` |
//! | `unknown_session` | the session is closed (a request racing the connection's end) | `{"ev":"error","ref":13,"code":"unknown_session","message":"unknown or closed session"}` |
//!
//! ## Resume
//!
//! `hello` carries a resume token: 128 random bits, in hex. When the connection ends, the Hub
//! keeps the session's places for a while: after a close frame with code 1000, 1001 (what a
//! browser sends when a page closes, reloads or navigates away) or no code, for the close grace
//! (2 s by default, [`HubBuilder::close_grace`](occupancy_core::HubBuilder::close_grace): enough
//! for a reload, and a closed page hands over quickly); after any other ending (a network drop,
//! a reset, another close code), for the grace (5 s by default). Reconnecting to
//! `…/occupancy?resume=<token>` within it takes them back: `hello` says
//! `"resumed":true`, the session id is the same, a `presence` follows for each kept room, and a
//! new token is issued. A token works once; after use or expiry it gets a new session and a
//! `resume_invalid` error right after `hello` (`"resumed":false`: join your rooms again). A token
//! presented with another principal than its session's is refused the same way, and that session
//! is ended rather than handed over.
//!
//! ## Liveness
//!
//! The server sends a WebSocket ping every [`Settings::ping_interval`] (4 s); browsers answer by
//! themselves. A connection from which nothing arrives for [`Settings::liveness_timeout`] (10 s)
//! is dropped, and because it already stayed silent longer than the grace, its session is closed
//! at once: the rooms it held go to the next in line (Socket.IO's defaults take 45 s). A client
//! that closes its connection gets the close grace or the grace (see Resume). Browsers cannot send WebSocket pings, so the
//! `ping` op exists for clients that want to detect a dead server; `heartbeat_ms` in `hello` is a
//! sensible interval for it.
//!
//! ## Limits
//!
//! Room rules (rooms per connection, occupants per room, room id length, metadata size) are the
//! Hub's [`Limits`](occupancy_core::Limits). The adapter adds, per connection ([`Settings`]): the
//! frame size (`frame_too_large` above 16 KiB; above 64 KiB the frame is not even read and the
//! connection is closed with 1009) and the message rate (`rate_limited` above 20 messages/s with
//! bursts of 40). A peer that keeps violating — more than 10 `bad_message`, `unknown_op`,
//! `frame_too_large` or `rate_limited` in a burst, one forgiven per second — is closed with 1008
//! (1009 for oversized frames) and a reason. A rejected request changes nothing, and other
//! connections never notice.
//!
//! Memory: an idle connection holding one room costs about 4 KiB of server RSS (3.99 KiB with
//! 10,000 connections to the `documents` example, `loadgen/src/bin/idle_conns.rs`), of which
//! 1.8 KiB is the bare axum WebSocket (`loadgen/src/bin/bare_ws.rs`, same buffer settings) and
//! the rest the Hub's session and room and the connection's task. The read buffer is 512 bytes (it grows
//! for a larger frame; [`Settings::read_buffer_bytes`]); the write buffer (8 KiB) holds nothing
//! while idle. The connection's task is kept small: a Hub request, a close and the session's
//! start and end are boxed while they run (one allocation per request), so the task an idle
//! connection keeps is 1,152 bytes where the bare socket's is 640.
//!
//! ## Close codes
//!
//! | code | meaning |
//! |---|---|
//! | 1000 | normal |
//! | 1008 | too many violations, or a slow consumer (the Hub's notice buffer overflowed) |
//! | 1009 | a frame over the hard size limit, or too many over the size limit |
//! | 1011 | the session could not be started, or ended for another reason of the Hub's |
//! | 1013 | the backend is unavailable: reconnect later (with the same resume token) |
//! | 4000 | the session was resumed by another connection |
//! | 4001 | nothing arrived within the liveness timeout |
//!
//! ## Logging
//!
//! The adapter and the Hub log through [`tracing`](https://docs.rs/tracing). What a connection
//! logs (its requests, the Hub's events inside them, its close and end) is logged in an `info`
//! span named `occupancy_connection` with fields `session` (the session id, as in `hello`) and
//! `principal` (absent when anonymous), so a `fmt` subscriber prints
//! `occupancy_connection{session=… principal=…}` before each line. The span is opened for each
//! of those steps, not held for the connection's life: a span held open costs the subscriber its
//! record per idle connection (about 0.55 KiB with `tracing_subscriber::fmt`).
//!
//! ## A browser client
//!
//! The npm package `occupancy-client` (the repository's `clients/js/`, TypeScript) is the client:
//! requests return Promises matched by `ref`, it reconnects with backoff and resumes with the
//! token kept in sessionStorage (a reload keeps your place), rejoins your rooms when the session
//! could not be resumed, keeps a per-room view (stale while the connection is down: it never
//! shows a hold it cannot vouch for) and emits `room` events; it has a Socket.IO variant and
//! React hooks. The `documents` example serves its build as `occupancy.js`, a small
//! dependency-free ES module (`examples/static/`).
#![warn(missing_docs)]
// On docs.rs (nightly, `--cfg docsrs`): badges saying which feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod close_code;
mod connection;
mod endpoint;
mod frames;
mod identity;
mod listener;
mod origin;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use endpoint::{Endpoint, EndpointBuilder, handler};
pub use identity::{Rejection, query_param};
pub use listener::{NodelayListener, nodelay};
pub use occupancy_core::Identity;
pub use occupancy_core::OriginPolicy;
pub use settings::Settings;

pub use occupancy_core::protocol;
pub use occupancy_core::{Hub, HubBuilder, Meta};

#[cfg(test)]
mod tests {
    use occupancy_core::protocol::ERROR_CODES;
    use serde_json::Value;

    const DOCS: &str = include_str!("lib.rs");

    /// Every JSON example in the tables above parses, and every event and error code has one.
    #[test]
    fn the_docs_show_every_event_and_error_code() {
        let examples: Vec<Value> = DOCS
            .lines()
            .filter(|l| l.starts_with("//! |"))
            .flat_map(|l| l.split('`'))
            .filter(|s| s.starts_with('{'))
            .map(|s| serde_json::from_str(s).unwrap_or_else(|e| panic!("bad example {s}: {e}")))
            .collect();
        for ev in [
            "hello",
            "joined",
            "occupied",
            "released",
            "presence",
            "displaced",
            "left",
            "watching",
            "pong",
            "error",
        ] {
            assert!(examples.iter().any(|e| e["ev"] == ev), "no example of {ev}");
        }
        for (code, _) in ERROR_CODES {
            assert!(
                examples.iter().any(|e| e["code"] == *code),
                "no example of {code}"
            );
        }
        for op in occupancy_core::protocol::OpKind::ALL {
            assert!(
                examples.iter().any(|e| e["op"] == op.as_str()),
                "no example of {op:?}"
            );
        }
    }
}
