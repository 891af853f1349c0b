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
use crate::identity::{IdentifyFn, Identity, Rejection, anonymous_hook, query_param};
use crate::origin::OriginPolicy;
use crate::settings::Settings;

/// A protocol v1 WebSocket endpoint on a [`Hub`]. Cheap to clone (an `Arc` inside); use it as
/// axum state with [`handler`], or get a ready `Router` from [`Endpoint::router`].
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) hub: Hub,
    pub(crate) settings: Settings,
    origins: OriginPolicy,
    identify: IdentifyFn,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("settings", &self.inner.settings)
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
        &self.inner.hub
    }

    /// The transport settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
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
        if let Err(reason) = self.inner.origins.check(&parts.headers) {
            tracing::info!(%reason, "refused a WebSocket upgrade");
            return (StatusCode::FORBIDDEN, reason).into_response();
        }
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(rejection) => return rejection.into_response(),
        };
        let identity = match (self.inner.identify)(&parts).await {
            Ok(identity) => identity,
            Err(rejection) => return rejection.into_response(),
        };
        let resume = query_param(&parts, "resume");
        let s = &self.inner.settings;
        let inner = self.inner.clone();
        // 8 KiB buffers (they grow for larger frames): about 17 KiB per idle connection,
        // against about 138 KiB with tungstenite's 128 KiB defaults (measured with 2,000
        // connections to the documents example).
        ws.max_message_size(s.close_frame_bytes)
            .max_frame_size(s.close_frame_bytes)
            .read_buffer_size(8 * 1024)
            .write_buffer_size(8 * 1024)
            .on_upgrade(move |socket| connection::run(socket, inner, identity, resume))
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
    /// needs (a cookie value) out of the head before the `async move` block.
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
                hub: self.hub,
                settings: self.settings,
                origins: self.origins,
                identify: self.identify,
            }),
        })
    }
}
