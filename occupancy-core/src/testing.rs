//! The conformance suite (feature `testing`): every DESIGN.md rule and every article bug that a
//! backend could get wrong, run through the [`Hub`] on a backend of your choice. The memory
//! backend runs it in `occupancy-core/tests/conformance.rs`; every other backend must pass it too.
//!
//! Each check is a separate `pub async fn` taking a fresh backend, so a failure is named; the
//! [`run_all`] function runs them all from a backend factory, and the
//! [`conformance_tests!`](crate::conformance_tests) macro makes one `#[tokio::test]` per check.
//!
//! The checks do not assume notices arrive during the call that caused them (a remote backend
//! delivers them from a subscription): they wait for what must come (up to [`PATIENCE`]) and let
//! the system settle ([`SETTLE`]) before asserting that something did *not* come. They only use
//! `tokio::time`, so they run on paused time (instantly) as well as on real time.
//!
//! ```no_run
//! # async fn demo() {
//! use occupancy_core::{MemoryBackend, testing};
//! testing::run_all(|| async { MemoryBackend::new() }).await;
//! # }
//! ```

pub mod capture;
pub mod fuzz;

use std::future::Future;
use std::time::Duration;

use serde_json::json;

use crate::backend::Backend;
use crate::config::{Ending, Limits};
use crate::error::{Error, RoomIdError};
use crate::hub::{Action, AuthRequest, Hub, HubBuilder, Notices, Session};
use crate::ids::{Meta, OccupantKey, Person};
use crate::machine::ForcedRelease;
use crate::notice::{DisplacedReason, Notice, NoticeKind};

/// How long a check waits for the system to settle before asserting that nothing (more) came.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How long a check waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

const ROOM: &str = "document-1";

/// Runs every check, each on a fresh backend from `factory`, printing each name before it runs
/// (so a panic names the rule that broke).
pub async fn run_all<F, Fut, B>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
    B: Backend,
{
    macro_rules! run {
        ($($name:ident),* $(,)?) => {$(
            eprintln!("conformance: {}", stringify!($name));
            $name(factory().await).await;
        )*};
    }
    // The list of checks is written once, in `__conformance_checks!`.
    crate::__conformance_checks!(run run);
}

/// Makes one `#[tokio::test]` (multi-thread runtime, real time) per conformance check, each with
/// a backend from the given factory (a closure returning a future of the backend):
///
/// ```ignore
/// occupancy_core::conformance_tests!(|| async { MyBackend::connect("redis://...").await.unwrap() });
/// ```
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    (@each $factory:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let factory = $factory;
            $crate::testing::$name(factory().await).await;
        }
    )*};
    ($factory:expr) => {
        $crate::__conformance_checks!(tests $factory);
    };
}

/// The one list of conformance checks, handed to [`run_all`] (`run <macro>`) or to
/// [`conformance_tests!`](crate::conformance_tests) (`tests <factory>`). Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_checks {
    (@list [tests $factory:expr] $($name:ident),*) => {
        $crate::conformance_tests!(@each $factory; $($name),*);
    };
    (@list [run $m:ident] $($name:ident),*) => {
        $m!($($name),*);
    };
    ($($how:tt)*) => {
        $crate::__conformance_checks!(@list [$($how)*]
            join_is_idempotent,
            leave_releases_next,
            leave_is_idempotent,
            disconnect_releases_without_grace,
            dropping_the_session_disconnects,
            disconnect_ends_the_connection,
            grace_keeps_place,
            holder_in_grace_blocks,
            grace_expiry_releases_next,
            a_closed_page_waits_only_the_close_grace,
            resume_restores_place,
            resume_while_live_replaces_old_connection,
            close_leaves_at_once,
            takeover_displaces_holder,
            takeover_requires_membership,
            update_changes_metadata_in_place,
            since_and_held_since_are_stamped,
            active_refreshes_and_refuses_outsiders,
            an_idle_holder_gives_way,
            an_idle_holder_alone_gives_way_at_the_next_join,
            a_forced_release_displaces_with_reason_server,
            a_kicked_session_leaves_at_once,
            watch_and_unwatch,
            versions_increase,
            limits_are_exact_and_change_nothing,
            two_tabs_hold_together,
            released_once_per_handover_to_each_session,
            everyone_learns_the_line_moved,
            occupied_names_holder_and_place,
            authorization_denies_without_change,
            slow_consumer_is_closed,
            stats_count,
            concurrent_calls_keep_order
        );
    };
}

// ----- helpers ----------------------------------------------------------------------------------

fn hub(backend: impl Backend, f: impl FnOnce(HubBuilder) -> HubBuilder) -> Hub {
    f(Hub::builder().backend(backend))
        .build()
        .expect("hub builds")
}

fn meta(name: &str) -> Meta {
    Meta::from_value(json!({ "name": name })).unwrap()
}

async fn user(hub: &Hub, name: &str) -> (Session, Notices) {
    hub.connect(Some(name.to_string()), meta(name))
        .await
        .expect("connect")
}

/// Who a person is, as the tests compare them: id and metadata (`since` is the server's clock).
type Who = (OccupantKey, Meta);

fn person(name: &str) -> Who {
    (OccupantKey::User(name.into()), meta(name))
}

fn who(p: &Person) -> Who {
    (p.id.clone(), p.meta.clone())
}

fn whos(ps: &[Person]) -> Vec<Who> {
    ps.iter().map(who).collect()
}

/// Waits [`SETTLE`], then takes every notice waiting.
async fn settled(n: &mut Notices) -> Vec<Notice> {
    tokio::time::sleep(SETTLE).await;
    let mut v = Vec::new();
    while let Some(x) = n.try_recv() {
        v.push(x);
    }
    v
}

/// Waits [`SETTLE`] and drops every notice waiting in each stream.
async fn discard(streams: &mut [&mut Notices]) {
    tokio::time::sleep(SETTLE).await;
    for n in streams {
        while n.try_recv().is_some() {}
    }
}

/// Waits for a notice matching `pred` (up to [`PATIENCE`]); returns it and the notices before it.
async fn expect(n: &mut Notices, what: &str, pred: impl Fn(&Notice) -> bool) -> Notice {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, n.recv()).await {
            Ok(Some(x)) if pred(&x) => return x,
            Ok(Some(_)) => {}
            Ok(None) => panic!("notices ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Polls `f` until it is true (up to [`PATIENCE`]).
async fn eventually<Fut: Future<Output = bool>>(what: &str, mut f: impl FnMut() -> Fut) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_released(n: &Notice) -> bool {
    matches!(n.kind, NoticeKind::Released { .. })
}

fn count_released(v: &[Notice]) -> usize {
    v.iter().filter(|n| is_released(n)).count()
}

async fn holder_name(hub: &Hub, room: &str) -> Option<String> {
    hub.holder(room)
        .await
        .expect("holder")
        .map(|p| p.id.to_string())
}

// ----- the checks -------------------------------------------------------------------------------

/// Joining a room you are in returns your place and tells nobody anything (article bug 1:
/// React StrictMode mounts twice).
pub async fn join_is_idempotent<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let ja = a.join(ROOM, None).await.unwrap();
    assert!(ja.holding);
    let jb = b.join(ROOM, None).await.unwrap();
    assert_eq!(jb.position, 1);
    discard(&mut [&mut an, &mut bn]).await;

    let ja2 = a.join(ROOM, None).await.unwrap();
    let jb2 = b.join(ROOM, None).await.unwrap();
    assert_eq!((ja2.position, ja2.version), (0, jb.version));
    assert_eq!((jb2.position, jb2.version), (1, jb.version));
    assert_eq!(settled(&mut an).await, vec![], "a second join tells nobody");
    assert_eq!(settled(&mut bn).await, vec![], "a second join tells nobody");
    let state = hub.room(ROOM).await.unwrap().unwrap();
    assert_eq!(state.occupants.len(), 2, "queued once each");
    assert_eq!(state.version, jb.version);
}

/// When the holder leaves, the next in line is released, exactly once (article bug 2: there was
/// no leave).
pub async fn leave_releases_next<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;

    let left = a.leave(ROOM).await.unwrap();
    assert!(left.was_member);
    assert_eq!(left.room.as_str(), ROOM);
    expect(&mut bn, "released", is_released).await;
    assert_eq!(count_released(&settled(&mut bn).await), 0, "released once");
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
    assert_eq!(b.join(ROOM, None).await.unwrap().position, 0);
}

/// Leaving a room you are not in is not an error and changes nothing.
pub async fn leave_is_idempotent<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;
    let version = hub.version(ROOM).await.unwrap();
    let left = a.leave(ROOM).await.unwrap();
    assert!(!left.was_member);
    a.join(ROOM, None).await.unwrap();
    a.leave(ROOM).await.unwrap();
    let version2 = hub.version(ROOM).await.unwrap();
    assert!(!a.leave(ROOM).await.unwrap().was_member);
    assert!(!a.leave("never-joined").await.unwrap().was_member);
    assert_eq!(hub.version(ROOM).await.unwrap(), version2);
    assert!(version2 > version);
    assert_eq!(
        whos(&hub.occupants(ROOM).await.unwrap()),
        vec![person("bob")]
    );
}

/// With no grace, a disconnect leaves every room at once and the next in line is released.
pub async fn disconnect_releases_without_grace<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::ZERO));
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    a.join("other", None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;

    a.disconnect().await;
    expect(&mut bn, "released", is_released).await;
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
    assert_eq!(hub.room("other").await.unwrap(), None, "every room left");
    assert_eq!(
        hub.resume(a.resume_token()).await.err(),
        Some(Error::ResumeInvalid)
    );
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.sessions_in_grace), (1, 0));
}

/// Dropping the last handle of a session disconnects it (its grace starts).
pub async fn dropping_the_session_disconnects<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::ZERO));
    let (a, an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    let a2 = a.clone();
    drop(a);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        holder_name(&hub, ROOM).await.as_deref(),
        Some("alice"),
        "a clone is still alive"
    );
    drop((a2, an));
    expect(&mut bn, "released", is_released).await;
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
}

/// After a disconnect, every call on any clone fails with `UnknownSession`, the notices end, and
/// disconnecting again changes nothing.
pub async fn disconnect_ends_the_connection<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, mut an) = user(&hub, "alice").await;
    let clone = a.clone();
    a.join(ROOM, None).await.unwrap();
    assert!(a.is_live());
    a.disconnect().await;
    a.disconnect().await;
    clone.disconnect().await;
    assert!(!clone.is_live());
    assert_eq!(
        clone.join("x", None).await.err(),
        Some(Error::UnknownSession)
    );
    assert_eq!(a.leave(ROOM).await.err(), Some(Error::UnknownSession));
    assert_eq!(a.takeover(ROOM).await.err(), Some(Error::UnknownSession));
    assert_eq!(a.watch(ROOM).await.err(), Some(Error::UnknownSession));
    assert_eq!(a.unwatch(ROOM).await.err(), Some(Error::UnknownSession));
    assert_eq!(an.recv().await, None);
    assert_eq!(an.close_reason(), None, "the application's own doing");
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.sessions_in_grace), (1, 1));
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("alice"));
}

/// A disconnected holder keeps its place during the grace: nobody is released.
pub async fn grace_keeps_place<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;
    a.disconnect().await;
    let got = settled(&mut bn).await;
    assert_eq!(
        count_released(&got),
        0,
        "no hand-over during grace: {got:?}"
    );
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("alice"));
    assert_eq!(b.join(ROOM, None).await.unwrap().position, 1);
    assert_eq!(hub.stats().await.unwrap().sessions_in_grace, 1);
}

/// While the holder is in grace, a newcomer is told the room is occupied by that holder.
pub async fn holder_in_grace_blocks<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, _an) = user(&hub, "alice").await;
    a.join(ROOM, None).await.unwrap();
    a.disconnect().await;
    let (c, mut cn) = user(&hub, "carol").await;
    let j = c.join(ROOM, None).await.unwrap();
    assert!(!j.holding);
    assert_eq!(who(&j.holder), person("alice"));
    let n = expect(&mut cn, "occupied", |n| {
        matches!(n.kind, NoticeKind::Occupied { .. })
    })
    .await;
    let NoticeKind::Occupied {
        holder, position, ..
    } = n.kind
    else {
        unreachable!()
    };
    assert_eq!((who(&holder), position), (person("alice"), 1));
    assert_eq!(count_released(&settled(&mut cn).await), 0);
}

/// When the grace ends, the session is gone: the next in line is released, the token is dead.
pub async fn grace_expiry_releases_next<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_millis(300)));
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;
    let token = a.resume_token();
    a.disconnect().await;
    expect(&mut bn, "released after the grace", is_released).await;
    assert_eq!(count_released(&settled(&mut bn).await), 0);
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
    assert_eq!(hub.resume(token).await.err(), Some(Error::ResumeInvalid));
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.sessions_in_grace), (1, 0));
}

/// A connection the client closed on purpose (a closed page) keeps its place for the close
/// grace only; one lost without a close keeps it for the whole grace.
pub async fn a_closed_page_waits_only_the_close_grace<B: Backend>(backend: B) {
    let hub = hub(backend, |b| {
        b.grace(Duration::from_secs(60))
            .close_grace(Duration::from_millis(300))
    });
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let (c, _cn) = user(&hub, "carol").await;
    a.join(ROOM, None).await.unwrap();
    c.join("other", None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    b.join("other", None).await.unwrap();
    discard(&mut [&mut bn]).await;
    let token = a.resume_token();
    a.disconnect_as(Ending::Closed).await;
    c.disconnect_as(Ending::Lost).await;
    let released = expect(&mut bn, "released after the close grace", is_released).await;
    assert_eq!(released.room.as_str(), ROOM);
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
    assert_eq!(hub.resume(token).await.err(), Some(Error::ResumeInvalid));
    assert_eq!(holder_name(&hub, "other").await.as_deref(), Some("carol"));
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.sessions_in_grace), (2, 1));
}

/// A page reload keeps your place (article bug 5): resume within the grace gives the same session,
/// every room and place back, a presence notice per room (one only, with the place, for a room
/// the session both stands in and watches), and a new single-use token.
pub async fn resume_restores_place<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, an) = user(&hub, "alice").await;
    let (b, _bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join("second", None).await.unwrap();
    a.join("second", None).await.unwrap();
    a.watch("watched").await.unwrap();
    // Watching a room you stand in: the resume must still tell your place there (found by the
    // churn soak: a second, place-less presence replaced it in the queue).
    a.watch("second").await.unwrap();
    let (id, token) = (a.id(), a.resume_token());
    drop((a, an));
    eventually("the dropped session is in grace", || async {
        hub.stats().await.unwrap().sessions_in_grace == 1
    })
    .await;

    let (a, mut an, resumed) = hub.resume(token).await.unwrap();
    assert_eq!(a.id(), id);
    assert_eq!(resumed.session, id);
    assert!(!resumed.was_live);
    assert_eq!(a.principal(), Some("alice"));
    assert_ne!(a.resume_token(), token, "a resume hands out a new token");
    let places: Vec<_> = resumed
        .rooms
        .iter()
        .map(|j| (j.room.as_str(), j.position))
        .collect();
    assert_eq!(places, vec![(ROOM, 0), ("second", 1)]);
    assert_eq!(resumed.watching.len(), 2);
    let mut rooms = Vec::new();
    for _ in 0..3 {
        let n = expect(&mut an, "presence after resume", |n| {
            matches!(n.kind, NoticeKind::Presence(_))
        })
        .await;
        let NoticeKind::Presence(p) = &n.kind else {
            unreachable!()
        };
        rooms.push((n.room.to_string(), p.position));
    }
    rooms.sort();
    assert_eq!(
        rooms,
        vec![
            (ROOM.to_string(), Some(0)),
            ("second".to_string(), Some(1)),
            ("watched".to_string(), None)
        ]
    );
    let extra = settled(&mut an).await;
    assert!(extra.is_empty(), "one presence per room: {extra:?}");
    assert_eq!(hub.resume(token).await.err(), Some(Error::ResumeInvalid));
    assert_eq!(a.join(ROOM, None).await.unwrap().position, 0);
    assert_eq!(hub.stats().await.unwrap().sessions_in_grace, 0);
}

/// Resuming a session whose old connection is still live replaces that connection: its notices
/// end with `SessionReplaced`, its handle fails, and dropping it does not disconnect the new one.
pub async fn resume_while_live_replaces_old_connection<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (old, mut old_n) = user(&hub, "alice").await;
    old.join(ROOM, None).await.unwrap();
    let (new, mut new_n, resumed) = hub.resume(old.resume_token()).await.unwrap();
    assert!(resumed.was_live);
    assert_eq!(new.id(), old.id());
    assert_eq!(old_n.recv().await, None);
    assert_eq!(old_n.close_reason(), Some(Error::SessionReplaced));
    assert_eq!(old.join("x", None).await.err(), Some(Error::UnknownSession));
    drop((old, old_n));
    tokio::time::sleep(SETTLE).await;
    assert!(new.is_live());
    assert_eq!(new.join(ROOM, None).await.unwrap().position, 0);
    assert_eq!(hub.stats().await.unwrap().sessions_in_grace, 0);
    let (b, _bn) = user(&hub, "bob").await;
    b.join(ROOM, None).await.unwrap();
    expect(&mut new_n, "presence on the new connection", |n| {
        matches!(n.kind, NoticeKind::Presence(_))
    })
    .await;
}

/// `close` leaves every room now, without grace, and kills the token.
pub async fn close_leaves_at_once<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;
    let token = a.resume_token();
    a.close().await;
    a.close().await;
    expect(&mut bn, "released", is_released).await;
    assert_eq!(an.recv().await, None);
    assert_eq!(a.join(ROOM, None).await.err(), Some(Error::UnknownSession));
    assert_eq!(hub.resume(token).await.err(), Some(Error::ResumeInvalid));
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.sessions_in_grace), (1, 0));
}

/// Take over: the taker holds, the previous holder is told it was displaced and is next in line.
pub async fn takeover_displaces_holder<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let (c, mut cn) = user(&hub, "carol").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    c.join(ROOM, None).await.unwrap();
    discard(&mut [&mut an, &mut bn, &mut cn]).await;

    let j = c.takeover(ROOM).await.unwrap();
    assert!(j.holding);
    assert_eq!((j.position, who(&j.holder)), (0, person("carol")));
    let n = expect(&mut an, "displaced", |n| {
        matches!(n.kind, NoticeKind::Displaced { .. })
    })
    .await;
    let NoticeKind::Displaced { by, position, .. } = n.kind else {
        unreachable!()
    };
    assert_eq!((who(&by), position), (person("carol"), 1));
    let rest = settled(&mut an).await;
    assert!(
        !rest
            .iter()
            .any(|n| matches!(n.kind, NoticeKind::Displaced { .. })),
        "displaced once"
    );
    let names: Vec<_> = hub
        .occupants(ROOM)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(names, ["carol", "alice", "bob"]);
    assert_eq!(count_released(&settled(&mut bn).await), 0);

    // Taking over a room you hold changes nothing.
    let v = hub.version(ROOM).await.unwrap();
    assert_eq!(c.takeover(ROOM).await.unwrap().version, v);
    assert_eq!(hub.version(ROOM).await.unwrap(), v);
}

/// Take over requires standing in the line.
pub async fn takeover_requires_membership<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, _bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    assert_eq!(b.takeover(ROOM).await.err(), Some(Error::NotInRoom));
    assert_eq!(b.takeover("nowhere").await.err(), Some(Error::NotInRoom));
    b.watch(ROOM).await.unwrap();
    assert_eq!(
        b.takeover(ROOM).await.err(),
        Some(Error::NotInRoom),
        "watching is not standing in line"
    );
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("alice"));
}

/// Watching: presence notices without standing in line; never holds; stops on unwatch; counts
/// against the rooms-per-session limit.
pub async fn watch_and_unwatch<B: Backend>(backend: B) {
    let limits = Limits {
        max_rooms_per_session: 2,
        ..Limits::default()
    };
    let hub = hub(backend, |b| b.limits(limits));
    let (w, mut wn) = user(&hub, "watcher").await;
    let (a, _an) = user(&hub, "alice").await;
    let body = w.watch(ROOM).await.unwrap();
    assert_eq!(body.holder, None);
    assert_eq!(w.watch(ROOM).await.unwrap(), body, "watch is idempotent");
    a.join(ROOM, None).await.unwrap();
    let n = expect(&mut wn, "presence for a watcher", |n| {
        matches!(n.kind, NoticeKind::Presence(_))
    })
    .await;
    let NoticeKind::Presence(p) = n.kind else {
        unreachable!()
    };
    assert_eq!(p.position, None);
    assert_eq!(p.body.holder.as_ref().map(who), Some(person("alice")));
    assert_eq!(
        whos(&hub.occupants(ROOM).await.unwrap()),
        vec![person("alice")]
    );
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.occupants, stats.watchers), (1, 1));

    w.watch("second").await.unwrap();
    assert_eq!(
        w.join("third", None).await.err(),
        Some(Error::TooManyRooms { limit: 2 })
    );
    assert!(w.unwatch(ROOM).await.unwrap());
    assert!(!w.unwatch(ROOM).await.unwrap());
    settled(&mut wn).await;
    a.leave(ROOM).await.unwrap();
    assert_eq!(settled(&mut wn).await, vec![], "nothing after unwatch");
    assert_eq!(hub.room(ROOM).await.unwrap(), None);
    w.join("third", None).await.unwrap();
}

/// Every change bumps the room's version; each session sees its notices in version order; a
/// room emptied and created again continues above its old versions.
pub async fn versions_increase<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let (w, mut wn) = user(&hub, "watcher").await;
    w.watch(ROOM).await.unwrap();
    let mut last = 0;
    let mut step = |v: u64| {
        assert!(v > last, "version {v} after {last}");
        last = v;
    };
    step(a.join(ROOM, None).await.unwrap().version);
    step(b.join(ROOM, None).await.unwrap().version);
    step(b.takeover(ROOM).await.unwrap().version);
    b.leave(ROOM).await.unwrap();
    step(hub.version(ROOM).await.unwrap());
    a.leave(ROOM).await.unwrap();
    step(hub.version(ROOM).await.unwrap());
    w.unwatch(ROOM).await.unwrap();
    assert_eq!(hub.room(ROOM).await.unwrap(), None);
    step(a.join(ROOM, None).await.unwrap().version);
    for n in [&mut an, &mut bn, &mut wn] {
        let got = settled(n).await;
        let versions: Vec<_> = got.iter().map(Notice::version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "notices out of order: {versions:?}"
        );
    }
}

/// Every limit gives its exact typed error and changes nothing (article bug 4).
pub async fn limits_are_exact_and_change_nothing<B: Backend>(backend: B) {
    let limits = Limits {
        max_room_id_len: 8,
        max_rooms_per_session: 2,
        max_occupants_per_room: 2,
        max_meta_bytes: 32,
    };
    let hub = hub(backend, |b| b.limits(limits));
    let big = Meta::from_value(json!({ "name": "x".repeat(40) })).unwrap();
    let big_len = big.encoded_len();
    assert_eq!(
        hub.connect(None, big.clone()).await.err(),
        Some(Error::MetaTooLarge {
            len: big_len,
            limit: 32
        })
    );
    let (a, _an) = user(&hub, "alice").await;
    let (b, _bn) = user(&hub, "bob").await;
    let (c, _cn) = user(&hub, "carol").await;
    a.join("r1", None).await.unwrap();
    b.join("r1", None).await.unwrap();
    a.join("r2", None).await.unwrap();
    let before = hub.stats().await.unwrap();
    let r1 = hub.room("r1").await.unwrap();

    let cases: Vec<(Result<_, Error>, Error)> = vec![
        (
            c.join("", None).await.map(|_| ()),
            Error::RoomInvalid(RoomIdError::Empty),
        ),
        (
            c.join("123456789", None).await.map(|_| ()),
            Error::RoomInvalid(RoomIdError::TooLong { len: 9, max: 8 }),
        ),
        (
            c.join("a\nb", None).await.map(|_| ()),
            Error::RoomInvalid(RoomIdError::ControlCharacter { at: 1 }),
        ),
        (
            c.watch("a\u{7f}").await.map(|_| ()),
            Error::RoomInvalid(RoomIdError::ControlCharacter { at: 1 }),
        ),
        (
            c.join("r3", Some(big.clone())).await.map(|_| ()),
            Error::MetaTooLarge {
                len: big_len,
                limit: 32,
            },
        ),
        (
            c.join("r1", None).await.map(|_| ()),
            Error::RoomFull { limit: 2 },
        ),
        (
            a.join("r3", None).await.map(|_| ()),
            Error::TooManyRooms { limit: 2 },
        ),
        (
            a.watch("r3").await.map(|_| ()),
            Error::TooManyRooms { limit: 2 },
        ),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!(got, Err(want), "case {i}");
    }
    assert_eq!(hub.stats().await.unwrap(), before, "nothing changed");
    assert_eq!(hub.room("r1").await.unwrap(), r1);
    assert_eq!(hub.room("r3").await.unwrap(), None);
    // Other sessions are unaffected.
    assert_eq!(c.join("r4", None).await.unwrap().position, 0);
}

/// `update` changes the holder's metadata without moving anyone: the one waiting sees it in its
/// next presence; an update of a room one does not stand in is `not_member` and changes nothing.
pub async fn update_changes_metadata_in_place<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut bn]).await;
    let editing = Meta::from_value(json!({ "name": "alice", "status": "editing" })).unwrap();
    let j = a.update(ROOM, editing.clone()).await.unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    assert_eq!(j.holder.meta, editing);
    let p = expect(&mut bn, "a presence with the new metadata", |n| {
        matches!(&n.kind, NoticeKind::Presence(p) if p.body.holder.as_ref().is_some_and(|h| h.meta == editing))
    })
    .await;
    assert_eq!(p.version(), j.version);
    assert_eq!(hub.occupants(ROOM).await.unwrap()[0].meta, editing);
    assert_eq!(
        b.join(ROOM, None).await.unwrap().position,
        1,
        "nobody moved"
    );

    let before = hub.room("other").await.unwrap();
    assert_eq!(
        b.update("other", meta("bob")).await.err(),
        Some(Error::NotMember)
    );
    assert_eq!(hub.room("other").await.unwrap(), before);
    assert_eq!(hub.version(ROOM).await.unwrap(), j.version);
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reason of a `displaced` notice.
fn displaced_reason(n: &Notice) -> Option<DisplacedReason> {
    match n.kind {
        NoticeKind::Displaced { reason, .. } => Some(reason),
        _ => None,
    }
}

/// Every person carries `since` (when it entered the line, Unix ms by the server's clock) and a
/// room's state and presence carry `held_since` (when the holder was granted it).
pub async fn since_and_held_since_are_stamped<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let start = unix_ms();
    let ja = a.join(ROOM, None).await.unwrap();
    // The server's clock, not the test's: allow a minute either way (paused time, clock skew
    // between this process and Redis).
    let near = |t: u64| t.abs_diff(start) < 60_000;
    assert!(
        near(ja.holder.since),
        "since {} near {start}",
        ja.holder.since
    );
    b.join(ROOM, None).await.unwrap();
    let room = hub.room(ROOM).await.unwrap().unwrap();
    assert_eq!(room.held_since, Some(ja.holder.since));
    assert!(room.occupants[1].since >= room.occupants[0].since);
    discard(&mut [&mut bn]).await;
    a.leave(ROOM).await.unwrap();
    let p = expect(
        &mut bn,
        "a presence after the hand-over",
        |n| matches!(&n.kind, NoticeKind::Presence(p) if p.position == Some(0)),
    )
    .await;
    let NoticeKind::Presence(p) = p.kind else {
        unreachable!()
    };
    let held = p.body.held_since.expect("someone holds");
    assert!(held >= ja.holder.since && near(held));
    assert_eq!(
        p.body.holder.as_ref().map(|h| h.since),
        Some(room.occupants[1].since),
        "since stays when entering the line"
    );
    b.leave(ROOM).await.unwrap();
    assert_eq!(hub.room(ROOM).await.unwrap(), None);
}

/// `active` answers the caller's place and tells nobody; from outside the line it is refused
/// with `not_member` and changes nothing.
pub async fn active_refreshes_and_refuses_outsiders<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.idle_timeout(Duration::from_secs(60)));
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let (c, _cn) = user(&hub, "carol").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    c.watch(ROOM).await.unwrap();
    discard(&mut [&mut an, &mut bn]).await;
    let before = hub.room(ROOM).await.unwrap();
    let j = a.active(ROOM).await.unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    assert_eq!(b.active(ROOM).await.unwrap().position, 1);
    assert_eq!(c.active(ROOM).await.err(), Some(Error::NotMember));
    assert_eq!(a.active("elsewhere").await.err(), Some(Error::NotMember));
    assert!(matches!(
        a.active("").await.err(),
        Some(Error::RoomInvalid(_))
    ));
    assert_eq!(hub.room(ROOM).await.unwrap(), before);
    assert!(settled(&mut an).await.is_empty());
    assert!(settled(&mut bn).await.is_empty());
}

/// A holder who stopped saying `active` while someone waits is displaced with reason `idle`
/// and the next in line is released; one who keeps saying it keeps the room.
pub async fn an_idle_holder_gives_way<B: Backend>(backend: B) {
    let idle = Duration::from_millis(1000);
    let hub = hub(backend, |b| b.idle_timeout(idle));
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    // Active well within the timeout for longer than it: alice keeps the room.
    for _ in 0..8 {
        tokio::time::sleep(idle / 5).await;
        a.active(ROOM).await.unwrap();
    }
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("alice"));
    assert_eq!(count_released(&settled(&mut bn).await), 0);
    // Then she walks away.
    let n = expect(&mut an, "displaced for idleness", |n| {
        displaced_reason(n).is_some()
    })
    .await;
    assert_eq!(displaced_reason(&n), Some(DisplacedReason::Idle));
    let NoticeKind::Displaced { by, position, .. } = n.kind else {
        unreachable!()
    };
    assert_eq!((who(&by), position), (person("bob"), 1));
    expect(&mut bn, "released", is_released).await;
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
}

/// Alone, an idle holder keeps the room; whoever joins then is granted it at once.
pub async fn an_idle_holder_alone_gives_way_at_the_next_join<B: Backend>(backend: B) {
    let idle = Duration::from_millis(300);
    let hub = hub(backend, |b| b.idle_timeout(idle));
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    tokio::time::sleep(idle * 2).await;
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("alice"));
    assert!(
        !settled(&mut an)
            .await
            .iter()
            .any(|n| displaced_reason(n).is_some())
    );
    let j = b.join(ROOM, None).await.unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    let n = expect(&mut an, "displaced", |n| displaced_reason(n).is_some()).await;
    assert_eq!(displaced_reason(&n), Some(DisplacedReason::Idle));
    expect(&mut bn, "released", is_released).await;
    let names: Vec<_> = whos(&hub.occupants(ROOM).await.unwrap());
    assert_eq!(names, [person("bob"), person("alice")]);
}

/// The application forces a release: the holder is displaced with reason `server`; a holder
/// alone keeps the room until the next join; an empty room is vacant.
pub async fn a_forced_release_displaces_with_reason_server<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let (c, mut cn) = user(&hub, "carol").await;
    assert_eq!(hub.release(ROOM).await, Ok(ForcedRelease::Vacant));
    assert!(matches!(hub.release("").await, Err(Error::RoomInvalid(_))));
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    discard(&mut [&mut an, &mut bn]).await;
    let Ok(ForcedRelease::HandedOver { version, to }) = hub.release(ROOM).await else {
        panic!("someone waits: handed over");
    };
    assert_eq!(who(&to), person("bob"));
    let n = expect(&mut an, "displaced", |n| displaced_reason(n).is_some()).await;
    assert_eq!(displaced_reason(&n), Some(DisplacedReason::Server));
    assert_eq!(n.version(), version);
    expect(&mut bn, "released", is_released).await;

    a.leave(ROOM).await.unwrap();
    discard(&mut [&mut an, &mut bn]).await;
    assert_eq!(hub.release(ROOM).await, Ok(ForcedRelease::Pending));
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
    let j = c.join(ROOM, None).await.unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    let n = expect(&mut bn, "displaced", |n| displaced_reason(n).is_some()).await;
    assert_eq!(displaced_reason(&n), Some(DisplacedReason::Server));
    expect(&mut cn, "released", is_released).await;
    // Spent: the next join waits.
    assert_eq!(a.join(ROOM, None).await.unwrap().position, 2);
}

/// The application kicks a session: it leaves without grace (the next is released), its notices
/// end with [`Error::Kicked`] and its resume token no longer works.
pub async fn a_kicked_session_leaves_at_once<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, mut an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();
    let token = a.resume_token();
    assert!(hub.kick(a.id()).await.unwrap());
    expect(&mut bn, "released", is_released).await;
    let ended = tokio::time::timeout(PATIENCE, async { while an.recv().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the kicked session's notices end");
    assert_eq!(an.close_reason(), Some(Error::Kicked));
    assert_eq!(hub.resume(token).await.err(), Some(Error::ResumeInvalid));
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("bob"));
}

/// Two tabs of one user are one occupant: both hold, neither waits behind the other, and the room
/// is handed over only when the last tab leaves.
pub async fn two_tabs_hold_together<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (t1, _t1n) = user(&hub, "alice").await;
    let (t2, _t2n) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    assert!(t1.join(ROOM, None).await.unwrap().holding);
    assert_eq!(b.join(ROOM, None).await.unwrap().position, 1);
    let j2 = t2.join(ROOM, None).await.unwrap();
    assert!(j2.holding, "a second tab holds too");
    assert_eq!(hub.occupants(ROOM).await.unwrap().len(), 2);
    discard(&mut [&mut bn]).await;
    t1.leave(ROOM).await.unwrap();
    assert_eq!(count_released(&settled(&mut bn).await), 0);
    assert_eq!(holder_name(&hub, ROOM).await.as_deref(), Some("alice"));
    t2.leave(ROOM).await.unwrap();
    expect(&mut bn, "released", is_released).await;
}

/// `released` is sent exactly once per hand-over, to every session of the new holder.
pub async fn released_once_per_handover_to_each_session<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b1, mut b1n) = user(&hub, "bob").await;
    let (b2, mut b2n) = user(&hub, "bob").await;
    let (c, mut cn) = user(&hub, "carol").await;
    a.join(ROOM, None).await.unwrap();
    b1.join(ROOM, None).await.unwrap();
    b2.join(ROOM, None).await.unwrap();
    c.join(ROOM, None).await.unwrap();
    discard(&mut [&mut b1n, &mut b2n, &mut cn]).await;

    a.leave(ROOM).await.unwrap();
    assert_eq!(count_released(&settled(&mut b1n).await), 1);
    assert_eq!(count_released(&settled(&mut b2n).await), 1);
    assert_eq!(count_released(&settled(&mut cn).await), 0);
    a.join(ROOM, None).await.unwrap();
    b1.disconnect().await; // default grace: bob still holds through b2 anyway
    b2.leave(ROOM).await.unwrap();
    let got = settled(&mut cn).await;
    assert_eq!(
        count_released(&got),
        0,
        "bob's first tab is in grace and still holds"
    );
    let (b1, _b1n, _) = hub.resume(b1.resume_token()).await.unwrap();
    b1.leave(ROOM).await.unwrap();
    expect(&mut cn, "released", is_released).await;
    assert_eq!(count_released(&settled(&mut cn).await), 0);
}

/// When the line moves, everyone in it learns their new place (article bug 6: only the next in
/// line heard anything).
pub async fn everyone_learns_the_line_moved<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = user(&hub, "bob").await;
    let (c, mut cn) = user(&hub, "carol").await;
    let (d, mut dn) = user(&hub, "dave").await;
    for s in [&a, &b, &c, &d] {
        s.join(ROOM, None).await.unwrap();
    }
    discard(&mut [&mut bn, &mut cn, &mut dn]).await;
    a.leave(ROOM).await.unwrap();
    expect(&mut bn, "released", is_released).await;
    for (n, want) in [(&mut cn, 1), (&mut dn, 2)] {
        let got = expect(n, "presence", |n| matches!(n.kind, NoticeKind::Presence(_))).await;
        let NoticeKind::Presence(p) = got.kind else {
            unreachable!()
        };
        assert_eq!(p.position, Some(want));
        assert_eq!(p.body.holder.as_ref().map(who), Some(person("bob")));
        assert_eq!(p.body.waiting, 2);
    }
}

/// A late joiner is told who holds the room (with their metadata) and its place (the article's
/// `is_occupied`).
pub async fn occupied_names_holder_and_place<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b);
    let (a, _an) = user(&hub, "alice").await;
    let (b, mut bn) = hub.connect(None, Meta::empty()).await.unwrap();
    let custom = Meta::from_value(json!({ "name": "Alice A." })).unwrap();
    a.join(ROOM, Some(custom.clone())).await.unwrap();
    let j = b.join(ROOM, None).await.unwrap();
    assert_eq!(j.holder.meta, custom);
    let n = expect(&mut bn, "occupied", |n| {
        matches!(n.kind, NoticeKind::Occupied { .. })
    })
    .await;
    let NoticeKind::Occupied {
        holder, position, ..
    } = n.kind
    else {
        unreachable!()
    };
    assert_eq!(holder.id.to_string(), "alice");
    assert_eq!(holder.meta, custom);
    assert_eq!(position, 1);
    let anon = &hub.occupants(ROOM).await.unwrap()[1];
    assert_eq!(anon.id, OccupantKey::Anonymous(b.id()));
    assert_eq!(b.principal(), None);
}

/// The authorization hook is asked for join, take over and watch; a refusal is
/// `Forbidden { reason }` and changes nothing.
pub async fn authorization_denies_without_change<B: Backend>(backend: B) {
    let hub = hub(backend, |b| {
        b.authorize(|req: &AuthRequest<'_>| {
            let admin = req.principal == Some("admin");
            match req.action {
                Action::Join | Action::Watch if req.room.starts_with("secret") && !admin => {
                    Err(format!("{} is secret", req.room))
                }
                Action::Takeover if !admin => Err("only admins take over".into()),
                _ => Ok(()),
            }
        })
    });
    let (admin, _n0) = user(&hub, "admin").await;
    let (a, _an) = user(&hub, "alice").await;
    let (anon, _n2) = hub.connect(None, Meta::empty()).await.unwrap();
    a.join(ROOM, None).await.unwrap();
    let before = hub.stats().await.unwrap();
    let room = hub.room(ROOM).await.unwrap();
    let forbidden = |r: &str| Error::Forbidden { reason: r.into() };
    assert_eq!(
        a.join("secret-1", None).await.err(),
        Some(forbidden("secret-1 is secret"))
    );
    assert_eq!(
        anon.watch("secret-1").await.err(),
        Some(forbidden("secret-1 is secret"))
    );
    anon.join(ROOM, None).await.unwrap();
    let room_with_anon = hub.room(ROOM).await.unwrap();
    assert_eq!(
        anon.takeover(ROOM).await.err(),
        Some(forbidden("only admins take over"))
    );
    assert_eq!(hub.room(ROOM).await.unwrap(), room_with_anon);
    anon.leave(ROOM).await.unwrap();
    assert_eq!(hub.room("secret-1").await.unwrap(), None);
    assert_eq!(hub.stats().await.unwrap(), before);
    assert_eq!(
        hub.room(ROOM).await.unwrap().map(|r| r.occupants),
        room.map(|r| r.occupants)
    );
    // Invalid room ids are refused as such before the hook sees them.
    assert!(matches!(
        a.join("", None).await,
        Err(Error::RoomInvalid(RoomIdError::Empty))
    ));
    admin.join("secret-1", None).await.unwrap();
    admin.join(ROOM, None).await.unwrap();
    assert!(admin.takeover(ROOM).await.unwrap().holding);
}

/// A session that does not read its notices is closed when its buffer overflows: its notices end
/// with `SlowConsumer`, its rooms are left and the next in line is released. Nobody else is
/// affected. (A queued presence is replaced by the room's next one, so a busy room alone never
/// overflows a reader that is merely slow; here the unread notices span several rooms.)
pub async fn slow_consumer_is_closed<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.notice_buffer(4));
    let (slow, mut slow_n) = user(&hub, "slow").await;
    slow.join(ROOM, None).await.unwrap();
    let (first, mut first_n) = user(&hub, "first").await;
    first.join(ROOM, None).await.unwrap();
    discard(&mut [&mut first_n]).await;
    // Others join one by one and read their notices; `slow` never reads, and stands in one more
    // room each time. Presences of one room replace each other in its queue, so what fills it is
    // one presence per room.
    let mut others = Vec::new();
    let mut first_seen = Vec::new();
    for i in 0..8 {
        let (s, mut n) = user(&hub, &format!("user-{i}")).await;
        s.join(ROOM, None).await.unwrap();
        if slow.is_live() {
            let _ = slow.join(&format!("side-{i}"), None).await;
        }
        discard(&mut [&mut n]).await;
        first_seen.extend(settled(&mut first_n).await);
        others.push((s, n));
        if hub.holder(ROOM).await.unwrap().as_ref().map(who) != Some(person("slow")) {
            break;
        }
    }
    eventually("the slow consumer is gone", || async {
        holder_name(&hub, ROOM).await.as_deref() == Some("first")
    })
    .await;
    assert_eq!(
        slow_n.close_reason(),
        Some(Error::SlowConsumer { capacity: 4 })
    );
    assert_eq!(slow_n.recv().await, None);
    assert!(!slow.is_live());
    assert_eq!(
        slow.join(ROOM, None).await.err(),
        Some(Error::UnknownSession)
    );
    assert_eq!(
        hub.resume(slow.resume_token()).await.err(),
        Some(Error::ResumeInvalid)
    );
    let stats = hub.stats().await.unwrap();
    assert_eq!(stats.sessions, 1 + others.len());
    assert_eq!(stats.sessions_in_grace, 0);
    first_seen.extend(settled(&mut first_n).await);
    assert_eq!(
        count_released(&first_seen),
        1,
        "the next in line is released once"
    );
    for (s, _) in &others {
        assert!(s.is_live());
    }
}

/// The counts for metrics.
pub async fn stats_count<B: Backend>(backend: B) {
    let hub = hub(backend, |b| b.grace(Duration::from_secs(60)));
    let (a, _an) = user(&hub, "alice").await;
    let (b, _bn) = user(&hub, "bob").await;
    let (c, _cn) = user(&hub, "carol").await;
    a.join("r1", None).await.unwrap();
    b.join("r1", None).await.unwrap();
    b.join("r2", None).await.unwrap();
    c.watch("r1").await.unwrap();
    c.watch("r3").await.unwrap();
    c.disconnect().await;
    let s = hub.stats().await.unwrap();
    assert_eq!(s.rooms, 3);
    assert_eq!(s.sessions, 3);
    assert_eq!(s.sessions_in_grace, 1);
    assert_eq!(s.occupants, 3);
    assert_eq!(s.watchers, 2);
    assert_eq!(hub.live_connections(), 2);
}

/// Many tasks calling at once on one room: every call gets a consistent answer, each session
/// receives its notices in version order, and the backend's invariants hold afterwards.
pub async fn concurrent_calls_keep_order<B: Backend>(backend: B) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 20;
    let hub = hub(backend, |b| b.notice_buffer(1 << 16));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let principal = if t % 4 == 0 {
            Some("shared".to_string())
        } else {
            None
        };
        let (s, mut n) = hub.connect(principal, Meta::empty()).await.unwrap();
        let collector = tokio::spawn(async move {
            let mut versions = Vec::new();
            while let Some(x) = n.recv().await {
                versions.push(x.version());
            }
            versions
        });
        let worker = tokio::spawn(async move {
            for r in 0..ROUNDS {
                let j = s.join(ROOM, None).await.unwrap();
                assert_eq!(j.holding, j.position == 0);
                if (r + t) % 3 == 0 {
                    let j = s.takeover(ROOM).await.unwrap();
                    assert_eq!(j.position, 0);
                }
                if r % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                assert!(s.leave(ROOM).await.unwrap().was_member);
            }
            s.close().await;
        });
        tasks.push((worker, collector));
    }
    for (worker, collector) in tasks {
        worker.await.expect("worker");
        let versions = collector.await.expect("collector");
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "a session saw versions out of order: {versions:?}"
        );
    }
    eventually("the room is empty", || async {
        hub.room(ROOM).await.unwrap().is_none()
    })
    .await;
    assert_eq!(hub.stats().await.unwrap().sessions, 0);
    hub.backend().check_invariants().await.expect("invariants");
}
