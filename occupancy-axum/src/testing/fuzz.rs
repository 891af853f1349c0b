//! The axum adapter's fuzz target as a plain function: `fuzz/` (cargo-fuzz)
//! calls it from libFuzzer as `axum_frames`, and `tests/fuzz_corpus.rs` replays the committed
//! corpus plus fixed-seed random inputs through it in an ordinary `cargo test`. It panics on a
//! bug and returns normally on any input.
//!
//! [`frames`]: the bytes are one client's sequence of WebSocket frames — protocol-ish JSON text
//! (valid requests, bad rooms, bad refs, bad meta, unknown ops, a byte broken here and there),
//! raw text, frames around and over the size limit, binary, ping, pong and close frames — mixed
//! with steps of a fake clock (so the rate and violation buckets fill and refill), repeats of the
//! last frame (bursts), and a second session of the same Hub joining and leaving rooms. Each frame
//! goes through the production frame gate and dispatch (`frames.rs`, the code `Conn::on_message`
//! runs) against a real [`Hub`] on a `MemoryBackend`. Checked, independently of that code:
//!
//! - every frame gets exactly the outcome the rules say, computed from an exact model of the two
//!   token buckets (time moves in 1/64 s steps, so the bucket's floating point is exact): ignored,
//!   gone, one error reply with the right code and `ref`, a close with 1008 or 1009, or a
//!   dispatch of exactly the request the frame holds;
//! - a dispatched request gets exactly one reply, whose `ev`, `ref`, `room`, `position`,
//!   `holding`, holder, `was_member`, `waiting` or error code agree with a model of the rooms'
//!   lines, and the Hub's lines agree with the model after every step;
//! - every reply and notice serializes to JSON that parses, with its `ev`, and every error code
//!   is in [`ERROR_CODES`];
//! - notices go only to sessions in (or watching) their room, in version order per room;
//!   `released` exactly once to a session that became holder from behind someone, `displaced`
//!   exactly once to a holder pushed back by a take over;
//! - after a close (or too many violations) nothing more is processed;
//! - at the end (the client gone, the other session closed) the Hub's stats are all zero, no
//!   connection is live and the backend's invariants hold; once the Hub is dropped, its timer
//!   task ends.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;

use occupancy_core::protocol::{ERROR_CODES, Event, OpKind, Ref, Request};
use occupancy_core::{Ending, Hub, Limits, Meta, NoticeKind, Notices, RoomId, Session, Stats};

use crate::close_code;
use crate::frames::{Frame, Gate, Outcome};
use crate::settings::Settings;

/// The fake clock's step: 1/64 s, exact in binary floating point.
const TICK: Duration = Duration::from_nanos(15_625_000);
const ROOMS: [&str; 3] = ["r0", "r1", "r2"];
const MAX_ROOM_ID: usize = 16;
const MAX_ROOMS: usize = 2;
const MAX_META: usize = 64;
const MAX_FRAME_BYTES: usize = 256;
/// Frames above this never reach the gate (the WebSocket layer refuses them).
const CLOSE_FRAME_BYTES: usize = 1024;
/// At most this many frames per input, so that one input stays fast.
const MAX_FRAMES: usize = 1024;

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread tokio runtime");
}

/// A byte reader that yields zeros once the input is used up.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A frame as generated (owned, so it can be repeated).
#[derive(Debug, Clone)]
enum Owned {
    Text(String),
    Binary,
    Ping,
    Pong,
    /// A close frame with this status code, if any.
    Close(Option<u16>),
}

impl Owned {
    fn as_frame(&self) -> Frame<'_> {
        match self {
            Owned::Text(t) => Frame::Text(t),
            Owned::Binary => Frame::Binary,
            Owned::Ping => Frame::Ping,
            Owned::Pong => Frame::Pong,
            Owned::Close(code) => Frame::Close(*code),
        }
    }
}

/// A protocol-ish request: mostly well-formed, with every kind of bad field now and then.
fn request_text(b: &mut Bytes<'_>) -> String {
    let (op, room, r, meta) = (b.byte(), b.byte(), b.byte(), b.byte());
    let mut obj = Map::new();
    const OPS: u8 = OpKind::ALL.len() as u8;
    match op % (OPS + 2) {
        k if k < OPS => {
            obj.insert("op".into(), json!(OpKind::ALL[usize::from(k)].as_str()));
        }
        k if k == OPS => {
            obj.insert("op".into(), json!("fly"));
        }
        _ if op & 16 == 0 => {
            obj.insert("op".into(), json!(7));
        }
        _ => {}
    }
    let room = match room % 8 {
        k @ 0..=2 => Some(json!(ROOMS[usize::from(k)])),
        3 => Some(json!("")),
        4 => Some(json!("a\u{0}b")),
        5 => Some(json!("x".repeat(MAX_ROOM_ID + 1))),
        6 => Some(json!("é".repeat(MAX_ROOM_ID / 2))),
        _ if room & 8 == 0 => Some(json!(5)),
        _ => None,
    };
    if let Some(room) = room {
        obj.insert("room".into(), room);
    }
    let r#ref = match r % 8 {
        0 => None,
        1 => Some(json!(i64::from(r >> 3))),
        2 => Some(json!(format!("s{}", r >> 3))),
        3 => Some(Value::Null),
        4 => Some(json!(1.5)),
        5 => Some(json!("x".repeat(65))),
        6 => Some(json!(i64::MIN)),
        _ => Some(json!(u64::MAX)),
    };
    if let Some(r) = r#ref {
        obj.insert("ref".into(), r);
    }
    let meta_value = match meta % 8 {
        0..=2 => None,
        3 => Some(json!({"name": "n"})),
        4 => Some(Value::Null),
        5 => Some(json!([1])),
        6 => Some(json!({"big": "x".repeat(80)})),
        _ => Some(json!("str")),
    };
    if let Some(m) = meta_value {
        obj.insert("meta".into(), m);
    }
    if meta & 0x80 != 0 {
        obj.insert("x".into(), json!({"y": [true, null]}));
    }
    let text = Value::Object(obj).to_string();
    if meta & 0x40 == 0 {
        return text;
    }
    // Break it a little.
    let mut bytes = text.into_bytes();
    let i = usize::from(b.byte()) % bytes.len();
    bytes[i] = b.byte();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A token bucket in 1/64 tokens and 1/64 s ticks: exact, unlike the `f64` one it checks.
#[derive(Debug)]
struct Bucket {
    add_per_tick: u64,
    cap: u64,
    level: u64,
    last: u64,
}

impl Bucket {
    fn new(per_second: u32, burst: u32) -> Self {
        let cap = u64::from(burst.max(1)) * 64;
        Bucket {
            add_per_tick: u64::from(per_second),
            cap,
            level: cap,
            last: 0,
        }
    }
    fn take(&mut self, tick: u64) -> bool {
        self.level = (self.level + (tick - self.last) * self.add_per_tick).min(self.cap);
        self.last = tick;
        if self.level >= 64 {
            self.level -= 64;
            true
        } else {
            false
        }
    }
}

/// What the rules say a frame leads to.
#[derive(Debug)]
enum Expect {
    Ignore,
    Gone(Ending),
    Error(&'static str, Option<Ref>),
    Close(u16),
    Dispatch(Request),
}

/// The fuzzed client, or the other session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Me,
    Other,
}

/// The rooms' lines (only the two sessions ever stand in them) and the client's watches.
#[derive(Debug, Clone, Default)]
struct Rooms {
    lines: HashMap<String, Vec<Who>>,
    watched: BTreeSet<String>,
}

/// The reply the model expects to a dispatched request.
#[derive(Debug)]
enum Reply {
    Joined { position: usize, holder: Who },
    Left { was_member: bool },
    Watching { holder: Option<Who>, waiting: usize },
    Pong,
    Error(&'static str),
}

impl Rooms {
    fn line(&self, room: &str) -> &[Who] {
        self.lines.get(room).map_or(&[], Vec::as_slice)
    }

    fn count(&self, who: Who) -> usize {
        let joined = self.lines.values().filter(|l| l.contains(&who)).count();
        match who {
            Who::Me => joined + self.watched.len(),
            Who::Other => joined,
        }
    }

    /// Rooms whose notices `who` may get.
    fn rooms_of(&self, who: Who) -> BTreeSet<String> {
        let mut rooms: BTreeSet<String> = self
            .lines
            .iter()
            .filter(|(_, l)| l.contains(&who))
            .map(|(r, _)| r.clone())
            .collect();
        if who == Who::Me {
            rooms.extend(self.watched.iter().cloned());
        }
        rooms
    }

    fn join(&mut self, who: Who, room: &str, max_occupants: usize) -> Reply {
        if let Some(position) = self.line(room).iter().position(|w| *w == who) {
            return Reply::Joined {
                position,
                holder: self.line(room)[0],
            };
        }
        if self.count(who) >= MAX_ROOMS {
            return Reply::Error("too_many_rooms");
        }
        if self.line(room).len() >= max_occupants {
            return Reply::Error("room_full");
        }
        let line = self.lines.entry(room.to_string()).or_default();
        line.push(who);
        Reply::Joined {
            position: line.len() - 1,
            holder: line[0],
        }
    }

    fn leave(&mut self, who: Who, room: &str) -> Reply {
        let Some(line) = self.lines.get_mut(room) else {
            return Reply::Left { was_member: false };
        };
        let was_member = line.contains(&who);
        line.retain(|w| *w != who);
        if line.is_empty() {
            self.lines.remove(room);
        }
        Reply::Left { was_member }
    }

    /// The client's request against the model, in the state machine's order of checks.
    fn apply(&mut self, req: &Request, max_occupants: usize) -> Reply {
        let room = req.room.as_str();
        if req.op == OpKind::Ping {
            return Reply::Pong;
        }
        if RoomId::check(room, MAX_ROOM_ID).is_err() {
            return Reply::Error("room_invalid");
        }
        match req.op {
            OpKind::Join => {
                let meta = req.meta.clone().unwrap_or_else(Meta::empty);
                if let Err(e) = meta.check(MAX_META) {
                    return Reply::Error(e.code());
                }
                self.join(Who::Me, room, max_occupants)
            }
            OpKind::Leave => self.leave(Who::Me, room),
            OpKind::Takeover => {
                let Some(line) = self.lines.get_mut(room) else {
                    return Reply::Error("not_in_room");
                };
                let Some(pos) = line.iter().position(|w| *w == Who::Me) else {
                    return Reply::Error("not_in_room");
                };
                let me = line.remove(pos);
                line.insert(0, me);
                Reply::Joined {
                    position: 0,
                    holder: Who::Me,
                }
            }
            OpKind::Watch => {
                if !self.watched.contains(room) {
                    if self.count(Who::Me) >= MAX_ROOMS {
                        return Reply::Error("too_many_rooms");
                    }
                    self.watched.insert(room.to_string());
                }
                let line = self.line(room);
                Reply::Watching {
                    holder: line.first().copied(),
                    waiting: line.len().saturating_sub(1),
                }
            }
            OpKind::Unwatch => Reply::Left {
                was_member: self.watched.remove(room),
            },
            OpKind::Update => {
                let meta = req.meta.clone().expect("parsing requires meta for update");
                if let Err(e) = meta.check(MAX_META) {
                    return Reply::Error(e.code());
                }
                let line = self.line(room);
                match line.iter().position(|w| *w == Who::Me) {
                    Some(position) => Reply::Joined {
                        position,
                        holder: line[0],
                    },
                    None => Reply::Error("not_member"),
                }
            }
            OpKind::Active => {
                let line = self.line(room);
                match line.iter().position(|w| *w == Who::Me) {
                    Some(position) => Reply::Joined {
                        position,
                        holder: line[0],
                    },
                    None => Reply::Error("not_member"),
                }
            }
            OpKind::Ping => unreachable!("answered above"),
        }
    }

    fn gone(&mut self, who: Who) {
        for line in self.lines.values_mut() {
            line.retain(|w| *w != who);
        }
        self.lines.retain(|_, l| !l.is_empty());
        if who == Who::Me {
            self.watched.clear();
        }
    }
}

fn assert_documented(code: &str, what: &dyn std::fmt::Debug) {
    assert!(
        ERROR_CODES.iter().any(|(c, _)| *c == code),
        "undocumented error code {code:?} from {what:?}"
    );
}

/// Sends one event the way the connection does (`to_json`) and reads it back as a client would.
fn send(event: &Event) -> Value {
    let text = event.to_json();
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("event {event:?} is not JSON ({e}): {text}"));
    assert_eq!(value["ev"], event.name(), "{text}");
    if let Some(code) = value.get("code") {
        let code = code.as_str().expect("a string code");
        assert_documented(code, event);
    }
    value
}

/// A failed reply check's context: the reply, the request and what the model said.
struct Ctx<'a>(&'a Event, &'a Request, &'a Reply);

impl std::fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} to {:?}, the model says {:?}",
            self.0, self.1, self.2
        )
    }
}

fn ref_value(r: &Option<Ref>) -> Value {
    r.as_ref().map_or(Value::Null, |r| {
        serde_json::to_value(r).expect("refs serialize")
    })
}

/// The `ref` the rules echo for a frame refused before it is dispatched.
fn readable_ref(text: &str) -> Option<Ref> {
    match Request::parse(text) {
        Ok(req) => req.r#ref,
        Err(e) => e.r#ref,
    }
}

struct Driver {
    hub: Hub,
    me: Session,
    my_notices: Notices,
    other: Session,
    other_notices: Notices,
    gate: Gate,
    /// The settings the gate applies.
    settings: Settings,
    rate: Bucket,
    strikes: Bucket,
    t0: Instant,
    tick: u64,
    done: bool,
    frames: usize,
    max_occupants: usize,
    rooms: Rooms,
    /// The last notice version per (session, room).
    versions: HashMap<(Who, String), u64>,
}

impl Driver {
    fn id(&self, who: Who) -> String {
        let s = match who {
            Who::Me => &self.me,
            Who::Other => &self.other,
        };
        format!("~{}", s.id())
    }

    fn holder_value(&self, holder: Option<Who>) -> Value {
        holder.map_or(Value::Null, |w| json!(self.id(w)))
    }

    /// What the rules say `frame` leads to now (advancing the model buckets like the gate's).
    fn expect(&mut self, frame: &Owned) -> Expect {
        if self.done {
            return Expect::Ignore;
        }
        let tick = self.tick;
        let (code, r#ref, close) = match frame {
            Owned::Ping | Owned::Pong => return Expect::Ignore,
            // On purpose (the close grace) with 1000, 1001 or no code; lost otherwise.
            Owned::Close(None | Some(1000) | Some(1001)) => return Expect::Gone(Ending::Closed),
            Owned::Close(Some(_)) => return Expect::Gone(Ending::Lost),
            Owned::Binary => ("bad_message", None, close_code::POLICY),
            Owned::Text(t) if t.len() > MAX_FRAME_BYTES => {
                ("frame_too_large", readable_ref(t), close_code::TOO_BIG)
            }
            Owned::Text(t) if !self.rate.take(tick) => {
                ("rate_limited", readable_ref(t), close_code::POLICY)
            }
            Owned::Text(t) => match Request::parse(t) {
                Ok(req) => return Expect::Dispatch(req),
                Err(e) => (e.code, e.r#ref, close_code::POLICY),
            },
        };
        if self.strikes.take(tick) {
            Expect::Error(code, r#ref)
        } else {
            Expect::Close(close)
        }
    }

    /// One frame from the client, through the production gate and dispatch.
    async fn frame(&mut self, frame: &Owned) {
        self.frames += 1;
        let before = self.rooms.clone();
        let expected = self.expect(frame);
        let now = self.t0 + TICK * u32::try_from(self.tick).expect("ticks fit");
        let outcome = self.gate.on_frame(&self.settings, frame.as_frame(), now);
        match (outcome, expected) {
            (Outcome::Ignore, Expect::Ignore) => {}
            (Outcome::Gone(got), Expect::Gone(want)) => {
                assert_eq!(got, want, "how {frame:?} ends the session");
                self.client_gone(got).await
            }
            (Outcome::Close { code, reason }, Expect::Close(want)) => {
                assert_eq!(code, want, "close code for {frame:?}");
                assert!(!reason.is_empty() && reason.len() <= 123, "{reason:?}");
                self.client_gone(Ending::Lost).await;
            }
            (Outcome::Reply(event), Expect::Error(code, r#ref)) => {
                let v = send(&event);
                assert_eq!(v["ev"], "error", "{event:?} for {frame:?}");
                assert_eq!(v["code"], code, "{event:?} for {frame:?}");
                assert_eq!(v["ref"], ref_value(&r#ref), "{event:?} for {frame:?}");
                assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
            (Outcome::Dispatch(req), Expect::Dispatch(want)) => {
                assert_eq!(req, want, "dispatched request for {frame:?}");
                let reply = self.me.execute(req.clone()).await;
                self.check_reply(&req, &reply);
            }
            (outcome, expected) => {
                panic!(
                    "{frame:?} at tick {}: got {outcome:?}, the rules say {expected:?}",
                    self.tick
                )
            }
        }
        self.settle(&before).await;
    }

    fn check_reply(&mut self, req: &Request, reply: &Event) {
        let v = send(reply);
        assert_eq!(
            v["ref"],
            ref_value(&req.r#ref),
            "ref of {reply:?} to {req:?}"
        );
        let want = self.rooms.apply(req, self.max_occupants);
        // Formatted only on a failure.
        let ctx = Ctx(reply, req, &want);
        match want {
            Reply::Joined { position, holder } => {
                assert_eq!(v["ev"], "joined", "{ctx}");
                assert_eq!(v["room"], req.room.as_str(), "{ctx}");
                assert_eq!(v["position"], position, "{ctx}");
                assert_eq!(v["holding"], position == 0, "{ctx}");
                assert_eq!(v["holder"]["id"], self.id(holder), "{ctx}");
            }
            Reply::Left { was_member } => {
                assert_eq!(v["ev"], "left", "{ctx}");
                assert_eq!(v["room"], req.room.as_str(), "{ctx}");
                assert_eq!(v["was_member"], was_member, "{ctx}");
            }
            Reply::Watching { holder, waiting } => {
                assert_eq!(v["ev"], "watching", "{ctx}");
                assert_eq!(v["room"], req.room.as_str(), "{ctx}");
                assert_eq!(v["waiting"], waiting, "{ctx}");
                let got = v.get("holder").map_or(Value::Null, |h| h["id"].clone());
                assert_eq!(got, self.holder_value(holder), "{ctx}");
            }
            Reply::Pong => assert_eq!(v["ev"], "pong", "{ctx}"),
            Reply::Error(code) => {
                assert_eq!(v["ev"], "error", "{ctx}");
                assert_eq!(v["code"], code, "{ctx}");
            }
        }
    }

    /// The client is gone (it closed, or was closed for its violations): as the connection does,
    /// its session is disconnected (no grace here, so it leaves every room).
    async fn client_gone(&mut self, ending: Ending) {
        self.done = true;
        self.me.disconnect_as(ending).await;
        assert!(!self.me.is_live());
        self.rooms.gone(Who::Me);
    }

    /// The other session joins `room`, or leaves it when it is in it.
    async fn other_toggles(&mut self, room: &'static str) {
        let before = self.rooms.clone();
        if self.rooms.line(room).contains(&Who::Other) {
            let l = self.other.leave(room).await.expect("a valid room");
            assert!(l.was_member);
            self.rooms.leave(Who::Other, room);
        } else {
            let want = self.rooms.join(Who::Other, room, self.max_occupants);
            match (self.other.join(room, None).await, want) {
                (Ok(j), Reply::Joined { position, holder }) => {
                    assert_eq!(j.position as usize, position);
                    assert_eq!(j.holder.id.to_string(), self.id(holder));
                }
                (Err(e), Reply::Error(code)) => assert_eq!(e.code(), code),
                (got, want) => panic!("other joins {room}: got {got:?}, the model says {want:?}"),
            }
        }
        self.settle(&before).await;
    }

    /// After every step: the notices both sessions got, and the Hub's lines against the model.
    async fn settle(&mut self, before: &Rooms) {
        for who in [Who::Me, Who::Other] {
            let mut got = Vec::new();
            let notices = match who {
                Who::Me => &mut self.my_notices,
                Who::Other => &mut self.other_notices,
            };
            while let Some(n) = notices.try_recv() {
                got.push(n);
            }
            let allowed: BTreeSet<String> = before
                .rooms_of(who)
                .union(&self.rooms.rooms_of(who))
                .cloned()
                .collect();
            let mut released: BTreeSet<String> = BTreeSet::new();
            let mut displaced: BTreeSet<String> = BTreeSet::new();
            for n in &got {
                send(&Event::from_notice(n));
                let room = n.room.as_str().to_string();
                assert!(
                    allowed.contains(&room),
                    "{who:?} got {n:?}, not in {allowed:?}"
                );
                let last = self.versions.entry((who, room.clone())).or_insert(0);
                assert!(n.version() >= *last, "{who:?}: {n:?} older than {last}");
                *last = n.version();
                let fresh = match n.kind {
                    NoticeKind::Released { .. } => released.insert(room),
                    NoticeKind::Displaced { .. } => displaced.insert(room),
                    _ => true,
                };
                assert!(fresh, "{who:?} got {n:?} twice in one step");
            }
            // `released`: became holder from behind someone. `displaced`: pushed back from the
            // front while still in line.
            let mut want_released = BTreeSet::new();
            let mut want_displaced = BTreeSet::new();
            for room in before.lines.keys().chain(self.rooms.lines.keys()) {
                let (old, new) = (before.line(room), self.rooms.line(room));
                if old.first().is_some_and(|h| *h != who) && new.first() == Some(&who) {
                    want_released.insert(room.clone());
                }
                if old.first() == Some(&who)
                    && new.first().is_some_and(|h| *h != who)
                    && new.contains(&who)
                {
                    want_displaced.insert(room.clone());
                }
            }
            assert_eq!(released, want_released, "released to {who:?}");
            assert_eq!(displaced, want_displaced, "displaced to {who:?}");
        }
        let rooms: BTreeSet<&String> = before.lines.keys().chain(self.rooms.lines.keys()).collect();
        for room in rooms {
            let line: Vec<String> = self
                .hub
                .occupants(room)
                .await
                .expect("memory backend")
                .iter()
                .map(|p| p.id.to_string())
                .collect();
            let want: Vec<String> = self.rooms.line(room).iter().map(|w| self.id(*w)).collect();
            assert_eq!(line, want, "the Hub's line of {room}");
        }
        if let Err(e) = self.hub.backend().check_invariants().await {
            panic!("invariant broken: {e}");
        }
    }

    async fn run(&mut self, b: &mut Bytes<'_>) {
        let mut last: Option<Owned> = None;
        while !b.is_empty() && self.frames < MAX_FRAMES {
            let frame = match b.byte() % 16 {
                0..=5 => Owned::Text(request_text(b)),
                6 | 7 => {
                    let n = usize::from(b.byte() % 128);
                    Owned::Text(String::from_utf8_lossy(b.take(n)).into_owned())
                }
                8 => {
                    let mut text = request_text(b);
                    let k = usize::from(b.byte());
                    let target = if k & 0x80 == 0 {
                        MAX_FRAME_BYTES - 4 + (k & 7)
                    } else {
                        MAX_FRAME_BYTES + (k & 0x7f) * 6
                    };
                    // Trailing whitespace keeps a request a request.
                    while text.len() < target.min(CLOSE_FRAME_BYTES) {
                        text.push(' ');
                    }
                    Owned::Text(text)
                }
                9 => Owned::Binary,
                10 => Owned::Ping,
                11 => Owned::Pong,
                12 => Owned::Close(match b.byte() % 4 {
                    0 => None,
                    1 => Some(1000),
                    2 => Some(1001),
                    _ => Some(1000 + u16::from(b.byte())),
                }),
                13 => {
                    self.tick += u64::from(b.byte());
                    continue;
                }
                14 => {
                    let n = 1 + usize::from(b.byte() % 32);
                    if let Some(f) = &last {
                        for _ in 0..n.min(MAX_FRAMES - self.frames) {
                            self.frame(f).await;
                        }
                    }
                    continue;
                }
                _ => {
                    let room = ROOMS[usize::from(b.byte()) % ROOMS.len()];
                    self.other_toggles(room).await;
                    continue;
                }
            };
            self.frame(&frame).await;
            last = Some(frame);
        }
        // The socket ends: the client is gone; then the other session signs out.
        if !self.done {
            let before = self.rooms.clone();
            self.client_gone(Ending::Lost).await;
            self.settle(&before).await;
        }
        let before = self.rooms.clone();
        self.other.close().await;
        self.rooms.gone(Who::Other);
        self.settle(&before).await;
        assert!(self.my_notices.try_recv().is_none());
        assert!(self.other_notices.try_recv().is_none());
        let stats = self.hub.stats().await.expect("memory backend");
        assert_eq!(stats, Stats::default(), "something is left in the Hub");
        assert_eq!(self.hub.live_connections(), 0);
    }
}

/// Interprets `data` as one client's frames (see the [module docs](self)) and checks every
/// outcome. Panics on a bug.
pub fn frames(data: &[u8]) {
    let mut b = Bytes(data);
    let cfg = b.byte();
    let (per_second, burst) = [(1, 1), (3, 4), (20, 40)][usize::from(cfg % 3)];
    let max_violations = [1, 3, 10][usize::from(cfg / 3 % 3)];
    let max_occupants = [1, 4][usize::from(cfg / 9 % 2)];
    let settings = Settings {
        max_frame_bytes: MAX_FRAME_BYTES,
        close_frame_bytes: CLOSE_FRAME_BYTES,
        messages_per_second: per_second,
        message_burst: burst,
        max_violations,
        ..Settings::default()
    };
    settings.validate().expect("valid settings");
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let hub = Hub::builder()
                .grace(Duration::ZERO)
                .limits({
                    let mut l = Limits::default();
                    l.max_room_id_len = MAX_ROOM_ID;
                    l.max_rooms_per_session = MAX_ROOMS;
                    l.max_occupants_per_room = max_occupants;
                    l.max_meta_bytes = MAX_META;
                    l
                })
                .build()
                .expect("valid hub");
            let (me, my_notices) = hub.connect(None, Meta::empty()).await.expect("connect");
            let (other, other_notices) = hub.connect(None, Meta::empty()).await.expect("connect");
            let t0 = Instant::now();
            let mut d = Driver {
                hub,
                me,
                my_notices,
                other,
                other_notices,
                gate: Gate::new(&settings, t0),
                settings,
                rate: Bucket::new(per_second, burst),
                strikes: Bucket::new(1, max_violations),
                t0,
                tick: 0,
                done: false,
                frames: 0,
                max_occupants,
                rooms: Rooms::default(),
                versions: HashMap::new(),
            };
            d.run(&mut b).await;
        });
        // The Hub is dropped: its timer task must end. With a memory backend nothing above ever
        // waits, so the runtime has not polled it yet; yield until it has (a task left behind
        // would pile up, one per input, in this reused runtime).
        rt.block_on(async {
            for _ in 0..64 {
                if tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
                    == 0
                {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("the dropped Hub's timer task did not end");
        });
    });
}
