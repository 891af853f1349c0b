//! What the examples serving the documents demo share: the pages and the JS client (embedded
//! with `include_str!`, so an example is one command), the demo's identify hook, and the whole
//! app. Used by `documents` (one node) and `multi_node` (several nodes on one Redis): declare it
//! with `mod support;` in the example. Two switches for the chaos soak (`loadgen soak`): with
//! `SOCKETIO=1` the app also speaks Socket.IO at `/socket.io/` ([`with_socketio`]), and
//! `PRIVATE_ROOMS=<prefix>` installs an authorization hook refusing a share of rooms
//! ([`private_rooms`]).
#![allow(dead_code)]

pub mod admin;

use axum::Router;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use occupancy::Hub;
use occupancy::axum::{Endpoint, Identity, Rejection, query_param};

/// The dependency-free browser client of protocol v1 (an ES module).
pub const OCCUPANCY_JS: &str = include_str!("../static/occupancy.js");
/// The list of documents, each with who is editing it (watched live).
pub const INDEX_HTML: &str = include_str!("../static/index.html");
/// One document: who holds it, your place, who waits, Take over.
pub const DOCUMENT_HTML: &str = include_str!("../static/document.html");

/// Where the pages expect the WebSocket endpoint.
pub const WS_PATH: &str = "/occupancy";

/// The pages and the client module: `/`, `/doc/{id}`, `/occupancy.js`.
pub fn pages<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/doc/{id}", get(|| async { Html(DOCUMENT_HTML) }))
        .route(
            "/occupancy.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    OCCUPANCY_JS,
                )
                    .into_response()
            }),
        )
}

/// THE DEMO'S identify hook: `?user=` is taken as the principal and `?name=` as the display name,
/// anonymous when absent. Anyone can claim any user id this way; a real application derives the
/// principal from its session cookie or token (see `EndpointBuilder::identify`).
pub fn demo_identity(parts: &Parts) -> Result<Identity, Rejection> {
    let clean = |s: String| -> Option<String> {
        let s: String = s
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        (!s.is_empty()).then_some(s)
    };
    let identity = match query_param(parts, "user").and_then(clean) {
        Some(user) => Identity::user(user),
        None => Identity::anonymous(),
    };
    Ok(match query_param(parts, "name").and_then(clean) {
        Some(name) => identity.with_name(name),
        None => identity,
    })
}

/// THE DEMO'S authorization rule for the soak, on when `PRIVATE_ROOMS` names a room prefix
/// (say `priv-`): a room `<prefix>N` may be joined, taken over or watched only by a user whose id
/// ends in a number of the same parity as `N` (`soak-4` may enter `priv-0`, `priv-2`, ...; anonymous
/// sessions none of them). Every other room is open. Install it with
/// `HubBuilder::authorize(hook)`.
pub fn private_rooms()
-> Option<impl Fn(&occupancy::AuthRequest<'_>) -> Result<(), String> + Send + Sync + 'static> {
    let prefix = std::env::var("PRIVATE_ROOMS")
        .ok()
        .filter(|p| !p.is_empty())?;
    tracing::info!(%prefix, "authorization: rooms named {prefix}N are private to users of N's parity");
    Some(private_rooms_with(prefix))
}

/// The rule of [`private_rooms`] for rooms named `prefix` + a number.
pub fn private_rooms_with(
    prefix: String,
) -> impl Fn(&occupancy::AuthRequest<'_>) -> Result<(), String> + Send + Sync + 'static {
    move |req: &occupancy::AuthRequest<'_>| {
        let Some(n) = req.room.strip_prefix(prefix.as_str()) else {
            return Ok(());
        };
        let parity = |s: &str| -> Option<u64> {
            let digits: String = s.chars().rev().take_while(char::is_ascii_digit).collect();
            let digits: String = digits.chars().rev().collect();
            digits.parse::<u64>().ok().map(|d| d % 2)
        };
        match (parity(n), req.principal.and_then(parity)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            _ => Err(format!("{} is private", req.room)),
        }
    }
}

/// With `SOCKETIO=1` in the environment, `app` also speaks Socket.IO at `/socket.io/` on the same
/// `hub` (the acked `occupancy:*` events and the article's), with the `socketio_documents`
/// example's liveness (ping every 5 s, dropped 5 s later) and the same demo identity (`?user=`
/// on the engine's requests). Otherwise `app` is returned as it is.
pub fn with_socketio(app: Router, hub: Hub) -> Router {
    if std::env::var("SOCKETIO").map_or(true, |v| v != "1") {
        return app;
    }
    add_socketio(app, hub)
}

/// What [`with_socketio`] does, unconditionally.
pub fn add_socketio(app: Router, hub: Hub) -> Router {
    let (layer, io) = socketioxide::SocketIo::builder()
        .ping_interval(std::time::Duration::from_secs(5))
        .ping_timeout(std::time::Duration::from_secs(5))
        .build_layer();
    occupancy::socketio::Occupancy::new(hub)
        .identify(|h: &occupancy::socketio::Handshake<'_>| {
            demo_identity(h.request).map_err(|_| "bad identity".to_string())
        })
        .attach(&io)
        .expect("valid Socket.IO settings");
    tracing::info!("Socket.IO at /socket.io/ as well");
    app.layer(layer)
}

/// Where the demo serves the Hub's counters as JSON.
pub const STATS_PATH: &str = "/stats";

/// `GET /stats`: the Hub's counters (rooms, sessions, occupants, watchers, live connections and,
/// with `Config::check_invariants`, the invariant checks run and failed) as JSON. The soak run
/// (`loadgen soak`) reads it. A demo convenience: a real application would put counters like
/// these behind its own metrics endpoint and access control.
pub fn stats(hub: Hub) -> Router {
    Router::new().route(
        STATS_PATH,
        get(move || {
            let hub = hub.clone();
            async move {
                match hub.stats().await {
                    Ok(s) => (
                        [(header::CONTENT_TYPE, "application/json")],
                        serde_json::json!({
                        "rooms": s.rooms,
                        "sessions": s.sessions,
                        "sessions_in_grace": s.sessions_in_grace,
                        "occupants": s.occupants,
                        "watchers": s.watchers,
                        "invariant_checks": s.invariant_checks,
                        "invariant_violations": s.invariant_violations,
                        "live_connections": hub.live_connections(),
                        })
                        .to_string(),
                    )
                        .into_response(),
                    Err(e) => {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
                    }
                }
            }
        }),
    )
}

/// Where the demo serves its metrics in the Prometheus text format.
pub const METRICS_PATH: &str = "/metrics";

/// `GET /metrics`: what the Hub records through the `metrics` facade (the `occupancy_*` series
/// listed in the occupancy-core docs), rendered by `metrics-exporter-prometheus`, whose recorder
/// is installed process-wide on first use. The gauges are set just before rendering
/// (`Hub::record_gauges`). As with [`stats`], a real application would put this behind its own
/// access control.
pub fn metrics(hub: Hub) -> Router {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone();
    Router::new().route(
        METRICS_PATH,
        get(move || {
            let (hub, handle) = (hub.clone(), handle.clone());
            async move {
                if let Err(e) = hub.record_gauges().await {
                    tracing::warn!(error = %e, "metrics: the backend's counts are unavailable");
                }
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    )
}

/// `GET /rooms/{id}`: everyone in a room's line, holder first, as a JSON list of public ids
/// (the soak names the occupant no client claims when an audit finds a gap). A demo convenience,
/// like [`stats`].
pub fn room_list(hub: Hub) -> Router {
    Router::new().route(
        "/rooms/{id}",
        get(
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                let hub = hub.clone();
                async move {
                    match hub.occupants(&id).await {
                        Ok(people) => (
                            [(header::CONTENT_TYPE, "application/json")],
                            serde_json::Value::from(
                                people.iter().map(|p| p.id.to_string()).collect::<Vec<_>>(),
                            )
                            .to_string(),
                        )
                            .into_response(),
                        Err(e) => {
                            (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response()
                        }
                    }
                }
            },
        ),
    )
}

/// The whole demo app on `hub`: the pages, the WebSocket endpoint at [`WS_PATH`], the counters
/// at [`STATS_PATH`] and `/rooms/{id}`, the metrics at [`METRICS_PATH`], with `ADMIN_TOKEN`
/// set, the admin endpoints under `/admin` ([`admin`]), and with `SOCKETIO=1` Socket.IO
/// ([`with_socketio`]).
pub fn app(hub: Hub) -> Router {
    let admin = match std::env::var("ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => {
            tracing::info!("admin endpoints on /admin (bearer token from ADMIN_TOKEN)");
            admin::router(hub.clone(), token)
        }
        _ => Router::new(),
    };
    let endpoint = Endpoint::builder(hub.clone())
        .identify(demo_identity)
        .build()
        .expect("valid settings");
    let app = pages()
        .merge(endpoint.router(WS_PATH))
        .merge(stats(hub.clone()))
        .merge(metrics(hub.clone()))
        .merge(room_list(hub.clone()))
        .merge(admin);
    with_socketio(app, hub)
}
