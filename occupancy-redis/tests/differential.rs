//! Differential property tests: the same random operations through a Hub on [`MemoryBackend`]
//! (the machine, itself checked against the naive model in `occupancy-core/tests/model.rs`) and
//! Hubs on [`RedisBackend`], comparing after every operation the results, the holders and
//! positions of every room, the counts, and every notice each session received (versions
//! aside: the memory backend counts, Redis uses its clock; `since` / `held_since` aside too,
//! except whether a presence has `held_since`). Cases: 64 by default (16 for the long lines),
//! `OCCUPANCY_PROPTEST_CASES` to raise it.
//!
//! - `memory_and_redis_agree`: one Redis node, 5 sessions, lines of at most 3.
//! - `long_lines_and_node_deaths_agree`: two Redis nodes (even slots on one, odd on the other),
//!   24 sessions in lines of up to 24 (past the machine's line index, `INDEX_FROM` = 16), and
//!   `Die`: the odd node stops dead ([`RedisBackend::freeze`]: no goodbye, its lease runs out)
//!   and is replaced by a fresh one, while the memory side kicks the same sessions (live and in
//!   grace). A sweep closes a dead node's sessions in one change per room and the kicks one at a
//!   time, so after a death the survivors' notices are compared by what they leave a client
//!   with: which rooms each session was `released` in, and its last presence in each room (its
//!   place, the holder, the first occupants shown, and the number waiting for those shown it).
//!
//! Both Hubs run with an idle timeout (one hour: never reached), so `active`, joins, updates
//! and forced releases take the idle code paths (refreshing the holder's idle clock, the pending
//! release a join acts on) without expiring anyone. Idle expiry itself is not driven here: it
//! depends on real time passing on both sides at slightly different moments (a holder granted
//! just under the timeout before a check on one side and just over on the other), so it is
//! tested on Redis alone, in `idle.rs`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{RedisServer, test_config};
use occupancy_core::{
    Config, Error, ForcedRelease, Hub, Limits, MemoryBackend, Meta, Notice, NoticeKind, Notices,
    OccupantKey, Person, Session, SessionId,
};
use occupancy_redis::RedisBackend;
use proptest::prelude::*;
use serde_json::json;

const SLOTS: usize = 5;
const LONG_SLOTS: usize = 24;
const ROOMS: [&str; 3] = ["r0", "r{1}", "r2"];
const PRINCIPALS: [Option<&str>; 4] = [Some("u0"), Some("u1"), Some("u2"), None];

#[derive(Debug, Clone)]
enum Op {
    Connect(usize, usize),
    Join(usize, usize, bool),
    Active(usize, usize),
    Release(usize),
    Leave(usize, usize),
    Takeover(usize, usize),
    Watch(usize, usize),
    Unwatch(usize, usize),
    Disconnect(usize),
    Resume(usize),
    Close(usize),
    /// The second node dies (long-line test only).
    Die,
}

fn op() -> impl Strategy<Value = Op> {
    ops(SLOTS)
}

/// Operations on `slots` session slots.
fn ops(slots: usize) -> impl Strategy<Value = Op> {
    let s = 0..slots;
    let r = 0..ROOMS.len();
    prop_oneof![
        2 => (s.clone(), 0..PRINCIPALS.len()).prop_map(|(s, p)| Op::Connect(s, p)),
        5 => (s.clone(), r.clone(), any::<bool>()).prop_map(|(s, r, m)| Op::Join(s, r, m)),
        2 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Active(s, r)),
        2 => r.clone().prop_map(Op::Release),
        3 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Leave(s, r)),
        2 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Takeover(s, r)),
        1 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Watch(s, r)),
        1 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Unwatch(s, r)),
        1 => s.clone().prop_map(Op::Disconnect),
        1 => s.clone().prop_map(Op::Resume),
        1 => s.prop_map(Op::Close),
    ]
}

/// One side of the comparison: its Hubs (one per node; slot `s` is on node `s % nodes`) and
/// its sessions by slot.
struct Side {
    hubs: Vec<Hub>,
    /// The Redis backends of the nodes (none on the memory side).
    backends: Vec<RedisBackend>,
    slots: Vec<Option<(Session, Notices)>>,
    /// Tokens of disconnected slots (for resume).
    tokens: Vec<Option<occupancy_core::ResumeToken>>,
    ids: HashMap<SessionId, usize>,
    /// Dead nodes' Hubs and sessions, kept (not dropped: a dropped session would disconnect).
    graveyard: Vec<(Hub, Vec<(Session, Notices)>)>,
}

impl Side {
    fn new(hub: Hub) -> Side {
        Side::with_nodes(vec![hub], Vec::new(), SLOTS)
    }

    fn with_nodes(hubs: Vec<Hub>, backends: Vec<RedisBackend>, slots: usize) -> Side {
        Side {
            hubs,
            backends,
            slots: (0..slots).map(|_| None).collect(),
            tokens: vec![None; slots],
            ids: HashMap::new(),
            graveyard: Vec::new(),
        }
    }

    /// The Hub reads go through (any node sees the same rooms).
    fn hub(&self) -> &Hub {
        &self.hubs[0]
    }

    /// The Hub of slot `s`'s node.
    fn hub_for(&self, s: usize) -> &Hub {
        &self.hubs[s % self.hubs.len()]
    }

    /// The odd slots' sessions (live and in grace) end: on Redis their node dies (the caller
    /// replaces it), on memory they are kicked one by one.
    async fn die(&mut self) -> String {
        let odd = |s: &usize| s % 2 == 1;
        if let Some(b) = self.backends.get(1) {
            b.freeze();
            let sessions: Vec<_> = (0..self.slots.len())
                .filter(odd)
                .filter_map(|s| self.slots[s].take())
                .collect();
            let hub = self.hubs.remove(1);
            self.graveyard.push((hub, sessions));
            self.backends.remove(1);
        } else {
            // Every session an odd slot ever had: a slot disconnected and then connected again
            // left its first session in grace, which the dead node's sweep ends too.
            let ids: Vec<SessionId> = self
                .ids
                .iter()
                .filter(|(_, s)| odd(s))
                .map(|(&id, _)| id)
                .collect();
            for s in (0..self.slots.len()).filter(odd) {
                self.slots[s] = None;
            }
            for id in ids {
                self.hub().kick(id).await.unwrap();
            }
        }
        for s in (0..self.tokens.len()).filter(odd) {
            self.tokens[s] = None;
        }
        "died".into()
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
            NoticeKind::Displaced {
                by,
                position,
                reason,
                ..
            } => {
                format!("displaced {} {position} {reason:?}", self.person(by))
            }
            NoticeKind::Presence(p) => format!(
                "presence {:?} held {} {:?} {} {:?}",
                p.position,
                p.body.held_since.is_some(),
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
        format!("{slot:?} {} {what}", n.room)
    }

    /// Applies one operation; returns its normalized result.
    async fn apply(&mut self, op: &Op) -> String {
        let meta = |s: usize| Meta::from_value(json!({ "tab": s })).unwrap();
        match *op {
            Op::Connect(s, p) => {
                if self.slots[s].is_some() {
                    return "busy".into();
                }
                let (session, notices) = self
                    .hub_for(s)
                    .connect(PRINCIPALS[p].map(String::from), meta(s))
                    .await
                    .unwrap();
                self.ids.insert(session.id(), s);
                self.tokens[s] = None;
                self.slots[s] = Some((session, notices));
                "connected".into()
            }
            Op::Die => self.die().await,
            Op::Release(r) => match self.hub().release(ROOMS[r]).await {
                Ok(ForcedRelease::HandedOver { to, .. }) => format!("handed {}", self.person(&to)),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("{e:?}"),
            },
            Op::Resume(s) => {
                let Some(token) = self.tokens[s].take() else {
                    return "no token".into();
                };
                match self.hub_for(s).resume(token).await {
                    Ok((session, notices, r)) => {
                        self.slots[s] = Some((session, notices));
                        let mut watching: Vec<_> =
                            r.watching.iter().map(|w| w.to_string()).collect();
                        watching.sort();
                        let rooms: Vec<_> = r
                            .rooms
                            .iter()
                            .map(|j| (j.room.to_string(), j.position, self.person(&j.holder)))
                            .collect();
                        format!("resumed {} {rooms:?} {watching:?}", r.was_live)
                    }
                    Err(e) => format!("{e:?}"),
                }
            }
            _ => {
                let slot = match op {
                    Op::Join(s, ..)
                    | Op::Active(s, _)
                    | Op::Leave(s, _)
                    | Op::Takeover(s, _)
                    | Op::Watch(s, _)
                    | Op::Unwatch(s, _)
                    | Op::Disconnect(s)
                    | Op::Close(s) => *s,
                    _ => unreachable!(),
                };
                let Some((session, _)) = &self.slots[slot] else {
                    return "no session".into();
                };
                let session = session.clone();
                let r: Result<String, Error> = match *op {
                    Op::Join(_, r, m) => session
                        .join(ROOMS[r], m.then(|| meta(100 + slot)))
                        .await
                        .map(|j| {
                            format!(
                                "joined {} {} {}",
                                j.holding,
                                j.position,
                                self.person(&j.holder)
                            )
                        }),
                    Op::Active(_, r) => session.active(ROOMS[r]).await.map(|j| {
                        format!(
                            "active {} {} {}",
                            j.holding,
                            j.position,
                            self.person(&j.holder)
                        )
                    }),
                    Op::Leave(_, r) => session
                        .leave(ROOMS[r])
                        .await
                        .map(|l| format!("left {}", l.was_member)),
                    Op::Takeover(_, r) => session
                        .takeover(ROOMS[r])
                        .await
                        .map(|j| format!("took {} {}", j.position, self.person(&j.holder))),
                    Op::Watch(_, r) => session.watch(ROOMS[r]).await.map(|b| {
                        format!(
                            "watching {:?} {}",
                            b.holder.as_ref().map(|h| self.person(h)),
                            b.waiting
                        )
                    }),
                    Op::Unwatch(_, r) => session.unwatch(ROOMS[r]).await.map(|b| format!("{b}")),
                    Op::Disconnect(_) => {
                        self.tokens[slot] = Some(session.resume_token());
                        session.disconnect().await;
                        let (_s, mut n) = self.slots[slot].take().unwrap();
                        while n.try_recv().is_some() {}
                        Ok("disconnected".into())
                    }
                    Op::Close(_) => {
                        session.close().await;
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

    /// Everything observable after an operation, normalized.
    async fn observe(&mut self) -> String {
        let mut out = self.observe_rooms().await;
        for s in 0..self.slots.len() {
            let mut got = Vec::new();
            if let Some((_, n)) = &mut self.slots[s] {
                while let Some(x) = n.try_recv() {
                    got.push(x);
                }
            }
            for n in got {
                out.push_str(&self.notice(&n));
                out.push('\n');
            }
        }
        out
    }

    /// What a death leaves each session with: for each slot, the rooms it was `released` in and
    /// its last presence in each room (see the module docs).
    fn observe_outcome(&mut self) -> String {
        let mut out = String::new();
        for s in 0..self.slots.len() {
            let mut got = Vec::new();
            if let Some((_, n)) = &mut self.slots[s] {
                while let Some(x) = n.try_recv() {
                    got.push(x);
                }
            }
            let mut released = std::collections::BTreeSet::new();
            let mut last = std::collections::BTreeMap::new();
            for n in &got {
                match &n.kind {
                    NoticeKind::Released { .. } => {
                        released.insert(n.room.to_string());
                    }
                    // Those past the first `presence_occupants` (2) are not told the number
                    // waiting when only it changed: one kick at a time leaves them an older count
                    // than one sweep does, both right.
                    NoticeKind::Presence(p) => {
                        let waiting = if p.position.is_some_and(|x| x < 2) {
                            p.body.waiting.to_string()
                        } else {
                            "-".into()
                        };
                        let body = format!(
                            "{:?} {:?} {waiting} {:?}",
                            p.position,
                            p.body.holder.as_ref().map(|h| self.person(h)),
                            p.body
                                .occupants
                                .iter()
                                .map(|o| self.person(o))
                                .collect::<Vec<_>>()
                        );
                        last.insert(n.room.to_string(), body);
                    }
                    _ => {}
                }
            }
            out.push_str(&format!("{s}: released {released:?} last {last:?}\n"));
        }
        out
    }

    /// The rooms' lines and the counts, normalized.
    async fn observe_rooms(&self) -> String {
        let mut out = String::new();
        for room in ROOMS {
            let occ: Vec<_> = self
                .hub()
                .occupants(room)
                .await
                .unwrap()
                .iter()
                .map(|p| self.person(p))
                .collect();
            out.push_str(&format!("{room}: {occ:?}\n"));
        }
        out.push_str(&format!("{:?}\n", self.hub().stats().await.unwrap()));
        out
    }
}

fn limits() -> Limits {
    {
        let mut l = Limits::default();
        l.max_rooms_per_session = 2;
        l.max_occupants_per_room = 3;
        l
    }
}

fn hub_config() -> Config {
    let mut c = Config::default();
    c.limits = limits();
    c.grace = Duration::from_secs(600);
    c.presence_occupants = 2;
    // On, never reached (see the module docs).
    c.idle_timeout = Some(Duration::from_secs(3600));
    c
}

static CASE: AtomicUsize = AtomicUsize::new(0);

fn cases() -> u32 {
    std::env::var("OCCUPANCY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

#[test]
fn memory_and_redis_agree() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        principals in proptest::collection::vec(0..PRINCIPALS.len(), SLOTS),
        rest in proptest::collection::vec(op(), 1..40),
    )| {
        // Every slot connected first, so most operations act on a session.
        let ops: Vec<Op> = principals
            .iter()
            .enumerate()
            .map(|(s, &p)| Op::Connect(s, p))
            .chain(rest)
            .collect();
        let url = url.clone();
        rt.block_on(async move {
            let prefix = format!("diff{}", CASE.fetch_add(1, Ordering::Relaxed));
            let backend = RedisBackend::connect(test_config(&url).prefix(prefix))
                .await
                .unwrap();
            let mut mem = Side::new(
                Hub::builder()
                    .backend(MemoryBackend::new())
                    .config(hub_config())
                    .build()
                    .unwrap(),
            );
            let mut red = Side::new(
                Hub::builder()
                    .backend(backend)
                    .config(hub_config())
                    .build()
                    .unwrap(),
            );
            for (i, op) in ops.iter().enumerate() {
                let a = mem.apply(op).await;
                let b = red.apply(op).await;
                prop_assert_eq!(&a, &b, "result of op {} {:?}", i, op);
                let a = mem.observe().await;
                let b = red.observe().await;
                if std::env::var("DUMP").is_ok() { eprintln!("OP {:?} => {}\n{}", op, a, b); }
                prop_assert_eq!(a, b, "state and notices after op {} {:?}", i, op);
            }
            red.hub().backend().check_invariants().await.map_err(TestCaseError::fail)?;
            Ok(())
        })?;
    });
}

/// The sentinel room (not compared): barriers go through it.
const SENTINEL: &str = "zz-sentinel";

impl Side {
    /// Connects the barrier sessions of node `node` (a mover and a watcher of [`SENTINEL`]).
    async fn sentinels(&mut self, node: usize) -> [(Session, Notices); 2] {
        let hub = &self.hubs[node.min(self.hubs.len() - 1)];
        let mover = hub.connect(None, Meta::empty()).await.unwrap();
        let watcher = hub.connect(None, Meta::empty()).await.unwrap();
        watcher.0.watch(SENTINEL).await.unwrap();
        [mover, watcher]
    }
}

/// Barrier sessions: `[node][mover, watcher]`.
type Sentinels = Vec<[(Session, Notices); 2]>;

/// Waits until every node has processed every state published so far: node 1's mover joins and
/// leaves the sentinel room and node 0's watcher waits for the presence of the leave (pub/sub is
/// one ordered channel, so everything published before has reached node 0 by then), and the
/// other way round. On the memory side the same calls, synchronous.
async fn barrier(sent: &mut Sentinels) {
    for (mover, watcher) in [(1, 0), (0, 1)] {
        let m = sent[mover][0].0.clone();
        m.join(SENTINEL, None).await.unwrap();
        m.leave(SENTINEL).await.unwrap();
        let w = &mut sent[watcher][1].1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = tokio::time::timeout_at(deadline, w.recv())
                .await
                .expect("barrier timed out")
                .expect("barrier notices ended");
            if let NoticeKind::Presence(p) = &n.kind
                && p.body.holder.is_none()
            {
                break;
            }
        }
    }
}

fn long_config() -> Config {
    let mut c = hub_config();
    c.limits.max_occupants_per_room = LONG_SLOTS + 4;
    c
}

#[test]
fn long_lines_and_node_deaths_agree() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    let config = ProptestConfig {
        cases: (cases() / 4).max(1),
        max_shrink_iters: 50,
        ..ProptestConfig::default()
    };
    let principal = prop_oneof![3 => Just(PRINCIPALS.len() - 1), 1 => 0..PRINCIPALS.len()];
    proptest!(config, |(
        principals in proptest::collection::vec(principal, LONG_SLOTS),
        rest in proptest::collection::vec(prop_oneof![30 => ops(LONG_SLOTS), 1 => Just(Op::Die)], 1..60),
    )| {
        // Every slot connected, and most joining a room, so lines grow long.
        let ops: Vec<Op> = principals
            .iter()
            .enumerate()
            .map(|(s, &p)| Op::Connect(s, p))
            .chain((0..LONG_SLOTS).map(|s| Op::Join(s, 0, false)))
            .chain(rest)
            .collect();
        let url = url.clone();
        rt.block_on(async move {
            let prefix = format!("long{}", CASE.fetch_add(1, Ordering::Relaxed));
            let cfg = test_config(&url)
                .prefix(prefix)
                .lease(Duration::from_millis(300));
            let node = || async {
                let b = RedisBackend::connect(cfg.clone()).await.unwrap();
                let hub = Hub::builder()
                    .backend(b.clone())
                    .config(long_config())
                    .build()
                    .unwrap();
                (hub, b)
            };
            let (h0, b0) = node().await;
            let (h1, b1) = node().await;
            let mem_hub = Hub::builder()
                .backend(MemoryBackend::new())
                .config(long_config())
                .build()
                .unwrap();
            let mut mem = Side::with_nodes(vec![mem_hub], Vec::new(), LONG_SLOTS);
            let mut red = Side::with_nodes(vec![h0, h1], vec![b0, b1], LONG_SLOTS);
            let mut mem_sent: Sentinels = vec![mem.sentinels(0).await, mem.sentinels(1).await];
            let mut red_sent: Sentinels = vec![red.sentinels(0).await, red.sentinels(1).await];
            for (i, op) in ops.iter().enumerate() {
                if let Op::Die = op {
                    let odd = mem_sent.pop().unwrap();
                    for (s, _) in &odd {
                        mem.hub().kick(s.id()).await.unwrap();
                    }
                    mem.die().await;
                    let dead = red_sent.pop().unwrap();
                    red.die().await;
                    red.graveyard.last_mut().unwrap().1.extend(dead);
                    let (h, b) = node().await;
                    red.hubs.push(h);
                    red.backends.push(b);
                    // The sweep ends the dead node's sessions once its lease is over.
                    let want = mem.observe_rooms().await;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                    loop {
                        let got = red.observe_rooms().await;
                        if got == want {
                            break;
                        }
                        if tokio::time::Instant::now() > deadline {
                            prop_assert_eq!(&got, &want, "after the death at op {}", i);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    mem_sent.push(mem.sentinels(1).await);
                    red_sent.push(red.sentinels(1).await);
                    barrier(&mut mem_sent).await;
                    barrier(&mut red_sent).await;
                    prop_assert_eq!(
                        mem.observe_outcome(),
                        red.observe_outcome(),
                        "what the survivors were told after the death at op {}", i
                    );
                    continue;
                }
                let a = mem.apply(op).await;
                let b = red.apply(op).await;
                prop_assert_eq!(&a, &b, "result of op {} {:?}", i, op);
                barrier(&mut mem_sent).await;
                barrier(&mut red_sent).await;
                let a = mem.observe().await;
                let b = red.observe().await;
                prop_assert_eq!(a, b, "state and notices after op {} {:?}", i, op);
            }
            red.hub().backend().check_invariants().await.map_err(TestCaseError::fail)?;
            Ok(())
        })?;
    });
}
