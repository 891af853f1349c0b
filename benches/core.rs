//! Criterion benches of the bare state machine (no runtime): join, leave, a join+leave pair,
//! disconnect while the machine holds 1k / 100k / 1M other rooms (must not grow with them: the
//! article's server scans every room), and a hand-over in a room with 10 / 1k / 100k waiting
//! (linear in the line: everyone's place moves and each waiting session is told).
//!
//! Crowded rooms (issue 12, DESIGN.md "Cost rules"): join+leave at the back of a line of 10 / 1k /
//! 10k / 100k (must stay flat), a second tab joining an occupant at place 5,000, a take over in a
//! line of 10k, and the grace of 1k / 10k dropped sessions of one room ending in one
//! `handle_timeout` (one batch: linear in the sessions, each remaining member told once). The
//! number of notices each produces is printed once beside the timings.
//!
//! Run: `cargo bench --bench core` (add `-- --quick` for a fast pass; a group by name:
//! `cargo bench --bench core -- line`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use occupancy::{Config, Limits, Machine, Meta, ResumeToken, SessionId};

fn machine(grace: Duration) -> Machine {
    Machine::new({
        let mut c = Config::default();
        c.limits = {
            let mut l = Limits::default();
            l.max_rooms_per_session = 1_000_000;
            l.max_occupants_per_room = 1_000_000;
            l
        };
        c.grace = grace;
        c
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

fn user(m: &mut Machine, id: u64, principal: &str) -> SessionId {
    let s = SessionId(id);
    m.connect(s, Some(principal), Meta::empty(), ResumeToken(id as u128))
        .unwrap();
    s
}

/// A machine whose room "hot" has a line of `n` (sessions 0..n, anonymous).
fn line_of(n: usize, grace: Duration) -> Machine {
    let mut m = machine(grace);
    for i in 0..n as u64 {
        let s = connect(&mut m, i);
        m.join(s, "hot", None).unwrap();
    }
    m.drain_notices().for_each(drop);
    m
}

fn crowded(c: &mut Criterion) {
    let mut g = c.benchmark_group("line");
    for n in [10usize, 1_000, 10_000, 100_000] {
        // One more session joins at the back and leaves again: the first k are told the count
        // changed, nobody else (nobody's place moved).
        let mut m = line_of(n, Duration::ZERO);
        let s = connect(&mut m, 1 << 40);
        let mut notices = 0;
        g.bench_with_input(BenchmarkId::new("join+leave at the back", n), &n, |b, _| {
            b.iter(|| {
                m.join(s, black_box("hot"), None).unwrap();
                m.leave(s, black_box("hot")).unwrap();
                notices = m.drain_notices().count();
            });
        });
        eprintln!("line of {n}: join+leave at the back makes {notices} notices");
    }
    {
        // Users with one tab each; the user at place 5,000 opens a second tab (join) and closes
        // it (leave): only that tab is told anything.
        let mut m = machine(Duration::ZERO);
        for i in 0..10_000u64 {
            let s = user(&mut m, i, &format!("user-{i}"));
            m.join(s, "hot", None).unwrap();
        }
        m.drain_notices().for_each(drop);
        let tab = user(&mut m, 1 << 40, "user-5000");
        let mut notices = 0;
        g.bench_function(
            "second tab at place 5,000 joins+leaves (line of 10k)",
            |b| {
                b.iter(|| {
                    let j = m.join(tab, black_box("hot"), None).unwrap();
                    debug_assert_eq!(j.position, 5_000);
                    m.leave(tab, black_box("hot")).unwrap();
                    notices = m.drain_notices().count();
                });
            },
        );
        eprintln!("second tab at place 5,000: {notices} notices per join+leave");
    }
    {
        // The last in line takes the room over: everyone is told (the holder changed), the old
        // holder is displaced. The line keeps its length.
        let mut m = line_of(10_000, Duration::ZERO);
        let mut notices = 0;
        g.sample_size(30);
        g.bench_function("take over from the back (line of 10k)", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let last = m.room("hot").unwrap().occupants[9_999].sessions[0];
                    let t = Instant::now();
                    m.takeover(last, "hot").unwrap();
                    notices = black_box(m.drain_notices().count());
                    total += t.elapsed();
                }
                total
            });
        });
        eprintln!("take over in a line of 10k: {notices} notices");
    }
    g.finish();

    let mut g = c.benchmark_group("grace storm");
    g.sample_size(10);
    for n in [1_000usize, 10_000] {
        // n sessions of one room drop (the holder and everyone but the last), then their grace
        // ends in one handle_timeout. Timed: that call and its notices.
        let grace = Duration::from_secs(5);
        let mut notices = 0;
        g.bench_with_input(
            BenchmarkId::new("n dropped of n+1, grace ends in one handle_timeout", n),
            &n,
            |b, &n| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut m = line_of(n + 1, grace);
                        let now = Instant::now();
                        for i in 0..n as u64 {
                            m.disconnect(SessionId(i), now).unwrap();
                        }
                        let t = Instant::now();
                        let expired = m.handle_timeout(now + grace);
                        notices = black_box(m.drain_notices().count());
                        total += t.elapsed();
                        assert_eq!(expired, n);
                    }
                    total
                });
            },
        );
        eprintln!("grace storm of {n}: {notices} notices");
    }
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

/// A machine with one room, "hot": a holder and `waiting` behind it, in joining order.
fn hot_room(waiting: usize) -> (Machine, Vec<SessionId>) {
    let mut m = machine(Duration::ZERO);
    let line: Vec<_> = (0..=waiting as u64).map(|i| connect(&mut m, i)).collect();
    for &s in &line {
        m.join(s, "hot", None).unwrap();
    }
    m.drain_notices().for_each(drop);
    (m, line)
}

fn handover(c: &mut Criterion) {
    let mut g = c.benchmark_group("hand-over, waiting");
    g.sample_size(20);
    for waiting in [10usize, 1_000, 10_000, 100_000] {
        let (mut m, _) = hot_room(waiting);
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

/// The part of a hand-over a driver does under its state lock: the change alone, its notices left
/// in the outbox (they are made when taken, after the lock is released). The caches are not
/// warmed by a snapshot of the line between rounds, as they are not in a server.
fn handover_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("hand-over, change only, waiting");
    g.sample_size(20);
    for waiting in [10usize, 1_000, 10_000] {
        let (mut m, line) = hot_room(waiting);
        let mut line = std::collections::VecDeque::from(line);
        g.bench_with_input(BenchmarkId::from_parameter(waiting), &waiting, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let holder = line.pop_front().unwrap();
                    let t = Instant::now();
                    m.leave(holder, "hot").unwrap();
                    total += t.elapsed();
                    m.drain_notices().for_each(drop);
                    m.join(holder, "hot", None).unwrap();
                    m.drain_notices().for_each(drop);
                    line.push_back(holder);
                }
                total
            });
        });
    }
    g.finish();
}

/// `update` in a line of 10 and of 10,000: by the holder (everyone is told: the holder is in every
/// presence) and by the last in line (only the room's watchers are told: none here). Alternates
/// between two metadata values, so every call is a change; notices are taken (made) in the timed
/// part, as in `hand-over, waiting`.
fn update(c: &mut Criterion) {
    let mut g = c.benchmark_group("update, line of");
    g.sample_size(20);
    let metas = [
        Meta::from_value(serde_json::json!({ "status": "viewing" })).unwrap(),
        Meta::from_value(serde_json::json!({ "status": "editing" })).unwrap(),
    ];
    for n in [10usize, 10_000] {
        let (mut m, line) = hot_room(n - 1);
        for (who, s) in [("holder", line[0]), ("last", line[n - 1])] {
            let mut i = 0;
            let mut notices = 0;
            g.bench_with_input(BenchmarkId::new(who, n), &n, |b, _| {
                b.iter(|| {
                    i += 1;
                    m.update(s, black_box("hot"), metas[i % 2].clone()).unwrap();
                    notices = m.drain_notices().count();
                });
            });
            eprintln!("update by the {who} in a line of {n}: {notices} notices");
        }
    }
    g.finish();
}

/// Idle expiry on (`Config::idle_timeout`): what `active` costs (a field write for the holder,
/// a look-up for anyone else), what a join+leave at the back of the line costs with the idle
/// clock on (against the same pair in the `line` group, without it), and a forced release.
fn idle(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle on, line of");
    g.sample_size(20);
    let t0 = Instant::now();
    for n in [10usize, 10_000] {
        let mut m = Machine::new({
            let mut c = Config::default();
            c.limits.max_occupants_per_room = 1_000_000;
            c.grace = Duration::ZERO;
            c.idle_timeout = Some(Duration::from_secs(300));
            c
        })
        .unwrap();
        m.advance(t0);
        let line: Vec<SessionId> = (0..n as u64)
            .map(|i| {
                let s = connect(&mut m, i);
                m.join(s, "hot", None).unwrap();
                s
            })
            .collect();
        m.drain_notices().for_each(drop);
        for (who, s) in [("holder", line[0]), ("last", line[n - 1])] {
            g.bench_with_input(
                BenchmarkId::new(format!("active by the {who}"), n),
                &n,
                |b, _| {
                    b.iter(|| m.active(s, black_box("hot")).unwrap());
                },
            );
        }
        let s = connect(&mut m, 1 << 40);
        g.bench_with_input(BenchmarkId::new("join+leave at the back", n), &n, |b, _| {
            b.iter(|| {
                m.join(s, black_box("hot"), None).unwrap();
                m.leave(s, black_box("hot")).unwrap();
                m.drain_notices().for_each(drop);
            });
        });
        g.bench_with_input(BenchmarkId::new("forced release", n), &n, |b, _| {
            b.iter(|| {
                m.release(black_box("hot")).unwrap();
                m.drain_notices().for_each(drop);
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    join_leave,
    crowded,
    disconnect,
    handover,
    handover_change,
    update,
    idle
);
criterion_main!(benches);
