//! Differential property test: the same random operations through a Hub on [`MemoryBackend`] and
//! a Hub on [`RedisBackend`] (one node), comparing after every operation the results, the
//! holders and positions of every room, the counts, and every notice each session received
//! (versions aside: the memory backend counts, Redis uses its clock; `since` / `held_since` aside
//! too, except whether a presence has `held_since`). Cases: 64 by default,
//! `OCCUPANCY_PROPTEST_CASES` to raise it.
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
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SLOTS;
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

/// One side of the comparison: a Hub and its sessions by slot.
struct Side {
    hub: Hub,
    slots: Vec<Option<(Session, Notices)>>,
    /// Tokens of disconnected slots (for resume).
    tokens: Vec<Option<occupancy_core::ResumeToken>>,
    ids: HashMap<SessionId, usize>,
}

impl Side {
    fn new(hub: Hub) -> Side {
        Side {
            hub,
            slots: (0..SLOTS).map(|_| None).collect(),
            tokens: vec![None; SLOTS],
            ids: HashMap::new(),
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
                    .hub
                    .connect(PRINCIPALS[p].map(String::from), meta(s))
                    .await
                    .unwrap();
                self.ids.insert(session.id(), s);
                self.tokens[s] = None;
                self.slots[s] = Some((session, notices));
                "connected".into()
            }
            Op::Release(r) => match self.hub.release(ROOMS[r]).await {
                Ok(ForcedRelease::HandedOver { to, .. }) => format!("handed {}", self.person(&to)),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("{e:?}"),
            },
            Op::Resume(s) => {
                let Some(token) = self.tokens[s].take() else {
                    return "no token".into();
                };
                match self.hub.resume(token).await {
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
        let mut out = String::new();
        for room in ROOMS {
            let occ: Vec<_> = self
                .hub
                .occupants(room)
                .await
                .unwrap()
                .iter()
                .map(|p| self.person(p))
                .collect();
            out.push_str(&format!("{room}: {occ:?}\n"));
        }
        out.push_str(&format!("{:?}\n", self.hub.stats().await.unwrap()));
        for s in 0..SLOTS {
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
            red.hub.backend().check_invariants().await.map_err(TestCaseError::fail)?;
            Ok(())
        })?;
    });
}
