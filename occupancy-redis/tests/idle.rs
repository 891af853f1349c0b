//! Redis-specific tests of protocol v1's additions: `since` / `held_since` stamped from Redis
//! time, the `active` op, idle expiry (the deadline firing while someone waits, and a join behind
//! an idle holder alone), forced releases in their three outcomes, notices seen on other nodes,
//! and rooms stored before these fields existed. Idle timeouts are real time (at most 300 ms);
//! nothing asserts how fast anything happened, every wait is bounded by `PATIENCE`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{RedisServer, drain, expect, line, released, test_config, user};
use occupancy_core::{Config, DisplacedReason, Error, ForcedRelease, Hub, Notice, NoticeKind};
use occupancy_redis::RedisBackend;

const ROOM: &str = "doc-{7}";
/// How far `since` may be from this machine's clock (Redis runs here: a generous bound).
const SKEW_MS: u64 = 5_000;

async fn node(url: &str, idle: Option<Duration>) -> Hub {
    let backend = RedisBackend::connect(test_config(url)).await.unwrap();
    let mut config = Config::default();
    config.idle_timeout = idle;
    config.grace = Duration::from_secs(30);
    Hub::builder()
        .backend(backend)
        .config(config)
        .build()
        .unwrap()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn plausible(ms: u64, before: u64, after: u64) -> bool {
    ms + SKEW_MS >= before && ms <= after + SKEW_MS
}

fn displaced(n: &Notice) -> bool {
    matches!(n.kind, NoticeKind::Displaced { .. })
}

/// The reason and place of a `displaced` notice.
fn displacement(n: &Notice) -> (DisplacedReason, u32, String) {
    match &n.kind {
        NoticeKind::Displaced {
            reason,
            position,
            by,
            ..
        } => (*reason, *position, by.id.to_string()),
        other => panic!("not displaced: {other:?}"),
    }
}

/// `since` of each occupant and the room's `held_since` are Redis time in ms, close to this
/// machine's clock; `since` follows the order of arrival; `held_since` is the grant (first join,
/// then the hand-over), in presences too (also a watcher's); an empty room has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_held_since_are_stamped() {
    let server = RedisServer::start();
    let hub = node(&server.url(), None).await;
    let (alice, _an) = user(&hub, "alice").await;
    let (bob, mut bn) = user(&hub, "bob").await;
    let (watcher, mut wn) = user(&hub, "watcher").await;
    let body = watcher.watch(ROOM).await.unwrap();
    assert_eq!((body.holder.is_none(), body.held_since), (true, None));

    let before = unix_ms();
    alice.join(ROOM, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let j = bob.join(ROOM, None).await.unwrap();
    let after = unix_ms();
    assert!(plausible(j.holder.since, before, after), "{j:?}");

    let state = hub.room(ROOM).await.unwrap().unwrap();
    let (a, b) = (&state.occupants[0], &state.occupants[1]);
    assert!(plausible(a.since, before, after), "alice since {}", a.since);
    assert!(plausible(b.since, before, after), "bob since {}", b.since);
    assert!(
        a.since < b.since,
        "since follows arrival: {} {}",
        a.since,
        b.since
    );
    let held = state.held_since.expect("held");
    assert_eq!(held, a.since, "alice was granted the room when she joined");

    let p = expect(
        &mut wn,
        "watcher presence with bob",
        |n| matches!(&n.kind, NoticeKind::Presence(p) if p.body.waiting == 1),
    )
    .await;
    let NoticeKind::Presence(p) = &p.kind else {
        unreachable!()
    };
    assert_eq!(p.body.held_since, Some(held));
    assert_eq!(p.body.occupants[1].since, b.since);

    tokio::time::sleep(Duration::from_millis(20)).await;
    alice.leave(ROOM).await.unwrap();
    let after_leave = unix_ms();
    expect(&mut bn, "released", released).await;
    let p = expect(
        &mut bn,
        "presence as holder",
        |n| matches!(&n.kind, NoticeKind::Presence(p) if p.position == Some(0)),
    )
    .await;
    let NoticeKind::Presence(p) = &p.kind else {
        unreachable!()
    };
    let held2 = p.body.held_since.expect("bob holds");
    assert!(held2 > held && plausible(held2, before, after_leave));
    assert_eq!(
        p.body.holder.as_ref().unwrap().since,
        b.since,
        "since is kept"
    );

    bob.leave(ROOM).await.unwrap();
    let state = hub.room(ROOM).await.unwrap().expect("watched");
    assert_eq!((state.occupants.len(), state.held_since), (0, None));
    hub.backend().check_invariants().await.unwrap();
}

/// `active`: `not_member` unless this session stands in the room (another tab of the same user
/// does not count); otherwise the session's place, no new version, nobody told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_errors_and_success() {
    let server = RedisServer::start();
    let hub = node(&server.url(), Some(Duration::from_secs(60))).await;
    let (alice, mut an) = user(&hub, "alice").await;
    let (alice2, _a2n) = user(&hub, "alice").await;
    let (bob, mut bn) = user(&hub, "bob").await;
    assert_eq!(alice.active(ROOM).await.unwrap_err(), Error::NotMember);
    alice.join(ROOM, None).await.unwrap();
    let j = bob.join(ROOM, None).await.unwrap();
    assert_eq!(alice2.active(ROOM).await.unwrap_err(), Error::NotMember);
    assert!(matches!(
        alice.active("").await.unwrap_err(),
        Error::RoomInvalid(_)
    ));
    drain(&mut an).await;
    drain(&mut bn).await;

    let a = alice.active(ROOM).await.unwrap();
    assert_eq!((a.holding, a.position, a.version), (true, 0, j.version));
    let b = bob.active(ROOM).await.unwrap();
    assert_eq!(
        (b.holding, b.position, b.holder.id.to_string()),
        (false, 1, "alice".into())
    );
    assert_eq!(hub.version(ROOM).await.unwrap(), j.version);
    assert!(drain(&mut an).await.is_empty());
    assert!(drain(&mut bn).await.is_empty());

    bob.leave(ROOM).await.unwrap();
    assert_eq!(bob.active(ROOM).await.unwrap_err(), Error::NotMember);
    hub.backend().check_invariants().await.unwrap();
}

/// Holder on node A, waiter on node B, watcher on node C: while the holder says `active`, it
/// keeps the room past the timeout; once it stops, A's deadline fires and the holder is
/// displaced to place 1 with reason `idle` — seen on A (displaced), B (released, once) and C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_deadline_fires_while_someone_waits() {
    let idle = Duration::from_millis(300);
    let server = RedisServer::start();
    let a = node(&server.url(), Some(idle)).await;
    let b = node(&server.url(), Some(idle)).await;
    let c = node(&server.url(), Some(idle)).await;
    let (alice, mut an) = user(&a, "alice").await;
    let (bob, mut bn) = user(&b, "bob").await;
    let (watcher, mut wn) = user(&c, "watcher").await;
    watcher.watch(ROOM).await.unwrap();
    alice.join(ROOM, None).await.unwrap();
    let j = bob.join(ROOM, None).await.unwrap();
    assert_eq!(j.position, 1);

    // Active every 50 ms for 3 timeouts: the deadlines that come due find her active.
    for _ in 0..18 {
        alice.active(ROOM).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        line(&b, ROOM).await,
        ["alice", "bob"],
        "an active holder keeps the room"
    );
    // (What reached B so far: draining would wait past her timeout.)
    while let Some(n) = bn.try_recv() {
        assert!(!released(&n), "released while alice was active: {n:?}");
    }

    let d = expect(&mut an, "displaced on A", displaced).await;
    assert_eq!(displacement(&d), (DisplacedReason::Idle, 1, "bob".into()));
    expect(&mut bn, "released on B", released).await;
    expect(&mut wn, "watcher sees bob hold", |n| {
        matches!(&n.kind, NoticeKind::Presence(p)
            if p.body.holder.as_ref().is_some_and(|h| h.id.to_string() == "bob"))
    })
    .await;

    // Now bob holds and alice waits: bob idles in turn (B hosts him, B's deadline fires).
    let d = expect(&mut bn, "bob displaced on B", |n| {
        assert!(!released(n), "released once: {n:?}");
        displaced(n)
    })
    .await;
    assert_eq!(displacement(&d), (DisplacedReason::Idle, 1, "alice".into()));
    expect(&mut an, "alice released again", released).await;
    alice.leave(ROOM).await.unwrap();
    bob.leave(ROOM).await.unwrap();
    a.backend().check_invariants().await.unwrap();
}

/// A holder with a tab on each of two nodes: both nodes keep a deadline for the room, the
/// script re-checks, and the hand-over happens once (one `released`, one `displaced` per tab).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holder_with_tabs_on_two_nodes_is_displaced_once() {
    let idle = Duration::from_millis(150);
    let server = RedisServer::start();
    let a = node(&server.url(), Some(idle)).await;
    let b = node(&server.url(), Some(idle)).await;
    let c = node(&server.url(), Some(idle)).await;
    let (tab1, mut t1) = user(&a, "alice").await;
    let (tab2, mut t2) = user(&b, "alice").await;
    let (bob, mut bn) = user(&c, "bob").await;
    tab1.join(ROOM, None).await.unwrap();
    tab2.join(ROOM, None).await.unwrap();
    bob.join(ROOM, None).await.unwrap();
    expect(&mut bn, "released", released).await;
    // Bob (on C) now holds; make him leave before his own timeout could hand it back.
    bob.leave(ROOM).await.unwrap();
    for n in [&mut t1, &mut t2] {
        let got = drain(n).await;
        let d: Vec<_> = got
            .iter()
            .filter(|n| displaced(n))
            .map(displacement)
            .collect();
        assert_eq!(d, [(DisplacedReason::Idle, 1, "bob".into())], "{got:?}");
    }
    // A and B each ran the idle script at most once per deadline; one change was made.
    let released_again = drain(&mut bn).await;
    assert!(!released_again.iter().any(released));
    a.backend().check_invariants().await.unwrap();
}

/// A holder alone past its timeout keeps the room; the join that makes someone wait is followed
/// at once by displacing it (reason `idle`): the joiner's reply gives the place after both
/// changes. A holder active within the timeout is not displaced by a join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_behind_an_idle_lone_holder() {
    let idle = Duration::from_millis(300);
    let server = RedisServer::start();
    let a = node(&server.url(), Some(idle)).await;
    let b = node(&server.url(), Some(idle)).await;
    let (alice, mut an) = user(&a, "alice").await;
    let (bob, mut bn) = user(&b, "bob").await;
    let (carol, _cn) = user(&b, "carol").await;
    alice.join(ROOM, None).await.unwrap();
    tokio::time::sleep(idle * 2).await;
    assert_eq!(line(&a, ROOM).await, ["alice"], "alone: keeps the room");

    let before = a.version(ROOM).await.unwrap();
    let j = bob.join(ROOM, None).await.unwrap();
    assert_eq!(
        (j.holding, j.position, j.holder.id.to_string()),
        (true, 0, "bob".into())
    );
    assert!(j.version > before + 1, "two changes, two versions");
    let d = expect(&mut an, "displaced on A", displaced).await;
    assert_eq!(displacement(&d), (DisplacedReason::Idle, 1, "bob".into()));
    // Bob is told he waits behind alice, then that he holds (two changes, in order).
    let occ = expect(&mut bn, "occupied", |n| {
        matches!(n.kind, NoticeKind::Occupied { .. })
    })
    .await;
    let rel = expect(&mut bn, "released", released).await;
    assert!(occ.version() < rel.version());
    assert_eq!(line(&b, ROOM).await, ["bob", "alice"]);

    // Bob stays active; carol's join does not displace him.
    bob.active(ROOM).await.unwrap();
    let j = carol.join(ROOM, None).await.unwrap();
    assert_eq!((j.position, j.holder.id.to_string()), (2, "bob".into()));
    bob.leave(ROOM).await.unwrap();
    alice.leave(ROOM).await.unwrap();
    carol.leave(ROOM).await.unwrap();
    a.backend().check_invariants().await.unwrap();
}

/// A forced release, asked on a node that hosts nobody in the room: `Vacant` (no room, a
/// watched room nobody stands in), `Pending` (the holder alone: the next join displaces it with
/// reason `server`; a room that empties forgets it), `HandedOver` (displaced with reason
/// `server`, the next released) — seen on the holder's and the waiter's nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_release_in_its_three_outcomes() {
    let server = RedisServer::start();
    let a = node(&server.url(), None).await;
    let b = node(&server.url(), None).await;
    let admin = node(&server.url(), None).await;
    let (alice, mut an) = user(&a, "alice").await;
    let (bob, mut bn) = user(&b, "bob").await;
    let (watcher, _wn) = user(&admin, "watcher").await;

    assert_eq!(admin.release(ROOM).await.unwrap(), ForcedRelease::Vacant);
    watcher.watch(ROOM).await.unwrap();
    assert_eq!(admin.release(ROOM).await.unwrap(), ForcedRelease::Vacant);
    assert!(matches!(
        admin.release("").await.unwrap_err(),
        Error::RoomInvalid(_)
    ));

    // Pending, then forgotten when the room empties.
    alice.join(ROOM, None).await.unwrap();
    let v = a.version(ROOM).await.unwrap();
    assert_eq!(admin.release(ROOM).await.unwrap(), ForcedRelease::Pending);
    assert_eq!(a.version(ROOM).await.unwrap(), v, "no change");
    alice.leave(ROOM).await.unwrap();
    alice.join(ROOM, None).await.unwrap();
    assert_eq!(bob.join(ROOM, None).await.unwrap().position, 1);
    bob.leave(ROOM).await.unwrap();
    drain(&mut an).await;
    drain(&mut bn).await;

    // Pending, then the next join is granted the room.
    assert_eq!(admin.release(ROOM).await.unwrap(), ForcedRelease::Pending);
    let j = bob.join(ROOM, None).await.unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    let d = expect(&mut an, "displaced (pending release)", displaced).await;
    assert_eq!(displacement(&d), (DisplacedReason::Server, 1, "bob".into()));
    expect(&mut bn, "released", released).await;
    // The pending flag went with the grant: another release hands back to alice.
    let r = admin.release(ROOM).await.unwrap();
    let ForcedRelease::HandedOver { version, to } = r else {
        panic!("{r:?}")
    };
    assert_eq!(to.id.to_string(), "alice");
    assert_eq!(a.version(ROOM).await.unwrap(), version);
    let d = expect(&mut bn, "bob displaced on B", displaced).await;
    assert_eq!(
        displacement(&d),
        (DisplacedReason::Server, 1, "alice".into())
    );
    assert_eq!(d.version(), version);
    let rel = expect(&mut an, "alice released on A", released).await;
    assert_eq!(rel.version(), version);
    assert_eq!(line(&a, ROOM).await, ["alice", "bob"]);
    let state = a.room(ROOM).await.unwrap().unwrap();
    assert!(state.held_since.unwrap() >= state.occupants[1].since);
    a.backend().check_invariants().await.unwrap();
}

/// A room stored before `since` / `held_since` existed decodes (since 0, no held_since), takes
/// a join, and is granted with a stamp at the next hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_stored_without_the_new_fields_still_decode() {
    let server = RedisServer::start();
    let hub = node(&server.url(), Some(Duration::from_millis(100))).await;
    let (bob, mut bn) = user(&hub, "bob").await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let hex: String = ROOM.bytes().map(|b| format!("{b:02x}")).collect();
    // Written as a previous version did (the session is not known here: a leftover line).
    let old = r#"{"v":"5","o":[{"k":"u:old","m":"{}","q":"5","s":["00000000000000aa"]}],"w":{}}"#;
    let _: () = redis::cmd("SET")
        .arg(format!("occ:r:{{{hex}}}"))
        .arg(old)
        .query_async(&mut conn)
        .await
        .unwrap();
    let state = hub.room(ROOM).await.unwrap().unwrap();
    assert_eq!(
        (state.occupants[0].since, state.held_since, state.version),
        (0, None, 5)
    );
    // No idle clock to go by: the join does not displace the old holder.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let j = bob.join(ROOM, None).await.unwrap();
    assert_eq!((j.position, j.holder.id.to_string()), (1, "old".into()));
    assert_eq!(j.holder.since, 0);
    let r = hub.release(ROOM).await.unwrap();
    assert!(matches!(r, ForcedRelease::HandedOver { .. }), "{r:?}");
    expect(&mut bn, "released", released).await;
    // (Bob may already have idled and been displaced in turn: look him up by id.)
    let state = hub.room(ROOM).await.unwrap().unwrap();
    assert!(state.held_since.is_some_and(|h| h > 0));
    let bob_since = state
        .occupants
        .iter()
        .find(|o| o.person().id.to_string() == "bob")
        .map(|o| o.since);
    assert!(bob_since.is_some_and(|s| s > 0), "{state:?}");
}
