//! Test support: a server on 127.0.0.1 served the documented way (`nodelay`), and a protocol v1
//! client on tokio-tungstenite that matches replies by `ref` and keeps other events for later.
//! Every wait is bounded.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use occupancy_axum::{Endpoint, Identity, query_param};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Serves `endpoint` at `/ws` on a free port of 127.0.0.1, with TCP_NODELAY (the documented way).
pub async fn serve(endpoint: Endpoint) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = endpoint.router::<()>("/ws");
    tokio::spawn(async move {
        axum::serve(occupancy_axum::nodelay(listener), app)
            .await
            .unwrap();
    });
    addr
}

/// The identify hook of the tests: `?user=` is the principal, `?name=` the display name.
pub fn demo_identity(
    parts: &axum::http::request::Parts,
) -> Result<Identity, occupancy_axum::Rejection> {
    let id = match query_param(parts, "user") {
        Some(u) => Identity::user(u),
        None => Identity::anonymous(),
    };
    Ok(match query_param(parts, "name") {
        Some(n) => id.with_name(n),
        None => id,
    })
}

/// Opens a WebSocket to `/ws{query}` with extra headers; the handshake result.
pub async fn open(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .expect("handshake timed out")?;
    Ok(ws)
}

pub struct Client {
    pub ws: Ws,
    pub hello: Value,
    /// Events received but not consumed yet, in order.
    pub buf: VecDeque<Value>,
    /// WebSocket pings seen from the server.
    pub pings: usize,
    next_ref: i64,
}

impl Client {
    /// Connects and reads `hello`, which must be the first frame.
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        Self::connect_with(addr, query, &[]).await
    }

    pub async fn connect_with(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Client {
        let ws = open(addr, query, headers).await.expect("handshake failed");
        let mut c = Client {
            ws,
            hello: Value::Null,
            buf: VecDeque::new(),
            pings: 0,
            next_ref: 1,
        };
        let hello = c.read().await.expect("closed before hello");
        assert_eq!(hello["ev"], "hello", "first frame must be hello: {hello}");
        c.hello = hello;
        c
    }

    pub fn session(&self) -> String {
        self.hello["session"].as_str().unwrap().to_string()
    }

    pub fn token(&self) -> String {
        self.hello["resume"].as_str().unwrap().to_string()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(data)))
            .await
            .unwrap();
    }

    /// The next JSON event from the socket (pings and pongs skipped); `None` once closed.
    pub async fn read(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time");
            match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sent bad JSON"));
                }
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(Message::Close(_))) => return None,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends a request with a fresh integer ref and returns the reply carrying it; other events
    /// are kept for [`Client::next`].
    pub async fn request(&mut self, mut req: Value) -> Value {
        let r = self.next_ref;
        self.next_ref += 1;
        req["ref"] = json!(r);
        self.send_text(req.to_string()).await;
        self.reply(json!(r)).await
    }

    /// Waits for the reply with this ref.
    pub async fn reply(&mut self, r: Value) -> Value {
        if let Some(i) = self.buf.iter().position(|e| e.get("ref") == Some(&r)) {
            return self.buf.remove(i).unwrap();
        }
        loop {
            let ev = self
                .read()
                .await
                .unwrap_or_else(|| panic!("closed before reply {r}"));
            if ev.get("ref") == Some(&r) {
                return ev;
            }
            self.buf.push_back(ev);
        }
    }

    /// The first event (buffered or new) matching `f`; earlier non-matching ones stay buffered.
    pub async fn next_where(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.buf.iter().position(&f) {
            return self.buf.remove(i).unwrap();
        }
        loop {
            let ev = self
                .read()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {what}"));
            if f(&ev) {
                return ev;
            }
            self.buf.push_back(ev);
        }
    }

    /// The first `ev` event about `room`.
    pub async fn next(&mut self, ev: &str, room: &str) -> Value {
        let what = format!("{ev} in {room}");
        self.next_where(&what, |e| e["ev"] == ev && e["room"] == room)
            .await
    }

    /// Drops buffered events.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Reads until the server's close frame; returns it (`None`: closed without one).
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close in time");
            match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(Message::Text(t))) => {
                    self.buf
                        .push_back(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// A ping/pong round trip: proves the connection is open and served.
    pub async fn alive(&mut self) {
        let pong = self.request(json!({"op": "ping"})).await;
        assert_eq!(pong["ev"], "pong", "{pong}");
    }
}
