//! The mountable part: [`Endpoint`] (the Hub plus the adapter's settings and hooks), the axum
//! [`handler`], and [`Endpoint::router`] for a ready `Router`. Everything here happens before the
//! upgrade: the Origin check, the identify hook, the WebSocket limits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use occupancy_core::{Error, Hub};

use crate::connection;
use crate::identity::{IdentifyFn, Rejection, anonymous_hook, query_param};
use crate::settings::Settings;
use occupancy_core::Identity;
use occupancy_core::OriginPolicy;

/// A protocol v1 WebSocket endpoint on a [`Hub`]. Cheap to clone (an `Arc` inside); use it as
/// axum state with [`handler`], or get a ready `Router` from [`Endpoint::router`].
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// What the connections share (the Hub, the settings).
    pub(crate) conn: Arc<connection::Shared>,
    origins: OriginPolicy,
    identify: IdentifyFn,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("settings", &self.inner.conn.settings)
            .field("origins", &self.inner.origins)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with the defaults: same-host origins only, every connection anonymous, the
    /// default [`Settings`].
    pub fn new(hub: Hub) -> Self {
        EndpointBuilder::new(hub)
            .build()
            .expect("the default settings are valid")
    }

    /// A builder, to set the hooks and settings.
    pub fn builder(hub: Hub) -> EndpointBuilder {
        EndpointBuilder::new(hub)
    }

    /// The Hub behind this endpoint.
    pub fn hub(&self) -> &Hub {
        &self.inner.conn.hub
    }

    /// The transport settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.conn.settings
    }

    /// A `Router` serving this endpoint at `path` (e.g. `"/occupancy"`), to `merge` into your
    /// app. Its state is already set, so it merges into a `Router` of any state type.
    pub fn router<S>(&self, path: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route(path, get(handler))
            .with_state(self.clone())
    }

    /// Handles one upgrade request: checks the Origin (403), identifies the caller (the hook's
    /// status), then upgrades and runs the connection. For use in your own handler when
    /// [`handler`] does not fit.
    pub async fn upgrade(&self, req: Request) -> Response {
        let (mut parts, _body) = req.into_parts();
        if let Err(reason) = crate::origin::check(&self.inner.origins, &parts.headers) {
            tracing::info!(%reason, "refused a WebSocket upgrade");
            return (StatusCode::FORBIDDEN, reason).into_response();
        }
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(rejection) => return rejection.into_response(),
        };
        let limit = self.inner.conn.settings.identify_timeout;
        let identity = match tokio::time::timeout(limit, (self.inner.identify)(&parts)).await {
            Ok(Ok(identity)) => identity,
            Ok(Err(rejection)) => return rejection.into_response(),
            Err(_) => {
                tracing::warn!(?limit, "the identify hook did not answer in time");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the identify hook did not answer within {limit:?}; try again"),
                )
                    .into_response();
            }
        };
        let resume = query_param(&parts, "resume");
        let s = &self.inner.conn.settings;
        let inner = self.inner.conn.clone();
        let starting = connection::starting(inner.clone(), identity, resume);
        // The read buffer is allocated for the connection's whole life (tungstenite reads in
        // chunks of its size; a larger frame grows it), so its size is most of what an idle
        // connection costs: keep it small (`Settings::read_buffer_bytes`; the crate docs give
        // the measured figures). The write buffer costs nothing while idle. The session is
        // started inside the task, from a boxed future made here, so that the task an idle
        // connection keeps does not carry the start's state.
        ws.max_message_size(s.close_frame_bytes)
            .max_frame_size(s.close_frame_bytes)
            .read_buffer_size(s.read_buffer_bytes)
            .write_buffer_size(s.write_buffer_bytes)
            .on_upgrade(move |socket| connection::run(socket, inner, starting))
    }
}

/// The axum handler: `Router::new().route("/occupancy", get(handler)).with_state(endpoint)`.
/// With your own state type, implement `FromRef<YourState> for Endpoint`.
pub async fn handler(State(endpoint): State<Endpoint>, req: Request) -> Response {
    endpoint.upgrade(req).await
}

/// Builds an [`Endpoint`]: see [`Endpoint::builder`].
pub struct EndpointBuilder {
    hub: Hub,
    settings: Settings,
    origins: OriginPolicy,
    identify: IdentifyFn,
}

impl EndpointBuilder {
    fn new(hub: Hub) -> Self {
        EndpointBuilder {
            hub,
            settings: Settings::default(),
            origins: OriginPolicy::default(),
            identify: anonymous_hook(),
        }
    }

    /// Who is connecting, from the upgrade request: its headers (cookies, `Authorization`), its
    /// query and its extensions (what your auth middleware put there). Return an [`Identity`]
    /// (principal and public metadata) or a [`Rejection`] (its status is the response).
    ///
    /// ```
    /// # use occupancy_axum::{Endpoint, Identity, Rejection};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let endpoint = Endpoint::builder(occupancy_core::Hub::new())
    ///     .identify(|req: &axum::http::request::Parts| {
    ///         let user = req.headers.get("x-user").and_then(|v| v.to_str().ok());
    ///         match user {
    ///             Some(user) => Ok(Identity::user(user).with_name(user)),
    ///             None => Err(Rejection::unauthorized("sign in first")),
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = endpoint; }
    /// ```
    pub fn identify<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Result<Identity, Rejection> + Send + Sync + 'static,
    {
        self.identify = Arc::new(move |parts: &Parts| {
            let result = f(parts);
            Box::pin(async move { result })
        });
        self
    }

    /// Like [`EndpointBuilder::identify`], for a hook that has to wait (a session store, a token
    /// check). The closure gets the request head and returns a `'static` future: copy what it
    /// needs (a cookie value) out of the head before the `async move` block. A hook that takes
    /// longer than [`Settings::identify_timeout`] (2 s) is abandoned: the upgrade is answered
    /// 503 and nothing is started.
    pub fn identify_async<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, Rejection>> + Send + 'static,
    {
        self.identify = Arc::new(move |parts: &Parts| Box::pin(f(parts)));
        self
    }

    /// Which browser origins may connect (default: same host only). See [`OriginPolicy`].
    pub fn origins(mut self, policy: OriginPolicy) -> Self {
        self.origins = policy;
        self
    }

    /// Shorthand for [`OriginPolicy::allow`]: exactly these origins. A malformed origin is an
    /// [`Error::Config`].
    pub fn allowed_origins<I, S>(self, origins: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(self.origins(OriginPolicy::allow(origins)?))
    }

    /// All transport settings at once.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Server ping interval and the liveness timeout (see [`Settings`]).
    pub fn liveness(mut self, ping_interval: Duration, timeout: Duration) -> Self {
        self.settings.ping_interval = ping_interval;
        self.settings.liveness_timeout = timeout;
        self
    }

    /// Largest accepted frame (answered with `frame_too_large` above it) and the size above which
    /// the connection is closed with 1009.
    pub fn frame_limits(mut self, max_frame_bytes: usize, close_frame_bytes: usize) -> Self {
        self.settings.max_frame_bytes = max_frame_bytes;
        self.settings.close_frame_bytes = close_frame_bytes;
        self
    }

    /// Messages per second per connection, and the burst allowed above it.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.settings.messages_per_second = per_second;
        self.settings.message_burst = burst;
        self
    }

    /// The socket's read and write buffer sizes (see [`Settings::read_buffer_bytes`] and
    /// [`Settings::write_buffer_bytes`]).
    pub fn buffers(mut self, read_bytes: usize, write_bytes: usize) -> Self {
        self.settings.read_buffer_bytes = read_bytes;
        self.settings.write_buffer_bytes = write_bytes;
        self
    }

    /// How long the identify hook may take before the upgrade is answered 503 (default 2 s).
    pub fn identify_timeout(mut self, d: Duration) -> Self {
        self.settings.identify_timeout = d;
        self
    }

    /// Violations tolerated in a burst before the connection is closed.
    pub fn max_violations(mut self, n: u32) -> Self {
        self.settings.max_violations = n;
        self
    }

    /// Builds the endpoint; [`Error::Config`] when a setting cannot work.
    pub fn build(self) -> Result<Endpoint, Error> {
        self.settings.validate()?;
        Ok(Endpoint {
            inner: Arc::new(Inner {
                conn: Arc::new(connection::Shared {
                    hub: self.hub,
                    settings: self.settings,
                }),
                origins: self.origins,
                identify: self.identify,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn serve(endpoint: Endpoint) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = endpoint.router::<()>("/ws");
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// The next reply or `hello` (notices skipped) as JSON, or the close code.
    async fn next(ws: &mut Ws) -> Result<Value, u16> {
        loop {
            let v = next_frame(ws).await?;
            if !matches!(v["ev"].as_str(), Some("presence" | "occupied" | "released")) {
                return Ok(v);
            }
        }
    }

    async fn next_frame(ws: &mut Ws) -> Result<Value, u16> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("a frame within 20 s");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(c))) => return Err(c.map_or(1005, |c| c.code.into())),
                Some(Ok(_)) => {}
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    }

    async fn send(ws: &mut Ws, v: &Value) {
        ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// A request padded to exactly `len` bytes.
    fn padded(op: &str, r: &str, len: usize) -> Value {
        let mut v = json!({"op": op, "room": "big", "ref": r, "pad": ""});
        let pad = len - v.to_string().len();
        v["pad"] = json!("x".repeat(pad));
        assert_eq!(v.to_string().len(), len);
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_far_larger_than_the_read_buffer_work_with_the_default_settings() {
        let s = Settings::default();
        assert!(s.read_buffer_bytes * 16 <= s.max_frame_bytes);
        let addr = serve(Endpoint::new(Hub::new())).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await.unwrap()["ev"], "hello");

        // A burst of small frames, sent at once: they straddle the read chunks.
        for i in 0..30 {
            let room = format!("room-{i}-{}", "r".repeat(i * 5));
            send(&mut ws, &json!({"op": "join", "room": room, "ref": i})).await;
        }
        for i in 0..30 {
            let j = next(&mut ws).await.unwrap();
            assert_eq!(
                (j["ev"].as_str(), j["ref"].as_i64()),
                (Some("joined"), Some(i))
            );
        }

        // Exactly the largest accepted frame: processed.
        send(&mut ws, &padded("join", "max", s.max_frame_bytes)).await;
        let j = next(&mut ws).await.unwrap();
        assert_eq!(
            (j["ev"].as_str(), j["ref"].as_str()),
            (Some("joined"), Some("max"))
        );

        // Just under the close limit: read whole, refused, the connection stays.
        send(&mut ws, &padded("join", "big", s.close_frame_bytes - 8)).await;
        let e = next(&mut ws).await.unwrap();
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("frame_too_large"), Some("big"))
        );
        send(&mut ws, &json!({"op": "ping", "ref": "after"})).await;
        assert_eq!(next(&mut ws).await.unwrap()["ev"], "pong");

        // Over the close limit: closed with 1009.
        send(&mut ws, &padded("join", "huge", s.close_frame_bytes + 1)).await;
        assert_eq!(next(&mut ws).await, Err(1009));
    }
}
