//! Criterion bench of the runtime's overhead: a join+leave pair through the [`Hub`] (memory
//! backend, notices delivered into bounded channels and read back) against the same pair on the
//! bare state machine, from 1 task and from 2 tasks at once.
//!
//! The room has a holder whose receiver was dropped (its notices are still computed, then
//! dropped); each benched session joins as second in line, leaves, and reads the notices it got.
//! On the bare machine the "2 tasks" case is two threads sharing the machine behind a mutex, the
//! way the memory backend holds it. Each measurement is the wall time per pair (for 2 tasks: the
//! time for both to finish divided by the total number of pairs, i.e. inverse throughput).
//!
//! "distinct rooms": 1 and 2 tasks, each in its own room, on the same 2-worker runtime — the
//! ratio of their throughputs is how well independent rooms proceed in parallel.
//!
//! Run: `cargo bench --bench hub` (add `-- --quick` for a fast pass). The overhead ratio is
//! Hub / bare for the same number of tasks.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use occupancy::{Config, Hub, Machine, Meta, ResumeToken, SessionId};

const ROOM: &str = "document-1";

fn machine() -> Machine {
    Machine::new({
        let mut c = Config::default();
        c.grace = Duration::ZERO;
        c
    })
    .unwrap()
}

fn bare_pair(m: &mut Machine, s: SessionId) {
    m.join(s, black_box(ROOM), None).unwrap();
    m.leave(s, black_box(ROOM)).unwrap();
    m.drain_notices().for_each(drop);
}

fn bare(c: &mut Criterion) {
    let mut g = c.benchmark_group("join+leave pair");
    g.bench_function("bare machine, 1 task", |b| {
        let mut m = machine();
        let holder = SessionId(1);
        let s = SessionId(2);
        m.connect(holder, None, Meta::empty(), ResumeToken(1))
            .unwrap();
        m.connect(s, None, Meta::empty(), ResumeToken(2)).unwrap();
        m.join(holder, ROOM, None).unwrap();
        m.drain_notices().for_each(drop);
        b.iter(|| bare_pair(&mut m, s));
    });
    g.bench_function("bare machine, 2 tasks", |b| {
        let m = Arc::new(Mutex::new(machine()));
        {
            let mut m = m.lock().unwrap();
            for id in 1..=3 {
                m.connect(SessionId(id), None, Meta::empty(), ResumeToken(id.into()))
                    .unwrap();
            }
            m.join(SessionId(1), ROOM, None).unwrap();
            m.drain_notices().for_each(drop);
        }
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..2u64 {
                    let m = &m;
                    let n = iters.div_ceil(2);
                    scope.spawn(move || {
                        let s = SessionId(2 + t);
                        for _ in 0..n {
                            bare_pair(&mut m.lock().unwrap(), s);
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    // The ceiling of any parallel speed-up on this machine: two threads, each with a machine of
    // its own (nothing shared). The Hub's "distinct rooms" ratio is read against this one's.
    g.bench_function("bare machines, 2 threads, one machine each", |b| {
        let machines: Vec<_> = (0..2)
            .map(|_| {
                let mut m = machine();
                m.connect(SessionId(1), None, Meta::empty(), ResumeToken(1))
                    .unwrap();
                m.connect(SessionId(2), None, Meta::empty(), ResumeToken(2))
                    .unwrap();
                m.join(SessionId(1), ROOM, None).unwrap();
                m.drain_notices().for_each(drop);
                Mutex::new(m)
            })
            .collect();
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for m in &machines {
                    let n = iters.div_ceil(2);
                    scope.spawn(move || {
                        let mut m = m.lock().unwrap();
                        for _ in 0..n {
                            bare_pair(&mut m, SessionId(2));
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
    g.finish();
}

async fn hub_pairs(session: &occupancy::Session, notices: &mut occupancy::Notices, n: u64) {
    hub_pairs_in(ROOM, session, notices, n).await
}

async fn hub_pairs_in(
    room: &str,
    session: &occupancy::Session,
    notices: &mut occupancy::Notices,
    n: u64,
) {
    for _ in 0..n {
        session.join(black_box(room), None).await.unwrap();
        session.leave(black_box(room)).await.unwrap();
        while let Some(x) = notices.try_recv() {
            black_box(x);
        }
    }
}

/// A task's room, session and notices.
type Seat = Arc<tokio::sync::Mutex<(String, occupancy::Session, occupancy::Notices)>>;

/// One task per seat: `iters` join+leave pairs split over the tasks, run at once; the wall time
/// for all of them.
async fn pairs_in_parallel(seats: &[Seat], iters: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = seats
        .iter()
        .map(|seat| {
            let seat = seat.clone();
            let n = iters.div_ceil(seats.len() as u64);
            tokio::spawn(async move {
                let mut guard = seat.lock().await;
                let (room, s, notices) = &mut *guard;
                hub_pairs_in(room, s, notices, n).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// The multi-thread runtime of the 2-task cases.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The shared room, with a holder that stays; `shards`: the Hub's (None: its default, one).
async fn setup_hub_with(shards: Option<usize>) -> Hub {
    // A large buffer: with 2 tasks, a session descheduled by the OS for a moment while it stands
    // in the room would otherwise be closed as a slow consumer by the other task's churn.
    let mut builder = Hub::builder().grace(Duration::ZERO).notice_buffer(1 << 16);
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    let hub = builder.build().unwrap();
    let (holder, holder_notices) = hub.connect(None, Meta::empty()).await.unwrap();
    drop(holder_notices);
    holder.join(ROOM, None).await.unwrap();
    std::mem::forget(holder); // stays connected for the whole bench
    hub
}

async fn setup_hub() -> Hub {
    setup_hub_with(None).await
}

fn hub(c: &mut Criterion) {
    let mut g = c.benchmark_group("join+leave pair");
    g.bench_function("hub, 1 task", |b| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_hub, session, notices) = rt.block_on(async {
            let hub = setup_hub().await;
            let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
            (hub, s, n)
        });
        let mut notices = notices;
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                hub_pairs(&session, &mut notices, iters).await;
                start.elapsed()
            })
        });
    });
    for (name, shards) in [("hub, 2 tasks", None), ("hub, 2 tasks, 2 shards", Some(2))] {
        g.bench_function(name, |b| {
            let rt = two_workers();
            let (_hub, sessions) = rt.block_on(async {
                let hub = setup_hub_with(shards).await;
                let mut sessions = Vec::new();
                for _ in 0..2 {
                    sessions.push(hub.connect(None, Meta::empty()).await.unwrap());
                }
                (hub, sessions)
            });
            let sessions: Vec<_> = sessions
                .into_iter()
                .map(|(s, n)| Arc::new(tokio::sync::Mutex::new((ROOM.to_string(), s, n))))
                .collect();
            b.iter_custom(|iters| rt.block_on(pairs_in_parallel(&sessions, iters)));
        });
    }
    // Independent rooms: each task has its own room (with its own holder). What the cost rules
    // ask of the runtime: unrelated rooms proceed in parallel. Both cases run on the same
    // 2-worker runtime, so the ratio of their throughputs is the parallel speed-up.
    // One shard is the Hub's default (one machine); 2 shards is `HubBuilder::shards(2)` (built
    // here by hand to place the rooms in different shards).
    for (tasks, shards) in [(1usize, 1usize), (2, 1), (1, 2), (2, 2)] {
        let name = match shards {
            1 => format!("hub, {tasks} task(s), distinct rooms, 2 workers, 1 shard"),
            n => format!("hub, {tasks} task(s), distinct rooms, 2 workers, {n} shards"),
        };
        g.bench_function(name, |b| {
            let rt = two_workers();
            let (_hub, sessions) = rt.block_on(async {
                let builder = Hub::builder().grace(Duration::ZERO).notice_buffer(1 << 16);
                let sharded = (shards > 1).then(|| occupancy::ShardedBackend::new(shards).unwrap());
                let hub = match &sharded {
                    None => builder.shards(1).build().unwrap(),
                    Some(b) => builder.backend(b.clone()).build().unwrap(),
                };
                // With shards, each task's room in a shard of its own (the hash is keyed at
                // random: look for such names).
                let mut rooms: Vec<String> = Vec::new();
                for i in 0.. {
                    let room = format!("document-{i}");
                    let shard = sharded.as_ref().map(|b| b.shard_of(&room));
                    if shard.is_none()
                        || !rooms
                            .iter()
                            .any(|r| sharded.as_ref().map(|b| b.shard_of(r)) == shard)
                    {
                        rooms.push(room);
                    }
                    if rooms.len() == tasks {
                        break;
                    }
                }
                let mut sessions = Vec::new();
                for room in rooms {
                    let (holder, holder_notices) = hub.connect(None, Meta::empty()).await.unwrap();
                    drop(holder_notices);
                    holder.join(&room, None).await.unwrap();
                    std::mem::forget(holder);
                    let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
                    sessions.push(Arc::new(tokio::sync::Mutex::new((room, s, n))));
                }
                (hub, sessions)
            });
            b.iter_custom(|iters| rt.block_on(pairs_in_parallel(&sessions, iters)));
        });
    }
    g.finish();
}

criterion_group!(benches, bare, hub);
criterion_main!(benches);
