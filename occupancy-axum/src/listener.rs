//! Serving with `TCP_NODELAY`. `axum::serve` leaves Nagle's algorithm on, and a WebSocket that
//! writes one small frame and waits for the reply (a hand-over, a ping) then waits for the peer's
//! delayed ACK: measured at 42 ms per hand-over instead of well under a millisecond. Serve through
//! [`nodelay`] (or set it yourself with `ListenerExt::tap_io`).

use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};

/// The listener type returned by [`nodelay`].
pub type NodelayListener = TapIo<TcpListener, fn(&mut TcpStream)>;

/// Wraps a listener so every accepted connection has `TCP_NODELAY` set. Use it with
/// `axum::serve(nodelay(listener), app)`.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(occupancy_axum::nodelay(listener), app).await
/// # }
/// ```
pub fn nodelay(listener: TcpListener) -> NodelayListener {
    listener.tap_io(set_nodelay as fn(&mut TcpStream))
}

fn set_nodelay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}
