//! Several nodes on one Redis: hand-over across nodes, resume on another node, Redis down (fast
//! typed failure), Redis restarted empty (order kept, versions increase), and a node process
//! killed with SIGKILL (its rooms released after its lease). Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{PATIENCE, RedisServer, SETTLE, drain, expect, line, node, released, user};
use occupancy_core::{Error, Hub, Meta, NoticeKind};
use serde_json::json;

const ROOM: &str = "doc-{1}";

async fn holders(hub: &Hub) -> Vec<String> {
    line(hub, ROOM).await
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holder on node A, waiter on node B: B's session is told who holds, A's holder hears the line
/// grew, and when A's holder leaves, B's waiter is released exactly once; a watcher on a third
/// node follows along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_across_nodes() {
    let server = RedisServer::start();
    let a = node(&server.url(), Duration::from_secs(5)).await;
    let b = node(&server.url(), Duration::from_secs(5)).await;
    let c = node(&server.url(), Duration::from_secs(5)).await;
    let (alice, mut an) = user(&a, "alice").await;
    let (bob, mut bn) = user(&b, "bob").await;
    let (watcher, mut wn) = user(&c, "watcher").await;
    watcher.watch(ROOM).await.unwrap();
    assert!(alice.join(ROOM, None).await.unwrap().holding);
    let j = bob.join(ROOM, None).await.unwrap();
    assert_eq!((j.position, j.holder.id.to_string()), (1, "alice".into()));
    let n = expect(&mut bn, "occupied", |n| {
        matches!(n.kind, NoticeKind::Occupied { .. })
    })
    .await;
    let NoticeKind::Occupied { holder, .. } = n.kind else {
        unreachable!()
    };
    assert_eq!(holder.meta.get("name"), Some(&json!("alice")));
    let p = expect(
        &mut an,
        "presence on A",
        |n| matches!(&n.kind, NoticeKind::Presence(p) if p.body.waiting == 1),
    )
    .await;
    assert_eq!(p.version(), j.version);
    expect(
        &mut wn,
        "watcher sees bob",
        |n| matches!(&n.kind, NoticeKind::Presence(p) if p.body.waiting == 1),
    )
    .await;
    drain(&mut bn).await;

    alice.leave(ROOM).await.unwrap();
    let r = expect(&mut bn, "released on B", released).await;
    assert!(r.version() > j.version);
    assert_eq!(
        drain(&mut bn).await.iter().filter(|n| released(n)).count(),
        0
    );
    assert_eq!(holders(&a).await, ["bob"]);
    expect(&mut wn, "watcher sees bob hold", |n| {
        matches!(&n.kind, NoticeKind::Presence(p) if p.body.holder.as_ref().is_some_and(|h| h.id.to_string() == "bob"))
    })
    .await;
    // Two tabs of one user on two nodes are one occupant.
    let (bob2, _b2n) = user(&a, "bob").await;
    assert!(bob2.join(ROOM, None).await.unwrap().holding);
    bob.leave(ROOM).await.unwrap();
    assert_eq!(holders(&b).await, ["bob"]);
    a.backend().check_invariants().await.unwrap();
}

/// A page reload that lands on another node keeps its place; resuming a live session from
/// another node ends the old connection with `SessionReplaced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node() {
    let server = RedisServer::start();
    let a = node(&server.url(), Duration::from_secs(30)).await;
    let b = node(&server.url(), Duration::from_secs(30)).await;
    let (alice, an) = user(&a, "alice").await;
    let (bob, _bn) = user(&a, "bob").await;
    alice.join(ROOM, None).await.unwrap();
    bob.join(ROOM, None).await.unwrap();
    let token = bob.resume_token();
    drop((bob, _bn));
    eventually("bob in grace", || async {
        a.stats().await.unwrap().sessions_in_grace == 1
    })
    .await;
    let (bob, mut bn, resumed) = b.resume(token).await.unwrap();
    assert!(!resumed.was_live);
    assert_eq!(resumed.rooms[0].position, 1);
    expect(&mut bn, "presence after resume", |n| {
        matches!(n.kind, NoticeKind::Presence(_))
    })
    .await;
    // B now owns bob: a hand-over reaches him there.
    drop(an);
    alice.close().await;
    expect(&mut bn, "released on B", released).await;
    assert_eq!(a.stats().await.unwrap().sessions_in_grace, 0);

    // Live resume from the other node replaces the connection.
    let (carol, mut cn) = user(&a, "carol").await;
    let joined = carol.join(ROOM, None).await.unwrap();
    let (_carol2, _c2n, r) = b.resume(carol.resume_token()).await.unwrap();
    assert!(r.was_live);
    // Node A ends the old connection when the `s` message published by B's resume script reaches
    // it over pub/sub: after `b.resume` returns, not before. Until then the old stream can still
    // yield what was sent to it before the replacement (her `occupied` from the join; under load
    // the first `recv` returned it). It must end, with `SessionReplaced`, and carry nothing newer.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Some(n) = tokio::time::timeout_at(deadline, cn.recv())
        .await
        .expect("the replaced connection's notices end")
    {
        assert!(
            n.version() <= joined.version,
            "only notices from before the replacement: {n:?}"
        );
    }
    assert_eq!(cn.close_reason(), Some(Error::SessionReplaced));
    assert_eq!(holders(&b).await, ["bob", "carol"]);
    drop(bob);
}

/// Redis down: every call fails with the typed `Unavailable` error, without hanging or
/// panicking; Redis back (restarted empty): the line is written back in its old order
/// (nobody jumps the queue, nobody is told they were released), versions keep increasing, and
/// hand-overs work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_restarted_empty() {
    let mut server = RedisServer::start();
    let a = node(&server.url(), Duration::from_secs(30)).await;
    let b = node(&server.url(), Duration::from_secs(30)).await;
    let (alice, mut an) = user(&a, "alice").await;
    let (bob, mut bn) = user(&b, "bob").await;
    let (carol, mut cn) = user(&a, "carol").await;
    alice.join(ROOM, None).await.unwrap();
    bob.join(ROOM, None).await.unwrap();
    let before = carol.join(ROOM, None).await.unwrap().version;
    drain(&mut an).await;
    drain(&mut bn).await;
    drain(&mut cn).await;

    server.kill();
    let guard = Duration::from_secs(10);
    let r = tokio::time::timeout(guard, bob.join("other", None))
        .await
        .expect("a call while Redis is down does not hang");
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    let r = tokio::time::timeout(guard, a.connect(None, Meta::empty()))
        .await
        .expect("no hang");
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    let r = tokio::time::timeout(guard, a.room(ROOM))
        .await
        .expect("no hang");
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");

    server.restart();
    eventually("the line is back", || async {
        matches!(a.occupants(ROOM).await, Ok(p) if p.len() == 3)
    })
    .await;
    // Placeholders of the other node are confirmed by its own restore.
    eventually("both nodes restored", || async {
        b.backend().check_invariants().await.is_ok()
    })
    .await;
    assert_eq!(holders(&b).await, ["alice", "bob", "carol"]);
    let after = a.version(ROOM).await.unwrap();
    assert!(
        after > before,
        "versions keep increasing: {after} after {before}"
    );
    for n in [&mut an, &mut bn, &mut cn] {
        let got = drain(n).await;
        assert!(!got.iter().any(released), "nobody is released: {got:?}");
        assert!(got.iter().all(|n| n.version() > before));
    }
    assert_eq!(a.stats().await.unwrap().sessions, 3);

    alice.leave(ROOM).await.unwrap();
    expect(&mut bn, "released after the restart", released).await;
    assert_eq!(holders(&a).await, ["bob", "carol"]);
}

/// The node process of this test (see `node_death_releases_after_lease`): holds ROOM as
/// "alice" and prints READY; it never exits on its own.
#[test]
fn helper_node_process() {
    let Ok(url) = std::env::var("OCCUPANCY_TEST_NODE_URL") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = node(&url, Duration::from_secs(60)).await;
        let (alice, _an) = user(&hub, "alice").await;
        assert!(alice.join(ROOM, None).await.unwrap().holding);
        println!("READY");
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(alice);
    });
}

/// A node killed with SIGKILL (holder on it, waiter here): after its lease (1 s in tests) a
/// survivor sweeps its sessions and the waiter is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_death_releases_after_lease() {
    let server = RedisServer::start();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_node_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OCCUPANCY_TEST_NODE_URL", server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("READY"))
    });
    let ready = tokio::time::timeout(PATIENCE, ready).await;
    if !matches!(ready, Ok(Ok(true))) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the node process did not get ready");
    }

    let here = node(&server.url(), Duration::from_secs(60)).await;
    let (bob, mut bn) = user(&here, "bob").await;
    assert_eq!(bob.join(ROOM, None).await.unwrap().position, 1);
    child.kill().unwrap(); // SIGKILL: no goodbye
    child.wait().unwrap();
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        holders(&here).await,
        ["alice", "bob"],
        "held until the lease ends"
    );
    expect(&mut bn, "released after the dead node's lease", released).await;
    assert_eq!(holders(&here).await, ["bob"]);
    let stats = here.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.occupants), (1, 1));
    here.backend().check_invariants().await.unwrap();
}
