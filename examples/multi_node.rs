//! One node of several sharing a Redis: the documents demo (pages + the protocol v1 WebSocket
//! endpoint at `/occupancy`) on a [`RedisBackend`](occupancy::redis::RedisBackend), so every node
//! shows the same queue.
//!
//! ```text
//! redis-server --port 6379 --save "" --appendonly no &
//! PORT=3001 cargo run --example multi_node --features axum,redis,socketio
//! PORT=3002 cargo run --example multi_node --features axum,redis,socketio
//! ```
//!
//! Open `http://127.0.0.1:3001/doc/1?name=Ann` and `http://127.0.0.1:3002/doc/1?name=Bob`: one
//! queue across both processes. Kill the node holding the document (`kill -9`) and the other
//! page is released once the node's lease ends (`LEASE_MS`, default 10,000).
//!
//! Environment: `PORT` (default 3001), `REDIS_URL` (default `redis://127.0.0.1:6379`),
//! `REDIS_PREFIX` (default `occ`), `LEASE_MS` (default 10000), `GRACE_MS` (default 5000),
//! `CLOSE_GRACE_MS` (default 2000: how long a closed page keeps its places), `IDLE_MS` (default
//! 0: off; idle expiry, as in the documents example), `ADMIN_TOKEN` (the admin endpoints),
//! `SOCKETIO=1` (Socket.IO at `/socket.io/` as well), `PRIVATE_ROOMS` (a share of refused rooms,
//! for the soak). `loadgen soak --nodes N` starts several of these on a Redis of its own.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use occupancy::Hub;
use occupancy::redis::{RedisBackend, RedisConfig};
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
    let port: u16 = env_or("PORT", 3001)?;
    let url: String = env_or("REDIS_URL", "redis://127.0.0.1:6379".to_string())?;
    let prefix: String = env_or("REDIS_PREFIX", "occ".to_string())?;
    let lease = Duration::from_millis(env_or("LEASE_MS", 10_000)?);
    let grace = Duration::from_millis(env_or("GRACE_MS", 5_000)?);
    let close_grace = Duration::from_millis(env_or("CLOSE_GRACE_MS", 2_000)?);

    let backend = RedisBackend::connect(RedisConfig::new(&url).prefix(prefix).lease(lease))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tracing::info!(node = backend.node_id(), %url, ?lease, "joined the shared state");
    let idle_ms: u64 = env_or("IDLE_MS", 0)?;
    let mut builder = Hub::builder()
        .backend(backend)
        .grace(grace)
        .close_grace(close_grace);
    if idle_ms > 0 {
        builder = builder.idle_timeout(Duration::from_millis(idle_ms));
    }
    if let Some(hook) = support::private_rooms() {
        // The soak's share of refused rooms (`PRIVATE_ROOMS`, see examples/support).
        builder = builder.authorize(hook);
    }
    let hub = builder.build()?;
    let app = support::app(hub);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "multi-node documents demo on http://{addr}/ (WebSocket at ws://{addr}{})",
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
