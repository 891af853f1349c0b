//! A session belongs to one node at a time. When node B resumes a session that is still live on
//! node A, node A hears of it only later (B's resume script publishes an `s` message); until then
//! the old connection on A may still act. Every script that acts on a session therefore checks
//! that the calling node owns it: a stale call is refused (`UnknownSession`, as for any handle of
//! a replaced connection) and the stale connection ends with `SessionReplaced`, while B's session
//! keeps its rooms and is not put in grace or closed.

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, line, test_config, user};
use occupancy_core::{Ending, Error, Hub, Notices, SessionId};
use occupancy_redis::RedisBackend;

const PATIENCE: Duration = Duration::from_secs(15);
const ROOM: &str = "doc-{1}";
const LIST: &str = "doc-list";

async fn node(url: &str) -> (Hub, RedisBackend) {
    let backend = RedisBackend::connect(test_config(url)).await.unwrap();
    let hub = Hub::builder()
        .backend(backend.clone())
        .grace(Duration::from_secs(30))
        .build()
        .unwrap();
    (hub, backend)
}

/// Waits for the notice stream to end; returns why it ended.
async fn ended(n: &mut Notices) -> Option<Error> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::timeout_at(deadline, n.recv())
        .await
        .expect("the stale connection's notices end")
        .is_some()
    {}
    n.close_reason()
}

async fn redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The node that owns a session, as stored (`{prefix}:s:{<session hex>}`, field `n`).
async fn owner(conn: &mut redis::aio::MultiplexedConnection, id: SessionId) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("occ:s:{{{id}}}"))
        .arg("n")
        .query_async(conn)
        .await
        .unwrap()
}

/// A real resume on B of a session live on A, then every operation from A's side at once, both
/// through the old handle and straight on A's backend with the old id (which skips the Hub's own
/// check of the replaced connection): whatever the timing of B's `s` message, B's session keeps
/// its room and its watch, is not in grace, and stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_calls_after_a_resume_on_another_node_do_not_touch_it() {
    let server = RedisServer::start();
    let (a, _) = node(&server.url()).await;
    let (b, _) = node(&server.url()).await;
    let (alice, mut an) = user(&a, "alice").await;
    let (bob, _bn) = user(&a, "bob").await;
    assert!(alice.join(ROOM, None).await.unwrap().holding);
    alice.watch(LIST).await.unwrap();
    bob.join(ROOM, None).await.unwrap();
    let id = alice.id();

    let (alice_b, _abn, r) = b.resume(alice.resume_token()).await.unwrap();
    assert!(r.was_live);
    // Straight after the resume, before A has (necessarily) heard of it.
    let ab = a.backend();
    assert_eq!(ab.close(id).await.err(), Some(Error::UnknownSession));
    assert_eq!(
        ab.disconnect(id, Instant::now(), Ending::Lost).await.err(),
        Some(Error::UnknownSession)
    );
    assert_eq!(
        ab.join(id, "elsewhere", None).await.err(),
        Some(Error::UnknownSession)
    );
    assert_eq!(ab.leave(id, ROOM).await.err(), Some(Error::UnknownSession));
    assert_eq!(
        ab.takeover(id, ROOM).await.err(),
        Some(Error::UnknownSession)
    );
    assert_eq!(ab.watch(id, "w2").await.err(), Some(Error::UnknownSession));
    assert_eq!(
        ab.unwatch(id, LIST).await.err(),
        Some(Error::UnknownSession)
    );
    assert_eq!(
        alice.join("elsewhere", None).await.err(),
        Some(Error::UnknownSession)
    );
    alice.disconnect().await;
    alice.close().await;
    assert_eq!(ended(&mut an).await, Some(Error::SessionReplaced));

    assert_eq!(line(&b, ROOM).await, ["alice", "bob"]);
    assert_eq!(a.room("elsewhere").await.unwrap(), None);
    let stats = b.stats().await.unwrap();
    assert_eq!(
        (stats.sessions, stats.sessions_in_grace, stats.watchers),
        (2, 0, 1),
        "{stats:?}"
    );
    let mut conn = redis(&server).await;
    assert!(owner(&mut conn, id).await.is_some());
    // B's session still works: it leaves and bob is released.
    alice_b.leave(ROOM).await.unwrap();
    assert_eq!(line(&a, ROOM).await, ["bob"]);
    assert!(alice_b.unwatch(LIST).await.unwrap());
    a.backend().check_invariants().await.unwrap();
    b.backend().check_invariants().await.unwrap();
}

/// The window itself, made deterministic: the session's owner in Redis is already B (its resume
/// committed) while A has not processed the `s` message yet (here: never). Each operation from
/// A's still-live handle is refused, ends that connection with `SessionReplaced`, and changes
/// nothing in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_refused_to_a_node_that_no_longer_owns_the_session() {
    let server = RedisServer::start();
    let (a, _) = node(&server.url()).await;
    let (_b, b_backend) = node(&server.url()).await;
    let mut conn = redis(&server).await;
    let ops = [
        "join",
        "leave",
        "takeover",
        "watch",
        "unwatch",
        "disconnect",
        "close",
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let room = format!("room-{i}");
        let list = format!("list-{i}");
        let name = format!("user-{i}");
        let (s, mut n) = user(&a, &name).await;
        let (other, _on) = user(&a, &format!("other-{i}")).await;
        // For the takeover, the stale session waits behind `other`.
        if op == "takeover" {
            other.join(&room, None).await.unwrap();
            assert_eq!(s.join(&room, None).await.unwrap().position, 1);
        } else {
            assert!(s.join(&room, None).await.unwrap().holding);
            other.join(&room, None).await.unwrap();
        }
        s.watch(&list).await.unwrap();
        let before = a.room(&room).await.unwrap().unwrap();
        let stats_before = a.stats().await.unwrap();

        // B's resume committed; its `s` message has not reached A.
        let _: () = redis::cmd("HSET")
            .arg(format!("occ:s:{{{}}}", s.id()))
            .arg("n")
            .arg(b_backend.node_id())
            .query_async(&mut conn)
            .await
            .unwrap();

        let r = match op {
            "join" => s.join("elsewhere", None).await.map(drop),
            "leave" => s.leave(&room).await.map(drop),
            "takeover" => s.takeover(&room).await.map(drop),
            "watch" => s.watch("elsewhere").await.map(drop),
            "unwatch" => s.unwatch(&list).await.map(drop),
            "disconnect" => {
                s.disconnect().await;
                Err(Error::UnknownSession)
            }
            "close" => {
                s.close().await;
                Err(Error::UnknownSession)
            }
            _ => unreachable!(),
        };
        assert_eq!(r.err(), Some(Error::UnknownSession), "{op}");
        let reason = ended(&mut n).await;
        if !matches!(op, "disconnect" | "close") {
            // Ended by the backend, not by the application.
            assert_eq!(reason, Some(Error::SessionReplaced), "{op}");
        }
        assert!(!s.is_live(), "{op}");

        // Nothing changed in Redis.
        assert_eq!(a.room(&room).await.unwrap().unwrap(), before, "{op}");
        assert_eq!(a.room("elsewhere").await.unwrap(), None, "{op}");
        assert_eq!(a.stats().await.unwrap(), stats_before, "{op}");
        assert_eq!(
            owner(&mut conn, s.id()).await.as_deref(),
            Some(b_backend.node_id()),
            "{op}"
        );
        a.backend().check_invariants().await.unwrap();
    }
}
