//! One test per rule of DESIGN.md "Rules", and one per article bug that lives in the state
//! machine (numbered as in DESIGN.md "What the original gets wrong"). Each reads as a small story:
//! who connects, who joins, what everyone is told.

use std::time::{Duration, Instant};

use occupancy_core::{
    Config, DisplacedReason, Ending, Error, ForcedRelease, Limits, Machine, Meta, Notice,
    NoticeKind, OccupantKey, ResumeToken, RoomIdError, SessionId, Stats,
};
use serde_json::json;

const DOC: &str = "document-1";
/// The Unix time (ms) of the start of every story.
const T0: u64 = 1_764_460_800_000;

/// A machine plus a clock, with helpers that keep the stories short.
struct World {
    m: Machine,
    now: Instant,
    next_token: u128,
}

impl World {
    fn new() -> Self {
        Self::with(Config::default())
    }

    fn with(config: Config) -> Self {
        let now = Instant::now();
        let mut m = Machine::new(config).unwrap();
        // The machine reads no clock: its time is what the driver passes in. Time 0 of the
        // stories is Unix millisecond T0.
        m.advance(now);
        m.set_wall_clock(now, T0);
        World {
            m,
            now,
            next_token: 1000,
        }
    }

    fn token(&mut self) -> ResumeToken {
        self.next_token += 1;
        ResumeToken(self.next_token)
    }

    /// An anonymous session.
    fn anon(&mut self, id: u64) -> SessionId {
        let t = self.token();
        self.m
            .connect(SessionId(id), None, Meta::empty(), t)
            .unwrap();
        SessionId(id)
    }

    /// A session of a signed-in user.
    fn user(&mut self, id: u64, user: &str) -> SessionId {
        let t = self.token();
        let meta = Meta::from_value(json!({ "name": user })).unwrap();
        self.m.connect(SessionId(id), Some(user), meta, t).unwrap();
        SessionId(id)
    }

    fn notices(&mut self) -> Vec<Notice> {
        self.m.drain_notices().collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.m.handle_timeout(self.now);
    }
}

fn released_to(notices: &[Notice]) -> Vec<SessionId> {
    let mut v: Vec<_> = notices
        .iter()
        .filter(|n| matches!(n.kind, NoticeKind::Released { .. }))
        .map(|n| n.session)
        .collect();
    v.sort();
    v
}

fn for_session(notices: &[Notice], s: SessionId) -> Vec<&NoticeKind> {
    notices
        .iter()
        .filter(|n| n.session == s)
        .map(|n| &n.kind)
        .collect()
}

// ----- room ids ------------------------------------------------------------------------------

#[test]
fn room_ids_are_validated_and_nothing_is_stored_for_a_bad_one() {
    let mut w = World::with({
        let mut c = Config::default();
        c.limits = {
            let mut l = Limits::default();
            l.max_room_id_len = 8;
            l
        };
        c
    });
    let a = w.anon(1);
    let before = w.m.stats();
    assert_eq!(
        w.m.join(a, "", None),
        Err(Error::RoomInvalid(RoomIdError::Empty))
    );
    assert_eq!(
        w.m.join(a, "123456789", None),
        Err(Error::RoomInvalid(RoomIdError::TooLong { len: 9, max: 8 }))
    );
    assert_eq!(
        w.m.join(a, "ab\ncd", None),
        Err(Error::RoomInvalid(RoomIdError::ControlCharacter { at: 2 }))
    );
    assert_eq!(w.m.watch(a, "\u{7f}").unwrap_err().code(), "room_invalid");
    // Multi-byte UTF-8 counts bytes: 3 × 'é' = 6 bytes fits, 5 × = 10 does not.
    assert!(w.m.join(a, "ééé", None).is_ok());
    w.m.leave(a, "ééé").unwrap();
    assert!(matches!(
        w.m.join(a, "ééééé", None),
        Err(Error::RoomInvalid(RoomIdError::TooLong { len: 10, .. }))
    ));
    assert_eq!(w.m.stats(), before);
    assert!(w.m.session_rooms(a).unwrap().is_empty());
    w.m.check_invariants().unwrap();
}

// ----- the line --------------------------------------------------------------------------------

#[test]
fn first_holds_the_rest_wait_in_order_and_are_told_it_is_occupied() {
    let mut w = World::new();
    let (a, b, c) = (w.anon(1), w.anon(2), w.anon(3));
    let ja = w.m.join(a, DOC, None).unwrap();
    assert!(ja.holding);
    assert_eq!(ja.position, 0);
    assert_eq!(w.m.join(b, DOC, None).unwrap().position, 1);
    assert_eq!(w.m.join(c, DOC, None).unwrap().position, 2);
    let n = w.notices();
    // The first joiner is not "released": it was never waiting (its join reply says it holds).
    assert!(released_to(&n).is_empty());
    let occupied: Vec<_> = n
        .iter()
        .filter_map(|n| match &n.kind {
            NoticeKind::Occupied {
                holder, position, ..
            } => Some((n.session, holder.id.clone(), *position)),
            _ => None,
        })
        .collect();
    assert_eq!(
        occupied,
        vec![
            (b, OccupantKey::Anonymous(a), 1),
            (c, OccupantKey::Anonymous(a), 2)
        ]
    );
    assert_eq!(w.m.holder(DOC).unwrap().id, OccupantKey::Anonymous(a));
}

#[test]
fn bug1_joining_twice_is_idempotent_and_tells_nobody() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.notices();
    let version = w.m.room(DOC).unwrap().version;
    // React StrictMode mounts twice: the same socket joins again.
    let again = w.m.join(b, DOC, None).unwrap();
    assert_eq!((again.position, again.version), (1, version));
    assert!(w.notices().is_empty());
    assert_eq!(w.m.room(DOC).unwrap().occupants.len(), 2);
    // And when the holder leaves, b is released once, not queued behind itself.
    w.m.leave(a, DOC).unwrap();
    assert_eq!(released_to(&w.notices()), vec![b]);
    assert_eq!(w.m.position(b, DOC), Some(0));
}

#[test]
fn a_users_tabs_are_one_occupant_that_holds_together() {
    let mut w = World::new();
    let alice1 = w.user(1, "alice");
    let bob = w.user(2, "bob");
    let alice2 = w.user(3, "alice");
    w.m.join(alice1, DOC, None).unwrap();
    w.m.join(bob, DOC, None).unwrap();
    // Alice's second tab holds too: she never waits behind herself, and bob is still second.
    let j = w.m.join(alice2, DOC, None).unwrap();
    assert!(j.holding);
    assert_eq!(w.m.position(bob, DOC), Some(1));
    assert_eq!(w.m.occupants(DOC).len(), 2);
    w.notices();
    // Closing one tab keeps the room; closing both releases bob.
    w.m.leave(alice1, DOC).unwrap();
    assert!(released_to(&w.notices()).is_empty());
    w.m.leave(alice2, DOC).unwrap();
    assert_eq!(released_to(&w.notices()), vec![bob]);
}

#[test]
fn released_goes_once_to_every_session_of_the_new_holder() {
    let mut w = World::new();
    let a = w.anon(1);
    let bob1 = w.user(2, "bob");
    let bob2 = w.user(3, "bob");
    let c = w.anon(4);
    for s in [a, bob1, bob2, c] {
        w.m.join(s, DOC, None).unwrap();
    }
    w.notices();
    w.m.leave(a, DOC).unwrap();
    let n = w.notices();
    assert_eq!(released_to(&n), vec![bob1, bob2]);
    assert!(for_session(&n, a).is_empty(), "who left hears nothing");
}

#[test]
fn anonymous_sessions_are_separate_occupants() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    assert_eq!(w.m.occupants(DOC).len(), 2);
}

#[test]
fn bug2_leave_is_explicit_releases_the_next_and_is_idempotent() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.notices();
    // A single-page app navigates away without disconnecting.
    assert!(w.m.leave(a, DOC).unwrap().was_member);
    assert_eq!(released_to(&w.notices()), vec![b]);
    let again = w.m.leave(a, DOC).unwrap();
    assert!(!again.was_member);
    assert!(w.notices().is_empty());
    assert!(w.m.is_live(a), "leaving a room does not end the session");
}

#[test]
fn bug6_everyone_waiting_learns_the_queue_moved() {
    let mut w = World::new();
    let s: Vec<_> = (1..=4).map(|i| w.anon(i)).collect();
    for &x in &s {
        w.m.join(x, DOC, None).unwrap();
    }
    w.notices();
    w.m.leave(s[0], DOC).unwrap();
    let n = w.notices();
    for (expected, &x) in s[1..].iter().enumerate() {
        let positions: Vec<_> = for_session(&n, x)
            .into_iter()
            .filter_map(|k| match k {
                NoticeKind::Presence(p) => Some(p.position),
                _ => None,
            })
            .collect();
        assert_eq!(positions, vec![Some(expected as u32)], "session {x:?}");
    }
}

#[test]
fn presence_lists_the_first_few_with_metadata() {
    let mut w = World::with({
        let mut c = Config::default();
        c.presence_occupants = 2;
        c
    });
    let a = w.user(1, "ann");
    let b = w.user(2, "ben");
    let c = w.user(3, "cat");
    for x in [a, b, c] {
        w.m.join(x, DOC, None).unwrap();
    }
    let n = w.notices();
    let last = n
        .iter()
        .rev()
        .find_map(|n| match &n.kind {
            NoticeKind::Presence(p) if n.session == c => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last.body.waiting, 2);
    assert_eq!(last.position, Some(2));
    let names: Vec<_> = last
        .body
        .occupants
        .iter()
        .map(|p| p.meta.get("name").unwrap().as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ann", "ben"]);
}

#[test]
fn join_meta_overrides_the_session_default() {
    let mut w = World::new();
    let a = w.user(1, "ann");
    let meta = Meta::from_value(json!({"name": "Ann (editing)"})).unwrap();
    w.m.join(a, DOC, Some(meta.clone())).unwrap();
    assert_eq!(w.m.holder(DOC).unwrap().meta, meta);
}

// ----- disconnect, grace, resume ----------------------------------------------------------------

#[test]
fn bug3_disconnect_touches_only_the_sessions_own_rooms() {
    let mut w = World::with({
        let mut c = Config::default();
        c.grace = Duration::ZERO;
        c
    });
    let filler = w.anon(1);
    let a = w.anon(2);
    let b = w.anon(3);
    // Many other rooms, held by someone else.
    let mut limits_ok = 0;
    for i in 0..30 {
        if w.m.join(filler, &format!("other-{i}"), None).is_ok() {
            limits_ok += 1;
        }
    }
    assert_eq!(limits_ok, 30);
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    let versions: Vec<_> = (0..30)
        .map(|i| w.m.room(&format!("other-{i}")).unwrap().version)
        .collect();
    w.notices();
    w.m.disconnect(a, w.now).unwrap();
    let n = w.notices();
    assert_eq!(released_to(&n), vec![b]);
    assert!(n.iter().all(|n| n.room.as_str() == DOC));
    let after: Vec<_> = (0..30)
        .map(|i| w.m.room(&format!("other-{i}")).unwrap().version)
        .collect();
    assert_eq!(versions, after, "no other room was touched");
    assert!(!w.m.contains_session(a));
    // The cost side (1k vs 1M rooms) is measured in benches/core.rs.
}

#[test]
fn bug5_a_reload_within_the_grace_keeps_the_place() {
    let mut w = World::new(); // grace 5 s
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    let token = w.m.resume_token(a).unwrap();
    w.notices();
    w.m.disconnect(a, w.now).unwrap();
    assert_eq!(w.m.poll_timeout(), Some(w.now + Duration::from_secs(5)));
    w.advance(Duration::from_secs(4));
    // While the holder is in grace, nobody else is granted the room.
    assert!(released_to(&w.notices()).is_empty());
    assert_eq!(w.m.position(b, DOC), Some(1));
    assert_eq!(
        w.m.join(a, "x", None),
        Err(Error::UnknownSession),
        "a session in grace cannot act"
    );
    let new = w.token();
    let r = w.m.resume(token, new, w.now).unwrap();
    assert_eq!(r.session, a);
    assert!(!r.was_live);
    assert_eq!(r.rooms.len(), 1);
    assert!(r.rooms[0].holding);
    assert_eq!(w.m.poll_timeout(), None);
    // It is told where it stands, and nobody else hears anything.
    let n = w.notices();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].session, a);
    // The token is single use.
    assert_eq!(
        {
            let t = w.token();
            w.m.resume(token, t, w.now)
        },
        Err(Error::ResumeInvalid)
    );
    w.advance(Duration::from_secs(60));
    assert_eq!(w.m.position(a, DOC), Some(0), "resumed: no expiry any more");
}

/// Found by the churn soak: a session that stands in a room *and* watches it was sent two
/// presence notices for it on resume, the member's (with its place) then the watcher's (without),
/// and the Hub's queue keeps only a room's latest presence, so the client never learnt its place
/// back. Like every other change, a resume now tells such a session once, as a member.
#[test]
fn a_resumed_member_who_also_watches_is_told_its_place_once() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.m.watch(b, DOC).unwrap();
    w.m.watch(b, "other").unwrap();
    let token = w.m.resume_token(b).unwrap();
    w.m.disconnect(b, w.now).unwrap();
    w.notices();
    let new = w.token();
    w.m.resume(token, new, w.now).unwrap();
    let n = w.notices();
    let told: Vec<(&str, Option<u32>)> = n
        .iter()
        .map(|n| match &n.kind {
            NoticeKind::Presence(p) => (n.room.as_str(), p.position),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(told, vec![(DOC, Some(1)), ("other", None)]);
    assert!(n.iter().all(|n| n.session == b));
}

#[test]
fn grace_running_out_releases_the_next_and_the_token_dies() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    let token = w.m.resume_token(a).unwrap();
    w.m.disconnect(a, w.now).unwrap();
    w.m.disconnect(a, w.now).unwrap(); // idempotent
    w.notices();
    w.advance(Duration::from_secs(5));
    assert_eq!(released_to(&w.notices()), vec![b]);
    assert!(!w.m.contains_session(a));
    assert_eq!(
        {
            let t = w.token();
            w.m.resume(token, t, w.now)
        },
        Err(Error::ResumeInvalid)
    );
}

#[test]
fn a_resume_after_the_deadline_fails_even_before_the_timer_ran() {
    let mut w = World::new();
    let a = w.anon(1);
    w.m.join(a, DOC, None).unwrap();
    let token = w.m.resume_token(a).unwrap();
    w.m.disconnect(a, w.now).unwrap();
    let late = w.now + Duration::from_secs(5);
    assert_eq!(
        {
            let t = w.token();
            w.m.resume(token, t, late)
        },
        Err(Error::ResumeInvalid)
    );
    assert!(w.m.room(DOC).is_none());
    w.m.check_invariants().unwrap();
}

#[test]
fn resuming_a_live_session_says_so_so_the_driver_can_close_the_old_connection() {
    let mut w = World::new();
    let a = w.anon(1);
    let token = w.m.resume_token(a).unwrap();
    let r = {
        let t = w.token();
        w.m.resume(token, t, w.now)
    }
    .unwrap();
    assert!(r.was_live);
}

#[test]
fn zero_grace_leaves_at_once() {
    let mut w = World::with({
        let mut c = Config::default();
        c.grace = Duration::ZERO;
        c
    });
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.notices();
    w.m.disconnect(a, w.now).unwrap();
    assert_eq!(released_to(&w.notices()), vec![b]);
    assert_eq!(w.m.poll_timeout(), None);
}

/// A page closed on purpose (`Ending::Closed`) keeps its place for `close_grace` (2 s), long
/// enough for a reload; a lost connection for the whole `grace` (5 s). A reload within the close
/// grace resumes as usual.
#[test]
fn a_closed_page_hands_over_after_the_close_grace_a_lost_one_after_the_grace() {
    let mut w = World::new();
    let (a, b, c) = (w.anon(1), w.anon(2), w.anon(3));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.m.join(c, "other", None).unwrap();
    w.m.join(b, "other", None).unwrap();
    let start = w.now;
    w.m.disconnect_as(a, w.now, Ending::Closed).unwrap();
    w.m.disconnect_as(c, w.now, Ending::Lost).unwrap();
    // Idempotent, whatever the ending: the first deadline stays.
    w.m.disconnect_as(a, w.now, Ending::Lost).unwrap();
    assert_eq!(w.m.poll_timeout(), Some(start + Duration::from_secs(2)));
    w.notices();
    w.advance(Duration::from_secs(2));
    assert_eq!(released_to(&w.notices()), vec![b]);
    assert_eq!(
        w.m.room(DOC).unwrap().holder().unwrap().sessions.to_vec(),
        vec![b]
    );
    assert_eq!(
        w.m.position(c, "other"),
        Some(0),
        "a lost connection keeps its place"
    );
    w.advance(Duration::from_secs(3));
    assert_eq!(released_to(&w.notices()), vec![b]);
    assert!(!w.m.contains_session(c));

    // A reload within the close grace keeps the place.
    let d = w.anon(4);
    w.m.join(d, "third", None).unwrap();
    let token = w.m.resume_token(d).unwrap();
    w.m.disconnect_as(d, w.now, Ending::Closed).unwrap();
    w.advance(Duration::from_millis(1_999));
    let t = w.token();
    assert_eq!(w.m.resume(token, t, w.now).unwrap().rooms.len(), 1);
    assert_eq!(w.m.position(d, "third"), Some(0));
    w.m.check_invariants().unwrap();
}

/// The close grace is never longer than the grace (with zero grace, a closed page leaves at
/// once too), and zero close grace leaves at once while a lost connection keeps its grace.
#[test]
fn the_close_grace_is_capped_by_the_grace() {
    let config = |grace: u64, close: u64| {
        let mut c = Config::default();
        c.grace = Duration::from_millis(grace);
        c.close_grace = Duration::from_millis(close);
        c
    };
    assert_eq!(
        config(1_000, 2_000).grace_for(Ending::Closed),
        Duration::from_secs(1)
    );
    assert_eq!(
        config(5_000, 2_000).grace_for(Ending::Closed),
        Duration::from_secs(2)
    );
    assert_eq!(
        config(5_000, 2_000).grace_for(Ending::Lost),
        Duration::from_secs(5)
    );
    for (grace, close) in [(0, 2_000), (5_000, 0)] {
        let mut w = World::with(config(grace, close));
        let (a, b) = (w.anon(1), w.anon(2));
        w.m.join(a, DOC, None).unwrap();
        w.m.join(b, DOC, None).unwrap();
        w.notices();
        w.m.disconnect_as(a, w.now, Ending::Closed).unwrap();
        assert_eq!(
            released_to(&w.notices()),
            vec![b],
            "grace {grace} close {close}"
        );
        assert!(!w.m.contains_session(a));
    }
}

// ----- take over, watch ------------------------------------------------------------------------

#[test]
fn take_over_moves_the_taker_first_and_displaces_the_holder_to_second() {
    let mut w = World::new();
    let a = w.user(1, "ann");
    let b = w.user(2, "ben");
    let c = w.user(3, "cat");
    for x in [a, b, c] {
        w.m.join(x, DOC, None).unwrap();
    }
    w.notices();
    let j = w.m.takeover(c, DOC).unwrap();
    assert!(j.holding);
    let n = w.notices();
    assert_eq!(released_to(&n), vec![c]);
    let displaced: Vec<_> = n
        .iter()
        .filter_map(|n| match &n.kind {
            NoticeKind::Displaced { by, position, .. } => {
                Some((n.session, by.id.to_string(), *position))
            }
            _ => None,
        })
        .collect();
    assert_eq!(displaced, vec![(a, "cat".to_string(), 1)]);
    assert_eq!(w.m.position(a, DOC), Some(1));
    assert_eq!(w.m.position(b, DOC), Some(2));
    // Taking over what you hold changes nothing.
    let v = w.m.room(DOC).unwrap().version;
    w.m.takeover(c, DOC).unwrap();
    assert_eq!(w.m.room(DOC).unwrap().version, v);
    // Only someone in the line may take over.
    let d = w.anon(4);
    assert_eq!(w.m.takeover(d, DOC), Err(Error::NotInRoom));
    assert_eq!(w.m.takeover(d, "elsewhere"), Err(Error::NotInRoom));
    assert!(w.m.room("elsewhere").is_none());
}

#[test]
fn watchers_see_presence_never_hold_and_stop_on_unwatch_or_disconnect() {
    let mut w = World::with({
        let mut c = Config::default();
        c.grace = Duration::ZERO;
        c
    });
    let watcher = w.anon(1);
    let a = w.user(2, "ann");
    let p = w.m.watch(watcher, DOC).unwrap();
    assert!(p.holder.is_none());
    assert_eq!(w.m.watch(watcher, DOC).unwrap(), p, "idempotent");
    w.m.join(a, DOC, None).unwrap();
    let n = w.notices();
    let seen: Vec<_> = for_session(&n, watcher);
    assert!(
        matches!(seen[..], [NoticeKind::Presence(p)] if p.position.is_none() && p.body.holder.as_ref().unwrap().id.to_string() == "ann")
    );
    assert_eq!(w.m.occupants(DOC).len(), 1, "a watcher is not an occupant");
    assert!(w.m.unwatch(watcher, DOC).unwrap());
    assert!(!w.m.unwatch(watcher, DOC).unwrap());
    w.m.leave(a, DOC).unwrap();
    assert!(for_session(&w.notices(), watcher).is_empty());
    assert!(w.m.room(DOC).is_none());
    w.m.watch(watcher, DOC).unwrap();
    w.m.disconnect(watcher, w.now).unwrap();
    assert_eq!(w.m.stats().watchers, 0);
    assert!(w.m.room(DOC).is_none());
}

// ----- versions ---------------------------------------------------------------------------------

#[test]
fn versions_strictly_increase_even_when_a_room_is_emptied_and_created_again() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    let v1 = w.m.join(a, DOC, None).unwrap().version;
    let v2 = w.m.join(b, DOC, None).unwrap().version;
    w.m.leave(a, DOC).unwrap();
    w.m.leave(b, DOC).unwrap();
    assert!(w.m.room(DOC).is_none(), "an empty room is forgotten");
    let w3 = w.m.watch(a, DOC).unwrap().version;
    let v4 = w.m.join(b, DOC, None).unwrap().version;
    assert!(v1 < v2 && v2 < w3 + 1 && w3 < v4, "{v1} {v2} {w3} {v4}");
    for n in w.notices() {
        assert!(n.version() >= v1);
    }
}

// ----- update -----------------------------------------------------------------------------------

fn status(s: &str) -> Meta {
    Meta::from_value(json!({ "status": s })).unwrap()
}

/// The holder goes from "viewing" to "editing" without leaving: same place, same version order,
/// and everyone in the room (and its watchers) sees the new metadata. The same metadata again
/// changes nothing.
#[test]
fn update_changes_the_metadata_in_place_and_tells_who_sees_it() {
    let mut w = World::new();
    let (a, b, watcher) = (w.user(1, "ann"), w.user(2, "bob"), w.anon(3));
    w.m.join(a, DOC, Some(status("viewing"))).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.m.watch(watcher, DOC).unwrap();
    w.notices();
    let before = w.m.room(DOC).unwrap().version;

    let j = w.m.update(a, DOC, status("editing")).unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    assert!(j.version > before);
    assert_eq!(j.holder.meta, status("editing"));
    let told: Vec<SessionId> = w.notices().iter().map(|n| n.session).collect();
    assert_eq!(
        told,
        vec![a, b, watcher],
        "everyone's presence shows the holder"
    );
    assert_eq!(
        w.m.room(DOC).unwrap().holder().unwrap().meta,
        status("editing")
    );

    let again = w.m.update(a, DOC, status("editing")).unwrap();
    assert_eq!(again.version, j.version, "the same metadata is no change");
    assert!(w.notices().is_empty());
    w.m.check_invariants().unwrap();
}

/// Further back than the presence list shows, an update is news only to the watchers (no
/// member's view lists that occupant): O(watchers), not O(line).
#[test]
fn an_update_deep_in_the_line_tells_only_the_watchers() {
    let mut w = World::with({
        let mut c = Config::default();
        c.presence_occupants = 2;
        c
    });
    let ids: Vec<SessionId> = (1..=5).map(|i| w.anon(i)).collect();
    for &s in &ids {
        w.m.join(s, DOC, None).unwrap();
    }
    let watcher = w.anon(9);
    w.m.watch(watcher, DOC).unwrap();
    w.notices();
    assert_eq!(
        w.m.update(ids[4], DOC, status("editing")).unwrap().position,
        4
    );
    let told: Vec<SessionId> = w.notices().iter().map(|n| n.session).collect();
    assert_eq!(told, vec![watcher]);
    w.m.update(ids[1], DOC, status("editing")).unwrap();
    assert_eq!(w.notices().len(), 6, "the second is in everyone's list");
}

/// Bad updates are refused in the machine's order — room id, session, metadata, membership —
/// and change nothing. Another tab of the same user standing in the room does not make this
/// session a member.
#[test]
fn bad_updates_are_refused_and_change_nothing() {
    let mut w = World::with(small_limits());
    let (a, tab2, b) = (w.user(1, "ann"), w.user(2, "ann"), w.anon(3));
    w.m.join(a, "r1", None).unwrap();
    w.m.join(b, "r1", None).unwrap();
    w.notices();
    let before = snapshot(&w.m);
    let big = Meta::from_value(json!({ "x": "y".repeat(64) })).unwrap();
    assert!(matches!(
        w.m.update(a, "", status("x")),
        Err(Error::RoomInvalid(_))
    ));
    assert_eq!(
        w.m.update(SessionId(99), "r1", big.clone()),
        Err(Error::UnknownSession)
    );
    assert!(matches!(
        w.m.update(a, "r1", big.clone()),
        Err(Error::MetaTooLarge { .. })
    ));
    assert_eq!(
        w.m.update(a, "r2", status("x")),
        Err(Error::NotMember),
        "unknown room"
    );
    assert_eq!(
        w.m.update(tab2, "r1", status("x")),
        Err(Error::NotMember),
        "another tab"
    );
    w.m.watch(tab2, "r2").unwrap();
    w.notices();
    let before_watch = snapshot(&w.m);
    assert_eq!(
        w.m.update(tab2, "r2", status("x")),
        Err(Error::NotMember),
        "a watcher"
    );
    assert_eq!(snapshot(&w.m), before_watch);
    assert_ne!(before, before_watch);
    assert!(w.notices().is_empty());
    assert_eq!(Error::NotMember.code(), "not_member");
}

// ----- since / held_since -----------------------------------------------------------------------

/// Every person carries when it entered the line; presence carries when the holder was granted
/// the room — for "edited by Ann since 10:42". Both come from the time the driver passed in.
#[test]
fn since_is_when_you_entered_the_line_and_held_since_when_you_were_granted_the_room() {
    let mut w = World::new();
    let (a, b) = (w.anon(1), w.anon(2));
    let ja = w.m.join(a, DOC, None).unwrap();
    assert_eq!(ja.holder.since, T0);
    w.advance(Duration::from_secs(1));
    w.m.join(b, DOC, None).unwrap();
    let room = w.m.room(DOC).unwrap();
    assert_eq!(room.held_since, Some(T0));
    let since: Vec<u64> = room.occupants.iter().map(|o| o.since).collect();
    assert_eq!(since, [T0, T0 + 1000]);
    w.notices();

    w.advance(Duration::from_secs(2));
    w.m.leave(a, DOC).unwrap();
    let n = w.notices();
    let presence = n
        .iter()
        .find_map(|n| match &n.kind {
            NoticeKind::Presence(p) if n.session == b => Some(p.body.clone()),
            _ => None,
        })
        .expect("b is told");
    assert_eq!(
        presence.held_since,
        Some(T0 + 3000),
        "granted at the hand-over"
    );
    assert_eq!(
        presence.holder.as_ref().unwrap().since,
        T0 + 1000,
        "in line since"
    );
    w.m.leave(b, DOC).unwrap();
    assert_eq!(w.m.room(DOC), None);
}

// ----- idle expiry ---------------------------------------------------------------------------------

fn idle(secs: u64) -> Config {
    let mut c = Config::default();
    c.idle_timeout = Some(Duration::from_secs(secs));
    c
}

fn displaced_reason(notices: &[Notice], s: SessionId) -> Option<(u32, DisplacedReason)> {
    notices.iter().find_map(|n| match n.kind {
        NoticeKind::Displaced {
            position, reason, ..
        } if n.session == s => Some((position, reason)),
        _ => None,
    })
}

/// A holder who walked away while someone waits: at the deadline it is displaced to place 1
/// with reason "idle" and the next is released. Activity from any of its tabs (join, update,
/// active) pushes the deadline back.
#[test]
fn an_idle_holder_gives_way_to_the_next_in_line() {
    let mut w = World::with(idle(10));
    let (a, a2, b) = (w.user(1, "ann"), w.user(2, "ann"), w.anon(3));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(a2, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    assert_eq!(w.m.poll_timeout(), Some(w.now + Duration::from_secs(10)));
    w.advance(Duration::from_secs(9));
    let j = w.m.active(a2, DOC).unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    w.notices();
    w.advance(Duration::from_secs(2));
    assert!(w.notices().is_empty(), "active at 9 s: due at 19 s");
    assert_eq!(w.m.position(a, DOC), Some(0));
    w.advance(Duration::from_secs(8));
    let n = w.notices();
    assert_eq!(released_to(&n), vec![b]);
    assert_eq!(displaced_reason(&n, a), Some((1, DisplacedReason::Idle)));
    assert_eq!(displaced_reason(&n, a2), Some((1, DisplacedReason::Idle)));
    assert_eq!(w.m.position(a, DOC), Some(1));
    assert_eq!(w.m.room(DOC).unwrap().held_since, Some(T0 + 19_000));
    // The new holder's clock starts at its grant, not at its join.
    w.advance(Duration::from_secs(9));
    assert!(w.notices().is_empty());
    w.advance(Duration::from_secs(1));
    assert_eq!(released_to(&w.notices()), vec![a, a2]);
    w.m.check_invariants().unwrap();
}

/// Alone, an idle holder keeps the room (nobody is blocked); the join that would make someone
/// wait displaces it at once: the joiner is told `occupied`, then `released`, and its reply
/// says it holds.
#[test]
fn an_idle_holder_alone_keeps_the_room_until_someone_joins() {
    let mut w = World::with(idle(10));
    let (a, b) = (w.anon(1), w.anon(2));
    w.m.join(a, DOC, None).unwrap();
    w.notices();
    w.advance(Duration::from_secs(60));
    assert!(w.notices().is_empty());
    assert_eq!(w.m.position(a, DOC), Some(0));
    assert_eq!(w.m.poll_timeout(), None, "nothing to wake up for");
    let j = w.m.join(b, DOC, None).unwrap();
    assert_eq!((j.holding, j.position), (true, 0));
    let n = w.notices();
    let kinds: Vec<_> = for_session(&n, b)
        .into_iter()
        .filter(|k| !matches!(k, NoticeKind::Presence(_)))
        .collect();
    assert!(matches!(
        kinds[..],
        [
            NoticeKind::Occupied { position: 1, .. },
            NoticeKind::Released { .. }
        ]
    ));
    assert_eq!(displaced_reason(&n, a), Some((1, DisplacedReason::Idle)));
    assert_eq!(j.version, w.m.room_version(DOC).unwrap());
    w.m.check_invariants().unwrap();

    // A holder who keeps saying `active` is never displaced.
    let c = w.anon(3);
    for _ in 0..5 {
        w.advance(Duration::from_secs(8));
        w.m.active(b, DOC).unwrap();
    }
    assert_eq!(w.m.join(c, DOC, None).unwrap().position, 2);
    w.advance(Duration::from_secs(8));
    assert_eq!(w.m.position(b, DOC), Some(0));
}

/// `active` is refused like `update` (room id, session, membership) and changes nothing; from
/// someone waiting it is accepted and changes nothing either (the clock starts at the grant).
#[test]
fn active_from_outside_the_line_is_refused_and_changes_nothing() {
    let mut w = World::with(idle(10));
    let (a, tab2, b) = (w.user(1, "ann"), w.user(2, "ann"), w.anon(3));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.m.watch(tab2, DOC).unwrap();
    w.notices();
    let before = snapshot(&w.m);
    assert!(matches!(w.m.active(a, ""), Err(Error::RoomInvalid(_))));
    assert_eq!(w.m.active(SessionId(99), DOC), Err(Error::UnknownSession));
    assert_eq!(w.m.active(a, "elsewhere"), Err(Error::NotMember));
    assert_eq!(w.m.active(tab2, DOC), Err(Error::NotMember), "a watcher");
    assert_eq!(w.m.active(b, DOC).unwrap().position, 1);
    assert_eq!(snapshot(&w.m), before);
    assert!(w.notices().is_empty());
}

// ----- forced release ----------------------------------------------------------------------------

/// The application forces a release: with someone waiting the holder is displaced with reason
/// "server"; alone it keeps the room until someone joins; an empty room is vacant.
#[test]
fn a_forced_release_hands_over_now_or_at_the_next_join() {
    let mut w = World::new();
    let (a, b, c) = (w.anon(1), w.anon(2), w.anon(3));
    assert_eq!(w.m.release(DOC), Ok(ForcedRelease::Vacant));
    assert!(matches!(w.m.release("\n"), Err(Error::RoomInvalid(_))));
    w.m.join(a, DOC, None).unwrap();
    w.m.join(b, DOC, None).unwrap();
    w.notices();
    let ForcedRelease::HandedOver { version, to } = w.m.release(DOC).unwrap() else {
        panic!("someone waits");
    };
    assert_eq!(to.id, OccupantKey::Anonymous(b));
    assert_eq!(version, w.m.room_version(DOC).unwrap());
    let n = w.notices();
    assert_eq!(released_to(&n), vec![b]);
    assert_eq!(displaced_reason(&n, a), Some((1, DisplacedReason::Server)));

    w.m.leave(a, DOC).unwrap();
    w.notices();
    assert_eq!(w.m.release(DOC), Ok(ForcedRelease::Pending));
    assert!(w.notices().is_empty(), "nobody to tell yet");
    assert_eq!(w.m.position(b, DOC), Some(0));
    let j = w.m.join(c, DOC, None).unwrap();
    assert!(j.holding);
    let n = w.notices();
    assert_eq!(released_to(&n), vec![c]);
    assert_eq!(displaced_reason(&n, b), Some((1, DisplacedReason::Server)));
    // Granted: the pending release is spent.
    let d = w.anon(4);
    assert_eq!(w.m.join(d, DOC, None).unwrap().position, 2);
    // A pending release ends with the hold: the room emptied and filled again is a new hold.
    for s in [b, c, d] {
        w.m.leave(s, DOC).unwrap();
    }
    w.m.join(a, DOC, None).unwrap();
    assert_eq!(w.m.release(DOC), Ok(ForcedRelease::Pending));
    w.m.leave(a, DOC).unwrap();
    w.m.join(a, DOC, None).unwrap();
    assert_eq!(w.m.join(b, DOC, None).unwrap().position, 1);
    w.m.check_invariants().unwrap();
}

// ----- limits -----------------------------------------------------------------------------------

fn small_limits() -> Config {
    {
        let mut c = Config::default();
        c.limits = {
            let mut l = Limits::default();
            l.max_room_id_len = 32;
            l.max_rooms_per_session = 2;
            l.max_occupants_per_room = 2;
            l.max_meta_bytes = 32;
            l
        };
        c
    }
}

fn snapshot(
    m: &Machine,
) -> (
    Stats,
    Option<occupancy_core::RoomState>,
    Option<occupancy_core::RoomState>,
) {
    (m.stats(), m.room("r1"), m.room("r2"))
}

#[test]
fn too_many_rooms_is_refused_and_changes_nothing() {
    let mut w = World::with(small_limits());
    let a = w.anon(1);
    w.m.join(a, "r1", None).unwrap();
    w.m.watch(a, "r2").unwrap();
    w.notices();
    let before = snapshot(&w.m);
    assert_eq!(
        w.m.join(a, "r3", None),
        Err(Error::TooManyRooms { limit: 2 })
    );
    assert_eq!(w.m.watch(a, "r3"), Err(Error::TooManyRooms { limit: 2 }));
    assert_eq!(
        w.m.join(a, "r2", None),
        Err(Error::TooManyRooms { limit: 2 }),
        "joining a watched room counts too"
    );
    assert_eq!(snapshot(&w.m), before);
    assert!(w.notices().is_empty());
    // Rejoining a room you are in is not a new room.
    assert!(w.m.join(a, "r1", None).is_ok());
    w.m.check_invariants().unwrap();
}

#[test]
fn a_full_room_refuses_new_occupants_but_not_another_tab() {
    let mut w = World::with(small_limits());
    let a = w.user(1, "ann");
    let b = w.anon(2);
    let c = w.anon(3);
    let a2 = w.user(4, "ann");
    w.m.join(a, "r1", None).unwrap();
    w.m.join(b, "r1", None).unwrap();
    w.notices();
    let before = snapshot(&w.m);
    assert_eq!(w.m.join(c, "r1", None), Err(Error::RoomFull { limit: 2 }));
    assert_eq!(snapshot(&w.m), before);
    assert!(w.notices().is_empty());
    assert!(w.m.join(a2, "r1", None).unwrap().holding);
}

#[test]
fn oversized_or_invalid_metadata_is_refused() {
    let mut w = World::with(small_limits());
    let big = Meta::from_value(json!({"name": "x".repeat(100)})).unwrap();
    assert_eq!(
        w.m.connect(SessionId(9), None, big.clone(), ResumeToken(9)),
        Err(Error::MetaTooLarge {
            len: big.encoded_len(),
            limit: 32
        })
    );
    assert!(!w.m.contains_session(SessionId(9)));
    let a = w.anon(1);
    let before = snapshot(&w.m);
    assert!(matches!(
        w.m.join(a, "r1", Some(big.clone())),
        Err(Error::MetaTooLarge { limit: 32, .. })
    ));
    assert_eq!(snapshot(&w.m), before);
    // Also when the join would change nothing (already in the room).
    w.m.join(a, "r1", None).unwrap();
    let before = snapshot(&w.m);
    assert!(matches!(
        w.m.join(a, "r1", Some(big)),
        Err(Error::MetaTooLarge { limit: 32, .. })
    ));
    assert_eq!(snapshot(&w.m), before);
    assert_eq!(Meta::from_value(json!([1, 2])), Err(Error::MetaInvalid));
    assert_eq!(Meta::from_value(json!("name")), Err(Error::MetaInvalid));
}

#[test]
fn unknown_sessions_and_duplicate_ids_are_typed_errors() {
    let mut w = World::new();
    let a = w.anon(1);
    assert_eq!(
        w.m.join(SessionId(77), DOC, None),
        Err(Error::UnknownSession)
    );
    assert_eq!(w.m.leave(SessionId(77), DOC), Err(Error::UnknownSession));
    assert_eq!(
        w.m.disconnect(SessionId(77), w.now),
        Err(Error::UnknownSession)
    );
    assert_eq!(
        w.m.connect(a, None, Meta::empty(), ResumeToken(5)),
        Err(Error::SessionExists)
    );
    let t = w.m.resume_token(a).unwrap();
    assert_eq!(
        w.m.connect(SessionId(2), None, Meta::empty(), t),
        Err(Error::SessionExists)
    );
    assert_eq!(w.m.stats().sessions, 1);
}

#[test]
fn bad_config_is_refused() {
    let bad = {
        let mut c = Config::default();
        c.limits = {
            let mut l = Limits::default();
            l.max_rooms_per_session = 0;
            l
        };
        c
    };
    assert!(matches!(Machine::new(bad), Err(Error::Config(_))));
    for idle in [Duration::ZERO, Duration::from_secs(31 * 24 * 3600)] {
        let mut c = Config::default();
        c.idle_timeout = Some(idle);
        let Err(Error::Config(message)) = Machine::new(c) else {
            panic!("idle_timeout {idle:?} accepted");
        };
        assert!(message.contains("idle_timeout"), "{message}");
    }
}

// ----- cleanup ----------------------------------------------------------------------------------

#[test]
fn when_everyone_is_gone_and_the_grace_ran_out_nothing_is_left() {
    let mut w = World::new();
    let ids: Vec<_> = (1..=6)
        .map(|i| {
            if i % 2 == 0 {
                w.anon(i)
            } else {
                w.user(i, "u")
            }
        })
        .collect();
    for (i, &s) in ids.iter().enumerate() {
        w.m.join(s, DOC, None).unwrap();
        w.m.join(s, &format!("room-{i}"), None).unwrap();
        w.m.watch(s, "lobby").unwrap();
    }
    for &s in &ids {
        w.m.disconnect(s, w.now).unwrap();
    }
    assert_eq!(w.m.stats().sessions_in_grace, 6);
    w.advance(Duration::from_secs(5));
    assert_eq!(w.m.stats(), Stats::default());
    assert_eq!(w.m.poll_timeout(), None);
    w.m.check_invariants().unwrap();
}

// ----- crowded rooms (DESIGN.md "Cost rules") -------------------------------------------------

/// The holder of a room with a long line leaves: the next in line hears `released` before the
/// presence fan-out to everyone else (urgent first), and each waiter gets one presence with its
/// new place.
#[test]
fn a_hand_over_in_a_long_line_is_told_first_then_each_waiter_once() {
    let mut w = World::new();
    let line: Vec<SessionId> = (1..=200).map(|i| w.anon(i)).collect();
    for &s in &line {
        w.m.join(s, DOC, None).unwrap();
    }
    w.notices();
    w.m.leave(line[0], DOC).unwrap();
    let notices = w.notices();
    assert_eq!(notices[0].session, line[1]);
    assert!(matches!(notices[0].kind, NoticeKind::Released { .. }));
    assert_eq!(
        notices.len(),
        1 + 199,
        "released + one presence per remaining member"
    );
    for (place, &s) in line[1..].iter().enumerate() {
        let mine: Vec<_> = notices[1..].iter().filter(|n| n.session == s).collect();
        assert_eq!(mine.len(), 1, "{s:?} is told once");
        assert!(
            matches!(&mine[0].kind, NoticeKind::Presence(p) if p.position == Some(place as u32)),
            "{s:?} is told its new place {place}"
        );
    }
}

/// Three hundred of a room's 301 sessions drop and their grace ends at once (a network blip):
/// one `handle_timeout` removes them together, and the one who stays hears `released` and its
/// place once — not once per departure (which was 300 hand-overs and ~45,000 presences).
#[test]
fn a_grace_storm_is_one_change_for_those_who_stay() {
    let mut w = World::new();
    let line: Vec<SessionId> = (1..=301).map(|i| w.anon(i)).collect();
    let watcher = w.anon(1000);
    for &s in &line {
        w.m.join(s, DOC, None).unwrap();
    }
    w.m.watch(watcher, DOC).unwrap();
    w.notices();
    let version = w.m.room_version(DOC).unwrap();
    let now = w.now;
    assert_eq!(w.m.disconnect_many(&line[..300], now), 300);
    assert!(w.notices().is_empty(), "in grace: nothing changes yet");
    assert_eq!(w.m.handle_timeout(now + Config::default().grace), 300);
    let notices = w.notices();
    let kinds: Vec<_> = notices.iter().map(|n| (n.session, &n.kind)).collect();
    assert!(matches!(kinds[0], (s, NoticeKind::Released { .. }) if s == line[300]));
    assert!(
        matches!(kinds[1], (s, NoticeKind::Presence(p)) if s == line[300] && p.position == Some(0))
    );
    assert!(
        matches!(kinds[2], (s, NoticeKind::Presence(p)) if s == watcher && p.position.is_none())
    );
    assert_eq!(notices.len(), 3);
    assert_eq!(
        w.m.room_version(DOC),
        Some(version + 1),
        "one change, one version"
    );
    assert_eq!(w.m.position(line[300], DOC), Some(0));
    assert_eq!(w.m.stats().occupants, 1);
    w.m.check_invariants().unwrap();
}

/// `close_many` with sessions standing in several rooms, some of them twice in a batch (tabs of
/// one user), unknown sessions and duplicates: each touched room changes once, the rest are
/// skipped.
#[test]
fn close_many_merges_per_room_and_skips_unknown_sessions() {
    let mut w = World::new();
    let ann1 = w.user(1, "ann");
    let ann2 = w.user(2, "ann");
    let bob = w.user(3, "bob");
    let cid = w.user(4, "cid");
    for s in [ann1, ann2, bob, cid] {
        w.m.join(s, DOC, None).unwrap();
        w.m.join(s, "other", None).unwrap();
    }
    w.notices();
    assert_eq!(
        w.m.close_many(&[ann1, SessionId(99), ann2, bob, ann1]),
        3,
        "unknown and duplicate sessions are skipped"
    );
    let notices = w.notices();
    for room in [DOC, "other"] {
        let cids: Vec<_> = notices
            .iter()
            .filter(|n| n.room.as_str() == room)
            .map(|n| &n.kind)
            .collect();
        assert!(
            matches!(cids[..], [NoticeKind::Released { .. }, NoticeKind::Presence(p)] if p.position == Some(0)),
            "{room}: {cids:?}"
        );
    }
    assert_eq!(w.m.stats().sessions, 1);
    w.m.check_invariants().unwrap();
}
