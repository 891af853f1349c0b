//! Differential property test: the same random operations through a Hub on [`MemoryBackend`]
//! (one state machine) and a Hub on [`ShardedBackend`] (rooms spread over several machines, a
//! session table keeping what spans them), comparing after every operation the results, every
//! room's line (holders, positions, sessions, metadata), the counts, and every notice each session
//! received — modelled on `occupancy-redis/tests/differential.rs`.
//!
//! - Six rooms (so one session's rooms span shards), five slots whose principals may coincide
//!   (two tabs of one user), a small rooms-per-session limit (the sharded backend enforces it in
//!   its table, across shards), metadata sometimes over the limit, room ids sometimes invalid.
//! - Properties: 4 shards (2 rooms per session), 2 shards (3 rooms per session, 2 occupants per
//!   room so `RoomFull` comes up), and 4 shards with zero grace (a disconnect leaves at once; a
//!   batch of disconnects is one `disconnect_many`).
//! - Paused tokio time: grace is real (disconnect, disconnects batched at one moment, resume
//!   within grace, resume of a live session, grace expiring on an `Advance`), and deterministic
//!   on both sides.
//! - Versions are left out of the comparison (each shard counts its own), but on each side the
//!   versions of the notices one session receives about one room must never go backwards.
//!   Notices are compared per session per room, in order (rooms in different shards deliver
//!   independently, so the interleaving across rooms is not compared).
//! - After every operation both backends' `check_invariants` must pass.
//!
//! Cases: [`cases`] per property by default (the file runs in a few seconds in a debug build);
//! `OCCUPANCY_PROPTEST_CASES` or `PROPTEST_CASES` to change it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use occupancy_core::{
    Config, Error, Hub, Limits, MemoryBackend, Meta, Notice, NoticeKind, Notices, OccupantKey,
    Person, ResumeToken, Session, SessionId, ShardedBackend,
};
use proptest::prelude::*;
use serde_json::json;

const SLOTS: usize = 5;
/// Valid rooms first, then invalid ids (empty, a control character, too long).
const ROOMS: [&str; 9] = [
    "r0",
    "r1",
    "r2",
    "r3",
    "r4",
    "r5",
    "",
    "bad\n",
    "a-room-id-too-long",
];
const VALID_ROOMS: usize = 6;
const MAX_ROOM_ID_LEN: usize = 16;
const MAX_META_BYTES: usize = 40;
/// Two slots often share a user: two tabs of one principal.
const PRINCIPALS: [Option<&str>; 4] = [Some("u0"), Some("u1"), Some("u0"), None];
const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum MetaArg {
    None,
    Small,
    Big,
}

#[derive(Debug, Clone)]
enum Op {
    /// Slot, principal, oversized metadata.
    Connect(usize, usize, bool),
    Join(usize, usize, MetaArg),
    Leave(usize, usize),
    Takeover(usize, usize),
    Watch(usize, usize),
    Unwatch(usize, usize),
    Disconnect(usize),
    /// Several slots' connections end at the same moment (one batch to the backend).
    DisconnectMany(Vec<usize>),
    /// Resume a disconnected slot with its token.
    Resume(usize),
    /// Resume a live slot with its own token (a reconnect before the old one was noticed dead).
    Reconnect(usize),
    Close(usize),
    /// Let this many seconds pass (grace ends after `GRACE`).
    Advance(u64),
}

fn room() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 0..VALID_ROOMS,
        1 => VALID_ROOMS..ROOMS.len(),
    ]
}

fn meta_arg() -> impl Strategy<Value = MetaArg> {
    prop_oneof![
        4 => Just(MetaArg::None),
        3 => Just(MetaArg::Small),
        1 => Just(MetaArg::Big),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SLOTS;
    prop_oneof![
        2 => (s.clone(), 0..PRINCIPALS.len(), proptest::bool::weighted(0.15))
            .prop_map(|(s, p, b)| Op::Connect(s, p, b)),
        7 => (s.clone(), room(), meta_arg()).prop_map(|(s, r, m)| Op::Join(s, r, m)),
        3 => (s.clone(), room()).prop_map(|(s, r)| Op::Leave(s, r)),
        2 => (s.clone(), room()).prop_map(|(s, r)| Op::Takeover(s, r)),
        2 => (s.clone(), room()).prop_map(|(s, r)| Op::Watch(s, r)),
        1 => (s.clone(), room()).prop_map(|(s, r)| Op::Unwatch(s, r)),
        1 => s.clone().prop_map(Op::Disconnect),
        1 => proptest::sample::subsequence((0..SLOTS).collect::<Vec<_>>(), 2..=3)
            .prop_map(Op::DisconnectMany),
        2 => s.clone().prop_map(Op::Resume),
        1 => s.clone().prop_map(Op::Reconnect),
        1 => s.prop_map(Op::Close),
        1 => prop_oneof![Just(3u64), Just(6), Just(11)].prop_map(Op::Advance),
    ]
}

fn meta(slot: usize, big: bool) -> Meta {
    let v = if big {
        json!({ "tab": slot, "pad": "x".repeat(MAX_META_BYTES) })
    } else {
        json!({ "tab": slot })
    };
    Meta::from_value(v).unwrap()
}

/// One side of the comparison: a Hub and its sessions by slot.
struct Side {
    hub: Hub,
    slots: Vec<Option<(Session, Notices)>>,
    /// Tokens of disconnected slots (for resume).
    tokens: Vec<Option<ResumeToken>>,
    ids: HashMap<SessionId, usize>,
    /// Notices taken from a replaced connection's stream, not yet reported.
    pending: Vec<Vec<Notice>>,
    /// The last notice version per (session, room): it must never go backwards.
    versions: HashMap<(SessionId, String), u64>,
}

impl Side {
    fn new(hub: Hub) -> Side {
        Side {
            hub,
            slots: (0..SLOTS).map(|_| None).collect(),
            tokens: vec![None; SLOTS],
            ids: HashMap::new(),
            pending: (0..SLOTS).map(|_| Vec::new()).collect(),
            versions: HashMap::new(),
        }
    }

    fn person(&self, p: &Person) -> String {
        match &p.id {
            OccupantKey::User(u) => format!("{u}{:?}", p.meta),
            OccupantKey::Anonymous(s) => format!("anon#{:?}{:?}", self.ids.get(s), p.meta),
        }
    }

    fn notice(&self, n: &Notice) -> String {
        let slot = self.ids.get(&n.session);
        let what = match &n.kind {
            NoticeKind::Occupied {
                holder, position, ..
            } => format!("occupied {} {position}", self.person(holder)),
            NoticeKind::Released { .. } => "released".into(),
            NoticeKind::Displaced { by, position, .. } => {
                format!("displaced {} {position}", self.person(by))
            }
            NoticeKind::Presence(p) => format!(
                "presence {:?} {:?} {} {:?}",
                p.position,
                p.body.holder.as_ref().map(|h| self.person(h)),
                p.body.waiting,
                p.body
                    .occupants
                    .iter()
                    .map(|o| self.person(o))
                    .collect::<Vec<_>>()
            ),
            other => format!("{other:?}"),
        };
        format!("{slot:?} {what}")
    }

    /// Drains a slot's stream (and what a replaced stream left) into `pending`.
    fn drain(&mut self, slot: usize) {
        if let Some((_, n)) = &mut self.slots[slot] {
            while let Some(x) = n.try_recv() {
                self.pending[slot].push(x);
            }
        }
    }

    fn resumed(
        &mut self,
        s: usize,
        r: Result<(Session, Notices, occupancy_core::Resumed), Error>,
    ) -> String {
        match r {
            Ok((session, notices, r)) => {
                self.slots[s] = Some((session, notices));
                let mut watching: Vec<_> = r.watching.iter().map(|w| w.to_string()).collect();
                watching.sort();
                let rooms: Vec<_> = r
                    .rooms
                    .iter()
                    .map(|j| {
                        (
                            j.room.to_string(),
                            j.holding,
                            j.position,
                            self.person(&j.holder),
                        )
                    })
                    .collect();
                format!("resumed {} {rooms:?} {watching:?}", r.was_live)
            }
            Err(e) => format!("{e:?}"),
        }
    }

    /// Applies one operation; returns its normalized result.
    async fn apply(&mut self, op: &Op) -> String {
        match *op {
            Op::Connect(s, p, big) => {
                if self.slots[s].is_some() {
                    return "busy".into();
                }
                match self
                    .hub
                    .connect(PRINCIPALS[p].map(String::from), meta(s, big))
                    .await
                {
                    Ok((session, notices)) => {
                        self.ids.insert(session.id(), s);
                        self.tokens[s] = None;
                        self.slots[s] = Some((session, notices));
                        "connected".into()
                    }
                    Err(e) => format!("{e:?}"),
                }
            }
            Op::Resume(s) => {
                let Some(token) = self.tokens[s].take() else {
                    return "no token".into();
                };
                if self.slots[s].is_some() {
                    return "busy".into();
                }
                let r = self.hub.resume(token).await;
                self.resumed(s, r)
            }
            Op::Reconnect(s) => {
                let Some((session, _)) = &self.slots[s] else {
                    return "no session".into();
                };
                let token = session.resume_token();
                self.drain(s);
                let r = self.hub.resume(token).await;
                // What reached the replaced stream still counts, ahead of the new one's.
                let old = if r.is_ok() {
                    self.slots[s].take()
                } else {
                    None
                };
                let out = self.resumed(s, r);
                if let Some((_, mut n)) = old {
                    while let Some(x) = n.try_recv() {
                        self.pending[s].push(x);
                    }
                    let reason = n.close_reason().map(|e| format!("{e:?}"));
                    return format!("{out} old stream: {reason:?}");
                }
                out
            }
            Op::DisconnectMany(ref slots) => {
                let mut tasks = Vec::new();
                for &s in slots {
                    let Some((session, _)) = &self.slots[s] else {
                        continue;
                    };
                    let session = session.clone();
                    self.tokens[s] = Some(session.resume_token());
                    tasks.push(tokio::spawn(async move { session.disconnect().await }));
                }
                let n = tasks.len();
                for t in tasks {
                    t.await.unwrap();
                }
                for &s in slots {
                    if self.slots[s].is_some() {
                        self.drain(s);
                        self.slots[s] = None;
                    }
                }
                format!("disconnected {n}")
            }
            Op::Advance(secs) => {
                tokio::time::advance(Duration::from_secs(secs)).await;
                // Let the timer tasks run whatever came due (paused time moves on only once
                // nothing else can run).
                tokio::time::sleep(Duration::from_millis(1)).await;
                "advanced".into()
            }
            Op::Join(slot, ..)
            | Op::Leave(slot, _)
            | Op::Takeover(slot, _)
            | Op::Watch(slot, _)
            | Op::Unwatch(slot, _)
            | Op::Disconnect(slot)
            | Op::Close(slot) => {
                let Some((session, _)) = &self.slots[slot] else {
                    return "no session".into();
                };
                let session = session.clone();
                let r: Result<String, Error> = match *op {
                    Op::Join(_, r, m) => {
                        let m = match m {
                            MetaArg::None => None,
                            MetaArg::Small => Some(meta(100 + slot, false)),
                            MetaArg::Big => Some(meta(100 + slot, true)),
                        };
                        session.join(ROOMS[r], m).await.map(|j| {
                            format!(
                                "joined {} {} {} {}",
                                j.room,
                                j.holding,
                                j.position,
                                self.person(&j.holder)
                            )
                        })
                    }
                    Op::Leave(_, r) => session
                        .leave(ROOMS[r])
                        .await
                        .map(|l| format!("left {} {}", l.room, l.was_member)),
                    Op::Takeover(_, r) => session.takeover(ROOMS[r]).await.map(|j| {
                        format!(
                            "took {} {} {} {}",
                            j.room,
                            j.holding,
                            j.position,
                            self.person(&j.holder)
                        )
                    }),
                    Op::Watch(_, r) => session.watch(ROOMS[r]).await.map(|b| {
                        format!(
                            "watching {:?} {} {:?}",
                            b.holder.as_ref().map(|h| self.person(h)),
                            b.waiting,
                            b.occupants
                                .iter()
                                .map(|o| self.person(o))
                                .collect::<Vec<_>>()
                        )
                    }),
                    Op::Unwatch(_, r) => session.unwatch(ROOMS[r]).await.map(|b| format!("{b}")),
                    Op::Disconnect(_) => {
                        self.tokens[slot] = Some(session.resume_token());
                        session.disconnect().await;
                        self.drain(slot);
                        self.slots[slot] = None;
                        Ok("disconnected".into())
                    }
                    Op::Close(_) => {
                        session.close().await;
                        self.drain(slot);
                        self.slots[slot] = None;
                        Ok("closed".into())
                    }
                    _ => unreachable!(),
                };
                match r {
                    Ok(s) => s,
                    Err(e) => format!("{e:?}"),
                }
            }
        }
    }

    /// Everything observable after an operation, normalized; also checks the backend's
    /// invariants and that no session saw a room's version go backwards.
    async fn observe(&mut self) -> Result<String, String> {
        self.hub.backend().check_invariants().await?;
        let mut out = String::new();
        for room in &ROOMS[..VALID_ROOMS] {
            let state = self.hub.room(room).await.map_err(|e| format!("{e:?}"))?;
            let line: Option<Vec<_>> = state.map(|st| {
                st.occupants
                    .iter()
                    .map(|o| {
                        let sessions: Vec<_> = o.sessions.iter().map(|s| self.ids.get(s)).collect();
                        (self.person(&o.person()), sessions)
                    })
                    .collect()
            });
            out.push_str(&format!("{room}: {line:?}\n"));
        }
        let st = self.hub.stats().await.map_err(|e| format!("{e:?}"))?;
        if st.invariant_violations != 0 {
            return Err(format!("invariant violations: {st:?}"));
        }
        out.push_str(&format!(
            "rooms {} sessions {} in grace {} occupants {} watchers {}\n",
            st.rooms, st.sessions, st.sessions_in_grace, st.occupants, st.watchers
        ));
        for s in 0..SLOTS {
            self.drain(s);
            let got = std::mem::take(&mut self.pending[s]);
            let mut by_room: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for n in got {
                let key = (n.session, n.room.to_string());
                let v = n.version();
                if let Some(&last) = self.versions.get(&key)
                    && v < last
                {
                    return Err(format!(
                        "slot {s}: {} went back from version {last} to {v}: {n:?}",
                        n.room
                    ));
                }
                self.versions.insert(key, v);
                by_room
                    .entry(n.room.to_string())
                    .or_default()
                    .push(self.notice(&n));
            }
            for (room, notices) in by_room {
                out.push_str(&format!("slot {s} {room}: {notices:?}\n"));
            }
        }
        Ok(out)
    }
}

fn config(rooms_per_session: usize, occupants_per_room: usize, grace: Duration) -> Config {
    {
        let mut c = Config::default();
        c.limits = {
            let mut l = Limits::default();
            l.max_room_id_len = MAX_ROOM_ID_LEN;
            l.max_rooms_per_session = rooms_per_session;
            l.max_occupants_per_room = occupants_per_room;
            l.max_meta_bytes = MAX_META_BYTES;
            l
        };
        c.grace = grace;
        c.presence_occupants = 2;
        c.check_invariants = true;
        c
    }
}

fn cases() -> u32 {
    std::env::var("OCCUPANCY_PROPTEST_CASES")
        .or_else(|_| std::env::var("PROPTEST_CASES"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        proptest::collection::vec(0..PRINCIPALS.len(), SLOTS),
        proptest::collection::vec(op(), 1..60),
    )
        .prop_map(|(principals, rest)| {
            // Every slot connected first, so most operations act on a session.
            principals
                .iter()
                .enumerate()
                .map(|(s, &p)| Op::Connect(s, p, false))
                .chain(rest)
                .collect()
        })
}

/// Runs the sequence on both sides; the first disagreement fails the case.
async fn run(ops: &[Op], shards: usize, config: Config) -> Result<(), TestCaseError> {
    let mut mem = Side::new(
        Hub::builder()
            .backend(MemoryBackend::new())
            .config(config.clone())
            .build()
            .unwrap(),
    );
    let mut sh = Side::new(
        Hub::builder()
            .backend(ShardedBackend::new(shards).unwrap())
            .config(config)
            .build()
            .unwrap(),
    );
    // DUMP=1 prints every operation's result and both sides' observations.
    let dump = std::env::var("DUMP").is_ok();
    for (i, op) in ops.iter().enumerate() {
        let a = mem.apply(op).await;
        let b = sh.apply(op).await;
        prop_assert_eq!(&a, &b, "result of op {} {:?}", i, op);
        if dump {
            eprintln!("RESULT {op:?} -> {a}");
        }
        let a = mem
            .observe()
            .await
            .map_err(|e| TestCaseError::fail(format!("memory side after op {i} {op:?}: {e}")))?;
        let b = sh
            .observe()
            .await
            .map_err(|e| TestCaseError::fail(format!("sharded side after op {i} {op:?}: {e}")))?;
        if dump {
            eprintln!("OP {i} {op:?} => {a}\n{b}");
        }
        prop_assert_eq!(a, b, "state and notices after op {} {:?}", i, op);
    }
    Ok(())
}

/// One property: `shards` shards against one machine, under these limits and grace.
fn check(shards: usize, rooms_per_session: usize, occupants_per_room: usize, grace: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let cfg = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(ops in ops())| {
        rt.block_on(run(&ops, shards, config(rooms_per_session, occupants_per_room, grace)))?;
    });
}

#[test]
fn memory_and_four_shards_agree() {
    check(4, 2, 3, GRACE);
}

#[test]
fn memory_and_two_shards_agree() {
    check(2, 3, 2, GRACE);
}

#[test]
fn memory_and_four_shards_agree_without_grace() {
    check(4, 2, 3, Duration::ZERO);
}

/// The differential test above runs on one thread; this one races the sharded backend's two
/// locks for real: 64 tasks on a 2-worker runtime join, watch and leave six rooms (spread over
/// 4 shards) while other tasks disconnect and resume or close sessions under them. Afterwards the
/// backend's invariants hold (the session table agrees with every shard), each session saw each
/// room's versions in order, and once everyone is closed every count is zero.
#[test]
fn racing_joins_against_disconnects_resumes_and_closes() {
    use occupancy_core::{Backend, ShardedBackend};
    use std::time::Duration;

    const ROOMS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = ShardedBackend::new(4).unwrap();
        let hub = Hub::builder()
            .backend(backend.clone())
            .grace(Duration::from_secs(30))
            .limits({
                let mut l = Limits::default();
                l.max_rooms_per_session = 3;
                l
            })
            .notice_buffer(1 << 16)
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..64usize {
            let hub = hub.clone();
            tasks.push(tokio::spawn(async move {
                let principal = (t % 4 == 0).then(|| format!("user-{}", t % 8));
                let (mut session, mut notices) =
                    hub.connect(principal.clone(), Meta::empty()).await.unwrap();
                let mut last: HashMap<String, u64> = HashMap::new();
                let mut ok = 0usize;
                for r in 0..300usize {
                    let room = ROOMS[(t * 7 + r) % ROOMS.len()];
                    // Joins and watches race the lifecycle changes of other tasks' sessions and,
                    // now and then, of this one (a disconnect then a resume, or a close).
                    let done = match r % 3 {
                        0 => session.join(room, None).await.map(|_| ()),
                        1 => session.watch(room).await.map(|_| ()),
                        _ => session.leave(room).await.map(|_| ()),
                    };
                    match done {
                        Ok(()) => ok += 1,
                        // The limit of 3 rooms, or a watch of a room it stands in... all typed.
                        Err(Error::TooManyRooms { limit: 3 }) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                    if r % 11 == t % 11 {
                        let token = session.resume_token();
                        let copy = session.clone();
                        let racing = tokio::spawn(async move {
                            let _ = copy.join("a", None).await;
                        });
                        session.disconnect().await;
                        let _ = racing.await;
                        let (s, n, _) = hub.resume_as(token, principal.as_deref()).await.unwrap();
                        session = s;
                        notices = n;
                    }
                    while let Some(n) = notices.try_recv() {
                        let prev = last.insert(n.room.to_string(), n.version()).unwrap_or(0);
                        assert!(n.version() >= prev, "versions of {} went back", n.room);
                    }
                }
                (session, ok)
            }));
        }
        let mut sessions = Vec::new();
        let mut ok = 0;
        for t in tasks {
            let (s, n) = t.await.expect("a task panicked");
            sessions.push(s);
            ok += n;
        }
        assert!(ok > 64 * 300 / 2, "most operations succeed ({ok})");
        backend
            .check_invariants()
            .await
            .expect("invariants while sessions are live");
        for s in &sessions {
            s.close().await;
        }
        backend
            .check_invariants()
            .await
            .expect("invariants after closing");
        let stats = hub.stats().await.unwrap();
        assert_eq!(
            (stats.sessions, stats.rooms, stats.occupants, stats.watchers),
            (0, 0, 0, 0)
        );
    });
}
