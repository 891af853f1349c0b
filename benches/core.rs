//! Criterion benches of the bare state machine (no runtime): join, leave, a join+leave pair,
//! disconnect while the machine holds 1k / 100k / 1M other rooms (must not grow with them: the
//! article's server scans every room), and a hand-over in a room with 10 / 1k / 100k waiting
//! (linear in the line: everyone's place moves and each waiting session is told).
//!
//! Run: `cargo bench --bench core` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use occupancy::{Config, Limits, Machine, Meta, ResumeToken, SessionId};

fn machine(grace: Duration) -> Machine {
    Machine::new(Config {
        limits: Limits {
            max_rooms_per_session: 1_000_000,
            max_occupants_per_room: 1_000_000,
            ..Limits::default()
        },
        grace,
        ..Config::default()
    })
    .unwrap()
}

fn connect(m: &mut Machine, id: u64) -> SessionId {
    let s = SessionId(id);
    m.connect(s, None, Meta::empty(), ResumeToken(id as u128))
        .unwrap();
    s
}

fn join_leave(c: &mut Criterion) {
    let mut g = c.benchmark_group("room");
    // A small room: one holder, the benched session joins as second and leaves.
    g.bench_function("join+leave pair (room of 1)", |b| {
        let mut m = machine(Duration::ZERO);
        let holder = connect(&mut m, 1);
        let s = connect(&mut m, 2);
        m.join(holder, "document-1", None).unwrap();
        b.iter(|| {
            m.join(s, black_box("document-1"), None).unwrap();
            m.leave(s, black_box("document-1")).unwrap();
            m.drain_notices().for_each(drop);
        });
    });
    g.bench_function("join (room of 1)", |b| {
        b.iter_custom(|iters| {
            let mut m = machine(Duration::ZERO);
            let holder = connect(&mut m, u64::MAX);
            let names: Vec<String> = (0..iters).map(|i| format!("doc-{i}")).collect();
            let sessions: Vec<_> = (0..iters).map(|i| connect(&mut m, i)).collect();
            for n in &names {
                m.join(holder, n, None).unwrap();
            }
            m.drain_notices().for_each(drop);
            let t = Instant::now();
            for (s, n) in sessions.iter().zip(&names) {
                black_box(m.join(*s, n, None).unwrap());
            }
            m.drain_notices().for_each(drop);
            t.elapsed()
        });
    });
    g.bench_function("leave (room of 2)", |b| {
        b.iter_custom(|iters| {
            let mut m = machine(Duration::ZERO);
            let holder = connect(&mut m, u64::MAX);
            let names: Vec<String> = (0..iters).map(|i| format!("doc-{i}")).collect();
            let sessions: Vec<_> = (0..iters).map(|i| connect(&mut m, i)).collect();
            for (s, n) in sessions.iter().zip(&names) {
                m.join(holder, n, None).unwrap();
                m.join(*s, n, None).unwrap();
            }
            m.drain_notices().for_each(drop);
            let t = Instant::now();
            for (s, n) in sessions.iter().zip(&names) {
                black_box(m.leave(*s, n).unwrap());
            }
            m.drain_notices().for_each(drop);
            t.elapsed()
        });
    });
    g.finish();
}

fn disconnect(c: &mut Criterion) {
    let mut g = c.benchmark_group("disconnect holding 1 room, other rooms");
    g.sample_size(30);
    for other in [1_000usize, 100_000, 1_000_000] {
        let mut m = machine(Duration::ZERO);
        // Fill: 1,000 sessions each holding other/1000 rooms.
        for f in 0..1_000u64 {
            let s = connect(&mut m, 1 << 40 | f);
            for r in 0..other as u64 / 1_000 {
                m.join(s, &format!("other-{f}-{r}"), None).unwrap();
            }
        }
        let waiter = connect(&mut m, 1 << 41);
        m.join(waiter, "document-1", None).unwrap();
        m.drain_notices().for_each(drop);
        assert_eq!(m.stats().rooms, other + 1);
        let mut next = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(other), &other, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let s = connect(&mut m, next);
                    m.join(s, "document-1", None).unwrap();
                    m.drain_notices().for_each(drop);
                    let t = Instant::now();
                    m.disconnect(s, Instant::now()).unwrap();
                    m.drain_notices().for_each(drop);
                    total += t.elapsed();
                }
                total
            });
        });
    }
    g.finish();
}

fn handover(c: &mut Criterion) {
    let mut g = c.benchmark_group("hand-over, waiting");
    g.sample_size(20);
    for waiting in [10usize, 1_000, 100_000] {
        let mut m = machine(Duration::ZERO);
        let sessions: Vec<_> = (0..=waiting as u64).map(|i| connect(&mut m, i)).collect();
        for &s in &sessions {
            m.join(s, "hot", None).unwrap();
        }
        m.drain_notices().for_each(drop);
        g.bench_with_input(BenchmarkId::from_parameter(waiting), &waiting, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // The holder leaves (timed: the hand-over and every notice it makes), then
                    // rejoins at the back (untimed), so the line keeps its length.
                    let holder = m.room("hot").unwrap().occupants[0].sessions[0];
                    let t = Instant::now();
                    m.leave(holder, "hot").unwrap();
                    black_box(m.drain_notices().count());
                    total += t.elapsed();
                    m.join(holder, "hot", None).unwrap();
                    m.drain_notices().for_each(drop);
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group!(benches, join_leave, disconnect, handover);
criterion_main!(benches);
