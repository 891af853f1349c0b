//! `loadgen soak`: the churn soak of issue 8. Thousands of protocol v1 clients do random joins,
//! leaves, take-overs, watches, abrupt disconnects followed by a resume, and clean reconnects
//! against a server (the documents example, ideally with `OCCUPANCY_CHECK_INVARIANTS=1`), for a
//! bounded time. Each client checks what it is told as it goes; then everyone stops, each client
//! compares what the notices made it believe with the server's answer (an idempotent `join`
//! returns your current place), and the server's counters (`GET /stats`) must match the sum of
//! the clients' rooms. Finally everyone disconnects (half abruptly) and, after the grace, the
//! counters must all be zero, with no invariant violation; the server's RSS is reported against
//! its baseline.
//!
//! The chaos soak (issue 18) adds Socket.IO clients (`--transport socketio|mixed`: the acked
//! `occupancy:*` events over a WebSocket or long-polling, see [`crate::sio`]), several nodes on one
//! Redis (`--nodes N`, see [`crate::cluster`]; clients reconnect to a random node), and faults:
//! node kills, Redis restarts (empty) and `CLIENT PAUSE`s. What a fault explains is tolerated, and
//! only that: an `unavailable` reply while Redis is paused or restarting, a connection lost with
//! its node, a resume refused after either. Every session records when it believed it held a
//! room; two principals believing so at once for longer than the lease fails the soak, and so
//! does a killed node's holder not replaced within the lease + 1 s while someone else waited.
//!
//! Every check that fails is counted in the JSON result, and any failure makes the exit code 1.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::{Proto, Target};
use crate::cluster::{Cluster, Sample};
use crate::server;
use crate::sio::{self, SioConn};

/// What `loadgen soak` is told.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSettings {
    /// The WebSocket endpoint (`ws://IP:PORT/occupancy`).
    pub url: String,
    /// The counters (`http://IP:PORT/stats`).
    pub stats_url: String,
    /// Clients at once.
    pub clients: usize,
    /// Ordinary rooms (`doc-0` ...); 10% of the joins go to 5 hot rooms instead.
    pub rooms: usize,
    /// How long the churn runs, seconds.
    pub secs: f64,
    /// Mean time between two actions of one client, ms.
    pub think_ms: u64,
    /// The server's grace (ms): resume delays and the final wait are planned from it.
    pub grace_ms: u64,
    /// Loopback source addresses.
    pub sources: usize,
    /// The server's pid, for RSS (optional).
    pub pid: Option<u32>,
    /// `v1`, `socketio` (half over a WebSocket, half long-polling) or `mixed` (a third each).
    pub transport: String,
    /// Every node's WebSocket endpoint (`url` first); each connection picks one at random.
    pub urls: Vec<String>,
    /// Every node's counters, in the order of `urls`.
    pub stats_urls: Vec<String>,
    /// The nodes share their state (Redis): the counters of any node are the whole's, except
    /// `live_connections`, summed over nodes.
    pub shared: bool,
    /// SIGKILL a random node every this many seconds (0: never); it restarts 3 s later.
    pub kill_every: f64,
    /// Restart Redis, empty, every this many seconds (0: never).
    pub redis_restart_every: f64,
    /// `CLIENT PAUSE` Redis for 1.5 s every this many seconds (0: never).
    pub redis_pause_every: f64,
    /// The nodes' lease (ms): the overlap and replacement checks are planned from it.
    pub lease_ms: u64,
    /// The server refuses rooms `priv-N` to users of the other parity (`PRIVATE_ROOMS=priv-`):
    /// 5% of the joins and watches go there, and the answer is checked against the rule.
    pub private_rooms: bool,
}

/// A fault the soak injected.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// `kill`, `redis-restart`, `redis-pause`.
    pub kind: &'static str,
    /// The node killed.
    pub node: Option<usize>,
    /// Seconds since the churn began: start, end (the node or Redis is back).
    pub at: f64,
    /// End (`None` while it lasts).
    pub until: Option<f64>,
}

/// The faults so far, shared with the clients (which judge what a fault explains as they go).
struct Faults {
    t0: Instant,
    log: Mutex<Vec<Fault>>,
}

impl Faults {
    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64()
    }

    /// Whether a fault matching `pick` was under way at some moment of `[from, to]`, or ended
    /// less than `slack` seconds before `from`.
    fn explains(
        &self,
        from: Instant,
        to: Instant,
        slack: f64,
        pick: impl Fn(&Fault) -> bool,
    ) -> bool {
        let (from, to) = (self.secs(from), self.secs(to));
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|f| pick(f) && f.at <= to && f.until.is_none_or(|u| u + slack >= from))
    }

    fn redis(&self, from: Instant, to: Instant, slack: f64) -> bool {
        self.explains(from, to, slack, |f| f.node.is_none())
    }

    fn kill_of(&self, node: usize, from: Instant, to: Instant, slack: f64) -> bool {
        self.explains(from, to, slack, |f| f.node == Some(node))
    }
}

/// A stretch of time one session believed it stood in a room (`hold`: believed it held it).
#[derive(Debug, Clone)]
struct Span {
    room: String,
    principal: Arc<str>,
    node: usize,
    hold: bool,
    from: Instant,
    to: Instant,
}

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tr {
    V1,
    Sio(sio::Transport),
}

/// Counts one client keeps; summed over clients in the result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Requests sent.
    pub requests: u64,
    /// Replies matched to a request.
    pub replies: u64,
    /// Notices received (occupied, released, presence, displaced).
    pub notices: u64,
    /// Requests without a reply after 10 s. FAILURE.
    pub reply_timeouts: u64,
    /// A reply of the wrong kind for its request, or with an unknown ref. FAILURE.
    pub wrong_replies: u64,
    /// `error` replies by code (none is expected during the churn). FAILURE.
    pub errors: BTreeMap<String, u64>,
    /// A notice with a lower version than an earlier notice of the same room. FAILURE.
    pub notice_version_regressions: u64,
    /// A notice for a room after the `left` reply of that room (and before joining again).
    /// FAILURE.
    pub notices_after_left: u64,
    /// `released` for a room this session is not in. FAILURE.
    pub stray_released: u64,
    /// Abrupt disconnects (no close frame; half of them a TCP reset).
    pub abrupt_drops: u64,
    /// Clean closes followed by a new session.
    pub clean_reconnects: u64,
    /// Resumes attempted, and their outcomes.
    pub resumes: u64,
    /// Resumed well within the grace.
    pub resumed_in_grace: u64,
    /// Refused well after the grace (the expected outcome).
    pub refused_after_grace: u64,
    /// Within a second of the grace's end: either outcome is right.
    pub resume_borderline: u64,
    /// Refused although well within the grace. FAILURE.
    pub lost_resumes: u64,
    /// Resumed although well after the grace. FAILURE.
    pub stale_resumes: u64,
    /// Connections the server closed, by close code (`none` = no close frame). FAILURE.
    pub server_closes: BTreeMap<String, u64>,
    /// Connection attempts that failed (retried). FAILURE when they never succeed.
    pub connect_failures: u64,
    /// Audit: rooms whose place was compared.
    pub audit_rooms: u64,
    /// Audit: a place the notices got wrong (holding/position differs from the server's).
    /// FAILURE.
    pub audit_mismatches: u64,
    /// Connections opened, by transport (`v1`, `socketio-websocket`, `socketio-polling`).
    pub connections: BTreeMap<String, u64>,
    /// `forbidden` for a private room of the other parity (the hook's rule).
    pub forbidden_as_expected: u64,
    /// A private room's answer against the rule (refused although allowed, or allowed although
    /// refused). FAILURE.
    pub authorization_wrong: u64,
    /// `unavailable` replies while Redis was paused or restarting (or just after). Tolerated.
    pub unavailable_in_fault: u64,
    /// Connections lost with their node (killed). Tolerated.
    pub closed_by_kill: u64,
    /// Resumes whose outcome a fault explains either way (not judged).
    pub resumes_in_fault: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            requests,
            replies,
            notices,
            reply_timeouts,
            wrong_replies,
            notice_version_regressions,
            notices_after_left,
            stray_released,
            abrupt_drops,
            clean_reconnects,
            resumes,
            resumed_in_grace,
            refused_after_grace,
            resume_borderline,
            lost_resumes,
            stale_resumes,
            connect_failures,
            audit_rooms,
            audit_mismatches,
            forbidden_as_expected,
            authorization_wrong,
            unavailable_in_fault,
            closed_by_kill,
            resumes_in_fault
        );
        for (k, v) in &o.connections {
            *self.connections.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.server_closes {
            *self.server_closes.entry(k.clone()).or_default() += v;
        }
    }

    /// The failed checks, in words; empty when all passed.
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                f.push(format!("{n} × {what}"));
            }
        };
        check(self.reply_timeouts, "request without a reply within 10 s");
        check(self.wrong_replies, "reply of the wrong kind or unknown ref");
        check(self.errors.values().sum(), "error reply");
        check(self.notice_version_regressions, "notice version going back");
        check(self.notices_after_left, "notice after `left`");
        check(self.stray_released, "`released` for a room not joined");
        check(self.lost_resumes, "resume refused within the grace");
        check(self.stale_resumes, "resume accepted after the grace");
        check(
            self.server_closes.values().sum(),
            "connection closed by the server",
        );
        check(
            self.audit_mismatches,
            "place known from notices differs from the server's",
        );
        check(
            self.authorization_wrong,
            "private room answered against the authorization rule",
        );
        f
    }
}

/// The JSON result of `loadgen soak`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// What was run.
    pub settings: SoakSettings,
    /// Sum of the clients' counters.
    pub counters: Counters,
    /// Requests per second during the churn.
    pub requests_per_sec: f64,
    /// `GET /stats` at the audit (everyone connected and idle).
    pub stats_at_audit: Value,
    /// Rooms the clients stood in at the audit (summed), to compare with `occupants`.
    pub audit_memberships: u64,
    /// Rooms the clients watched at the audit (summed), to compare with `watchers`.
    pub audit_watches: u64,
    /// Rooms with several clients told they hold it at the audit.
    pub audit_double_holders: u64,
    /// Rooms with members but no holder at the audit.
    pub audit_holderless: u64,
    /// `GET /stats` after everyone left and the grace passed.
    pub stats_at_end: Value,
    /// Server RSS (bytes): before the clients, the highest seen, at the end.
    pub rss_baseline: Option<u64>,
    /// Highest RSS sampled (every second).
    pub rss_peak: Option<u64>,
    /// RSS after everyone left.
    pub rss_end: Option<u64>,
    /// The faults injected, in order.
    pub faults: Vec<Fault>,
    /// Pairs of sessions of different principals that both believed they held a room for
    /// longer than the lease at once.
    pub hold_overlaps: u64,
    /// The longest such double belief (ms), whether or not it passed the lease.
    pub longest_double_hold_ms: u64,
    /// Rooms held by a killed node's sessions with someone else waiting throughout.
    pub kill_holders_checked: u64,
    /// ... of which no one else was granted within the lease + 1 s. FAILURE.
    pub kill_holders_not_replaced: u64,
    /// The slowest replacement of a killed node's holder (ms after the kill).
    pub slowest_kill_replacement_ms: u64,
    /// Each process's RSS (the nodes and Redis) with `--nodes`.
    pub processes: Vec<crate::cluster::Rss>,
    /// Every failed check; empty = the soak passed.
    pub failures: Vec<String>,
    /// Wall time, seconds.
    pub secs: f64,
}

/// What the coordinator tells the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Random actions.
    Churn,
    /// Stop acting, reconnect, wait for every reply, say ready.
    Settle,
    /// Compare places with the server.
    Audit,
    /// Leave.
    Finish,
}

/// One client's answer at the audit.
#[derive(Debug, Default)]
struct Audit {
    /// Who it stands in line as (its user id, or its session when anonymous).
    principal: String,
    /// (room, position) per room it stands in, from the server's reply.
    places: Vec<(String, u64)>,
    /// Its public id as the server shows it (`soak-N`; `None` when anonymous).
    user: Option<String>,
    /// Its last frames (printed when the server has it somewhere it does not know about).
    history: Vec<String>,
    /// Rooms it watches.
    watched: Vec<String>,
}

/// Each client's own random source (xorshift64*, the one the fuzz tests use), in `u64`s.
struct Rng(occupancy_core::testing::fuzz::Rng);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n as usize) as u64
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client's connection: protocol v1 or Socket.IO (its acks and pushes read as v1 objects).
/// One per client, so the WebSocket's size is of no concern.
#[allow(clippy::large_enum_variant)]
enum Conn {
    V1(Ws),
    Sio(SioConn),
}

/// What a connection gave.
enum Got {
    /// A v1 JSON object.
    Text(String),
    /// The connection ended (the close code, `none` without a close frame).
    Closed(String),
    /// Nothing of interest (a ping, a binary frame).
    Other,
}

impl Conn {
    async fn send_op(&mut self, op: Op, room: &str, r: u64) -> Result<(), ()> {
        match self {
            Conn::V1(ws) => {
                let text = if op == Op::Ping {
                    format!(r#"{{"op":"ping","ref":{r}}}"#)
                } else {
                    format!(r#"{{"op":"{}","room":"{room}","ref":{r}}}"#, op.name())
                };
                ws.send(Message::text(text)).await.map_err(|_| ())
            }
            Conn::Sio(c) => {
                let payload = if op == Op::Ping {
                    serde_json::json!({})
                } else {
                    serde_json::json!({ "room": room })
                };
                c.emit(op.name(), &payload, r)
            }
        }
    }

    async fn next(&mut self) -> Got {
        match self {
            Conn::V1(ws) => match ws.next().await {
                Some(Ok(Message::Text(t))) => Got::Text(t.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    Got::Closed(frame.map_or("none".to_string(), |f| u16::from(f.code).to_string()))
                }
                Some(Ok(_)) => Got::Other,
                Some(Err(_)) | None => Got::Closed("none".into()),
            },
            Conn::Sio(c) => match c.recv().await {
                Some(v) => Got::Text(v.to_string()),
                None => Got::Closed("none".into()),
            },
        }
    }

    /// Ends the connection: abruptly (half the time a TCP reset; long-polling simply stops) or
    /// with a goodbye.
    async fn end(self, abrupt: bool, reset: bool) {
        match self {
            Conn::V1(mut ws) => {
                if abrupt {
                    if reset {
                        reset_on_close(&ws);
                    }
                } else {
                    close_cleanly(&mut ws).await;
                }
            }
            Conn::Sio(c) => {
                c.end(if abrupt {
                    sio::End::Abrupt
                } else {
                    sio::End::Clean
                })
                .await
            }
        }
    }
}

/// An outstanding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Join,
    Takeover,
    Leave,
    Watch,
    Unwatch,
    Ping,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Takeover => "takeover",
            Op::Leave => "leave",
            Op::Watch => "watch",
            Op::Unwatch => "unwatch",
            Op::Ping => "ping",
        }
    }
    fn reply(self) -> &'static str {
        match self {
            Op::Join | Op::Takeover => "joined",
            Op::Leave | Op::Unwatch => "left",
            Op::Watch => "watching",
            Op::Ping => "pong",
        }
    }
}

/// What one client knows, kept across resumes of its session (reset for a new session).
#[derive(Default)]
struct View {
    /// Rooms it stands in: (version, position) as last told.
    rooms: HashMap<String, (u64, u64)>,
    watching: HashSet<String>,
    /// Highest notice version seen per room.
    notice_versions: HashMap<String, u64>,
    /// Rooms left (reply received) and not joined again since.
    left: HashSet<String>,
    /// ref → (op, room, sent at).
    pending: HashMap<u64, (Op, String, Instant)>,
}

struct Client {
    id: u32,
    /// Every node (one per `urls`).
    targets: Arc<Vec<Target>>,
    /// The node of the current connection.
    node: usize,
    tr: Tr,
    faults: Arc<Faults>,
    /// Who this session stands in line as: the user, or (anonymous) the session.
    principal: Arc<str>,
    /// Sessions started (names an anonymous client's principal).
    sessions: u32,
    /// Rooms it believes it stands in / holds, since when.
    member_since: HashMap<String, Instant>,
    hold_since: HashMap<String, Instant>,
    /// What it believed, over the run.
    spans: Vec<Span>,
    /// The next abrupt drop is a TCP reset.
    reset: bool,
    s: Arc<SoakSettings>,
    rng: Rng,
    c: Counters,
    view: View,
    token: Option<String>,
    next_ref: u64,
    user: Option<String>,
    progress: Arc<AtomicU64>,
    /// The last frames sent and received, printed with the first failures (diagnostics).
    history: std::collections::VecDeque<String>,
    /// This connection resumed a session: a `released` may come before the presence notices
    /// that tell the rooms again.
    resumed: bool,
    /// How many failures this client printed.
    printed: u32,
}

fn room_of(v: &Value) -> Option<&str> {
    v.get("room").and_then(Value::as_str)
}

impl Client {
    fn remember(&mut self, line: String) {
        if self.history.len() == 16 {
            self.history.pop_front();
        }
        self.history.push_back(line);
    }

    /// Prints the client's recent frames with the first failures it sees.
    fn report(&mut self, what: &str) {
        static PRINTED: AtomicU64 = AtomicU64::new(0);
        if self.printed < 2 && PRINTED.fetch_add(1, Ordering::Relaxed) < 8 {
            self.printed += 1;
            eprintln!(
                "  client {} ({}): {what}; its last frames:\n    {}",
                self.id,
                self.user.as_deref().unwrap_or("anonymous"),
                self.history
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n    ")
            );
        }
    }

    fn pick_room(&mut self) -> String {
        if self.s.private_rooms && self.rng.below(20) == 0 {
            return format!("priv-{}", self.rng.below(10));
        }
        if self.rng.below(10) == 0 {
            format!("doc-hot-{}", self.rng.below(5))
        } else {
            format!("doc-{}", self.rng.below(self.s.rooms as u64))
        }
    }

    /// Whether the demo's authorization rule lets this client into `room` (see
    /// `examples/support`: `priv-N` only for users whose id ends in a number of N's parity).
    fn allowed(&self, room: &str) -> bool {
        let Some(n) = room.strip_prefix("priv-") else {
            return true;
        };
        let parity = |s: &str| -> Option<u64> {
            let d: String = s.chars().rev().take_while(char::is_ascii_digit).collect();
            d.chars()
                .rev()
                .collect::<String>()
                .parse::<u64>()
                .ok()
                .map(|d| d % 2)
        };
        match (&self.user, parity(n)) {
            (Some(u), Some(p)) => parity(u) == Some(p),
            _ => false,
        }
    }

    /// Brings the spans up to date with the view (after each message).
    fn sync_spans(&mut self) {
        let now = Instant::now();
        for (room, &(_, pos)) in &self.view.rooms {
            self.member_since.entry(room.clone()).or_insert(now);
            if pos == 0 {
                self.hold_since.entry(room.clone()).or_insert(now);
            }
        }
        let rooms = &self.view.rooms;
        let ended_holds: Vec<String> = self
            .hold_since
            .keys()
            .filter(|r| rooms.get(*r).is_none_or(|&(_, p)| p != 0))
            .cloned()
            .collect();
        let ended: Vec<String> = self
            .member_since
            .keys()
            .filter(|r| !rooms.contains_key(*r))
            .cloned()
            .collect();
        for r in ended_holds {
            self.end_span(r, true, now);
        }
        for r in ended {
            self.end_span(r, false, now);
        }
    }

    fn end_span(&mut self, room: String, hold: bool, now: Instant) {
        let since = if hold {
            self.hold_since.remove(&room)
        } else {
            self.member_since.remove(&room)
        };
        if let Some(from) = since {
            self.spans.push(Span {
                room,
                principal: self.principal.clone(),
                node: self.node,
                hold,
                from,
                to: now,
            });
        }
    }

    /// The connection is gone: the session believes nothing any more (until a resume tells it
    /// again).
    fn end_spans(&mut self) {
        let now = Instant::now();
        for r in self.hold_since.keys().cloned().collect::<Vec<_>>() {
            self.end_span(r, true, now);
        }
        for r in self.member_since.keys().cloned().collect::<Vec<_>>() {
            self.end_span(r, false, now);
        }
    }

    async fn send(&mut self, ws: &mut Conn, op: Op, room: &str) -> Result<(), ()> {
        self.next_ref += 1;
        let r = self.next_ref;
        let text = if op == Op::Ping {
            format!(r#"{{"op":"ping","ref":{r}}}"#)
        } else {
            format!(r#"{{"op":"{}","room":"{room}","ref":{r}}}"#, op.name())
        };
        if matches!(op, Op::Join | Op::Takeover | Op::Watch) {
            self.view.left.remove(room);
        }
        self.view
            .pending
            .insert(r, (op, room.to_string(), Instant::now()));
        self.c.requests += 1;
        self.progress.fetch_add(1, Ordering::Relaxed);
        self.remember(format!("> {text}"));
        ws.send_op(op, room, r).await
    }

    /// Handles one server message; returns the reply's ref when it answered a request.
    fn on_text(&mut self, text: &str) -> Option<u64> {
        let r = self.on_text_inner(text);
        self.sync_spans();
        r
    }

    fn on_text_inner(&mut self, text: &str) -> Option<u64> {
        self.remember(format!("< {text}"));
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.c.wrong_replies += 1;
            return None;
        };
        let ev = v.get("ev").and_then(Value::as_str).unwrap_or("");
        let version = v.get("version").and_then(Value::as_u64);
        let position = v.get("position").and_then(Value::as_u64);
        match ev {
            "occupied" | "released" | "presence" | "displaced" => {
                self.c.notices += 1;
                let room = room_of(&v)?.to_string();
                let version = version.unwrap_or(0);
                let seen = self.view.notice_versions.entry(room.clone()).or_insert(0);
                let regressed = version < *seen;
                *seen = (*seen).max(version);
                if regressed {
                    self.c.notice_version_regressions += 1;
                    self.report("a notice version went back");
                }
                if self.view.left.contains(&room) && !self.view.watching.contains(&room) {
                    self.c.notices_after_left += 1;
                    self.report("a notice after `left`");
                    return None;
                }
                let member = self.view.rooms.get_mut(&room);
                match (ev, member) {
                    (_, Some((ver, pos))) if version >= *ver => {
                        *ver = version;
                        if ev == "released" {
                            *pos = 0;
                        } else if let Some(p) = position {
                            *pos = p;
                        }
                    }
                    (_, Some(_)) => {} // older than what a reply told: dropped, as clients do
                    // A place in a room this client did not know it stood in: a join whose reply
                    // was lost with a dropped connection; the resume tells it (as it tells every
                    // room of a resumed session).
                    (_, None) if position.is_some() && ev != "released" => {
                        self.view
                            .rooms
                            .insert(room, (version, position.unwrap_or(0)));
                    }
                    // Likewise a watch (a presence without a place goes to watchers only).
                    ("presence", None) if position.is_none() => {
                        self.view.watching.insert(room);
                    }
                    ("released", None) => {
                        // A join or take over in flight can be released before its reply.
                        let joining =
                            self.view.pending.values().any(|(op, r, _)| {
                                matches!(op, Op::Join | Op::Takeover) && *r == room
                            });
                        if self.resumed {
                            // Released before the resume's presence told this room again.
                            self.view.rooms.insert(room, (version, 0));
                        } else if !joining {
                            self.c.stray_released += 1;
                            self.report("`released` for a room it is not in");
                        }
                    }
                    _ => {}
                }
                None
            }
            "hello" => None,
            _ => {
                let r = v.get("ref").and_then(Value::as_u64);
                let Some((op, room, sent)) = r.and_then(|r| self.view.pending.remove(&r)) else {
                    if ev == "error"
                        && v.get("code").and_then(Value::as_str) == Some("resume_invalid")
                    {
                        // The answer to a refused resume (judged by the resume check).
                        return None;
                    }
                    if ev == "error" {
                        let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
                        *self.c.errors.entry(code.to_string()).or_default() += 1;
                    } else {
                        self.c.wrong_replies += 1;
                    }
                    return None;
                };
                self.c.replies += 1;
                let private =
                    room.starts_with("priv-") && matches!(op, Op::Join | Op::Takeover | Op::Watch);
                if ev == "error" {
                    let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
                    if private && code == "forbidden" && !self.allowed(&room) {
                        self.c.forbidden_as_expected += 1;
                        return r;
                    }
                    if private && code == "forbidden" {
                        self.c.authorization_wrong += 1;
                        self.report(&format!("forbidden {room} although the rule allows it"));
                        return r;
                    }
                    if code == "unavailable" && self.faults.redis(sent, Instant::now(), 10.0) {
                        self.c.unavailable_in_fault += 1;
                        return r;
                    }
                    *self
                        .c
                        .errors
                        .entry(format!("{code} ({})", op.name()))
                        .or_default() += 1;
                    self.report(&format!("error {code} for {} {room}", op.name()));
                    return r;
                }
                if ev != op.reply() {
                    self.c.wrong_replies += 1;
                    return r;
                }
                if private && !self.allowed(&room) {
                    self.c.authorization_wrong += 1;
                    self.report(&format!("let into {room} against the rule"));
                }
                match op {
                    Op::Join | Op::Takeover => {
                        let (version, position) = (version.unwrap_or(0), position.unwrap_or(0));
                        let e = self.view.rooms.entry(room).or_insert((0, position));
                        if version >= e.0 {
                            *e = (version, position);
                        }
                    }
                    Op::Leave => {
                        self.view.rooms.remove(&room);
                        // Unless it already asked to come back (its notices are then expected).
                        let back = self.view.pending.values().any(|(op, r, _)| {
                            matches!(op, Op::Join | Op::Takeover | Op::Watch) && *r == room
                        });
                        if !back {
                            self.view.left.insert(room);
                        }
                    }
                    Op::Watch => {
                        self.view.watching.insert(room);
                    }
                    Op::Unwatch => {
                        self.view.watching.remove(&room);
                    }
                    Op::Ping => {}
                }
                r
            }
        }
    }

    /// One random action; `Err(delay)` means: the connection was dropped on purpose, reconnect
    /// after `delay` (`None`: a clean close, start a new session).
    async fn act(&mut self, ws: &mut Conn) -> Result<(), Option<Option<Duration>>> {
        let dice = self.rng.below(100);
        // Rooms it stands in, less those it is leaving (a take over sent before the leave's
        // reply would rightly be refused).
        let leaving: HashSet<&String> = self
            .view
            .pending
            .values()
            .filter(|(op, _, _)| *op == Op::Leave)
            .map(|(_, room, _)| room)
            .collect();
        let joined: Vec<String> = self
            .view
            .rooms
            .keys()
            .filter(|r| !leaving.contains(r))
            .cloned()
            .collect();
        let any_joined = |rng: &mut Rng| joined[rng.below(joined.len() as u64) as usize].clone();
        let r = match dice {
            0..35 if joined.len() < 4 => {
                let room = self.pick_room();
                self.send(ws, Op::Join, &room).await
            }
            0..60 if !joined.is_empty() => {
                let room = any_joined(&mut self.rng);
                self.send(ws, Op::Leave, &room).await
            }
            0..60 => {
                // Not in any room: leave one anyway (idempotent), or join.
                let room = self.pick_room();
                self.send(ws, Op::Join, &room).await
            }
            // Take over one of your rooms (only members may).
            60..70 if !joined.is_empty() => {
                let room = any_joined(&mut self.rng);
                self.send(ws, Op::Takeover, &room).await
            }
            60..70 => {
                let room = self.pick_room();
                self.send(ws, Op::Join, &room).await
            }
            70..80 => {
                if self.view.watching.len() < 2 && dice < 76 {
                    let room = self.pick_room();
                    self.send(ws, Op::Watch, &room).await
                } else if let Some(room) = self.view.watching.iter().next().cloned() {
                    self.send(ws, Op::Unwatch, &room).await
                } else {
                    self.send(ws, Op::Ping, "").await
                }
            }
            80..86 => {
                self.c.abrupt_drops += 1;
                self.reset = dice.is_multiple_of(2);
                // Up to 1.6 × the grace + 2.5 s: some resumes come too late, on purpose (past
                // the 2 s allowed for the server to notice the drop).
                let delay = self.rng.below(self.s.grace_ms * 16 / 10 + 2500);
                return Err(Some(Some(Duration::from_millis(delay))));
            }
            86..88 => {
                self.c.clean_reconnects += 1;
                return Err(Some(None));
            }
            _ => self.send(ws, Op::Ping, "").await,
        };
        r.map_err(|()| None)
    }

    fn forget_session(&mut self) {
        self.end_spans();
        self.view = View::default();
        self.token = None;
    }

    /// Connects to a random node (resuming with the token when given), reads `hello`, and
    /// returns whether the session was resumed.
    async fn connect(&mut self, resume: bool) -> Option<(Conn, bool)> {
        for attempt in 0..40u32 {
            if attempt > 0 {
                self.c.connect_failures += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
            // Behind a load balancer: any node, each time.
            self.node = self.rng.below(self.targets.len() as u64) as usize;
            let target = &self.targets[self.node];
            let source = (!target.sources.is_empty())
                .then(|| target.sources[self.id as usize % target.sources.len()]);
            let token = if resume { self.token.clone() } else { None };
            let got = match self.tr {
                Tr::V1 => {
                    let mut url = target.url.clone();
                    let mut q = Vec::new();
                    if let Some(u) = &self.user {
                        q.push(format!("user={u}"));
                    }
                    if let Some(t) = &token {
                        q.push(format!("resume={t}"));
                    }
                    if !q.is_empty() {
                        url.push('?');
                        url.push_str(&q.join("&"));
                    }
                    let Ok(Ok(mut ws)) =
                        tokio::time::timeout(Duration::from_secs(20), open(target, self.id, &url))
                            .await
                    else {
                        continue;
                    };
                    let hello = tokio::time::timeout(Duration::from_secs(20), async {
                        while let Some(Ok(m)) = ws.next().await {
                            if let Message::Text(t) = m {
                                return serde_json::from_str::<Value>(t.as_str()).ok();
                            }
                        }
                        None
                    })
                    .await;
                    let Ok(Some(hello)) = hello else { continue };
                    (Conn::V1(ws), hello)
                }
                Tr::Sio(transport) => {
                    let query = self
                        .user
                        .as_ref()
                        .map_or(String::new(), |u| format!("user={u}"));
                    let auth = match &token {
                        Some(t) => serde_json::json!({ "resume": t }),
                        None => serde_json::json!({}),
                    };
                    match SioConn::connect(target.addr, source, &query, &auth, transport).await {
                        Ok((c, hello)) => (Conn::Sio(c), hello),
                        Err(_) => continue,
                    }
                }
            };
            let (conn, hello) = got;
            if hello.get("ev").and_then(Value::as_str) != Some("hello") {
                continue;
            }
            let kind = match self.tr {
                Tr::V1 => "v1",
                Tr::Sio(sio::Transport::WebSocket) => "socketio-websocket",
                Tr::Sio(sio::Transport::Polling) => "socketio-polling",
            };
            *self.c.connections.entry(kind.into()).or_default() += 1;
            let resumed = hello
                .get("resumed")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            self.token = hello
                .get("resume")
                .and_then(Value::as_str)
                .map(str::to_string);
            if !resumed {
                self.sessions += 1;
                if self.user.is_none() {
                    self.principal = format!("anon-{}-{}", self.id, self.sessions).into();
                }
            }
            return Some((conn, resumed));
        }
        None
    }

    /// Reads and handles frames until `deadline`, while `more(self, when the last text frame
    /// came)` holds, or until the connection ends.
    async fn read_while(
        &mut self,
        ws: &mut Conn,
        deadline: Instant,
        more: impl Fn(&Self, Instant) -> bool,
    ) {
        let mut last = Instant::now();
        while Instant::now() < deadline && more(self, last) {
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(Got::Text(t)) => {
                    self.on_text(&t);
                    last = Instant::now();
                }
                Ok(Got::Other) | Err(_) => {}
                Ok(Got::Closed(_)) => break,
            }
        }
    }

    /// Reads until every request is answered (at most 20 s).
    async fn settle(&mut self, ws: &mut Conn) {
        let deadline = Instant::now() + Duration::from_secs(20);
        self.read_while(ws, deadline, |c, _| !c.view.pending.is_empty())
            .await;
    }

    /// Once everyone is settled and no session is in grace: reads what is left, then asks the
    /// server for each room's place (an idempotent `join` only answers) and compares.
    async fn audit(&mut self, ws: &mut Conn) -> Audit {
        let quiet = Duration::from_secs(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        self.read_while(ws, deadline, |c, last| {
            !c.view.pending.is_empty() || last.elapsed() < quiet
        })
        .await;
        self.c.reply_timeouts += self.view.pending.len() as u64;
        self.view.pending.clear();
        // Spread the audit's joins over a few seconds per thousand clients: with the invariant
        // check after every operation, thousands of joins at once would stall the server longer
        // than its liveness timeout.
        let spread = (self.s.clients as u64 * 6).max(1000);
        let pause = Duration::from_millis(self.rng.below(spread));
        self.read_while(ws, Instant::now() + pause, |_, _| true)
            .await;
        let mut audit = Audit {
            principal: self.principal.to_string(),
            user: self.user.clone(),
            history: self.history.iter().cloned().collect(),
            watched: self.view.watching.iter().cloned().collect(),
            ..Audit::default()
        };
        let rooms: Vec<(String, (u64, u64))> = self
            .view
            .rooms
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (room, (_, believed)) in rooms {
            self.next_ref += 1;
            let r = self.next_ref;
            if ws.send_op(Op::Join, &room, r).await.is_err() {
                break;
            }
            let reply = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match ws.next().await {
                        Got::Text(t) => {
                            if let Ok(v) = serde_json::from_str::<Value>(&t)
                                && v.get("ref").and_then(Value::as_u64) == Some(r)
                            {
                                return Some(v);
                            }
                        }
                        Got::Other => {}
                        Got::Closed(_) => return None,
                    }
                }
            })
            .await;
            self.c.audit_rooms += 1;
            match reply {
                Ok(Some(v)) if v.get("ev").and_then(Value::as_str) == Some("joined") => {
                    let position = v.get("position").and_then(Value::as_u64);
                    if position != Some(believed) {
                        self.c.audit_mismatches += 1;
                        if self.c.audit_mismatches <= 3 {
                            eprintln!(
                                "  client {}: {room}: notices said place {believed}, the server says {position:?}",
                                self.id
                            );
                        }
                    }
                    audit.places.push((room, position.unwrap_or(u64::MAX)));
                }
                _ => self.c.reply_timeouts += 1,
            }
        }
        audit
    }
}

/// Says goodbye with a close frame and reads until the server's (at most 2 s), so the server
/// sees a clean end.
async fn close_cleanly(ws: &mut Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Makes the socket send a TCP reset instead of a FIN when it is dropped.
fn reset_on_close(ws: &Ws) {
    reset_fd_on_close(ws.get_ref().as_raw_fd());
}

/// Makes socket `fd` send a TCP reset instead of a FIN when it is closed.
pub fn reset_fd_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for its size; the fd is open (owned by the caller).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn open(target: &Target, id: u32, url: &str) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if !target.sources.is_empty() {
        let src = target.sources[id as usize % target.sources.len()];
        socket
            .bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| e.to_string())?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let request = url.into_client_request().map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// What one client brings back.
struct Outcome {
    c: Counters,
    spans: Vec<Span>,
}

/// One client, from its first connection to the end.
async fn client(
    mut cl: Client,
    mut phase: watch::Receiver<Phase>,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    audits: tokio::sync::mpsc::UnboundedSender<Audit>,
) -> Outcome {
    let think = cl.s.think_ms.max(1);
    let grace = Duration::from_millis(cl.s.grace_ms);
    // A long-polling client that vanishes is noticed by the engine's ping only (5 s + 5 s in the
    // examples): its grace starts that much later.
    let lag = match cl.tr {
        Tr::Sio(sio::Transport::Polling) => Duration::from_secs(12),
        _ => Duration::from_secs(2),
    };
    let mut resume = false;
    // When the last abrupt drop happened and how long the client waited.
    let mut dropped: Option<(Instant, Duration)> = None;
    // The node the dropped session lived on.
    let mut drop_node = 0;
    let (mut settled, mut audited) = (false, false);
    loop {
        let to_start = dropped.map_or(Duration::ZERO, |(at, _)| at.elapsed());
        let Some((mut ws, resumed)) = cl.connect(resume).await else {
            // Could not connect at all: counted; give up on this client.
            if !settled {
                let _ = ready.send(());
            }
            if !audited {
                let _ = audits.send(Audit::default());
            }
            cl.end_spans();
            return Outcome {
                c: cl.c,
                spans: cl.spans,
            };
        };
        cl.resumed = resumed;
        if resume {
            cl.c.resumes += 1;
            let to_hello = dropped.map_or(Duration::ZERO, |(at, _)| at.elapsed());
            let drop_at = dropped.map_or_else(Instant::now, |(at, _)| at);
            // The server starts the grace when it sees the connection end (at or after the drop)
            // and decides during the handshake (between `to_start` and `to_hello`): a resume
            // must work when even `to_hello` is inside the grace; it must fail when `to_start`
            // is past it by more than the server could lag in noticing the drop. The session's
            // node killed, or Redis paused or restarted, between the drop and now explains
            // either.
            let now = Instant::now();
            if cl.faults.kill_of(drop_node, drop_at, now, 1.0) || cl.faults.redis(drop_at, now, 5.0)
            {
                cl.c.resumes_in_fault += 1;
            } else if to_hello + Duration::from_millis(300) < grace {
                if resumed {
                    cl.c.resumed_in_grace += 1;
                } else {
                    cl.c.lost_resumes += 1;
                    cl.report("resume refused within the grace");
                }
            } else if to_start > grace + lag {
                if resumed {
                    cl.c.stale_resumes += 1;
                    cl.report("resume accepted after the grace");
                } else {
                    cl.c.refused_after_grace += 1;
                }
            } else {
                cl.c.resume_borderline += 1;
            }
        }
        if !resumed {
            cl.view = View::default();
        } else {
            // Requests in flight when the connection dropped are lost with it: which of them the
            // server ran is unknown, so the rooms are learnt again from the presence notices a
            // resume sends for each of them. Watches cannot all be learnt that way (a member who
            // also watches is told once, as a member), so the client asserts what it meant, as a
            // real client does: watch again what it watched or was about to, unwatch what it was
            // about to stop watching (both idempotent).
            let mut watch: HashSet<String> = cl.view.watching.clone();
            let mut unwatch = Vec::new();
            for (op, room, _) in cl.view.pending.values() {
                match op {
                    Op::Watch => {
                        watch.insert(room.clone());
                    }
                    Op::Unwatch => {
                        watch.remove(room);
                        unwatch.push(room.clone());
                    }
                    _ => {}
                }
            }
            cl.view.pending.clear();
            cl.view.rooms.clear();
            cl.view.watching.clear();
            cl.view.left.clear();
            let mut failed = false;
            for room in watch {
                failed |= cl.send(&mut ws, Op::Watch, &room).await.is_err();
            }
            for room in unwatch {
                failed |= cl.send(&mut ws, Op::Unwatch, &room).await.is_err();
            }
            if failed {
                *cl.c
                    .server_closes
                    .entry("send failed (resume)".into())
                    .or_default() += 1;
            }
        }
        let mut next =
            tokio::time::Instant::now() + Duration::from_millis(cl.rng.below(think * 2).max(1));
        // Why the inner loop ended: Some(delay) = reconnect with resume after it; None = fresh.
        // `how`: end the connection abruptly (with a reset?) or cleanly; None: it is gone.
        let mut how: Option<(bool, bool)> = None;
        let again: Option<Duration> = loop {
            let p = *phase.borrow();
            if p != Phase::Churn && !settled {
                cl.settle(&mut ws).await;
                settled = true;
                let _ = ready.send(());
                continue;
            }
            if p == Phase::Audit && !audited {
                let a = cl.audit(&mut ws).await;
                audited = true;
                let _ = audits.send(a);
                continue;
            }
            if p == Phase::Finish {
                // Half leave abruptly, half say goodbye.
                let abrupt = cl.id.is_multiple_of(2);
                ws.end(abrupt, true).await;
                cl.end_spans();
                return Outcome {
                    c: cl.c,
                    spans: cl.spans,
                };
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Got::Text(t) => { cl.on_text(&t); }
                    Got::Closed(code) => {
                        // A connection lost with its node (killed) is the fault's doing.
                        let now = Instant::now();
                        if cl.faults.kill_of(cl.node, now, now, 3.0) {
                            cl.c.closed_by_kill += 1;
                        } else {
                            *cl.c.server_closes.entry(format!("{code} ({p:?})")).or_default() += 1;
                            cl.report(&format!("connection closed by the server ({code})"));
                        }
                        break Some(Duration::ZERO);
                    }
                    Got::Other => {}
                },
                () = tokio::time::sleep_until(next), if p == Phase::Churn => {
                    next = tokio::time::Instant::now()
                        + Duration::from_millis(cl.rng.below(think * 2).max(1));
                    // Requests unanswered for 10 s are lost.
                    let before = cl.view.pending.len();
                    cl.view.pending.retain(|_, (_, _, at)| at.elapsed() < Duration::from_secs(10));
                    cl.c.reply_timeouts += (before - cl.view.pending.len()) as u64;
                    match cl.act(&mut ws).await {
                        Ok(()) => {}
                        Err(Some(Some(delay))) => {
                            how = Some((true, cl.reset));
                            break Some(delay);
                        }
                        Err(Some(None)) => {
                            how = Some((false, false));
                            break None;
                        }
                        Err(None) => {
                            let now = Instant::now();
                            if cl.faults.kill_of(cl.node, now, now, 3.0) {
                                cl.c.closed_by_kill += 1;
                            } else {
                                *cl.c.server_closes.entry(format!("none ({p:?})")).or_default() += 1;
                            }
                            break Some(Duration::ZERO);
                        }
                    }
                },
                _ = phase.changed() => {}
            }
        };
        cl.end_spans();
        drop_node = cl.node;
        match how {
            Some((abrupt, reset)) => ws.end(abrupt, reset).await,
            None => drop(ws),
        }
        match again {
            Some(delay) => {
                dropped = Some((Instant::now(), delay));
                resume = true;
                // The audit and the end do not wait for a late resume.
                let wait = tokio::time::sleep(delay);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        _ = phase.changed() => {
                            if *phase.borrow() != Phase::Churn { break; }
                        }
                    }
                }
            }
            None => {
                cl.forget_session();
                resume = false;
            }
        }
    }
}

/// `GET` over plain HTTP/1.1 (the soak needs nothing more), parsed as JSON.
async fn get_json(url: &str) -> Result<Value, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(host),
    )
    .await
    .map_err(|_| format!("{url}: connect timed out"))?
    .map_err(|e| format!("{url}: {e}"))?;
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{url}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("{url}: {e}: {body}"))
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(u64::MAX)
}

/// The counters of every node: the first reachable node's (the state is shared) with
/// `live_connections` summed over nodes; one node's own without `shared`.
async fn stats(s: &SoakSettings) -> Result<Value, String> {
    let mut total: Option<Value> = None;
    let mut live = 0u64;
    let mut last_err = String::new();
    for url in &s.stats_urls {
        match get_json(url).await {
            Ok(v) => {
                live += num(&v, "live_connections");
                if total.is_none() {
                    total = Some(v);
                } else if !s.shared {
                    // Separate servers: add everything up.
                    if let (Some(Value::Object(t)), Value::Object(o)) = (total.as_mut(), &v) {
                        for (k, x) in o {
                            if let (Some(a), Some(b)) =
                                (t.get(k).and_then(Value::as_u64), x.as_u64())
                            {
                                t.insert(k.clone(), (a + b).into());
                            }
                        }
                    }
                }
            }
            Err(e) => last_err = e,
        }
    }
    let mut total = total.ok_or(last_err)?;
    total["live_connections"] = live.into();
    Ok(total)
}

/// Checks what the sessions believed over the run: returns (overlaps longer than the lease,
/// the longest double hold in ms, killed holders checked, not replaced in time, slowest
/// replacement in ms).
fn check_spans(
    spans: &[Span],
    faults: &[Fault],
    t0: Instant,
    lease: Duration,
) -> (u64, u64, u64, u64, u64) {
    let mut by_room: HashMap<&str, Vec<&Span>> = HashMap::new();
    for sp in spans {
        by_room.entry(sp.room.as_str()).or_default().push(sp);
    }
    let (mut overlaps, mut longest) = (0u64, Duration::ZERO);
    for list in by_room.values() {
        let mut holds: Vec<&Span> = list.iter().copied().filter(|s| s.hold).collect();
        holds.sort_by_key(|s| s.from);
        // Sweep: each hold against the earlier ones still running.
        let mut open: Vec<&Span> = Vec::new();
        for h in holds {
            open.retain(|o| o.to > h.from);
            for o in &open {
                if o.principal != h.principal {
                    let both = o.to.min(h.to).saturating_duration_since(h.from);
                    longest = longest.max(both);
                    if both > lease {
                        overlaps += 1;
                        if overlaps <= 5 {
                            eprintln!(
                                "soak: {}: {} and {} both believed they held it for {} ms (from {:.1} s)",
                                h.room,
                                o.principal,
                                h.principal,
                                both.as_millis(),
                                h.from.saturating_duration_since(t0).as_secs_f64()
                            );
                        }
                    }
                }
            }
            open.push(h);
        }
    }
    // Node kills: each room a session of the killed node held at the kill, with someone of
    // another principal on another node standing in it throughout the lease + 1 s, must have a
    // new holder (someone on another node, or anyone who came in after the kill) by then.
    let window = lease + Duration::from_secs(1);
    let (mut checked, mut late, mut slowest) = (0u64, 0u64, Duration::ZERO);
    for f in faults.iter().filter(|f| f.kind == "kill") {
        let node = f.node.unwrap_or(usize::MAX);
        let kill = t0 + Duration::from_secs_f64(f.at);
        // Another fault within the window would explain a delay: skip those kills.
        if faults.iter().any(|g| {
            !std::ptr::eq(g, f) && g.at >= f.at - 1.0 && g.at <= f.at + window.as_secs_f64() + 1.0
        }) {
            continue;
        }
        let mut seen = HashSet::new();
        for sp in spans.iter().filter(|s| {
            s.hold
                && s.node == node
                && s.from <= kill
                && s.to >= kill
                && s.to <= kill + Duration::from_secs(2)
        }) {
            if !seen.insert(sp.room.as_str()) {
                continue;
            }
            let list = &by_room[sp.room.as_str()];
            let waited = list.iter().any(|w| {
                !w.hold
                    && w.node != node
                    && w.principal != sp.principal
                    && w.from <= kill
                    && w.to >= kill + window
            });
            if !waited {
                continue;
            }
            checked += 1;
            let next = list
                .iter()
                .filter(|h| h.hold && (h.node != node || h.from > kill) && h.to > kill)
                .map(|h| h.from.max(kill))
                .min();
            match next {
                Some(at) if at <= kill + window => {
                    slowest = slowest.max(at - kill);
                }
                other => {
                    late += 1;
                    if late <= 5 {
                        eprintln!(
                            "soak: node {node} killed at {:.1} s held {}: next holder {}",
                            f.at,
                            sp.room,
                            other.map_or("never".to_string(), |at| format!(
                                "after {} ms",
                                (at - kill).as_millis()
                            ))
                        );
                    }
                    if let Some(at) = other {
                        slowest = slowest.max(at - kill);
                    }
                }
            }
        }
    }
    (
        overlaps,
        longest.as_millis() as u64,
        checked,
        late,
        slowest.as_millis() as u64,
    )
}

/// Runs the soak and returns its report (the caller prints it and sets the exit code).
/// `cluster`: the nodes and Redis this soak started (`--nodes`), for the faults and RSS.
pub async fn soak(s: SoakSettings, mut cluster: Option<Cluster>) -> Result<SoakReport, String> {
    let started = Instant::now();
    let s = Arc::new(s);
    let targets: Arc<Vec<Target>> = Arc::new(
        s.urls
            .iter()
            .map(|u| Target::parse(Proto::V1, u, s.sources))
            .collect::<Result<_, _>>()?,
    );
    let rss = |pid: Option<u32>| pid.and_then(server::rss);
    let rss_baseline = rss(s.pid);
    if let Some(c) = cluster.as_mut() {
        c.sample(Sample::Before);
    }
    let stats0 = stats(&s).await?;
    eprintln!("soak: server stats before: {stats0}");
    if num(&stats0, "sessions") != 0 {
        return Err("the server already has sessions: start it fresh".into());
    }
    let faults = Arc::new(Faults {
        t0: Instant::now(),
        log: Mutex::new(Vec::new()),
    });

    let (phase_tx, phase_rx) = watch::channel(Phase::Churn);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (audit_tx, mut audit_rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(s.clients);
    for i in 0..s.clients {
        let id = i as u32;
        let tr = match (s.transport.as_str(), i % 3) {
            ("v1", _) | ("mixed", 0) => Tr::V1,
            ("mixed", 1) => Tr::Sio(sio::Transport::WebSocket),
            ("mixed", _) => Tr::Sio(sio::Transport::Polling),
            (_, _) if i % 2 == 0 => Tr::Sio(sio::Transport::WebSocket),
            _ => Tr::Sio(sio::Transport::Polling),
        };
        // Most clients are users with two or three tabs (one occupant, several sessions; resume
        // checks the principal); every tenth is anonymous.
        let user = (i % 10 != 0).then(|| format!("soak-{}", i / 3));
        let cl = Client {
            id,
            targets: targets.clone(),
            node: 0,
            tr,
            faults: faults.clone(),
            principal: user.clone().unwrap_or_default().into(),
            sessions: 0,
            member_since: HashMap::new(),
            hold_since: HashMap::new(),
            spans: Vec::new(),
            reset: false,
            s: s.clone(),
            rng: Rng(occupancy_core::testing::fuzz::Rng(
                0x9e37_79b9_7f4a_7c15 ^ (u64::from(id) + 1).wrapping_mul(0x1000_0000_01b3),
            )),
            c: Counters::default(),
            view: View::default(),
            token: None,
            next_ref: 0,
            user,
            progress: progress.clone(),
            history: Default::default(),
            resumed: false,
            printed: 0,
        };
        tasks.push(tokio::spawn(client(
            cl,
            phase_rx.clone(),
            ready_tx.clone(),
            audit_tx.clone(),
        )));
        if i % 200 == 199 {
            // Do not open thousands of connections in the same millisecond.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(audit_tx);
    drop(ready_tx);

    let churn_start = Instant::now();
    let churn = Duration::from_secs_f64(s.secs);
    let mut rss_peak = rss_baseline;
    let mut last_print = Instant::now();
    // The fault schedule: each kind on its own period; never two faults within 10 s (so what a
    // fault explains is clear), a killed node back after 3 s.
    let every = |secs: f64| (secs > 0.0).then(|| Duration::from_secs_f64(secs));
    let (kill_every, restart_every, pause_every) = (
        every(s.kill_every),
        every(s.redis_restart_every),
        every(s.redis_pause_every),
    );
    let mut next_kill = kill_every.map(|d| churn_start + d);
    let mut next_restart = restart_every.map(|d| churn_start + d);
    let mut next_pause = pause_every.map(|d| churn_start + d);
    let mut quiet_until = churn_start;
    let mut down: Option<(usize, Instant, usize)> = None; // (node, back at, fault index)
    let mut fault_rng = Rng(occupancy_core::testing::fuzz::Rng(0x05ee_d0fc_4a05));
    let record = |kind: &'static str, node: Option<usize>, until: Option<f64>| -> usize {
        let mut log = faults.log.lock().unwrap();
        let at = faults.secs(Instant::now());
        log.push(Fault {
            kind,
            node,
            at,
            until: until.map(|u| at + u),
        });
        log.len() - 1
    };
    let end_fault = |i: usize| {
        let t = faults.secs(Instant::now());
        faults.log.lock().unwrap()[i].until = Some(t);
    };
    while churn_start.elapsed() < churn || down.is_some() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        if let Some(c) = cluster.as_mut() {
            c.sample(Sample::Peak);
            if let Some((node, back, i)) = down
                && now >= back
            {
                c.start_node(node).await?;
                end_fault(i);
                eprintln!("soak: node {node} restarted");
                down = None;
                quiet_until = Instant::now() + Duration::from_secs(10);
            }
            let due = |t: &Option<Instant>| t.is_some_and(|t| now >= t);
            if now >= quiet_until
                && down.is_none()
                && churn_start.elapsed() + Duration::from_secs(5) < churn
            {
                if due(&next_kill) {
                    next_kill = kill_every.map(|d| now + d);
                    let node = fault_rng.below(c.ports.len() as u64) as usize;
                    let i = record("kill", Some(node), None);
                    c.kill_node(node).await;
                    eprintln!("soak: killed node {node} (SIGKILL)");
                    down = Some((node, Instant::now() + Duration::from_secs(3), i));
                } else if due(&next_restart) {
                    next_restart = restart_every.map(|d| now + d);
                    let i = record("redis-restart", None, None);
                    c.restart_redis().await?;
                    end_fault(i);
                    eprintln!("soak: restarted Redis (empty)");
                    quiet_until = Instant::now() + Duration::from_secs(10);
                } else if due(&next_pause) {
                    next_pause = pause_every.map(|d| now + d);
                    record("redis-pause", None, Some(1.5));
                    c.pause_redis(1500).await?;
                    eprintln!("soak: paused Redis for 1.5 s");
                    quiet_until = Instant::now() + Duration::from_secs(10);
                }
            }
        }
        rss_peak = rss_peak.max(rss(s.pid));
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let st = stats(&s).await.unwrap_or(Value::Null);
            eprintln!(
                "soak: {:>4.0} s, {} requests, server: {} sessions, {} rooms, {} occupants, {} live connections, {} invariant checks, {} violations",
                churn_start.elapsed().as_secs_f64(),
                progress.load(Ordering::Relaxed),
                num(&st, "sessions"),
                num(&st, "rooms"),
                num(&st, "occupants"),
                num(&st, "live_connections"),
                num(&st, "invariant_checks"),
                num(&st, "invariant_violations"),
            );
        }
    }
    let requests = progress.load(Ordering::Relaxed);
    let requests_per_sec = requests as f64 / churn_start.elapsed().as_secs_f64();

    eprintln!("soak: settle (everyone stops, reconnects, and gets its replies)");
    phase_tx.send_replace(Phase::Settle);
    let mut settled = 0;
    while settled < s.clients {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(())) => settled += 1,
            _ => break,
        }
    }
    // Sessions left behind (a clean close still gets the grace, as a page reload must) end; a
    // killed node's sessions are swept after its lease.
    let wait_grace = Instant::now();
    loop {
        let st = stats(&s).await?;
        let lost = num(&st, "sessions").saturating_sub(s.clients as u64);
        if (num(&st, "sessions_in_grace") == 0 && (!s.shared || lost == 0))
            || wait_grace.elapsed() > Duration::from_secs(60)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "soak: audit ({settled} clients settled; {:.1} s for the grace to end; each checks its places)",
        wait_grace.elapsed().as_secs_f64()
    );
    phase_tx.send_replace(Phase::Audit);
    // room → principal → the places its sessions were told.
    let mut places: HashMap<String, HashMap<String, Vec<u64>>> = HashMap::new();
    let mut claimed: HashMap<String, HashSet<String>> = HashMap::new();
    let mut histories: HashMap<String, Vec<String>> = HashMap::new();
    let mut rooms: HashSet<String> = HashSet::new();
    let (mut memberships, mut watches) = (0u64, 0u64);
    let mut answered = 0;
    while answered < s.clients {
        match tokio::time::timeout(Duration::from_secs(120), audit_rx.recv()).await {
            Ok(Some(a)) => {
                answered += 1;
                watches += a.watched.len() as u64;
                if let Some(u) = &a.user {
                    histories.insert(u.clone(), a.history.clone());
                }
                rooms.extend(a.watched);
                for (room, position) in a.places {
                    rooms.insert(room.clone());
                    if let Some(u) = &a.user {
                        claimed.entry(room.clone()).or_default().insert(u.clone());
                    }
                    places
                        .entry(room)
                        .or_default()
                        .entry(a.principal.clone())
                        .or_default()
                        .push(position);
                }
            }
            _ => break,
        }
    }
    if answered < s.clients {
        eprintln!(
            "soak: only {answered} of {} clients answered the audit",
            s.clients
        );
    }
    let stats_at_audit = stats(&s).await?;
    // Each room's places must be 0, 1, 2, ... with no gap and no repeat, one per principal (the
    // tabs of one user share their place).
    let mut audit_double_holders = 0;
    let mut audit_holderless = 0;
    let mut audit_gaps = 0;
    let mut audit_tabs_disagree = 0;
    for (room, by_principal) in &places {
        let mut p: Vec<u64> = Vec::new();
        for tabs in by_principal.values() {
            memberships += 1;
            if tabs.iter().any(|&x| x != tabs[0]) {
                audit_tabs_disagree += 1;
                eprintln!("soak: audit: {room}: the tabs of one user were told {tabs:?}");
            }
            p.push(tabs[0]);
        }
        p.sort_unstable();
        let holders = p.iter().filter(|&&x| x == 0).count();
        audit_double_holders += u64::from(holders > 1);
        audit_holderless += u64::from(holders == 0);
        if p.iter().enumerate().any(|(i, &x)| x != i as u64) {
            audit_gaps += 1;
            if audit_gaps <= 5 {
                eprintln!("soak: audit: {room}: the clients' places are {p:?}");
                // Who the server has there that no client (with a user id) claims.
                let base = s.stats_urls[0].trim_end_matches("/stats");
                if let Ok(Value::Array(ids)) = get_json(&format!("{base}/rooms/{room}")).await {
                    let mine = claimed.get(room.as_str());
                    let unclaimed: Vec<(usize, &str)> = ids
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| Some((i, v.as_str()?)))
                        .filter(|(_, id)| !mine.is_some_and(|m| m.contains(*id)))
                        .collect();
                    eprintln!(
                        "soak: audit: {room}: unclaimed on the server (place, id): {unclaimed:?}"
                    );
                    for (_, id) in &unclaimed {
                        if let Some(h) = histories.get(*id) {
                            eprintln!("  {id}'s last frames:\n    {}", h.join("\n    "));
                        }
                    }
                }
            }
        }
    }

    eprintln!("soak: everyone leaves (half abruptly); waiting out the grace");
    phase_tx.send_replace(Phase::Finish);
    let mut counters = Counters::default();
    let mut spans = Vec::new();
    for t in tasks {
        if let Ok(o) = t.await {
            counters.add(&o.c);
            spans.extend(o.spans);
        }
    }
    // The grace (long-polling clients that vanish are noticed by the engine's ping, 10 s), the
    // Hub's timer, then the counters.
    tokio::time::sleep(Duration::from_millis(s.grace_ms) + Duration::from_secs(2)).await;
    let mut stats_at_end = stats(&s).await?;
    for _ in 0..30 {
        if num(&stats_at_end, "sessions") == 0 && num(&stats_at_end, "live_connections") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stats_at_end = stats(&s).await?;
    }
    let rss_end = rss(s.pid);
    if let Some(c) = cluster.as_mut() {
        c.sample(Sample::After);
    }
    let fault_log = faults.log.lock().unwrap().clone();
    let (
        hold_overlaps,
        longest_double_hold_ms,
        kill_holders_checked,
        kill_holders_not_replaced,
        slowest_kill_replacement_ms,
    ) = check_spans(
        &spans,
        &fault_log,
        faults.t0,
        Duration::from_millis(s.lease_ms),
    );

    let mut failures = counters.failures();
    if answered < s.clients {
        failures.push(format!("{} clients missed the audit", s.clients - answered));
    }
    let audit_expect = [
        ("sessions", s.clients as u64),
        ("occupants", memberships),
        ("watchers", watches),
        ("rooms", rooms.len() as u64),
        ("live_connections", s.clients as u64),
    ];
    for (k, want) in audit_expect {
        let got = num(&stats_at_audit, k);
        if got != want {
            failures.push(format!(
                "at the audit the server counts {got} {k}, the clients {want}"
            ));
        }
    }
    if audit_double_holders > 0 {
        failures.push(format!("{audit_double_holders} rooms with two holders"));
    }
    if audit_holderless > 0 {
        failures.push(format!(
            "{audit_holderless} rooms with members and no holder"
        ));
    }
    if audit_gaps > 0 {
        failures.push(format!(
            "{audit_gaps} rooms whose places are not 0, 1, 2, …"
        ));
    }
    if audit_tabs_disagree > 0 {
        failures.push(format!(
            "{audit_tabs_disagree} users whose tabs were told different places in one room"
        ));
    }
    if hold_overlaps > 0 {
        failures.push(format!(
            "{hold_overlaps} × two principals believing they held a room at once for longer than the lease"
        ));
    }
    if kill_holders_not_replaced > 0 {
        failures.push(format!(
            "{kill_holders_not_replaced} rooms of a killed node's holder not handed on within the lease + 1 s"
        ));
    }
    for k in [
        "rooms",
        "sessions",
        "sessions_in_grace",
        "occupants",
        "watchers",
        "live_connections",
        "invariant_violations",
    ] {
        if num(&stats_at_end, k) != 0 {
            failures.push(format!(
                "after everyone left, {k} = {}",
                num(&stats_at_end, k)
            ));
        }
    }
    for st in [&stats_at_audit, &stats_at_end] {
        if num(st, "invariant_violations") != 0 && st.get("invariant_violations").is_some() {
            failures.push(format!(
                "{} invariant violations",
                num(st, "invariant_violations")
            ));
        }
    }
    if num(&stats_at_end, "invariant_checks") == 0 {
        eprintln!(
            "soak: note: the server ran no invariant checks (OCCUPANCY_CHECK_INVARIANTS=1 on the in-memory backend)"
        );
    }
    failures.dedup();
    let processes = cluster.as_ref().map(|c| c.rss.clone()).unwrap_or_default();
    if let Some(c) = cluster {
        c.stop().await;
    }
    Ok(SoakReport {
        settings: (*s).clone(),
        counters,
        requests_per_sec,
        stats_at_audit,
        audit_memberships: memberships,
        audit_watches: watches,
        audit_double_holders,
        audit_holderless,
        stats_at_end,
        rss_baseline,
        rss_peak,
        rss_end,
        faults: fault_log,
        hold_overlaps,
        longest_double_hold_ms,
        kill_holders_checked,
        kill_holders_not_replaced,
        slowest_kill_replacement_ms,
        processes,
        failures,
        secs: started.elapsed().as_secs_f64(),
    })
}
