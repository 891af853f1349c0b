//! `bare_sio`: the floor under the Socket.IO adapter's memory per connection. A socketioxide
//! server (the same socketioxide, engineioxide, axum and tokio as `occupancy-socketio`, the
//! `socketio_documents` example's limits and TCP_NODELAY) whose namespace accepts every socket
//! and does nothing else: whatever it costs per idle connection is the stack's, not ours.
//!
//! ```text
//! PORT=3999 target/release/bare_sio
//! PORT=3999 WS_READ_BUFFER=1024 MAX_BUFFER=16 target/release/bare_sio
//! ```
//!
//! Measure it with `idle_conns --proto sio` (see there).

use std::net::SocketAddr;

use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = env_or("PORT", 3999) as u16;
    // engineioxide's defaults unless set.
    let read = env_or("WS_READ_BUFFER", 4096);
    let packets = env_or("MAX_BUFFER", 128);
    let (layer, io) = SocketIo::builder()
        .max_payload(2 << 20)
        .ws_max_message_size(2 << 20)
        .ws_max_frame_size(2 << 20)
        .ws_read_buffer_size(read)
        .max_buffer_size(packets)
        .build_layer();
    io.ns("/", async |_: SocketRef| {});
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("bare_sio on http://127.0.0.1:{port}/ (ws read buffer {read}, {packets} packets)");
    axum::serve(listener, app).await
}
