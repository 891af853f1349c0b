//! Redis restarted empty while the node keeps serving (found by the chaos soak, issue 18): the
//! node writes its sessions back first, then its rooms, one script each. A call that runs in
//! between — after its session was written back, before its room was — must neither be undone
//! by the room's write-back (a `leave` there used to be: the session stood in the line again,
//! for good, its node no longer knowing it) nor be refused with a wrong answer (a `takeover`
//! used to get `not_in_room`; now `unavailable`, try again).
//!
//! The window is made wide with a few hundred other sessions and rooms to write back; the calls
//! are made as soon as every session is back (the shared `sessions` counter says so).

mod common;

use std::time::Duration;

use common::{PATIENCE, RedisServer, line, node, test_config, user};
use occupancy_core::{Error, Hub};
use occupancy_redis::RedisBackend;

const ROOM: &str = "doc-{race}";
const FILLERS: usize = 300;
const GRACE: Duration = Duration::from_secs(30);

/// Alice, bob and carol in ROOM (in that order) and a few hundred fillers, each in a room of
/// its own, on one node; then Redis restarts empty. Returns once every session is written back
/// (the rooms are being written).
async fn restarted_mid_write_back() -> (
    RedisServer,
    Hub,
    Vec<occupancy_core::Session>,
    Vec<impl Sized>,
) {
    let mut server = RedisServer::start();
    let a = node(&server.url(), GRACE).await;
    let mut keep = Vec::new();
    let mut people = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (s, n) = user(&a, name).await;
        s.join(ROOM, None).await.unwrap();
        people.push(s);
        keep.push(n);
    }
    for i in 0..FILLERS {
        let (s, n) = user(&a, &format!("filler-{i}")).await;
        s.join(&format!("filler-{{{i}}}"), None).await.unwrap();
        keep.push(n);
        people.push(s);
    }
    let sessions = FILLERS + 3;
    server.restart();
    // The node notices at its next lease renewal and writes everything back; once every
    // session is back, the rooms are being written.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if matches!(a.stats().await, Ok(s) if s.sessions == sessions) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sessions came back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (server, a, people, keep)
}

/// Waits until every room is back and the invariants hold.
async fn written_back(a: &Hub) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if a.backend().check_invariants().await.is_ok()
            && matches!(a.stats().await, Ok(s) if s.rooms == FILLERS + 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "every room written back with the invariants holding (a session standing in a line its record does not list breaks them)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_during_the_write_back_is_not_undone_by_it() {
    let (_server, a, people, _keep) = restarted_mid_write_back().await;
    people[1].leave(ROOM).await.unwrap();
    written_back(&a).await;
    let line = line(&a, ROOM).await;
    assert_eq!(
        line,
        ["alice", "carol"],
        "bob left during the write-back; the room's write-back must not put him back"
    );
    assert_eq!(a.stats().await.unwrap().occupants, FILLERS + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_during_the_write_back_is_unavailable_not_refused() {
    let (_server, a, people, _keep) = restarted_mid_write_back().await;
    let took = people[2].takeover(ROOM).await;
    assert!(
        matches!(took, Ok(_) | Err(Error::Unavailable { .. })),
        "a take over by a member while its room is written back: {took:?}"
    );
    written_back(&a).await;
    // Once the room is back, the take over works.
    people[2].takeover(ROOM).await.unwrap();
    assert_eq!(line(&a, ROOM).await, ["carol", "alice", "bob"]);
}

/// OPEN BUG (issue 18's 10-minute chaos soak; ignored until fixed): a node with thousands of
/// sessions and rooms writes them all back after Redis restarted empty, and a few seconds later
/// its sessions are gone from the shared state (the counter falls back to the other node's one
/// session). In the soak, a node logged "this node's lease ended and its sessions were swept by
/// another node" just after a Redis restart and closed its connections with 1011. The write-back
/// runs inside the lease renewal (`Inner::renew` awaits `Inner::restore`), so a long one may
/// outlast the lease; extending the lease during it (tried) did not make this test pass, so the
/// cause is not established. Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open bug: a node's sessions are lost a few seconds after a long write-back (issue 18)"]
async fn a_write_back_longer_than_the_lease_keeps_the_lease() {
    const MANY: usize = 3000;
    let mut server = RedisServer::start();
    let lease = Duration::from_millis(1000);
    let node = |url: String| async move {
        let backend = RedisBackend::connect(test_config(&url).lease(lease))
            .await
            .unwrap();
        Hub::builder()
            .backend(backend)
            .grace(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let a = node(server.url()).await;
    let b = node(server.url()).await;
    let mut keep = Vec::new();
    for i in 0..MANY {
        let (s, n) = user(&a, &format!("many-{i}")).await;
        s.join(&format!("many-{{{i}}}"), None).await.unwrap();
        keep.push((s, n));
    }
    let (_watcher, _wn) = user(&b, "watcher").await;
    server.restart();
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        if matches!(a.stats().await, Ok(s) if s.rooms == MANY && s.sessions == MANY + 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node wrote back its {MANY} sessions and rooms: {:?}",
            a.stats().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several leases later, the node's sessions are still there and still work.
    tokio::time::sleep(lease * 4).await;
    assert_eq!(a.stats().await.unwrap().sessions, MANY + 1);
    keep[0].0.join("after", None).await.unwrap();
    keep[MANY - 1]
        .0
        .leave(&format!("many-{{{}}}", MANY - 1))
        .await
        .unwrap();
}

/// Found by the chaos soak (issue 18): a watcher that resumes while Redis has lost its room (it
/// restarted empty and the room is not written back yet) was told the room at version 0 — empty,
/// and a version going back. It is told the last state its node saw, at a version no lower than
/// any its node has seen. The loss is made by deleting the room's key, so the window is not a
/// race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resuming_while_its_room_is_lost_is_not_told_an_older_version() {
    let server = RedisServer::start();
    let a = node(&server.url(), GRACE).await;
    let (alice, _an) = user(&a, "alice").await;
    alice.join(ROOM, None).await.unwrap();
    let (watcher, _wn) = user(&a, "watcher").await;
    let seen = watcher.watch(ROOM).await.unwrap();
    assert_eq!(seen.occupants.len(), 1);
    let token = watcher.resume_token();
    watcher.disconnect().await;

    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:r:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "one room stored: {keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut raw)
        .await
        .unwrap();

    let (_back, mut notices, resumed) = a.resume(token).await.unwrap();
    assert_eq!(resumed.watching.len(), 1);
    let told = common::expect(&mut notices, "the watched room's presence", |n| {
        n.room.as_str() == ROOM && matches!(n.kind, occupancy_core::NoticeKind::Presence(_))
    })
    .await;
    let occupancy_core::NoticeKind::Presence(p) = told.kind else {
        unreachable!()
    };
    assert!(
        p.body.version >= seen.version,
        "told version {} after {}: {:?}",
        p.body.version,
        seen.version,
        p.body
    );
    assert_eq!(p.body.occupants.len(), 1, "the last state the node saw");
}
