//! A Socket.IO server the article's React frontend runs against unchanged: its
//! `join_document_room` / `is_occupied` / `is_released` events on `http://localhost:9000`, with
//! CORS and the origin check allowing its Vite dev server `http://localhost:5173`.
//!
//! ```text
//! cargo run --example socketio_documents --features socketio
//! PORT=9100 ALLOWED_ORIGINS=http://localhost:5173,http://127.0.0.1:5173 GRACE_MS=2000 \
//!     cargo run --example socketio_documents --features socketio
//! ```
//!
//! Then run the article's frontend (`npm run dev`, it connects to `http://localhost:9000`) and
//! open `http://localhost:5173/document/1` in two browser windows: the second shows
//! "is occupied: Its occupied"; close the first and, once its close grace is over (2 s by
//! default, `CLOSE_GRACE_MS`; a connection lost without a close keeps its places for
//! `GRACE_MS`, 5 s by default), the second shows "is released: this is released".
//!
//! `IDLE_MS` (default 0: off) turns idle expiry on (a holder that sends nothing for that long
//! gives way as soon as someone waits; rich clients send `occupancy:active` on user input).
//!
//! Liveness: the engine pings every 5 s and drops a client that has not answered 5 s later, so a
//! frozen or vanished client is dropped within 10 s (socketioxide's defaults, 25 s + 20 s, would
//! let a frozen holder block its document for 45 s before its grace even starts).
//!
//! Beside the article's events the server speaks the acked `occupancy:*` events (see the
//! `occupancy-socketio` crate docs).

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use occupancy::Hub;
use occupancy::socketio::{Occupancy, OriginLayer};
use socketioxide::SocketIo;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing_subscriber::EnvFilter;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let port: u16 = env_or("PORT", 9000)?;
    let grace_ms: u64 = env_or("GRACE_MS", 5000)?;
    let close_grace_ms: u64 = env_or("CLOSE_GRACE_MS", 2000)?;
    let origins: Vec<String> = std::env::var("ALLOWED_ORIGINS")
        .unwrap_or_else(|_| "http://localhost:5173".into())
        .split(',')
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect();

    let idle_ms: u64 = env_or("IDLE_MS", 0)?;
    let mut builder = Hub::builder()
        .grace(Duration::from_millis(grace_ms))
        .close_grace(Duration::from_millis(close_grace_ms));
    if idle_ms > 0 {
        // Idle expiry: clients using the acked events send `occupancy:active` on user input.
        builder = builder.idle_timeout(Duration::from_millis(idle_ms));
    }
    let hub = builder.build()?;
    // 2 MiB payloads: a 1 MB junk room id is answered with an error instead of a closed
    // connection (socketioxide's default polling limit is 100 KB).
    // A 512-byte WebSocket read buffer (larger frames still work: it reads in chunks): about
    // 3.5 KiB less per idle connection than socketioxide's default (see the crate docs).
    let (socketio, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(5))
        .ping_timeout(Duration::from_secs(5))
        .max_payload(2 << 20)
        .ws_max_message_size(2 << 20)
        .ws_max_frame_size(2 << 20)
        .ws_read_buffer_size(512)
        .build_layer();
    Occupancy::new(hub).attach(&io)?;

    // The browser's Origin is checked on polling requests and WebSocket upgrades alike (CORS
    // alone does not protect an upgrade); CORS headers let the dev server's page read polling
    // responses.
    let mut check = OriginLayer::same_host();
    for o in &origins {
        check = check.allow(o)?;
    }
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            origins.iter().filter_map(|o| o.parse().ok()),
        ))
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST]);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "Hello, World!" }))
        .layer(socketio)
        .layer(check)
        .layer(cors);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    // TCP_NODELAY: axum::serve leaves Nagle's algorithm on, which held each small Socket.IO
    // frame back by a delayed ACK (~40 ms per hand-over on loopback).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tracing::info!(
        "Server is running on http://{addr} (allowed origins: {origins:?}, grace {grace_ms} ms)"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            io.close().await;
        })
        .await?;
    Ok(())
}
