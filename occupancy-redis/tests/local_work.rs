//! A node does only its own work: it decodes a published room state only for a room it follows,
//! and computes notices only for the sessions it hosts (with the places the whole line gives
//! them). Nodes are driven through the `Backend` trait with a recording sink (`common::raw_node`).

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, raw_node, raw_session};
use occupancy_core::{Backend, Notice, NoticeKind};

const PATIENCE: Duration = Duration::from_secs(20);
const ROOM: &str = "line";

/// The place the last presence of `room` told.
fn last_place(notices: &[Notice], room: &str) -> Option<u32> {
    notices.iter().rev().find_map(|n| match &n.kind {
        NoticeKind::Presence(p) if n.room.as_str() == room => p.position,
        _ => None,
    })
}

/// A node decodes a published state only for a room it follows: changes in rooms it has nobody
/// in cost it nothing but a look at the message's first line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_decodes_only_the_rooms_it_follows() {
    let server = RedisServer::start();
    let (a, a_sink) = raw_node(&server.url()).await;
    let (b, _) = raw_node(&server.url()).await;
    let mine = raw_session(&a, 1, None).await;
    a.join(mine, "followed", None).await.unwrap();
    let other = raw_session(&b, 2, None).await;
    // Let A's subscription settle (it re-reads what it follows when it subscribes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_sink.notices.lock().unwrap().clear();
    let before = a.states_decoded();
    for i in 0..50 {
        let room = format!("elsewhere-{i}");
        b.join(other, &room, None).await.unwrap();
        b.leave(other, &room).await.unwrap();
    }
    // Then one change in the followed room: once A has it, it has seen the 100 before it (one
    // channel, in order).
    b.join(other, "followed", None).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !a_sink
        .notices
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.session == mine && n.room.as_str() == "followed")
    {
        assert!(Instant::now() < deadline, "A never heard of B's join");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The followed room's change came as a delta (made on the state A had, no whole state to
    // decode); the 100 other rooms' states were never decoded.
    assert_eq!(
        a.states_decoded() - before,
        0,
        "A decoded no other room's state"
    );
}

/// A node computes notices only for its own sessions: a change in a room where another node
/// hosts 30 sessions reaches this node's sink as notices for this node's one session, with the
/// place the whole line gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_are_computed_for_local_sessions_only() {
    let server = RedisServer::start();
    let (a, a_sink) = raw_node(&server.url()).await;
    let (b, b_sink) = raw_node(&server.url()).await;
    let mut theirs = Vec::new();
    for i in 0..30u64 {
        let s = raw_session(&b, 100 + i, None).await;
        b.join(s, ROOM, None).await.unwrap();
        theirs.push(s);
    }
    let mine = raw_session(&a, 1, None).await;
    assert_eq!(a.join(mine, ROOM, None).await.unwrap().position, 30);
    let watching = raw_session(&a, 2, None).await;
    a.watch(watching, ROOM).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_sink.notices.lock().unwrap().clear();
    b_sink.notices.lock().unwrap().clear();
    // The holder leaves: everyone moves up one place.
    b.leave(theirs[0], ROOM).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = a_sink.notices.lock().unwrap().clone();
        if got.iter().any(|n| n.session == mine) && got.iter().any(|n| n.session == watching) {
            assert!(
                got.iter()
                    .all(|n| n.session == mine || n.session == watching),
                "only A's sessions: {got:?}"
            );
            assert_eq!(last_place(&got, ROOM), Some(29));
            break;
        }
        assert!(Instant::now() < deadline, "A never heard of the change");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B, which made the change, computed notices for its own 29 sessions (its new holder is told
    // it is released), not for A's.
    let got = b_sink.notices.lock().unwrap().clone();
    assert!(
        got.iter()
            .all(|n| n.session != mine && n.session != watching)
    );
    assert!(
        got.iter()
            .any(|n| n.session == theirs[1] && matches!(n.kind, NoticeKind::Released { .. }))
    );
}
