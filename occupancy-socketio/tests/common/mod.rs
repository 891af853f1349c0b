//! Test support: a server on a free loopback port, and a minimal Socket.IO v5 client over a raw
//! WebSocket (Engine.IO v4) that lets a test do what real clients do and what misbehaving ones do:
//! emit in the same breath as CONNECT, emit without waiting, stop answering pings, drop the TCP
//! connection without saying goodbye.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::ListenerExt;
use futures_util::{SinkExt, StreamExt};
use occupancy_core::Hub;
use occupancy_socketio::{Occupancy, OriginLayer};
use serde_json::{Value, json};
use socketioxide::{SocketIo, SocketIoBuilder};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub io: SocketIo,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/socket.io/?EIO=4&transport=websocket", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until `f(stats)` holds.
    pub async fn until(&self, what: &str, f: impl Fn(&occupancy_core::Stats) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let stats = self.hub.stats().await.unwrap();
            if f(&stats) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; stats {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Starts a server: `hub`, a socketioxide builder tweak, an adapter tweak; same-host origins.
pub async fn server(
    hub: Hub,
    io: impl FnOnce(SocketIoBuilder) -> SocketIoBuilder,
    occ: impl FnOnce(Occupancy) -> Occupancy,
) -> Server {
    server_with_origins(hub, io, occ, OriginLayer::same_host()).await
}

pub async fn server_with_origins(
    hub: Hub,
    io: impl FnOnce(SocketIoBuilder) -> SocketIoBuilder,
    occ: impl FnOnce(Occupancy) -> Occupancy,
    origins: OriginLayer,
) -> Server {
    let (layer, sio) = io(SocketIo::builder()
        .max_payload(2 << 20)
        .ws_max_message_size(2 << 20)
        .ws_max_frame_size(2 << 20))
    .build_layer();
    occ(Occupancy::new(hub.clone())).attach(&sio).unwrap();
    let app = axum::Router::new().layer(layer).layer(origins);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        addr,
        hub,
        io: sio,
        task,
    }
}

/// A hub with this grace.
pub fn hub(grace_ms: u64) -> Hub {
    Hub::builder()
        .grace(Duration::from_millis(grace_ms))
        .build()
        .unwrap()
}

/// What the client received.
#[derive(Default)]
struct Inbox {
    events: Vec<(String, Value)>,
    acks: HashMap<u64, oneshot::Sender<Value>>,
    disconnected: bool,
}

/// A minimal Socket.IO client.
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    inbox: Arc<Mutex<Inbox>>,
    changed: Arc<Notify>,
    next_ack: u64,
    /// Whether to answer the server's pings.
    pub pong: Arc<std::sync::atomic::AtomicBool>,
    /// The namespace CONNECT reply.
    pub connect_reply: Value,
    /// `"/docs,"` for a namespace other than `/`, else empty.
    ns: String,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

type WsRead = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

async fn next_text(stream: &mut WsRead) -> String {
    loop {
        let m = tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .expect("timed out reading")
            .expect("stream ended")
            .expect("ws error");
        if let Message::Text(t) = m {
            return t.to_string();
        }
    }
}

/// Splits a Socket.IO packet (after the Engine.IO `4`) into (type, ack id, JSON).
fn parse_packet(p: &str) -> Option<(char, Option<u64>, Value)> {
    let mut chars = p.chars();
    let kind = chars.next()?;
    let rest = chars.as_str();
    let rest = if rest.starts_with('/') {
        rest.split_once(',').map(|(_, r)| r).unwrap_or("")
    } else {
        rest
    };
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let id = (digits > 0).then(|| rest[..digits].parse().unwrap());
    let json = &rest[digits..];
    let value = if json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(json).ok()?
    };
    Some((kind, id, value))
}

impl Client {
    /// Connects to the root namespace with `auth`, and sends `first` (raw Socket.IO packets, e.g.
    /// an event) in the same breath as reading CONNECT, before anything else happens.
    pub async fn connect_with(
        url: &str,
        auth: Option<Value>,
        first: &[String],
    ) -> Result<Client, Value> {
        Client::connect_ns(url, "/", auth, first).await
    }

    /// [`Client::connect_with`] on a namespace; `first` packets must carry the namespace.
    pub async fn connect_ns(
        url: &str,
        ns: &str,
        auth: Option<Value>,
        first: &[String],
    ) -> Result<Client, Value> {
        let ns = if ns == "/" {
            String::new()
        } else {
            format!("{ns},")
        };
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        let (mut sink, mut stream) = ws.split();
        let open = next_text(&mut stream).await;
        assert!(open.starts_with('0'), "engine.io open: {open}");
        let connect = match &auth {
            Some(a) => format!("40{ns}{a}"),
            None => format!("40{ns}"),
        };
        sink.send(Message::text(connect)).await.unwrap();
        let reply = loop {
            let t = next_text(&mut stream).await;
            if t == "2" {
                sink.send(Message::text("3")).await.unwrap();
                continue;
            }
            break t;
        };
        let (kind, _, value) = parse_packet(&reply[1..]).expect("socket.io packet");
        if kind == '4' {
            return Err(value);
        }
        assert_eq!(kind, '0', "CONNECT expected: {reply}");
        // The race under test: emit before the server's connect handler had any chance to run.
        for p in first {
            sink.send(Message::text(p.clone())).await.unwrap();
        }

        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let changed = Arc::new(Notify::new());
        let pong = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        let reader = tokio::spawn({
            let inbox = inbox.clone();
            let changed = changed.clone();
            let out = out.clone();
            let pong = pong.clone();
            async move {
                while let Some(Ok(m)) = stream.next().await {
                    let Message::Text(t) = m else { continue };
                    let t = t.as_str();
                    if t == "2" {
                        if pong.load(std::sync::atomic::Ordering::SeqCst) {
                            let _ = out.send(Message::text("3"));
                        }
                        continue;
                    }
                    let Some(p) = t.strip_prefix('4') else {
                        continue;
                    };
                    let Some((kind, id, value)) = parse_packet(p) else {
                        continue;
                    };
                    let mut ib = inbox.lock().unwrap();
                    match kind {
                        '2' => {
                            let mut arr = match value {
                                Value::Array(a) => a,
                                _ => continue,
                            };
                            let name = arr.remove(0).as_str().unwrap_or_default().to_owned();
                            let data = arr.into_iter().next().unwrap_or(Value::Null);
                            ib.events.push((name, data));
                        }
                        '3' => {
                            let data = match value {
                                Value::Array(mut a) if !a.is_empty() => a.remove(0),
                                _ => Value::Null,
                            };
                            if let Some(tx) = id.and_then(|id| ib.acks.remove(&id)) {
                                let _ = tx.send(data);
                            }
                        }
                        '1' => ib.disconnected = true,
                        _ => {}
                    }
                    drop(ib);
                    changed.notify_waiters();
                }
                inbox.lock().unwrap().disconnected = true;
                changed.notify_waiters();
            }
        });
        Ok(Client {
            out,
            inbox,
            changed,
            next_ack: 1,
            pong,
            connect_reply: value,
            ns,
            reader,
            writer,
        })
    }

    pub async fn connect(url: &str) -> Client {
        Client::connect_with(url, None, &[])
            .await
            .expect("connect refused")
    }

    /// Sends a raw Socket.IO packet (without the Engine.IO `4`).
    pub fn raw(&self, packet: &str) {
        let (kind, rest) = packet.split_at(1);
        let _ = self
            .out
            .send(Message::text(format!("4{kind}{}{rest}", self.ns)));
    }

    /// Emits an event without an acknowledgement.
    pub fn emit(&self, name: &str, data: Value) {
        self.raw(&format!("2{}", json!([name, data])));
    }

    /// The text of an event packet with an ack id.
    pub fn ack_packet(id: u64, name: &str, data: &Value) -> String {
        format!("42{id}{}", json!([name, data]))
    }

    /// Emits an event and waits (bounded) for its acknowledgement.
    pub async fn call(&mut self, name: &str, data: Value) -> Value {
        let rx = self.send_call(name, data);
        tokio::time::timeout(TIMEOUT, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack for {name}"))
            .expect("ack dropped")
    }

    /// Emits an event with an ack id and returns the receiver of the ack, without waiting.
    pub fn send_call(&mut self, name: &str, data: Value) -> oneshot::Receiver<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        self.inbox.lock().unwrap().acks.insert(id, tx);
        self.raw(&format!("2{id}{}", json!([name, data])));
        rx
    }

    /// Sends the namespace DISCONNECT (an explicit `socket.disconnect()`), then closes.
    pub fn disconnect(&self) {
        self.raw("1");
        let _ = self.out.send(Message::Close(None));
    }

    /// Drops the TCP connection without a goodbye of any kind, neither Socket.IO's nor a
    /// WebSocket close frame (a closed laptop lid, a network change): dropping the client aborts
    /// its reader and writer, which closes the socket.
    pub fn drop_transport(self) {}

    /// Closes the WebSocket cleanly (a close frame) without a Socket.IO goodbye: what a browser
    /// does when a page closes or navigates away.
    pub async fn close_transport(mut self) {
        let _ = self.out.send(Message::Close(None));
        // The writer stops after sending it; dropping the client before would abort the send.
        let _ = tokio::time::timeout(TIMEOUT, &mut self.writer).await;
    }

    /// All events received so far named `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.inbox
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every event received so far, in order.
    pub fn all_events(&self) -> Vec<(String, Value)> {
        self.inbox.lock().unwrap().events.clone()
    }

    pub fn is_disconnected(&self) -> bool {
        self.inbox.lock().unwrap().disconnected
    }

    /// Waits (bounded) until an event `name` matching `pred` arrived; returns it.
    pub async fn wait_for(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if let Some(v) = self.events(name).into_iter().find(|v| pred(v)) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {name}; got {:?}", self.all_events());
            }
        }
    }

    /// Waits (bounded) for the server to close this connection.
    pub async fn wait_disconnected(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if self.is_disconnected() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for the server to disconnect");
            }
        }
    }

    /// A round trip through this socket's queue: every notice delivered to this socket before the
    /// call was answered has been received when this returns.
    pub async fn sync(&mut self) {
        let r = self.call("occupancy:unwatch", json!("sync-probe")).await;
        assert_eq!(r["ev"], "left", "{r}");
    }
}

/// A [`MemoryBackend`](occupancy_core::MemoryBackend) whose `connect` takes `delay`, like a
/// remote backend would: it widens any window between a socket's CONNECT and its handlers.
pub struct SlowConnect {
    pub inner: occupancy_core::MemoryBackend,
    pub delay: Duration,
}

#[occupancy_core::async_trait]
impl occupancy_core::Backend for SlowConnect {
    fn attach(
        &self,
        config: &occupancy_core::Config,
        sink: Arc<dyn occupancy_core::NoticeSink>,
    ) -> Result<(), occupancy_core::Error> {
        self.inner.attach(config, sink)
    }
    async fn connect(
        &self,
        session: occupancy_core::SessionId,
        principal: Option<&str>,
        meta: occupancy_core::Meta,
        token: occupancy_core::ResumeToken,
    ) -> Result<(), occupancy_core::Error> {
        tokio::time::sleep(self.delay).await;
        self.inner.connect(session, principal, meta, token).await
    }
    async fn disconnect(
        &self,
        session: occupancy_core::SessionId,
        now: std::time::Instant,
        ending: occupancy_core::Ending,
    ) -> Result<(), occupancy_core::Error> {
        self.inner.disconnect(session, now, ending).await
    }
    async fn close(&self, session: occupancy_core::SessionId) -> Result<(), occupancy_core::Error> {
        self.inner.close(session).await
    }
    async fn resume(
        &self,
        token: occupancy_core::ResumeToken,
        new_token: occupancy_core::ResumeToken,
        now: std::time::Instant,
    ) -> Result<occupancy_core::Resumed, occupancy_core::Error> {
        self.inner.resume(token, new_token, now).await
    }
    async fn session_for_token(
        &self,
        token: occupancy_core::ResumeToken,
    ) -> Result<Option<(occupancy_core::SessionId, Option<String>)>, occupancy_core::Error> {
        self.inner.session_for_token(token).await
    }
    async fn join(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
        meta: Option<occupancy_core::Meta>,
    ) -> Result<occupancy_core::Joined, occupancy_core::Error> {
        self.inner.join(session, room, meta).await
    }
    async fn update(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
        meta: occupancy_core::Meta,
    ) -> Result<occupancy_core::Joined, occupancy_core::Error> {
        self.inner.update(session, room, meta).await
    }
    async fn active(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
    ) -> Result<occupancy_core::Joined, occupancy_core::Error> {
        self.inner.active(session, room).await
    }
    async fn release(
        &self,
        room: &str,
    ) -> Result<occupancy_core::ForcedRelease, occupancy_core::Error> {
        self.inner.release(room).await
    }
    async fn leave(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
    ) -> Result<occupancy_core::Left, occupancy_core::Error> {
        self.inner.leave(session, room).await
    }
    async fn takeover(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
    ) -> Result<occupancy_core::Joined, occupancy_core::Error> {
        self.inner.takeover(session, room).await
    }
    async fn watch(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
    ) -> Result<occupancy_core::PresenceBody, occupancy_core::Error> {
        self.inner.watch(session, room).await
    }
    async fn unwatch(
        &self,
        session: occupancy_core::SessionId,
        room: &str,
    ) -> Result<bool, occupancy_core::Error> {
        self.inner.unwatch(session, room).await
    }
    async fn room(
        &self,
        room: &str,
    ) -> Result<Option<occupancy_core::RoomState>, occupancy_core::Error> {
        self.inner.room(room).await
    }
    async fn stats(&self) -> Result<occupancy_core::Stats, occupancy_core::Error> {
        self.inner.stats().await
    }
    async fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.inner.poll_timeout().await
    }
    async fn handle_timeout(
        &self,
        now: std::time::Instant,
    ) -> Result<usize, occupancy_core::Error> {
        self.inner.handle_timeout(now).await
    }
}
