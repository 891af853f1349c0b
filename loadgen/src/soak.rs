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
//! Every check that fails is counted in the JSON result, and any failure makes the exit code 1.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::server;

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
            audit_mismatches
        );
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
    target: Arc<Target>,
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
        if self.rng.below(10) == 0 {
            format!("doc-hot-{}", self.rng.below(5))
        } else {
            format!("doc-{}", self.rng.below(self.s.rooms as u64))
        }
    }

    async fn send(&mut self, ws: &mut Ws, op: Op, room: &str) -> Result<(), ()> {
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
        ws.send(Message::text(text)).await.map_err(|_| ())
    }

    /// Handles one server message; returns the reply's ref when it answered a request.
    fn on_text(&mut self, text: &str) -> Option<u64> {
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
                let Some((op, room, _)) = r.and_then(|r| self.view.pending.remove(&r)) else {
                    if ev == "error" {
                        let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
                        *self.c.errors.entry(code.to_string()).or_default() += 1;
                    } else {
                        self.c.wrong_replies += 1;
                    }
                    return None;
                };
                self.c.replies += 1;
                if ev == "error" {
                    let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
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
    async fn act(&mut self, ws: &mut Ws) -> Result<(), Option<Option<Duration>>> {
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
                if dice.is_multiple_of(2) {
                    reset_on_close(ws);
                }
                // Up to 1.6 × the grace + 2.5 s: some resumes come too late, on purpose (past
                // the 2 s allowed for the server to notice the drop).
                let delay = self.rng.below(self.s.grace_ms * 16 / 10 + 2500);
                return Err(Some(Some(Duration::from_millis(delay))));
            }
            86..88 => {
                self.c.clean_reconnects += 1;
                close_cleanly(ws).await;
                return Err(Some(None));
            }
            _ => self.send(ws, Op::Ping, "").await,
        };
        r.map_err(|()| None)
    }

    fn forget_session(&mut self) {
        self.view = View::default();
        self.token = None;
    }

    /// Connects (resuming with the token when given), reads `hello`, and returns whether the
    /// session was resumed.
    async fn connect(&mut self, resume: bool) -> Option<(Ws, bool)> {
        for attempt in 0..20u32 {
            if attempt > 0 {
                self.c.connect_failures += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
            let mut url = self.target.url.clone();
            let mut q = Vec::new();
            if let Some(u) = &self.user {
                q.push(format!("user={u}"));
            }
            if resume && let Some(t) = &self.token {
                q.push(format!("resume={t}"));
            }
            if !q.is_empty() {
                url.push('?');
                url.push_str(&q.join("&"));
            }
            let Ok(Ok(mut ws)) =
                tokio::time::timeout(Duration::from_secs(20), open(&self.target, self.id, &url))
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
            if hello.get("ev").and_then(Value::as_str) != Some("hello") {
                continue;
            }
            let resumed = hello
                .get("resumed")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            self.token = hello
                .get("resume")
                .and_then(Value::as_str)
                .map(str::to_string);
            if resume && !resumed {
                // The `error` (resume_invalid) that follows `hello` is expected: skip it.
                if let Ok(Some(Ok(Message::Text(t)))) =
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                    && !t.contains(r#""resume_invalid""#)
                {
                    self.on_text(t.as_str());
                }
            }
            return Some((ws, resumed));
        }
        None
    }

    /// Reads and handles frames until `deadline`, while `more(self, when the last text frame
    /// came)` holds, or until the connection ends.
    async fn read_while(
        &mut self,
        ws: &mut Ws,
        deadline: Instant,
        more: impl Fn(&Self, Instant) -> bool,
    ) {
        let mut last = Instant::now();
        while Instant::now() < deadline && more(self, last) {
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.on_text(t.as_str());
                    last = Instant::now();
                }
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(_)) | None) => break,
            }
        }
    }

    /// Reads until every request is answered (at most 20 s).
    async fn settle(&mut self, ws: &mut Ws) {
        let deadline = Instant::now() + Duration::from_secs(20);
        self.read_while(ws, deadline, |c, _| !c.view.pending.is_empty())
            .await;
    }

    /// Once everyone is settled and no session is in grace: reads what is left, then asks the
    /// server for each room's place (an idempotent `join` only answers) and compares.
    async fn audit(&mut self, ws: &mut Ws) -> Audit {
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
            let text = format!(r#"{{"op":"join","room":"{room}","ref":{r}}}"#);
            if ws.send(Message::text(text)).await.is_err() {
                break;
            }
            let reply = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                        && v.get("ref").and_then(Value::as_u64) == Some(r)
                    {
                        return Some(v);
                    }
                }
                None
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
    let fd = ws.get_ref().as_raw_fd();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for its size; the fd is open (owned by `ws`).
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

/// One client, from its first connection to the end.
async fn client(
    mut cl: Client,
    mut phase: watch::Receiver<Phase>,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    audits: tokio::sync::mpsc::UnboundedSender<Audit>,
) -> Counters {
    let think = cl.s.think_ms.max(1);
    let grace = Duration::from_millis(cl.s.grace_ms);
    let mut resume = false;
    // When the last abrupt drop happened and how long the client waited.
    let mut dropped: Option<(Instant, Duration)> = None;
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
            return cl.c;
        };
        cl.resumed = resumed;
        if resume {
            cl.c.resumes += 1;
            let to_hello = dropped.map_or(Duration::ZERO, |(at, _)| at.elapsed());
            // The server starts the grace when it sees the connection end (at or after the drop)
            // and decides during the handshake (between `to_start` and `to_hello`): a resume
            // must work when even `to_hello` is inside the grace; it must fail when `to_start`
            // is past it by more than the server could lag in noticing the drop (2 s).
            if to_hello + Duration::from_millis(300) < grace {
                if resumed {
                    cl.c.resumed_in_grace += 1;
                } else {
                    cl.c.lost_resumes += 1;
                    cl.report("resume refused within the grace");
                }
            } else if to_start > grace + Duration::from_secs(2) {
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
                if cl.id.is_multiple_of(2) {
                    reset_on_close(&ws);
                } else {
                    close_cleanly(&mut ws).await;
                }
                return cl.c;
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => { cl.on_text(t.as_str()); }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or("none".to_string(), |f| u16::from(f.code).to_string());
                        *cl.c.server_closes.entry(format!("{code} ({p:?})")).or_default() += 1;
                        break Some(Duration::ZERO);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        *cl.c.server_closes.entry(format!("none ({p:?})")).or_default() += 1;
                        break Some(Duration::ZERO);
                    }
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
                        Err(Some(Some(delay))) => break Some(delay),
                        Err(Some(None)) => break None,
                        Err(None) => {
                            *cl.c.server_closes.entry(format!("none ({p:?})")).or_default() += 1;
                            break Some(Duration::ZERO);
                        }
                    }
                },
                _ = phase.changed() => {}
            }
        };
        drop(ws);
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

/// Runs the soak and returns its report (the caller prints it and sets the exit code).
pub async fn soak(s: SoakSettings) -> Result<SoakReport, String> {
    let started = Instant::now();
    let s = Arc::new(s);
    let target = Arc::new(Target::parse(Proto::V1, &s.url, s.sources)?);
    let rss = |pid: Option<u32>| pid.and_then(server::rss);
    let rss_baseline = rss(s.pid);
    let stats0 = get_json(&s.stats_url).await?;
    eprintln!("soak: server stats before: {stats0}");
    if num(&stats0, "sessions") != 0 {
        return Err("the server already has sessions: start it fresh".into());
    }

    let (phase_tx, phase_rx) = watch::channel(Phase::Churn);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (audit_tx, mut audit_rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(s.clients);
    for i in 0..s.clients {
        let id = i as u32;
        let cl = Client {
            id,
            target: target.clone(),
            s: s.clone(),
            rng: Rng(occupancy_core::testing::fuzz::Rng(
                0x9e37_79b9_7f4a_7c15 ^ (u64::from(id) + 1).wrapping_mul(0x1000_0000_01b3),
            )),
            c: Counters::default(),
            view: View::default(),
            token: None,
            next_ref: 0,
            // Most clients are users (resume checks the principal); some are anonymous.
            user: (i % 10 != 0).then(|| format!("soak-{i}")),
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
    while churn_start.elapsed() < churn {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss(s.pid));
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let st = get_json(&s.stats_url).await.unwrap_or(Value::Null);
            eprintln!(
                "soak: {:>4.0} s, {} requests, server: {} sessions, {} rooms, {} occupants, {} invariant checks, {} violations, RSS {} MiB",
                churn_start.elapsed().as_secs_f64(),
                progress.load(Ordering::Relaxed),
                num(&st, "sessions"),
                num(&st, "rooms"),
                num(&st, "occupants"),
                num(&st, "invariant_checks"),
                num(&st, "invariant_violations"),
                rss(s.pid).map_or(0, |b| b >> 20),
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
    // Sessions left behind (a clean close still gets the grace, as a page reload must) end.
    let wait_grace = Instant::now();
    loop {
        let st = get_json(&s.stats_url).await?;
        if num(&st, "sessions_in_grace") == 0 || wait_grace.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "soak: audit ({settled} clients settled; {:.1} s for the grace to end; each checks its places)",
        wait_grace.elapsed().as_secs_f64()
    );
    phase_tx.send_replace(Phase::Audit);
    let mut places: HashMap<String, Vec<u64>> = HashMap::new();
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
                    memberships += 1;
                    rooms.insert(room.clone());
                    if let Some(u) = &a.user {
                        claimed.entry(room.clone()).or_default().insert(u.clone());
                    }
                    places.entry(room).or_default().push(position);
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
    let stats_at_audit = get_json(&s.stats_url).await?;
    // Each room's places must be 0, 1, 2, ... with no gap and no repeat.
    let mut audit_double_holders = 0;
    let mut audit_holderless = 0;
    let mut audit_gaps = 0;
    for (room, p) in &mut places {
        p.sort_unstable();
        let holders = p.iter().filter(|&&x| x == 0).count();
        audit_double_holders += u64::from(holders > 1);
        audit_holderless += u64::from(holders == 0);
        if p.iter().enumerate().any(|(i, &x)| x != i as u64) {
            audit_gaps += 1;
            if audit_gaps <= 5 {
                eprintln!("soak: audit: {room}: the clients' places are {p:?}");
                // Who the server has there that no client (with a user id) claims.
                let base = s.stats_url.trim_end_matches("/stats");
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
    for t in tasks {
        if let Ok(c) = t.await {
            counters.add(&c);
        }
    }
    // The grace, the Hub's timer, then the counters.
    tokio::time::sleep(Duration::from_millis(s.grace_ms) + Duration::from_secs(2)).await;
    let mut stats_at_end = get_json(&s.stats_url).await?;
    for _ in 0..10 {
        if num(&stats_at_end, "sessions") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stats_at_end = get_json(&s.stats_url).await?;
    }
    let rss_end = rss(s.pid);

    let mut failures = counters.failures();
    if answered < s.clients {
        failures.push(format!("{} clients missed the audit", s.clients - answered));
    }
    let audit_expect = [
        ("sessions", s.clients as u64),
        ("occupants", memberships),
        ("watchers", watches),
        ("rooms", rooms.len() as u64),
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
        if num(st, "invariant_violations") != 0 {
            failures.push(format!(
                "{} invariant violations",
                num(st, "invariant_violations")
            ));
        }
    }
    if num(&stats_at_end, "invariant_checks") == 0 {
        eprintln!(
            "soak: warning: the server ran no invariant checks (start it with OCCUPANCY_CHECK_INVARIANTS=1)"
        );
    }
    failures.dedup();
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
        failures,
        secs: started.elapsed().as_secs_f64(),
    })
}
