//! # occupancy-socketio
//!
//! The Socket.IO adapter of [`occupancy`](https://docs.rs/occupancy): attach a
//! [`Hub`] to a [socketioxide](https://docs.rs/socketioxide) 0.18
//! [`SocketIo`] and browsers learn, in real time, who holds a page ("room") and who waits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), occupancy_core::Error> {
//! let (layer, io) = socketioxide::SocketIo::new_layer();
//! occupancy_socketio::attach(&io, occupancy_core::Hub::new())?;
//! # let _ = layer; Ok(()) }
//! ```
//!
//! Serve `layer` with axum (or any tower server) behind an [`OriginLayer`]; see
//! `examples/socketio_documents.rs` in the repository for a complete server.
//!
//! ## The article's events (on by default)
//!
//! The frontend of the article this library grew from ("Tracking Active Users on Specific Routes
//! Using WebSockets") runs unchanged:
//!
//! | client → server | server → client |
//! |---|---|
//! | `join_document_room` with a room string | `is_occupied` with `"Its occupied"` when someone else holds it |
//! | `leave_document_room` with a room string (our extension: leave without disconnecting) | `is_released` with `"this is released"` to every socket of the next holder on a hand-over |
//!
//! …but with the library's rules, which fix the original's bugs: joining twice is harmless
//! (React StrictMode), leaving is explicit, a disconnect costs O(rooms of that socket), a holder
//! that silently drops is released when its pings stop, room ids are validated and limited, and
//! a disconnected holder keeps its place for the Hub's grace period (so a reload can resume).
//!
//! ## Rich events
//!
//! | client → server, with an acknowledgement | payload | ack |
//! |---|---|---|
//! | `occupancy:join` | `{"room": R, "meta": {...}, "ref": X}` or `R` | `joined` (`holding`, `position`, `version`, `holder`) |
//! | `occupancy:leave` | `{"room": R}` or `R` | `left` (`was_member`) |
//! | `occupancy:takeover` | `{"room": R}` or `R` | `joined` |
//! | `occupancy:watch` | `{"room": R}` or `R` | `watching` (the room's presence) |
//! | `occupancy:unwatch` | `{"room": R}` or `R` | `left` |
//! | `occupancy:update` | `{"room": R, "meta": {...}}` | `joined` (your unchanged place); `not_member` unless you stand in the room |
//! | `occupancy:active` | `{"room": R}` or `R` | `joined` (your place; refreshes the holder's idle clock); `not_member` unless you stand in the room |
//! | `occupancy:ping` | `{"ref": X}` or nothing | `pong` (a round trip through the socket's request queue) |
//!
//! Every ack is the protocol v1 object ([`occupancy_core::protocol::Event`]), with `"ev"`; a
//! failure is `{"ev": "error", "code": ..., "message": ...}` with a code from
//! [`occupancy_core::protocol::ERROR_CODES`], and nothing changed. Without an acknowledgement
//! callback, a failure is pushed as `occupancy:error` instead.
//!
//! Pushes: `occupancy:hello` (first, on every socket: `session`, `resume` token, `heartbeat_ms`,
//! `resumed`), then `occupancy:occupied`, `occupancy:released`, `occupancy:presence`,
//! `occupancy:displaced` (the protocol v1 events), to sockets that used a rich event. Every name
//! is configurable ([`EventNames`]).
//!
//! ## Identity, resume, disconnect
//!
//! Each socket is one Hub [`Session`]. Its principal and metadata come from the Socket.IO auth
//! payload through the [`Identify`] hook (default [`Anonymous`]: no principal, metadata from
//! `auth.meta`), or an async one ([`Occupancy::identify_async`]: a session store) that must answer
//! within [`Occupancy::identify_timeout`] (2 s; otherwise the socket is refused with
//! `unavailable`). A client that reconnects with `auth: { resume: <token from hello> }` within the
//! grace period gets its places back (the token is single use, and only resumes a session of the
//! principal the hook names for the new handshake — someone else's token is refused by the Hub,
//! changes nothing, and the socket starts a new session). A connection lost without a word (a
//! transport error, a ping timeout) keeps its places for the Hub's grace; a client that leaves on
//! purpose (`socket.disconnect()`, or a transport closed cleanly: a page closing) for its close
//! grace only (2 s by default, [`HubBuilder::close_grace`](occupancy_core::HubBuilder::close_grace)),
//! enough for a reload to resume; a disconnect by the server (`SocketRef::disconnect`) is a
//! sign-out and leaves at once. [`Occupancy::on_socket`] is the place for the
//! application's own per-socket handlers: it runs before the client is told it is connected.
//!
//! ## Liveness
//!
//! A client that freezes or vanishes without closing its connection (a laptop lid, a dead
//! network) is noticed by the engine's pings only, and its grace starts after that. socketioxide
//! pings every 25 s and waits 20 s for the answer: a frozen holder would block its room for
//! 45 s before its grace even starts. Configure the engine so a silent client is dropped within
//! 10 s, as the `socketio_documents` example does (and as the axum adapter does by default):
//!
//! ```
//! # use std::time::Duration;
//! let (layer, io) = socketioxide::SocketIo::builder()
//!     .ping_interval(Duration::from_secs(5))
//!     .ping_timeout(Duration::from_secs(5))
//!     .build_layer();
//! ```
//!
//! The `heartbeat_ms` of `occupancy:hello` is the engine's ping interval.
//!
//! ## Ordering
//!
//! socketioxide runs each event handler in its own task. This adapter does not let that reorder a
//! socket's requests: each socket's requests are queued in the order they arrived and run one at a
//! time (see the `conn` module), so `join` then `leave` always ends outside the room, and a
//! disconnect is handled after the requests before it. The queue is bounded
//! ([`Occupancy::queue_capacity`]) and each socket is rate limited ([`Occupancy::rate_limit`]);
//! a request over either gets a `rate_limited` error.
//!
//! ## Payload size
//!
//! A bad payload (a number, an object without `room`, `null`, an array, a 1 MB string, an
//! invalid room id) gets an error and stores nothing. To answer a 1 MB string with an error rather
//! than a closed connection, the engine must accept it: socketioxide's default `max_payload` for
//! polling is 100 KB (larger requests close the connection). The example sets 2 MiB for both
//! transports (`max_payload`, `ws_max_message_size`).
//!
//! ## Memory per connection
//!
//! Most of an idle Socket.IO connection's memory is the engine's. With 5,000 idle connections,
//! each in one room (RSS per connection, `loadgen/src/bin/idle_conns.rs`): socketioxide alone,
//! 28 KiB; with this adapter, 33 KiB, at socketioxide's defaults. Two things bring it down:
//!
//! - Serve behind [`OriginLayer`]: it passes each request on with its own copy of the head. hyper
//!   parses header values and the URI as slices of the connection's read buffer (8 to 16 KiB),
//!   and socketioxide keeps the head of the request that opened a session for the session's whole
//!   life, so the whole buffer stayed with every connection (7 KiB of RSS each).
//! - `SocketIo::builder().ws_read_buffer_size(512)` (default 4096): the WebSocket read buffer,
//!   allocated for each connection's life; larger frames still arrive whole (3.5 KiB each).
//!
//! Together, 33 KiB became 22 KiB (socketioxide's own floor, with both: 17.4 KiB). Leave
//! `max_buffer_size` (the engine's packet queue per socket) alone: its capacity does not change an
//! idle connection's memory (the queue allocates in fixed blocks), and a small one closes
//! connections that receive a burst.
//!
//! ## Logging
//!
//! What a socket's requests log, the Hub's events included, and its connect and end are logged
//! in an `info` span named `occupancy_connection` with fields `session` (the session id, as in
//! `occupancy:hello`) and `principal` (absent when anonymous), as in the axum adapter. The span
//! is opened for each of those steps, not held for the socket's life (a span held open costs the
//! subscriber its record per idle socket).
//!
//! ## Serving
//!
//! Set `TCP_NODELAY` on the listener: `axum::serve` leaves Nagle's algorithm on, which delayed a
//! hand-over by ~40 ms on small event frames:
//!
//! ```ignore
//! use axum::serve::ListenerExt;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?
//!     .tap_io(|tcp| { let _ = tcp.set_nodelay(true); });
//! axum::serve(listener, app).await?;
//! ```
#![warn(missing_docs)]
// On docs.rs (nightly, `--cfg docsrs`): badges saying which feature an item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod conn;
mod identify;
mod names;
mod origin;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use occupancy_core::{Error, Hub, Session};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use identify::IdentifyHook;
pub use identify::{Anonymous, Handshake, Identify};
pub use names::EventNames;
pub use occupancy_core::Identity;
pub use occupancy_core::OriginPolicy;
pub use origin::{OriginLayer, OriginService};

/// Attaches `hub` to the root namespace `/` of `io` with the defaults: the article's events and
/// the rich events, anonymous sockets. Same as `Occupancy::new(hub).attach(io)`.
pub fn attach(io: &SocketIo, hub: Hub) -> Result<(), Error> {
    Occupancy::new(hub).attach(io)
}

/// A per-socket rate limit: a token bucket of `burst` requests refilled at `per_second`. With the
/// `serde` feature it deserializes from a configuration file (fields optional, unknown ones
/// refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once.
    pub burst: u32,
}

impl RateLimit {
    /// The core's token bucket constants (the bucket both adapters use).
    pub(crate) fn rate(&self) -> occupancy_core::Rate {
        occupancy_core::Rate::new(f64::from(self.per_second), self.burst)
    }
}

impl Default for RateLimit {
    /// 20 requests per second, bursts of 40 (as the axum adapter).
    fn default() -> Self {
        RateLimit {
            per_second: 20,
            burst: 40,
        }
    }
}

/// Called for every socket in its connect middleware, after the adapter registered its handlers
/// and before the client is told it is connected (so handlers registered here miss nothing).
pub(crate) type SocketHook = Arc<dyn Fn(&SocketRef, &Session) + Send + Sync>;

/// Configures and attaches the adapter: [`Occupancy::new`], the settings, then
/// [`Occupancy::attach`].
///
/// ```no_run
/// # async fn demo() -> Result<(), occupancy_core::Error> {
/// use occupancy_socketio::{EventNames, Occupancy};
/// let hub = occupancy_core::Hub::new();
/// let (layer, io) = socketioxide::SocketIo::new_layer();
/// Occupancy::new(hub)
///     .namespace("/documents")
///     .events(EventNames::with_prefix("doc:"))
///     .identify(|h: &occupancy_socketio::Handshake<'_>| {
///         let name = h.auth.get("name").and_then(|n| n.as_str()).unwrap_or("guest");
///         Ok(occupancy_socketio::Identity {
///             principal: None,
///             meta: occupancy_core::Meta::from_value(serde_json::json!({ "name": name }))
///                 .map_err(|e| e.to_string())?,
///         })
///     })
///     .attach(&io)?;
/// # let _ = layer; Ok(()) }
/// ```
pub struct Occupancy {
    hub: Hub,
    namespace: Cow<'static, str>,
    names: EventNames,
    article: bool,
    identify: IdentifyHook,
    identify_timeout: Duration,
    queue: usize,
    rate: RateLimit,
    on_socket: Option<SocketHook>,
}

impl fmt::Debug for Occupancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Occupancy")
            .field("hub", &self.hub)
            .field("namespace", &self.namespace)
            .field("names", &self.names)
            .field("article", &self.article)
            .field("queue", &self.queue)
            .field("rate", &self.rate)
            .field("on_socket", &self.on_socket.is_some())
            .finish_non_exhaustive()
    }
}

impl Occupancy {
    /// The defaults: namespace `/`, [`EventNames::default`], the article's events on,
    /// [`Anonymous`] identities, a queue of 16 requests per socket, [`RateLimit::default`].
    pub fn new(hub: Hub) -> Self {
        Occupancy {
            hub,
            namespace: Cow::Borrowed("/"),
            names: EventNames::default(),
            article: true,
            identify: IdentifyHook::Sync(Arc::new(Anonymous)),
            identify_timeout: Duration::from_secs(2),
            queue: 16,
            rate: RateLimit::default(),
            on_socket: None,
        }
    }

    /// The Socket.IO namespace (default `/`).
    pub fn namespace(mut self, namespace: impl Into<Cow<'static, str>>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The event names.
    pub fn events(mut self, names: EventNames) -> Self {
        self.names = names;
        self
    }

    /// Whether the article's events (`join_document_room`, `leave_document_room`, `is_occupied`,
    /// `is_released`) are served (default true).
    pub fn article_events(mut self, on: bool) -> Self {
        self.article = on;
        self
    }

    /// Who a socket is: its principal and metadata, from the handshake (default [`Anonymous`]).
    pub fn identify(mut self, hook: impl Identify) -> Self {
        self.identify = IdentifyHook::Sync(Arc::new(hook));
        self
    }

    /// Like [`Occupancy::identify`], for a hook that has to wait (a session store, a token check).
    /// The closure gets the handshake and returns a `'static` future: copy what it needs (a
    /// token from `auth`, a cookie) out of the handshake before the `async move` block. A hook
    /// that takes longer than [`Occupancy::identify_timeout`] (2 s) is abandoned: the client's
    /// `connect_error` gets `"unavailable: ..."` and nothing is started.
    ///
    /// ```
    /// # use occupancy_socketio::{Handshake, Identity, Occupancy};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let occupancy = Occupancy::new(occupancy_core::Hub::new()).identify_async(|h: &Handshake<'_>| {
    ///     let token = h.auth.get("token").and_then(|t| t.as_str()).map(str::to_owned);
    ///     async move {
    ///         // let user = sessions.lookup(token?).await?;
    ///         let user = token.ok_or("missing token")?;
    ///         Ok(Identity { principal: Some(user), ..Identity::default() })
    ///     }
    /// });
    /// # let _ = occupancy; }
    /// ```
    pub fn identify_async<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(&Handshake<'_>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, String>> + Send + 'static,
    {
        self.identify = IdentifyHook::Async(Arc::new(move |h: &Handshake<'_>| Box::pin(hook(h))));
        self
    }

    /// How long the identify hook may take before the connection is refused with
    /// `unavailable` (default 2 s; more than zero, at most 60 s).
    pub fn identify_timeout(mut self, d: Duration) -> Self {
        self.identify_timeout = d;
        self
    }

    /// How many requests of one socket may wait for the ones before them (default 16, at least
    /// 1). Beyond it a request is answered `rate_limited`.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue = n;
        self
    }

    /// The per-socket rate limit (default [`RateLimit::default`]).
    pub fn rate_limit(mut self, rate: RateLimit) -> Self {
        self.rate = rate;
        self
    }

    /// Called for every socket before the client is told it is connected, with its session: the
    /// place to register the application's own handlers (`s.on(...)`) without the connect race.
    pub fn on_socket(
        mut self,
        hook: impl Fn(&SocketRef, &Session) + Send + Sync + 'static,
    ) -> Self {
        self.on_socket = Some(Arc::new(hook));
        self
    }

    /// Registers the namespace on `io` (replacing any handler it had). [`Error::Config`] when two
    /// incoming events share a name, the queue is empty or the rate limit is zero.
    pub fn attach(self, io: &SocketIo) -> Result<(), Error> {
        let mut incoming: Vec<&str> = (self.names.incoming(self.article).into_iter())
            .map(|(name, ..)| name.as_ref())
            .collect();
        incoming.sort_unstable();
        if let Some(w) = incoming.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!(
                "two incoming Socket.IO events are both named {:?}",
                w[0]
            )));
        }
        if self.queue == 0 {
            return Err(Error::Config("queue_capacity must be at least 1".into()));
        }
        if self.identify_timeout.is_zero() || self.identify_timeout > Duration::from_secs(60) {
            return Err(Error::Config(format!(
                "identify_timeout is {:?}; it must be more than zero and at most 60 s",
                self.identify_timeout
            )));
        }
        if self.rate.per_second == 0 || self.rate.burst == 0 {
            return Err(Error::Config(
                "rate_limit per_second and burst must be at least 1".into(),
            ));
        }
        let heartbeat_ms = io.config().engine_config.ping_interval.as_millis() as u64;
        conn::register(
            io,
            self.namespace,
            conn::Shared {
                hub: self.hub,
                names: self.names,
                article: self.article,
                identify: self.identify,
                identify_timeout: self.identify_timeout,
                queue: self.queue,
                rate: self.rate,
                heartbeat_ms,
                on_socket: self.on_socket,
            },
        );
        Ok(())
    }
}
