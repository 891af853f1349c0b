//! Fuzz targets as plain functions: `fuzz/` (cargo-fuzz) calls them from
//! libFuzzer, and `tests/fuzz_corpus.rs` replays the committed corpus plus fixed-seed random
//! inputs through them in an ordinary `cargo test`. Each one panics on a bug and returns normally
//! on any input that is merely invalid.
//!
//! - [`machine_ops`]: the bytes are a sequence of operations on a [`Machine`] with small limits,
//!   8 session slots (slots 0..6 are the users p0..p2, two tabs each; 6 and 7 are anonymous),
//!   4 rooms and time that moves forward. After every operation: `check_invariants()`, every
//!   reply agrees with the machine's reads, every error code is a documented one, notices go only
//!   to members and watchers, per-room versions only move forward, a hand-over sends exactly one
//!   `released` to each session of the new holder, and the stats agree with what the reads show.
//!   At the end everyone disconnects, the grace runs out, and every count is zero.
//! - [`protocol_frame`]: the bytes are one protocol v1 text frame (lossily decoded when not
//!   UTF-8). [`Request::parse`] never panics; a parsed request encodes back to JSON that parses to
//!   the same request; every error's code is in [`ERROR_CODES`]; and the request is run the way
//!   the axum adapter runs one client's frame (size check, `ref` of a refused frame, parse,
//!   dispatch to the session, reply serialized), here against a [`Machine`] instead of a socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::config::{Config, Limits};
use crate::error::Error;
use crate::ids::{Meta, OccupantKey, ResumeToken, RoomId, SessionId};
use crate::machine::Machine;
use crate::notice::NoticeKind;
use crate::protocol::{ERROR_CODES, Event, OpKind, ProtocolError, Ref, Request};

const SLOTS: usize = 8;
const ROOMS: [&str; 4] = ["room-0", "room-1", "room-2", "room-3"];
const GRACE_SECS: u64 = 5;

fn principal(slot: usize) -> Option<&'static str> {
    ["p0", "p1", "p2", "p0", "p1", "p2"].get(slot).copied()
}

fn assert_documented(code: &str, what: &dyn std::fmt::Debug) {
    assert!(
        ERROR_CODES.iter().any(|(c, _)| *c == code),
        "undocumented error code {code:?} from {what:?}"
    );
}

/// A byte reader that yields zeros once the input is used up.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy)]
struct Slot {
    id: SessionId,
    token: ResumeToken,
    /// A token this session used already (resuming with it must fail and change nothing).
    used: Option<ResumeToken>,
}

struct Driver {
    m: Machine,
    t0: Instant,
    secs: u64,
    slots: [Option<Slot>; SLOTS],
    next_id: u64,
    next_token: u128,
    /// The last version seen per room (from notices and reads).
    last_version: HashMap<&'static str, u64>,
}

/// One room's line as seen through the machine's reads: (occupant, its sessions).
type Line = Vec<(OccupantKey, Vec<SessionId>)>;

impl Driver {
    fn now(&self) -> Instant {
        self.t0 + Duration::from_secs(self.secs)
    }

    fn line(&self, room: &str) -> Line {
        self.m
            .room(room)
            .map(|s| {
                s.occupants
                    .iter()
                    .map(|o| (o.key.clone(), o.sessions.to_vec()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lines(&self) -> Vec<Line> {
        ROOMS.iter().map(|r| self.line(r)).collect()
    }

    fn watchers(&self) -> Vec<Vec<SessionId>> {
        ROOMS.iter().map(|r| self.m.watchers(r).to_vec()).collect()
    }

    fn live_id(&self, slot: usize) -> SessionId {
        // An unused slot still names a session id, one the machine does not know.
        self.slots[slot].map_or(SessionId(u64::MAX - slot as u64), |s| s.id)
    }

    fn fresh_token(&mut self) -> ResumeToken {
        self.next_token += 1;
        ResumeToken(self.next_token)
    }

    /// Runs one operation read from `b`; returns true when it was an `Advance` (several
    /// transitions in one step, so the single-transition checks are skipped).
    fn apply(&mut self, b: &mut Bytes<'_>) -> bool {
        let op = b.byte() % 14;
        let slot = usize::from(b.byte()) % SLOTS;
        let room = ROOMS[usize::from(b.byte()) % ROOMS.len()];
        let id = self.live_id(slot);
        let now = self.now();
        match op {
            0 | 1 => {
                if self.slots[slot].is_some() {
                    return false;
                }
                self.next_id += 1;
                let sid = SessionId(self.next_id);
                let token = self.fresh_token();
                let meta = Meta::from_map(Map::from_iter([("slot".into(), json!(slot))]));
                self.m
                    .connect(sid, principal(slot), meta, token)
                    .expect("fresh id and token");
                self.slots[slot] = Some(Slot {
                    id: sid,
                    token,
                    used: None,
                });
            }
            2..=4 => {
                let meta = match b.byte() % 4 {
                    0 => Some(Meta::from_map(Map::from_iter([(
                        "name".into(),
                        json!(format!("n{slot}")),
                    )]))),
                    1 => Some(Meta::from_map(Map::from_iter([(
                        "big".into(),
                        json!("x".repeat(100)),
                    )]))),
                    _ => None,
                };
                let r = self.m.join(id, room, meta);
                self.check_joined(id, room, r, false);
            }
            5 | 6 => match self.m.leave(id, room) {
                Ok(l) => {
                    assert_eq!(l.room.as_str(), room);
                    assert_eq!(
                        self.m.position(id, room),
                        None,
                        "still in {room} after leave"
                    );
                }
                Err(e) => self.check_error(&e, id),
            },
            7 => {
                let r = self.m.takeover(id, room);
                self.check_joined(id, room, r, true);
            }
            8 => match self.m.watch(id, room) {
                Ok(p) => {
                    assert!(self.m.watchers(room).contains(&id));
                    assert_eq!(Some(p.version), self.m.room(room).map(|s| s.version));
                }
                Err(e) => self.check_error(&e, id),
            },
            9 => match self.m.unwatch(id, room) {
                Ok(_) => assert!(!self.m.watchers(room).contains(&id)),
                Err(e) => self.check_error(&e, id),
            },
            10 => {
                let r = self.m.disconnect(id, now);
                assert_eq!(r.is_ok(), self.slots[slot].is_some(), "disconnect: {r:?}");
            }
            11 => {
                let r = self.m.close(id);
                assert_eq!(r.is_ok(), self.slots[slot].is_some(), "close: {r:?}");
                self.slots[slot] = None;
            }
            12 => {
                let Some(s) = self.slots[slot] else {
                    return false;
                };
                let stale = b.byte().is_multiple_of(4);
                let token = if stale {
                    s.used.unwrap_or(ResumeToken(u128::MAX))
                } else {
                    s.token
                };
                let new_token = self.fresh_token();
                match self.m.resume(token, new_token, now) {
                    Ok(r) => {
                        assert!(!stale, "a used token resumed {r:?}");
                        assert_eq!(r.session, s.id);
                        assert!(self.m.is_live(s.id));
                        for j in &r.rooms {
                            assert_eq!(self.m.position(s.id, j.room.as_str()), Some(j.position));
                        }
                        self.slots[slot] = Some(Slot {
                            id: s.id,
                            token: new_token,
                            used: Some(s.token),
                        });
                    }
                    Err(e) => {
                        assert_eq!(e, Error::ResumeInvalid);
                        assert_documented(e.code(), &e);
                    }
                }
            }
            _ => {
                self.secs += u64::from(b.byte() % (GRACE_SECS as u8 + 3));
                let now = self.now();
                self.m.handle_timeout(now);
                assert!(self.m.poll_timeout().is_none_or(|t| t > now));
                return true;
            }
        }
        false
    }

    fn check_error(&self, e: &Error, id: SessionId) {
        assert_documented(e.code(), e);
        if matches!(e, Error::UnknownSession) {
            assert!(!self.m.is_live(id), "{id:?} refused as unknown but is live");
        }
    }

    fn check_joined(
        &self,
        id: SessionId,
        room: &str,
        r: Result<crate::machine::Joined, Error>,
        takeover: bool,
    ) {
        match r {
            Ok(j) => {
                assert_eq!(j.room.as_str(), room);
                assert_eq!(self.m.position(id, room), Some(j.position), "{j:?}");
                assert_eq!(j.holding, j.position == 0);
                assert!(!takeover || j.holding, "takeover did not hold: {j:?}");
                let state = self.m.room(room).expect("joined a room");
                assert_eq!(j.version, state.version);
                assert_eq!(Some(&j.holder), state.holder().map(|o| o.person()).as_ref());
            }
            Err(e) => self.check_error(&e, id),
        }
    }

    /// Runs one operation and checks everything that must hold after it.
    fn step(&mut self, b: &mut Bytes<'_>) {
        let before = self.lines();
        let watchers_before = self.watchers();
        let advance = self.apply(b);
        for s in &mut self.slots {
            if s.is_some_and(|s| !self.m.contains_session(s.id)) {
                *s = None;
            }
        }
        self.check_after(&before, &watchers_before, advance);
    }

    fn check_after(&mut self, before: &[Line], watchers_before: &[Vec<SessionId>], advance: bool) {
        if let Err(e) = self.m.check_invariants() {
            panic!("invariant broken: {e}");
        }
        let after = self.lines();
        let watchers_after = self.watchers();
        let notices: Vec<_> = self.m.drain_notices().collect();
        let mut step_versions: HashMap<&'static str, u64> = HashMap::new();
        let mut released: HashMap<(usize, SessionId), usize> = HashMap::new();
        for n in &notices {
            let r = ROOMS
                .iter()
                .position(|r| *r == n.room.as_str())
                .unwrap_or_else(|| panic!("notice about an unknown room: {n:?}"));
            let in_line = |lines: &[Line]| lines[r].iter().any(|(_, ss)| ss.contains(&n.session));
            // Members and watchers only: after the step, or (several expiries in one step, or a
            // closing session's watch) before it.
            let ok = in_line(&after)
                || watchers_after[r].contains(&n.session)
                || watchers_before[r].contains(&n.session)
                || (advance && in_line(before));
            assert!(ok, "notice to an outsider: {n:?}");
            let prev = *self.last_version.get(ROOMS[r]).unwrap_or(&0);
            let seen = step_versions.entry(ROOMS[r]).or_insert(prev);
            let catch_up = matches!(n.kind, NoticeKind::Presence(_)) && n.version() == prev;
            assert!(
                n.version() > prev || catch_up,
                "version did not move forward: {n:?} (last {prev})"
            );
            assert!(n.version() >= *seen, "notices out of version order: {n:?}");
            *seen = n.version();
            if matches!(n.kind, NoticeKind::Released { .. }) {
                *released.entry((r, n.session)).or_default() += 1;
            }
        }
        for (room, v) in step_versions {
            self.last_version.insert(room, v);
        }
        for room in ROOMS {
            if let Some(state) = self.m.room(room) {
                let last = self.last_version.entry(room).or_insert(0);
                assert!(state.version >= *last, "{room}: version went backwards");
                *last = state.version;
            }
        }
        if !advance {
            // One transition: `released` exactly to each session of a new holder, once.
            let mut want = HashMap::new();
            for (r, (old, new)) in before.iter().zip(&after).enumerate() {
                if let Some(nh) = new.first()
                    && old.first().is_some_and(|oh| oh.0 != nh.0)
                {
                    for &s in &nh.1 {
                        want.insert((r, s), 1);
                    }
                }
            }
            assert_eq!(released, want, "released notices");
        } else {
            for ((r, s), n) in &released {
                assert_eq!(*n, 1, "{s:?} released twice in {}", ROOMS[*r]);
            }
        }
        // The stats agree with the reads.
        let stats = self.m.stats();
        let known: Vec<_> = self.slots.iter().flatten().collect();
        assert_eq!(stats.sessions, known.len(), "{stats:?}");
        let in_grace = known.iter().filter(|s| !self.m.is_live(s.id)).count();
        assert_eq!(stats.sessions_in_grace, in_grace, "{stats:?}");
        assert_eq!(
            stats.rooms,
            ROOMS.iter().filter(|r| self.m.room(r).is_some()).count()
        );
        assert_eq!(stats.occupants, after.iter().map(Vec::len).sum::<usize>());
        assert_eq!(
            stats.watchers,
            watchers_after.iter().map(Vec::len).sum::<usize>()
        );
        for s in &known {
            for room in self.m.session_rooms(s.id).expect("known") {
                assert!(self.m.position(s.id, room.as_str()).is_some());
            }
        }
    }
}

/// Interprets `data` as operations on a [`Machine`] and checks the invariants after each one
/// (see the [module docs](self)). Panics on a bug.
pub fn machine_ops(data: &[u8]) {
    let config = Config {
        limits: Limits {
            max_room_id_len: 16,
            max_rooms_per_session: 3,
            max_occupants_per_room: 4,
            max_meta_bytes: 64,
        },
        grace: Duration::from_secs(GRACE_SECS),
        presence_occupants: 2,
        ..Config::default()
    };
    let mut d = Driver {
        m: Machine::new(config).expect("valid config"),
        t0: Instant::now(),
        secs: 0,
        slots: [None; SLOTS],
        next_id: 0,
        next_token: 0,
        last_version: HashMap::new(),
    };
    let mut b = Bytes(data);
    // At most a few hundred operations, so that one input stays fast.
    let mut ops = 0;
    while !b.is_empty() && ops < 512 {
        d.step(&mut b);
        ops += 1;
    }
    // Everyone leaves; the grace runs out; nothing is left.
    for slot in 0..SLOTS {
        if let Some(s) = d.slots[slot] {
            let before = d.lines();
            let watchers_before = d.watchers();
            d.m.disconnect(s.id, d.now()).expect("known session");
            d.check_after(&before, &watchers_before, false);
        }
    }
    let before = d.lines();
    let watchers_before = d.watchers();
    d.secs += GRACE_SECS + 1;
    let now = d.now();
    d.m.handle_timeout(now);
    d.slots = [None; SLOTS];
    d.check_after(&before, &watchers_before, true);
    assert_eq!(d.m.stats(), crate::machine::Stats::default());
    assert_eq!(d.m.poll_timeout(), None);
}

/// Protocol v1 encoding of a request (the inverse of [`Request::parse`]).
fn encode(req: &Request) -> String {
    let mut obj = Map::new();
    obj.insert("op".into(), json!(req.op.as_str()));
    if req.op != OpKind::Ping {
        obj.insert("room".into(), json!(req.room));
    }
    if let Some(r) = &req.r#ref {
        obj.insert("ref".into(), serde_json::to_value(r).expect("ref"));
    }
    if let Some(meta) = &req.meta {
        obj.insert("meta".into(), meta.to_value());
    }
    Value::Object(obj).to_string()
}

fn check_protocol_error(e: &ProtocolError, text: &str) {
    assert_documented(e.code, &(e, text));
    let event = e.to_event().to_value();
    assert_eq!(event["ev"], "error");
    assert_eq!(event["code"], e.code);
}

/// Sends one event the way the adapters do and checks it is JSON with its `ev`.
fn send(event: &Event) {
    let text = event.to_json();
    let value: Value = serde_json::from_str(&text).expect("events are JSON");
    assert_eq!(value["ev"], event.name());
    if let Value::String(code) = &value["code"] {
        assert_documented(code, event);
    }
}

/// Treats `data` as one protocol v1 text frame from a client (see the [module docs](self)).
/// Panics on a bug.
pub fn protocol_frame(data: &[u8]) {
    // A binary or non-UTF-8 frame never reaches the parser in the adapters (they answer it
    // `bad_message`); the text the parser can see is fuzzed through a lossy decoding.
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let parsed = Request::parse(text);
    // The ref of a refused frame (over the size limit, over the rate) is read the same way.
    let r#ref = match &parsed {
        Ok(req) => req.r#ref.clone(),
        Err(e) => e.r#ref.clone(),
    };
    if let Some(Ref::Str(s)) = &r#ref {
        assert!(s.len() <= crate::protocol::MAX_REF_LEN);
    }
    let req = match parsed {
        Ok(req) => req,
        Err(e) => {
            check_protocol_error(&e, text);
            send(&e.to_event());
            return;
        }
    };
    let again = Request::parse(&encode(&req))
        .unwrap_or_else(|e| panic!("re-encoded {req:?} did not parse: {e:?}"));
    assert_eq!(again, req, "re-encoding changed the request");
    if req.op == OpKind::Ping {
        assert!(req.room.is_empty());
    }
    match req.op {
        OpKind::Join => {}
        OpKind::Update => assert!(req.meta.is_some(), "update parsed without meta"),
        _ => assert!(req.meta.is_none()),
    }

    // The Socket.IO form of the same request (the object without `op`) gives the same request.
    let value: Value = serde_json::from_str(text).expect("parsed above");
    let from_payload = Request::from_payload(req.op, &value).expect("same fields");
    assert_eq!(from_payload, req);

    // Dispatch, as the axum adapter's connection does, against a machine with a small room limit
    // (so that room_invalid comes up) and a session in it.
    let mut m = Machine::new(Config {
        limits: Limits {
            max_room_id_len: 32,
            max_meta_bytes: 64,
            ..Limits::default()
        },
        ..Config::default()
    })
    .expect("valid config");
    let me = SessionId(1);
    m.connect(me, Some("p"), Meta::empty(), ResumeToken(1))
        .expect("fresh");
    m.connect(SessionId(2), None, Meta::empty(), ResumeToken(2))
        .expect("fresh");
    // Someone holds every room first, so a take over does something.
    let _ = m.join(SessionId(2), &req.room, None);
    for attempt in 0..2 {
        let r = req.r#ref.clone();
        let room = req.room.as_str();
        let result = match req.op {
            OpKind::Join => m
                .join(me, room, req.meta.clone())
                .map(|j| Event::joined(r.clone(), &j)),
            OpKind::Takeover => m.takeover(me, room).map(|j| Event::joined(r.clone(), &j)),
            OpKind::Update => m
                .update(me, room, req.meta.clone().expect("checked above"))
                .map(|j| Event::joined(r.clone(), &j)),
            OpKind::Active => m.active(me, room).map(|j| Event::joined(r.clone(), &j)),
            OpKind::Leave => m.leave(me, room).map(|l| Event::left(r.clone(), &l)),
            OpKind::Watch => m.watch(me, room).and_then(|p| {
                RoomId::parse(room, usize::MAX).map(|id| Event::watching(r.clone(), id, &p))
            }),
            OpKind::Unwatch => m.unwatch(me, room).and_then(|was| {
                RoomId::parse(room, usize::MAX).map(|id| Event::unwatched(r.clone(), id, was))
            }),
            OpKind::Ping => Ok(Event::Pong { r#ref: r.clone() }),
        };
        let ok = result.is_ok();
        let reply = result.unwrap_or_else(|e| Event::error(r, &e));
        send(&reply);
        if ok && req.op != OpKind::Ping {
            // A room accepted by the machine is a valid room id.
            RoomId::parse(room, 32).expect("accepted room is valid");
        }
        if let Err(e) = m.check_invariants() {
            panic!("invariant broken after {req:?} (attempt {attempt}): {e}");
        }
        for n in m.drain_notices() {
            send(&Event::from_notice(&n));
        }
        // A take over or an update works only for someone in the line: join first, then try
        // again.
        if matches!(req.op, OpKind::Takeover | OpKind::Update | OpKind::Active) && attempt == 0 {
            let _ = m.join(me, room, None);
            m.drain_notices().for_each(drop);
        }
    }
    m.disconnect(me, Instant::now()).expect("known");
    m.close(me).expect("known");
    m.close(SessionId(2)).expect("known");
    assert_eq!(m.stats(), crate::machine::Stats::default());
}

// ----- what the corpus replay tests share -------------------------------------------------------

/// The committed corpus of a fuzz target: every file in `dir` (`fuzz/corpus/<target>/`), sorted
/// by name, with its bytes. Panics with the path when the folder cannot be read.
pub fn corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("readable corpus file");
            (p, data)
        })
        .collect()
}

/// xorshift64*: a fixed-seed source of bytes for generated fuzz inputs, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` at least 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Up to `max_len` random bytes.
    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}
