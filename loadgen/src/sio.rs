//! A minimal Engine.IO v4 / Socket.IO v5 client for the soak (`loadgen soak --transport
//! socketio|mixed`): the default namespace over a WebSocket or over HTTP long-polling, the auth
//! payload of the CONNECT packet, events with acknowledgements, and the engine's ping. Nothing
//! else of Socket.IO (no binary packets, no namespaces, no transport upgrade).
//!
//! A [`SioConn`] runs its transport in a task of its own (so the engine's pings are answered
//! while the soak's client thinks); what the server says comes out as protocol v1 JSON objects:
//! an `occupancy:*` push as its payload (which carries `"ev"`), an acknowledgement as the ack's
//! object with `"ref"` set to the ack id (the soak uses its request ref as the ack id).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Which Engine.IO transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `transport=websocket` from the start (no upgrade).
    WebSocket,
    /// HTTP long-polling: a GET waiting for packets, POSTs carrying ours.
    Polling,
}

/// How the connection ends, from the soak's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Namespace disconnect (`41`) and a close of the transport: the server's close grace.
    Clean,
    /// Vanish: a TCP reset (WebSocket) or stop polling; the server notices by its ping.
    Abrupt,
}

enum Cmd {
    Send(String),
    End(End),
}

/// One Socket.IO connection of the soak.
pub struct SioConn {
    tx: mpsc::UnboundedSender<Cmd>,
    rx: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SioConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Socket.IO packet → protocol v1 object: an `occupancy:*` event's payload, or an ack's object
/// with `ref` = ack id. Anything else (the article's events, pings) is `None`.
fn decode(packet: &str) -> Option<Value> {
    if let Some(rest) = packet.strip_prefix("43") {
        let digits = rest.find('[')?;
        let id: u64 = rest[..digits].parse().ok()?;
        let mut v: Value = serde_json::from_str(&rest[digits..]).ok()?;
        let mut obj = v.get_mut(0)?.take();
        obj.as_object_mut()?.insert("ref".into(), id.into());
        return Some(obj);
    }
    let rest = packet.strip_prefix("42")?;
    let start = rest.find('[')?;
    let mut v: Value = serde_json::from_str(&rest[start..]).ok()?;
    let name = v.get(0)?.as_str()?;
    name.strip_prefix("occupancy:")?;
    let obj = v.get_mut(1)?.take();
    obj.is_object().then_some(obj)
}

impl SioConn {
    /// Opens the engine (`path` like `/socket.io/`, `query` appended, e.g. `user=u1`), connects
    /// the default namespace with `auth`, and returns the connection with the `hello` push.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
        query: &str,
        auth: &Value,
        transport: Transport,
    ) -> Result<(SioConn, Value), String> {
        let (tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut rx) = mpsc::unbounded_channel();
        let connect = format!("40{auth}");
        let task = match transport {
            Transport::WebSocket => {
                let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&{query}");
                let mut ws = open_ws(addr, source, &url).await?;
                let open = next_text(&mut ws).await?;
                if !open.starts_with('0') {
                    return Err(format!("engine.io open expected: {open}"));
                }
                ws.send(Message::text(connect))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(run_ws(ws, cmd_rx, ev_tx))
            }
            Transport::Polling => {
                let base = format!("/socket.io/?EIO=4&transport=polling&{query}");
                let mut get = Http::new(addr, source);
                let body = get.request("GET", &base, "").await?;
                let open = body.split('\x1e').next().unwrap_or_default();
                let sid = open
                    .strip_prefix('0')
                    .and_then(|j| serde_json::from_str::<Value>(j).ok())
                    .and_then(|v| v.get("sid")?.as_str().map(str::to_string))
                    .ok_or_else(|| format!("engine.io open expected: {body}"))?;
                let path = format!("{base}&sid={sid}");
                let mut post = Http::new(addr, source);
                post.request("POST", &path, &connect).await?;
                tokio::spawn(run_polling(get, post, path, cmd_rx, ev_tx))
            }
        };
        let conn = SioConn {
            tx,
            rx: {
                // The CONNECT reply comes first (the task forwards `40`/`44` as `{"ev":"__connect"}`).
                let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                    .await
                    .map_err(|_| "socket.io CONNECT timed out".to_string())?
                    .ok_or("closed before the CONNECT reply")?;
                if first.get("ev").and_then(Value::as_str) != Some("__connect") {
                    return Err(format!("socket.io CONNECT refused: {first}"));
                }
                rx
            },
            task,
        };
        let mut conn = conn;
        let hello = tokio::time::timeout(Duration::from_secs(20), conn.rx.recv())
            .await
            .map_err(|_| "no hello".to_string())?
            .ok_or("closed before hello")?;
        if hello.get("ev").and_then(Value::as_str) != Some("hello") {
            return Err(format!("hello expected: {hello}"));
        }
        Ok((conn, hello))
    }

    /// Emits `occupancy:{op}` with `payload` and asks for an ack with id `ack`.
    pub fn emit(&self, op: &str, payload: &Value, ack: u64) -> Result<(), ()> {
        self.tx
            .send(Cmd::Send(format!(r#"42{ack}["occupancy:{op}",{payload}]"#)))
            .map_err(|_| ())
    }

    /// The next object from the server; `None` once the connection ended.
    pub async fn recv(&mut self) -> Option<Value> {
        self.rx.recv().await
    }

    /// Ends the connection (and waits, briefly, for a clean end to reach the server).
    pub async fn end(mut self, how: End) {
        if self.tx.send(Cmd::End(how)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        }
    }
}

/// Sends what the engine gives to the soak; `false` once the soak stopped listening.
fn forward(ev: &mpsc::UnboundedSender<Value>, packet: &str) -> bool {
    if packet.starts_with("40") {
        return ev.send(serde_json::json!({"ev": "__connect"})).is_ok();
    }
    if let Some(e) = packet.strip_prefix("44") {
        return ev
            .send(serde_json::json!({"ev": "__connect_error", "why": e}))
            .is_ok();
    }
    match decode(packet) {
        Some(v) => ev.send(v).is_ok(),
        None => true,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn tcp(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| e.to_string())?;
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(tcp)
}

async fn open_ws(addr: SocketAddr, source: Option<Ipv4Addr>, url: &str) -> Result<Ws, String> {
    let tcp = tcp(addr, source).await?;
    let request = url.into_client_request().map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config)),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("closed".into()),
            Err(_) => return Err("timed out".into()),
        }
    }
}

async fn run_ws(
    mut ws: Ws,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ev: mpsc::UnboundedSender<Value>,
) {
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Send(t)) => {
                    if ws.send(Message::text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Cmd::End(End::Abrupt)) | None => {
                    crate::soak::reset_fd_on_close(std::os::fd::AsRawFd::as_raw_fd(ws.get_ref()));
                    return;
                }
                Some(Cmd::End(End::Clean)) => {
                    let _ = ws.send(Message::text("41")).await;
                    let _ = ws.close(None).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    return;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        if ws.send(Message::text("3")).await.is_err() {
                            return;
                        }
                    } else if !forward(&ev, t.as_str()) {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

async fn run_polling(
    mut get: Http,
    mut post: Http,
    path: String,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ev: mpsc::UnboundedSender<Value>,
) {
    // The GET loop runs beside the POSTs; pongs go through the POST side.
    let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<()>();
    let get_path = path.clone();
    let ev2 = ev.clone();
    let mut poller = tokio::spawn(async move {
        loop {
            let Ok(body) = get.request("GET", &get_path, "").await else {
                return;
            };
            for packet in body.split('\x1e') {
                match packet {
                    "2" => {
                        let _ = pong_tx.send(());
                    }
                    "1" => return,
                    p => {
                        if !forward(&ev2, p) {
                            return;
                        }
                    }
                }
            }
        }
    });
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = &mut poller => return,
            p = pong_rx.recv() => {
                if p.is_none() { return; }
                batch.push("3".to_string());
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Send(t)) => batch.push(t),
                Some(Cmd::End(End::Abrupt)) | None => {
                    poller.abort();
                    return;
                }
                Some(Cmd::End(End::Clean)) => {
                    let _ = post.request("POST", &path, "41\x1e1").await;
                    poller.abort();
                    return;
                }
            },
        }
        // Whatever else is queued goes in the same POST (order kept).
        let mut then = None;
        loop {
            match cmds.try_recv() {
                Ok(Cmd::Send(t)) => batch.push(t),
                Ok(Cmd::End(how)) => {
                    then = Some(how);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(End::Clean) = then {
            batch.push("41".into());
            batch.push("1".into());
        }
        let sent = post.request("POST", &path, &batch.join("\x1e")).await;
        if sent.is_err() || then.is_some() {
            poller.abort();
            return;
        }
    }
}

/// A keep-alive HTTP/1.1 connection for the polling transport (reconnects when closed).
struct Http {
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: SocketAddr, source: Option<Ipv4Addr>) -> Http {
        Http {
            addr,
            source,
            conn: None,
        }
    }

    /// One request; the body of a 200 response, else an error.
    async fn request(&mut self, method: &str, path: &str, body: &str) -> Result<String, String> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self
                .conn
                .insert(BufReader::new(tcp(self.addr, self.source).await?)),
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let res = tokio::time::timeout(Duration::from_secs(40), async {
            conn.get_mut()
                .write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_response(conn).await
        })
        .await
        .map_err(|_| "HTTP timed out".to_string())
        .and_then(|r| r);
        match res {
            Ok((status, keep, text)) => {
                if !keep {
                    self.conn = None;
                }
                if status == 200 {
                    Ok(text)
                } else {
                    self.conn = None;
                    Err(format!("HTTP {status}: {text}"))
                }
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Status, keep-alive, body (Content-Length or chunked).
async fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, bool, String), String> {
    let mut line = String::new();
    let e = |e: std::io::Error| e.to_string();
    if r.read_line(&mut line).await.map_err(e)? == 0 {
        return Err("connection closed".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {line}"))?;
    let (mut len, mut chunked, mut keep) = (None, false, true);
    loop {
        line.clear();
        r.read_line(&mut line).await.map_err(e)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let (k, v) = (k.to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => len = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => keep = !v.contains("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await.map_err(e)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await.map_err(e)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body).await.map_err(e)?;
    } else {
        r.read_to_end(&mut body).await.map_err(e)?;
        keep = false;
    }
    Ok((status, keep, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_acks_and_occupancy_pushes_only() {
        let ack = decode(r#"4312[{"ev":"joined","room":"a","position":0}]"#).unwrap();
        assert_eq!(ack["ref"], 12);
        assert_eq!(ack["ev"], "joined");
        let push =
            decode(r#"42["occupancy:released",{"ev":"released","room":"a","version":3}]"#).unwrap();
        assert_eq!(push["version"], 3);
        assert!(decode(r#"42["is_released","this is released"]"#).is_none());
        assert!(decode("2").is_none());
    }
}
