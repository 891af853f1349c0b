//! One load-tool connection: protocol v1 over a WebSocket, or the article's Socket.IO events over
//! a raw Socket.IO v5 / Engine.IO v4 WebSocket (the approach of `occupancy-socketio/tests`).
//!
//! Each connection is one task that owns its socket: it sends what the driver asks for, answers
//! Engine.IO pings (tungstenite answers WebSocket pings), and reports what matters to the driver
//! as [`Event`]s stamped with the instant the frame was read.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Protocol v1 (JSON text frames; `join`/`leave` → `joined`/`released`/`presence`).
    V1,
    /// The article's Socket.IO events (`join_document_room` → `is_occupied`/`is_released`).
    Sio,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Protocol.
    pub proto: Proto,
    /// Server address.
    pub addr: SocketAddr,
    /// The WebSocket URL.
    pub url: String,
    /// Loopback source addresses to spread connections over (ephemeral ports are per source).
    pub sources: Vec<Ipv4Addr>,
}

impl Target {
    /// Parses `ws://host:port/path`; Socket.IO URLs get the Engine.IO query when missing.
    pub fn parse(proto: Proto, url: &str, sources: usize) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr: SocketAddr = host
            .parse()
            .map_err(|e| format!("{host}: {e} (use an IP:port)"))?;
        let mut url = format!("ws://{host}/{path}");
        if proto == Proto::Sio && !path.contains("EIO=") {
            if path.is_empty() {
                url.push_str("socket.io/");
            }
            url.push_str(if url.contains('?') { "&" } else { "?" });
            url.push_str("EIO=4&transport=websocket");
        }
        let sources = if addr.ip().is_loopback() {
            (0..sources.max(1))
                .map(|i| Ipv4Addr::new(127, 0, 0, 2 + (i as u8)))
                .collect()
        } else {
            vec![]
        };
        Ok(Target {
            proto,
            addr,
            url,
            sources,
        })
    }
}

/// What a connection saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// v1 `joined` (reply to a join), with whether it holds.
    Joined {
        /// `holding` of the reply.
        holding: bool,
    },
    /// v1 `occupied` / article `is_occupied`.
    Occupied,
    /// v1 `released` / article `is_released`.
    Released,
    /// v1 `presence`, with whether it says this connection holds (`position` 0).
    Presence {
        /// `position` is 0.
        holding: bool,
    },
    /// v1 `left`.
    Left,
    /// v1 `error`.
    Error,
    /// v1 `pong` (reply to the no-op `ping`).
    Pong,
    /// The connection ended.
    Closed,
}

/// One event of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The connection's id.
    pub conn: u32,
    /// What.
    pub kind: Kind,
    /// When its frame was read.
    pub at: Instant,
}

enum Cmd {
    Text(String),
    Close,
    Reset,
}

/// A connection's handle; dropping it closes the connection.
pub struct Conn {
    /// Id given at connect, echoed in its events.
    pub id: u32,
    proto: Proto,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Conn {
    /// Joins `room` (v1 `join`; Socket.IO `join_document_room`).
    pub fn join(&self, room: &str) {
        let text = match self.proto {
            Proto::V1 => format!(r#"{{"op":"join","room":"{room}"}}"#),
            Proto::Sio => format!(r#"42["join_document_room","{room}"]"#),
        };
        let _ = self.tx.send(Cmd::Text(text));
    }

    /// The no-op round trip (v1 `ping` → `pong`): the transport's cost without any room work.
    pub fn ping(&self) {
        debug_assert_eq!(self.proto, Proto::V1);
        let _ = self.tx.send(Cmd::Text(r#"{"op":"ping"}"#.into()));
    }

    /// Leaves `room` (v1 only: the article has no leave).
    pub fn leave(&self, room: &str) {
        debug_assert_eq!(self.proto, Proto::V1);
        let _ = self
            .tx
            .send(Cmd::Text(format!(r#"{{"op":"leave","room":"{room}"}}"#)));
    }

    /// Drops the connection abruptly: no close frame, no goodbye, and a TCP reset instead of a
    /// FIN (SO_LINGER 0, then close), like a crashed client or a network blip seen by the server.
    pub fn reset(&self) {
        let _ = self.tx.send(Cmd::Reset);
    }

    /// Says goodbye (Socket.IO: the namespace DISCONNECT `41`, like `socket.disconnect()`) and
    /// closes the WebSocket.
    pub fn close(&self) {
        if self.proto == Proto::Sio {
            let _ = self.tx.send(Cmd::Text("41".into()));
        }
        let _ = self.tx.send(Cmd::Close);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Close);
    }
}

/// Classifies one text frame; `None` for frames the driver does not care about.
pub fn classify(proto: Proto, text: &str) -> Option<Kind> {
    match proto {
        Proto::V1 => {
            let i = text.find(r#""ev":""#)? + 6;
            let ev = &text[i..];
            let ev = &ev[..ev.find('"')?];
            Some(match ev {
                "joined" => Kind::Joined {
                    holding: text.contains(r#""holding":true"#),
                },
                "occupied" => Kind::Occupied,
                "released" => Kind::Released,
                "presence" => Kind::Presence {
                    holding: text.contains(r#""position":0,"#) || text.contains(r#""position":0}"#),
                },
                "left" => Kind::Left,
                "error" => Kind::Error,
                "pong" => Kind::Pong,
                _ => return None,
            })
        }
        Proto::Sio => {
            let rest = text.strip_prefix("42")?;
            // An event packet: optional ack id, then `["name", ...]`.
            let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            let name = rest.strip_prefix("[\"")?;
            let name = &name[..name.find('"')?];
            Some(match name {
                "is_occupied" => Kind::Occupied,
                "is_released" => Kind::Released,
                _ => return None,
            })
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects connection `id` and starts its task; events go to `events`.
pub async fn connect(
    target: &Target,
    id: u32,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Conn, String> {
    let mut last = String::new();
    for attempt in 0..4 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_once(target, id, events.clone())).await
        {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => last = e,
            Err(_) => last = "connect timed out".into(),
        }
    }
    Err(format!("connection {id}: {last}"))
}

async fn connect_once(
    target: &Target,
    id: u32,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Conn, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if !target.sources.is_empty() {
        let src = target.sources[id as usize % target.sources.len()];
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    // Without it every small frame of the load tool waits for a delayed ACK.
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    // Small buffers: thousands of idle connections live in this process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;

    if target.proto == Proto::Sio {
        // Engine.IO OPEN, then the namespace CONNECT and its reply.
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            return Err(format!("engine.io open expected: {open}"));
        }
        ws.send(Message::text("40"))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let t = next_text(&mut ws).await?;
            if t == "2" {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            if t.starts_with("40") {
                break;
            }
            return Err(format!("socket.io CONNECT refused: {t}"));
        }
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
    let proto = target.proto;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Text(t)) => {
                        if ws.send(Message::text(t)).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::Reset) => {
                        reset_on_close(ws.get_ref());
                        return;
                    }
                    Some(Cmd::Close) | None => {
                        let _ = ws.close(None).await;
                        // Drain until the server's close (bounded) so the server sees a clean end.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        return;
                    }
                },
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let at = Instant::now();
                        if proto == Proto::Sio && t.as_str() == "2" {
                            if ws.send(Message::text("3")).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        if let Some(kind) = classify(proto, t.as_str()) {
                            let _ = events.send(Event { conn: id, kind, at });
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
            }
        }
        let _ = events.send(Event {
            conn: id,
            kind: Kind::Closed,
            at: Instant::now(),
        });
    });
    Ok(Conn { id, proto, tx })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Makes the socket send a TCP reset instead of a FIN when it is closed (as `loadgen soak` does).
fn reset_on_close(tcp: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for its size; the fd is open (owned by `tcp`).
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed during handshake".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_v1_and_article_events() {
        let v1 = |t| classify(Proto::V1, t);
        assert_eq!(
            v1(r#"{"ev":"joined","room":"a","holding":true,"position":0,"version":1}"#),
            Some(Kind::Joined { holding: true })
        );
        assert_eq!(
            v1(r#"{"ev":"joined","room":"a","holding":false,"position":1}"#),
            Some(Kind::Joined { holding: false })
        );
        assert_eq!(
            v1(r#"{"ev":"released","room":"a","version":9}"#),
            Some(Kind::Released)
        );
        assert_eq!(
            v1(r#"{"ev":"presence","room":"a"}"#),
            Some(Kind::Presence { holding: false })
        );
        assert_eq!(
            v1(r#"{"ev":"presence","room":"a","version":3,"position":0,"waiting":2}"#),
            Some(Kind::Presence { holding: true })
        );
        assert_eq!(
            v1(r#"{"ev":"presence","room":"a","version":3,"position":10,"waiting":2}"#),
            Some(Kind::Presence { holding: false })
        );
        assert_eq!(v1(r#"{"ev":"hello","session":"x"}"#), None);
        let sio = |t| classify(Proto::Sio, t);
        assert_eq!(
            sio(r#"42["is_occupied","Its occupied"]"#),
            Some(Kind::Occupied)
        );
        assert_eq!(
            sio(r#"42["is_released","this is released"]"#),
            Some(Kind::Released)
        );
        assert_eq!(sio(r#"42["occupancy:hello",{}]"#), None);
        assert_eq!(sio("2"), None);
    }

    #[test]
    fn socketio_urls_get_the_engineio_query() {
        let t = Target::parse(Proto::Sio, "ws://127.0.0.1:9000", 4).unwrap();
        assert_eq!(
            t.url,
            "ws://127.0.0.1:9000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(t.sources.len(), 4);
        let t = Target::parse(Proto::V1, "ws://127.0.0.1:3000/occupancy", 1).unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:3000/occupancy");
    }
}
