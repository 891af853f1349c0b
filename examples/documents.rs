//! The documents demo: a page listing a few documents and, for each, a page showing live who
//! holds it, your place in line, who waits, and a Take over button. The WebSocket endpoint
//! (protocol v1) is at `/occupancy`; the pages use the dependency-free client `/occupancy.js`.
//!
//! ```text
//! cargo run --example documents --features axum,socketio  # then open http://127.0.0.1:3000/
//! PORT=8080 cargo run --example documents --features axum,socketio
//! ```
//!
//! Open a document in two browsers (or with `?name=Ann` and `?name=Bob`): the first holds it,
//! the second waits and sees who holds it; close the first and, 2 s later, the second holds it.
//! Reload a page: it keeps its place (the resume token lives in sessionStorage).
//!
//! As a demo, the principal comes from `?user=` and the display name from `?name=` in the
//! query; real applications take them from their session cookie or token. `GET /stats` shows
//! the Hub's counters; `GRACE_MS` sets how long a dropped connection keeps its places (default
//! 5000), `CLOSE_GRACE_MS` how long a closed page does (default 2000: long enough for a reload);
//! `IDLE_MS` turns idle expiry on (a holder who sends nothing for that long gives way as soon as
//! someone waits; the page says `active` on typing), `ADMIN_TOKEN` serves the admin endpoints
//! under `/admin` (list rooms, force a release, kick, follow changes: see `support/admin.rs`),
//! `SHARDS` spreads rooms over that many state machines (`HubBuilder::shards`; default 1),
//! `OCCUPANCY_CHECK_INVARIANTS=1` makes the state machine check its invariants after
//! every operation (slow: for soak runs, see `loadgen soak`), `SOCKETIO=1` serves Socket.IO at
//! `/socket.io/` as well and `PRIVATE_ROOMS` refuses a share of rooms (the soak's, see
//! `examples/support`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use occupancy::{Config, Hub};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|e| format!("PORT={p:?}: {e}"))?,
        Err(_) => 3000,
    };
    let grace = match std::env::var("GRACE_MS") {
        Ok(ms) => Duration::from_millis(ms.parse().map_err(|e| format!("GRACE_MS={ms:?}: {e}"))?),
        Err(_) => Config::default().grace,
    };
    let close_grace = match std::env::var("CLOSE_GRACE_MS") {
        Ok(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|e| format!("CLOSE_GRACE_MS={ms:?}: {e}"))?,
        ),
        Err(_) => Config::default().close_grace,
    };
    let check_invariants = std::env::var("OCCUPANCY_CHECK_INVARIANTS").is_ok_and(|v| v == "1");
    let mut builder = Hub::builder()
        .grace(grace)
        .close_grace(close_grace)
        .check_invariants(check_invariants);
    if let Ok(ms) = std::env::var("IDLE_MS") {
        let ms: u64 = ms.parse().map_err(|e| format!("IDLE_MS={ms:?}: {e}"))?;
        builder = builder.idle_timeout(Duration::from_millis(ms));
    }
    if let Ok(n) = std::env::var("SHARDS") {
        let n: usize = n.parse().map_err(|e| format!("SHARDS={n:?}: {e}"))?;
        builder = builder.shards(n);
    }
    if let Some(hook) = support::private_rooms() {
        // The soak's share of refused rooms (`PRIVATE_ROOMS`, see examples/support).
        builder = builder.authorize(hook);
    }
    let hub = builder.build()?;
    if check_invariants {
        tracing::info!("checking the state machine's invariants after every operation");
    }
    let app = support::app(hub);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "documents demo on http://{addr}/ (WebSocket at ws://{addr}{})",
        support::WS_PATH
    );
    // TCP_NODELAY on every connection: without it each small frame waits for a delayed ACK.
    axum::serve(occupancy::axum::nodelay(listener), app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
