//! `bare_ws`: the floor under the axum adapter's memory per connection. An axum WebSocket server
//! (the same axum, hyper, tungstenite and tokio as `occupancy-axum`, the same buffer settings and
//! TCP_NODELAY) that accepts the upgrade on any path and only awaits `socket.recv()`: whatever it
//! costs per idle connection is the stack's, not ours.
//!
//! ```text
//! PORT=3999 target/release/bare_ws                 # the adapter's default buffer sizes
//! PORT=3999 READ_BUFFER=8192 WRITE_BUFFER=8192 target/release/bare_ws
//! ```
//!
//! Measure it with `idle_conns --proto raw` (see there).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::WebSocketUpgrade;
use axum::response::Response;
use axum::serve::ListenerExt;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = env_or("PORT", 3999) as u16;
    // occupancy-axum's defaults (only the numbers are taken from it).
    let d = occupancy_axum::Settings::default();
    let read = env_or("READ_BUFFER", d.read_buffer_bytes);
    let write = env_or("WRITE_BUFFER", d.write_buffer_bytes);
    let max = env_or("MAX_MESSAGE", d.close_frame_bytes);
    let app = Router::new().fallback(move |ws: WebSocketUpgrade| async move {
        let r: Response = ws
            .max_message_size(max)
            .max_frame_size(max)
            .read_buffer_size(read)
            .write_buffer_size(write)
            .on_upgrade(|mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} });
        r
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("bare_ws on ws://127.0.0.1:{port}/ (read buffer {read}, write buffer {write})");
    axum::serve(listener, app).await
}
