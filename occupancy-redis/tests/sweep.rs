//! A dead node's sessions are swept in bounded chunks with the removals merged per room: a long
//! line of a dead node's sessions around live ones, and a dead node's sessions spread over many
//! rooms. In both, each live waiter is released once and every live member is told its final
//! place. How soon after the lease is measured by `examples/sweep.rs` (lease + 0.3–0.7 s there);
//! here the bound is only generous (5 leases: this machine is shared, and a test asserts no
//! speed), and the delay is printed.
//!
//! The dead node is a `RedisBackend` used without a Hub (its sessions made straight through the
//! `Backend` trait) and then dropped: its lease task stops, nothing is cleaned up, as after a
//! `kill -9` (`multi_node.rs` kills a real process).

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, line, raw_node, raw_session, test_config, user};
use occupancy_core::{Backend, Hub, Notice, NoticeKind, Notices};
use occupancy_redis::RedisBackend;

const PATIENCE: Duration = Duration::from_secs(20);
const LEASE: Duration = Duration::from_millis(1000);
const ROOM: &str = "line";

async fn hub(url: &str) -> Hub {
    let backend = RedisBackend::connect(test_config(url)).await.unwrap();
    Hub::builder()
        .backend(backend)
        .grace(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Waits for a `released` of `room`; returns when it came.
async fn released(n: &mut Notices, room: &str) -> Instant {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, n.recv()).await {
            Ok(Some(x))
                if matches!(x.kind, NoticeKind::Released { .. }) && x.room.as_str() == room =>
            {
                return Instant::now();
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("notices ended while waiting for released in {room}"),
            Err(_) => panic!("timed out waiting for released in {room}"),
        }
    }
}

/// Everything queued now, after a pause.
async fn drain(n: &mut Notices) -> Vec<Notice> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::iter::from_fn(|| n.try_recv()).collect()
}

/// The place the last presence of `room` told.
fn last_place(notices: &[Notice], room: &str) -> Option<u32> {
    notices.iter().rev().find_map(|n| match &n.kind {
        NoticeKind::Presence(p) if n.room.as_str() == room => p.position,
        _ => None,
    })
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many sessions of the dead node stand in the long line: `OCCUPANCY_SWEEP_LINE` (default
/// 1,000). The line is built through the scripts, one join at a time, and every join rewrites
/// and every node that follows the room decodes the whole line: building it costs O(n²) (about
/// 10 s at 1,000 in a debug build, 40 s at 2,000). The sweep itself is linear; the `sweep`
/// example measures it at 10,000 on a line written straight into Redis.
fn line_length() -> usize {
    std::env::var("OCCUPANCY_SWEEP_LINE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .max(8)
}

/// n sessions of a node that dies stand in one line (`line_length`): n/2 in front of a live
/// waiter, n/4 behind it, then a user with a tab on each node, n/4 more, then a second live
/// member. After the dead node's lease the waiter is released once (soon after the lease), the user keeps its occupant through its live tab, and each live
/// session's last presence tells its final place; the line, the counters and the invariants are
/// right. The sweep takes several calls (a call takes at most a few hundred sessions) and
/// rewrites the line once (it is longer than a call's "small room").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_with_a_long_line_is_swept_in_chunks() {
    let n = line_length();
    let server = RedisServer::start();
    let live = hub(&server.url()).await;
    let (dead, _sink) = raw_node(&server.url()).await;
    let mut next = 0x00de_0000_0000_0000u64;
    let mut dead_joins = |count: usize| {
        let dead = dead.clone();
        let first = next;
        next += count as u64;
        async move {
            for i in 0..count as u64 {
                let s = raw_session(&dead, first + i, None).await;
                dead.join(s, ROOM, None).await.unwrap();
            }
        }
    };
    let (front, middle) = (n / 2, n / 4);
    let back = n - front - middle - 1;
    dead_joins(front).await;
    let (waiter, mut wn) = user(&live, "waiter").await;
    assert_eq!(
        waiter.join(ROOM, None).await.unwrap().position as usize,
        front
    );
    dead_joins(middle).await;
    let tab = raw_session(&dead, 0x7ab, Some("tabs")).await;
    dead.join(tab, ROOM, None).await.unwrap();
    let (tabs, mut tn) = user(&live, "tabs").await;
    assert_eq!(
        tabs.join(ROOM, None).await.unwrap().position as usize,
        front + 1 + middle
    );
    dead_joins(back).await;
    let (last, mut ln) = user(&live, "last").await;
    assert_eq!(
        last.join(ROOM, None).await.unwrap().position as usize,
        n + 1
    );
    drain(&mut wn).await;

    let died = Instant::now();
    drop(dead);
    let at = released(&mut wn, ROOM).await;
    let delay = at - died;
    eprintln!("released {delay:?} after the node died (lease {LEASE:?})");
    assert!(
        delay < LEASE * 5,
        "released {delay:?} after the node died (lease {LEASE:?})"
    );
    // The session counter drops as the sessions are taken; the rooms change after.
    eventually("the sweep is over", || async {
        let s = live.stats().await.unwrap();
        (s.sessions, s.occupants, s.rooms) == (3, 3, 1)
    })
    .await;
    assert_eq!(line(&live, ROOM).await, ["waiter", "tabs", "last"]);
    let w = drain(&mut wn).await;
    assert!(
        !w.iter()
            .any(|n| matches!(n.kind, NoticeKind::Released { .. })),
        "released once: {w:?}"
    );
    let t = drain(&mut tn).await;
    let l = drain(&mut ln).await;
    assert_eq!(last_place(&t, ROOM), Some(1), "tabs told its final place");
    assert_eq!(last_place(&l, ROOM), Some(2), "last told its final place");
    // Versions only go up, for each of them.
    for n in [&t, &l] {
        let v: Vec<u64> = n.iter().map(Notice::version).collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "{v:?}");
    }
    live.backend().check_invariants().await.unwrap();
}

/// A dead node's 1,200 sessions spread over 1,000 rooms (200 of them also in a second room, some
/// watching a room), with a live waiter behind the dead holder of 20 rooms, on two surviving nodes
/// that both sweep: each waiter is released once, soon after the lease;
/// the rooms nobody else was in are gone; watches are dropped; the counters and the invariants
/// are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_spread_over_many_rooms_is_swept_in_chunks() {
    let server = RedisServer::start();
    let one = hub(&server.url()).await;
    let two = hub(&server.url()).await;
    let (dead, _sink) = raw_node(&server.url()).await;
    for i in 0..1200u64 {
        let s = raw_session(&dead, 0x00d0_0000_0000_0000 + i, None).await;
        dead.join(s, &format!("room-{}", i % 1000), None)
            .await
            .unwrap();
        if i % 6 == 0 {
            dead.join(s, &format!("room-{}", (i + 1) % 1000), None)
                .await
                .unwrap();
        }
        if i % 50 == 0 {
            dead.watch(s, "watched").await.unwrap();
        }
    }
    let (watcher, _wn) = user(&one, "reader").await;
    watcher.watch("watched").await.unwrap();
    let mut waiters = Vec::new();
    for w in 0..20usize {
        let room = format!("room-{}", 7 + w * 49);
        let hub = if w % 2 == 0 { &one } else { &two };
        let (s, n) = user(hub, &format!("waiter-{w}")).await;
        assert!(s.join(&room, None).await.unwrap().position >= 1);
        waiters.push((s, n, room));
    }
    for (_, n, _) in &mut waiters {
        drain(n).await;
    }

    let died = Instant::now();
    drop(dead);
    for (_, n, room) in &mut waiters {
        let delay = released(n, room).await - died;
        eprintln!("{room}: released {delay:?} after the node died (lease {LEASE:?})");
        assert!(
            delay < LEASE * 5,
            "{room}: released {delay:?} after the node died (lease {LEASE:?})"
        );
    }
    // The session counter drops as the sessions are taken; the rooms change after.
    eventually("the sweep is over", || async {
        let s = two.stats().await.unwrap();
        (s.rooms, s.occupants, s.watchers, s.sessions) == (21, 20, 1, 21)
    })
    .await;
    for (_, n, room) in &mut waiters {
        let got = drain(n).await;
        assert!(
            !got.iter()
                .any(|n| matches!(n.kind, NoticeKind::Released { .. })),
            "{room}: released once: {got:?}"
        );
        assert_eq!(line(&one, room).await.len(), 1);
    }
    one.backend().check_invariants().await.unwrap();
}
