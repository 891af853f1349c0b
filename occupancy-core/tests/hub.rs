//! Tests of the Hub runtime itself on the memory backend (the rules are in the conformance suite):
//! the concurrency hammer, slow consumers, authorization, timers on paused time, the timer task's
//! lifetime, configuration errors, and the tracing levels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use occupancy_core::{
    Action, AuthRequest, Backend, Config, Error, Hub, MemoryBackend, Meta, Notice, NoticeKind,
    SessionId,
};

const ROOM: &str = "document-1";

fn hub_on(backend: &MemoryBackend, grace: Duration) -> Hub {
    Hub::builder()
        .backend(backend.clone())
        .grace(grace)
        .build()
        .unwrap()
}

fn invariants(backend: &MemoryBackend) {
    backend
        .with_machine(|m| m.check_invariants())
        .expect("machine invariants");
}

// ----- concurrency ------------------------------------------------------------------------------

/// 64 tasks hammer one room with join / take over / leave on a multi-thread runtime, while
/// collectors read every session's notices. Afterwards: the machine's invariants hold, every
/// session saw its notices in version order, no session was released twice for one version, and
/// the room is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_one_room_from_many_tasks() {
    const TASKS: usize = 64;
    const ROUNDS: usize = 50;
    let backend = MemoryBackend::new();
    let hub = Hub::builder()
        .backend(backend.clone())
        .notice_buffer(1 << 16)
        .build()
        .unwrap();
    let mut workers = Vec::new();
    let mut collectors = Vec::new();
    for t in 0..TASKS {
        // Some sessions share a principal: two tabs of one user racing each other.
        let principal = (t % 8 == 0).then(|| "shared".to_string());
        let (session, mut notices) = hub.connect(principal, Meta::empty()).await.unwrap();
        let id = session.id();
        collectors.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(n) = notices.recv().await {
                seen.push(n);
            }
            (id, seen)
        }));
        // Two tasks per session for some sessions: socketioxide runs each event in its own task.
        let sessions = if t % 4 == 1 {
            vec![session.clone(), session]
        } else {
            vec![session]
        };
        let n = sessions.len();
        for (k, s) in sessions.into_iter().enumerate() {
            let backend = backend.clone();
            workers.push(tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let j = s.join(ROOM, None).await.unwrap();
                    assert_eq!(j.holding, j.position == 0);
                    match (r + t + k) % 5 {
                        0 => {
                            // The other task of this session may have left already.
                            match s.takeover(ROOM).await {
                                Ok(j) => assert!(j.holding),
                                Err(e) => assert!(n > 1 && e == Error::NotInRoom, "{e:?}"),
                            }
                        }
                        1 => tokio::task::yield_now().await,
                        2 if r % 10 == 0 => invariants(&backend),
                        _ => {}
                    }
                    s.leave(ROOM).await.unwrap();
                }
                s
            }));
        }
    }
    let mut sessions = Vec::new();
    for w in workers {
        sessions.push(w.await.expect("worker panicked"));
    }
    invariants(&backend);
    assert_eq!(hub.room(ROOM).await.unwrap(), None, "everyone left");
    for s in &sessions {
        s.close().await;
    }
    drop(sessions);
    let mut total = 0;
    for c in collectors {
        let (id, seen) = c.await.unwrap();
        total += seen.len();
        assert!(seen.iter().all(|n| n.session == id));
        let versions: Vec<u64> = seen.iter().map(Notice::version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "session {id:?} saw versions out of order"
        );
        let released: Vec<u64> = seen
            .iter()
            .filter(|n| matches!(n.kind, NoticeKind::Released { .. }))
            .map(Notice::version)
            .collect();
        assert!(
            released.windows(2).all(|w| w[0] < w[1]),
            "session {id:?} was released twice for one hand-over"
        );
    }
    assert!(total > 0);
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.sessions, stats.rooms, stats.occupants), (0, 0, 0));
    invariants(&backend);
}

// ----- slow consumers ---------------------------------------------------------------------------

/// A session that never reads holds at most `notice_buffer` notices; on overflow it is closed
/// (reason SlowConsumer), its rooms are left, the next in line is released, and the machine
/// forgets it.
#[tokio::test(start_paused = true)]
async fn slow_consumer_is_bounded_and_closed() {
    let backend = MemoryBackend::new();
    let hub = Hub::builder()
        .backend(backend.clone())
        .notice_buffer(8)
        .build()
        .unwrap();
    let (slow, slow_n) = hub.connect(None, Meta::empty()).await.unwrap();
    slow.join(ROOM, None).await.unwrap();
    slow.join("other", None).await.unwrap();
    let (next, mut next_n) = hub.connect(None, Meta::empty()).await.unwrap();
    next.join(ROOM, None).await.unwrap();
    let mut got = Vec::new();
    let mut joiners = Vec::new();
    while slow.is_live() {
        assert!(slow_n.len() <= 8, "the buffer is bounded");
        // One more room each round: presences of one room replace each other in the queue, so
        // only notices about many rooms (or non-presence ones) can fill it.
        let _ = slow.join(&format!("side-{}", joiners.len()), None).await;
        let (s, mut n) = hub.connect(None, Meta::empty()).await.unwrap();
        s.join(ROOM, None).await.unwrap();
        while let Some(x) = next_n.try_recv() {
            got.push(x);
        }
        while n.try_recv().is_some() {}
        joiners.push((s, n));
        assert!(joiners.len() < 10, "never overflowed");
    }
    // The kick runs before the join that overflowed returns.
    assert_eq!(
        slow_n.close_reason(),
        Some(Error::SlowConsumer { capacity: 8 })
    );
    backend.with_machine(|m| {
        assert!(!m.contains_session(slow.id()));
        assert!(m.room("other").is_none());
        assert_eq!(m.position(next.id(), ROOM), Some(0));
    });
    while let Some(x) = next_n.try_recv() {
        got.push(x);
    }
    let released = got
        .iter()
        .filter(|n| matches!(n.kind, NoticeKind::Released { .. }))
        .count();
    assert_eq!(released, 1);
    invariants(&backend);
    assert_eq!(hub.live_connections(), 1 + joiners.len());
}

/// A reader that is merely behind in a busy room is not a slow consumer: a join burst sends the
/// front occupants one presence per join, and each queued presence is replaced by the next one of
/// the same room, so the queue holds the latest state instead of overflowing (a burst of joins
/// used to kick the front of the line, and each kick moved everyone and kicked more).
#[tokio::test(start_paused = true)]
async fn a_join_burst_does_not_overflow_the_front_of_the_line() {
    let backend = MemoryBackend::new();
    let hub = Hub::builder()
        .backend(backend.clone())
        .notice_buffer(4)
        .build()
        .unwrap();
    let (holder, mut holder_n) = hub.connect(None, Meta::empty()).await.unwrap();
    holder.join(ROOM, None).await.unwrap();
    let mut crowd = Vec::new();
    for _ in 0..50 {
        let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
        s.join(ROOM, None).await.unwrap();
        crowd.push((s, n));
    }
    assert!(holder.is_live(), "the holder was not kicked");
    assert_eq!(holder_n.close_reason(), None);
    // What is queued is the room as it is now: one presence, the latest version.
    let queued: Vec<_> = std::iter::from_fn(|| holder_n.try_recv()).collect();
    let version = hub.version(ROOM).await.unwrap();
    assert!(
        matches!(&queued[..], [n] if n.version() == version && matches!(&n.kind, NoticeKind::Presence(p) if p.body.waiting == 50)),
        "{queued:?}"
    );
    assert_eq!(hub.live_connections(), 51);
    invariants(&backend);
}

/// A receiver dropped by the application does not kill the session: its notices are dropped.
#[tokio::test(start_paused = true)]
async fn dropped_receiver_is_not_a_slow_consumer() {
    let hub = Hub::builder().notice_buffer(2).build().unwrap();
    let (a, an) = hub.connect(None, Meta::empty()).await.unwrap();
    drop(an);
    a.join(ROOM, None).await.unwrap();
    for _ in 0..5 {
        let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
        b.join(ROOM, None).await.unwrap();
        b.leave(ROOM).await.unwrap();
    }
    assert!(a.is_live());
    assert_eq!(a.join(ROOM, None).await.unwrap().position, 0);
}

// ----- authorization ----------------------------------------------------------------------------

/// The hook sees exactly (principal, room, action) for join, take over and watch, and not for
/// leave or unwatch; a refusal leaves the machine untouched.
#[tokio::test]
async fn authorization_hook_sees_each_request() {
    type Asked = Vec<(Option<String>, String, Action)>;
    let asked: Arc<Mutex<Asked>> = Arc::default();
    let log = asked.clone();
    let backend = MemoryBackend::new();
    let hub = Hub::builder()
        .backend(backend.clone())
        .authorize(move |req: &AuthRequest<'_>| {
            log.lock().unwrap().push((
                req.principal.map(str::to_string),
                req.room.to_string(),
                req.action,
            ));
            if req.room == "closed" {
                Err("closed for maintenance".into())
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let (a, _an) = hub
        .connect(Some("alice".into()), Meta::empty())
        .await
        .unwrap();
    a.join(ROOM, None).await.unwrap();
    a.takeover(ROOM).await.unwrap();
    a.watch("w").await.unwrap();
    a.unwatch("w").await.unwrap();
    a.leave(ROOM).await.unwrap();
    let before = backend.with_machine(|m| (m.stats(), m.session_rooms(a.id()).unwrap().len()));
    for r in [
        a.join("closed", None).await.err(),
        a.watch("closed").await.err(),
        a.takeover("closed").await.err(),
    ] {
        assert_eq!(
            r,
            Some(Error::Forbidden {
                reason: "closed for maintenance".into()
            })
        );
    }
    let after = backend.with_machine(|m| (m.stats(), m.session_rooms(a.id()).unwrap().len()));
    assert_eq!(before, after);
    let asked: Vec<_> = asked
        .lock()
        .unwrap()
        .iter()
        .map(|(p, r, a)| (p.clone().unwrap(), r.clone(), *a))
        .collect();
    let want: Vec<_> = [
        (ROOM, Action::Join),
        (ROOM, Action::Takeover),
        ("w", Action::Watch),
        ("closed", Action::Join),
        ("closed", Action::Watch),
        ("closed", Action::Takeover),
    ]
    .into_iter()
    .map(|(r, a)| ("alice".to_string(), r.to_string(), a))
    .collect();
    assert_eq!(asked, want);
}

// ----- timers -----------------------------------------------------------------------------------

/// On paused time: a resume just before the grace ends keeps the place; from the deadline on it
/// is refused, and once the expiry batch's slack is over (`HubBuilder::grace`: 1/64 of the grace,
/// at most 100 ms) the session is gone and the next in line was released by the Hub's own timer
/// task.
#[tokio::test(start_paused = true)]
async fn grace_ends_on_time_and_the_removal_follows_within_its_slack() {
    let backend = MemoryBackend::new();
    let hub = hub_on(&backend, Duration::from_secs(5));
    let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
    let (b, mut bn) = hub.connect(None, Meta::empty()).await.unwrap();
    a.join(ROOM, None).await.unwrap();
    b.join(ROOM, None).await.unwrap();

    a.disconnect().await;
    tokio::time::sleep(Duration::from_millis(4_999)).await;
    let (a, _an, resumed) = hub.resume(a.resume_token()).await.unwrap();
    assert_eq!(resumed.rooms[0].position, 0);

    a.disconnect().await;
    let slack = Duration::from_secs(5) / 64;
    tokio::time::sleep(Duration::from_millis(4_999)).await;
    assert!(backend.with_machine(|m| m.contains_session(a.id())));
    while bn.try_recv().is_some() {}
    tokio::time::sleep(slack - Duration::from_millis(1)).await;
    assert!(
        backend.with_machine(|m| m.contains_session(a.id())),
        "the grace is over, the batch not yet"
    );
    assert!(bn.try_recv().is_none());
    // The timer's clock has 1 ms ticks: its wake-up at the deadline + 78.125 ms is at +79 ms.
    tokio::time::sleep(Duration::from_millis(3)).await;
    assert!(!backend.with_machine(|m| m.contains_session(a.id())));
    let n = bn.recv().await.unwrap();
    assert!(
        matches!(n.kind, NoticeKind::Released { .. }) || matches!(n.kind, NoticeKind::Presence(_))
    );
    assert_eq!(
        hub.holder(ROOM).await.unwrap().unwrap().id.to_string(),
        format!("~{}", b.id())
    );
    assert_eq!(
        hub.resume(a.resume_token()).await.err(),
        Some(Error::ResumeInvalid)
    );
}

/// 300 of a room's 301 connections drop at once with no grace (their handles dropped together):
/// the timer task hands them to the backend as one batch, so the room changes once and the one
/// who stays hears `released` once — not one change (and one fan-out) per departure.
#[tokio::test]
async fn handles_dropped_together_leave_in_one_change() {
    let backend = MemoryBackend::new();
    let hub = hub_on(&backend, Duration::ZERO);
    let mut dropped = Vec::new();
    for _ in 0..300 {
        let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
        s.join(ROOM, None).await.unwrap();
        dropped.push((s, n));
    }
    let (stays, mut notices) = hub.connect(None, Meta::empty()).await.unwrap();
    assert_eq!(stays.join(ROOM, None).await.unwrap().position, 300);
    while notices.try_recv().is_some() {}
    let version = hub.version(ROOM).await.unwrap();

    drop(dropped); // all handles at once, before the timer task runs
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = notices.recv().await.unwrap();
            if matches!(n.kind, NoticeKind::Released { .. }) {
                return n;
            }
        }
    })
    .await
    .expect("the one who stays is released");
    assert_eq!(
        released.version(),
        version + 1,
        "one change for 300 departures"
    );
    assert_eq!(hub.version(ROOM).await.unwrap(), version + 1);
    assert_eq!(hub.occupants(ROOM).await.unwrap().len(), 1);
    assert_eq!(hub.live_connections(), 1);
    invariants(&backend);
}

/// The adapters end each connection with an explicit `Session::disconnect().await`. When 300 of
/// them end at the same moment (their tasks all ready at once), the Hub still hands them to the
/// backend as one batch: one change of the room, one `released`.
#[tokio::test]
async fn disconnects_at_the_same_moment_leave_in_one_change() {
    let backend = MemoryBackend::new();
    let hub = hub_on(&backend, Duration::ZERO);
    let mut leaving = Vec::new();
    for _ in 0..300 {
        let (s, _n) = hub.connect(None, Meta::empty()).await.unwrap();
        s.join(ROOM, None).await.unwrap();
        leaving.push(s);
    }
    let (stays, mut notices) = hub.connect(None, Meta::empty()).await.unwrap();
    stays.join(ROOM, None).await.unwrap();
    while notices.try_recv().is_some() {}
    let version = hub.version(ROOM).await.unwrap();

    let tasks: Vec<_> = leaving
        .into_iter()
        .map(|s| tokio::spawn(async move { s.disconnect().await }))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Every call has returned: their disconnects are done.
    assert_eq!(hub.version(ROOM).await.unwrap(), version + 1);
    assert_eq!(hub.occupants(ROOM).await.unwrap().len(), 1);
    let kinds: Vec<_> = std::iter::from_fn(|| notices.try_recv())
        .map(|n| n.kind)
        .collect();
    assert!(
        matches!(&kinds[..], [NoticeKind::Released { .. }, NoticeKind::Presence(p)] if p.position == Some(0)),
        "{kinds:?}"
    );
    invariants(&backend);
}

/// A disconnect whose caller is cancelled after it queued itself is still done (by the timer
/// task): the places of a connection that ended are never held for ever.
#[tokio::test]
async fn a_cancelled_disconnect_is_still_done() {
    let backend = MemoryBackend::new();
    let hub = hub_on(&backend, Duration::ZERO);
    let (gone, _gn) = hub.connect(None, Meta::empty()).await.unwrap();
    let (next, _nn) = hub.connect(None, Meta::empty()).await.unwrap();
    gone.join(ROOM, None).await.unwrap();
    next.join(ROOM, None).await.unwrap();
    tokio::select! {
        biased;
        _ = gone.disconnect() => panic!("a disconnect yields before it runs"),
        _ = std::future::ready(()) => {}
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while hub.occupants(ROOM).await.unwrap().len() != 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the timer task finished the disconnect");
    assert_eq!(
        hub.holder(ROOM).await.unwrap().unwrap().id.to_string(),
        format!("~{}", next.id())
    );
    invariants(&backend);
}

/// A disconnect with a shorter deadline than the one the timer task sleeps for wakes it early.
#[tokio::test(start_paused = true)]
async fn earlier_deadline_wakes_the_timer() {
    let backend = MemoryBackend::new();
    let hub = hub_on(&backend, Duration::from_secs(10));
    let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
    a.disconnect().await; // deadline t+10
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
    b.disconnect().await; // deadline t+15
    let (c, _cn) = hub.connect(None, Meta::empty()).await.unwrap();
    // Removed once the expiry batch's slack (100 ms for a 10 s grace) is over.
    tokio::time::sleep(Duration::from_millis(5_101)).await; // t+10.101
    backend.with_machine(|m| {
        assert!(!m.contains_session(a.id()));
        assert!(m.contains_session(b.id()));
    });
    tokio::time::sleep(Duration::from_secs(5)).await; // t+15.101
    backend.with_machine(|m| {
        assert!(!m.contains_session(b.id()));
        assert!(m.contains_session(c.id()));
    });
    assert_eq!(hub.stats().await.unwrap().sessions, 1);
}

/// The timer task holds only a weak reference: once the Hub and its sessions are dropped, the
/// task ends and the backend is released.
#[tokio::test(start_paused = true)]
async fn timer_task_ends_with_the_hub() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let backend = MemoryBackend::new();
    let hub = hub_on(&backend, Duration::from_secs(5));
    assert_eq!(metrics.num_alive_tasks(), before + 1);
    let (a, an) = hub.connect(None, Meta::empty()).await.unwrap();
    a.join(ROOM, None).await.unwrap();
    a.disconnect().await; // the timer task now sleeps until the grace ends
    drop(hub);
    drop((a, an));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), before);
}

// ----- configuration ----------------------------------------------------------------------------

#[test]
fn build_outside_a_runtime_is_a_config_error() {
    assert!(matches!(Hub::builder().build(), Err(Error::Config(_))));
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    assert!(matches!(
        Hub::builder().notice_buffer(0).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Hub::builder().grace(Duration::from_secs(90_000)).build(),
        Err(Error::Config(_))
    ));
    let backend = MemoryBackend::new();
    let hub = Hub::builder()
        .backend(backend.clone())
        .presence_occupants(3)
        .build()
        .unwrap();
    assert_eq!(hub.config().presence_occupants, 3);
    assert_eq!(backend.with_machine(|m| m.config().clone()), *hub.config());
    assert!(
        matches!(
            Hub::builder().backend(backend).build(),
            Err(Error::Config(_))
        ),
        "a backend serves one Hub"
    );
    assert_eq!(Hub::new().config(), &Config::default());
}

/// The built-in backend's shard count: 1 ..= 64, and only when the Hub keeps its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_count_is_checked() {
    for n in [0, occupancy_core::MAX_SHARDS + 1] {
        match Hub::builder().shards(n).build() {
            Err(Error::Config(msg)) => {
                assert_eq!(msg, format!("shards must be between 1 and 64, not {n}"))
            }
            other => panic!("shards({n}): {other:?}"),
        }
    }
    match Hub::builder()
        .shards(2)
        .backend(MemoryBackend::new())
        .build()
    {
        Err(Error::Config(msg)) => assert!(
            msg.starts_with("HubBuilder::shards is for the built-in memory backend"),
            "{msg}"
        ),
        other => panic!("shards with a backend: {other:?}"),
    }
    // 1 (one machine), 2 and the default (one machine) all serve a hand-over.
    for hub in [
        Hub::builder().shards(1).build().unwrap(),
        Hub::builder().shards(2).build().unwrap(),
        Hub::new(),
    ] {
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, mut bn) = hub.connect(None, Meta::empty()).await.unwrap();
        assert!(a.join("doc", None).await.unwrap().holding);
        assert_eq!(b.join("doc", None).await.unwrap().position, 1);
        a.leave("doc").await.unwrap();
        let mut released = false;
        while let Some(n) = bn.try_recv() {
            released |= matches!(n.kind, NoticeKind::Released { .. });
        }
        assert!(released);
        hub.backend().check_invariants().await.unwrap();
    }
}

/// Ids are random and distinct; tokens print as 32 hex digits and parse back.
#[tokio::test]
async fn ids_and_tokens_are_random() {
    let hub = Hub::new();
    let mut ids = HashMap::new();
    for _ in 0..100 {
        let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
        let token = s.resume_token();
        assert_eq!(
            token
                .to_string()
                .parse::<occupancy_core::ResumeToken>()
                .unwrap(),
            token
        );
        assert!(ids.insert(s.id(), (s, n)).is_none());
    }
    assert!(!ids.contains_key(&SessionId(0)));
    assert_eq!(hub.live_connections(), 100);
}

/// Backends can be used through `Arc<dyn Backend>` too.
#[tokio::test]
async fn backend_arc() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let hub = Hub::builder().backend_arc(backend.clone()).build().unwrap();
    let (a, _n) = hub.connect(None, Meta::empty()).await.unwrap();
    a.join(ROOM, None).await.unwrap();
    assert_eq!(backend.stats().await.unwrap().occupants, 1);
}

/// A token only resumes a session of the same principal: presented by someone else (leaked,
/// stolen) it is refused and changes nothing — the session keeps its place, its connection and
/// its token.
#[tokio::test(start_paused = true)]
async fn resume_as_refuses_another_principal_and_changes_nothing() {
    let backend = MemoryBackend::new();
    let hub = Hub::builder().backend(backend.clone()).build().unwrap();
    let (ann, mut ann_n) = hub
        .connect(Some("ann".into()), Meta::empty())
        .await
        .unwrap();
    ann.join(ROOM, None).await.unwrap();
    let token = ann.resume_token();
    assert_eq!(
        hub.resume_as(token, Some("eve")).await.err(),
        Some(Error::ResumeInvalid)
    );
    assert_eq!(
        hub.resume_as(token, None).await.err(),
        Some(Error::ResumeInvalid),
        "anonymous is another principal too"
    );
    assert!(ann.is_live());
    assert_eq!(ann_n.close_reason(), None);
    assert!(ann.join(ROOM, None).await.unwrap().holding);
    // The rightful owner still can.
    let (again, _n, r) = hub.resume_as(token, Some("ann")).await.unwrap();
    assert_eq!((again.id(), r.was_live), (ann.id(), true));
    assert_eq!(ann_n.recv().await, None);
    invariants(&backend);
}

/// A token is single use, even when two connections present it at the same moment (a client
/// that retries while its first reconnect is still under way): exactly one resume wins on each
/// backend, the other is refused, and the winner's connection stays open with the place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resumes_with_one_token_race_and_one_wins() {
    for shards in [1, 2] {
        let hub = Hub::builder().shards(shards).build().unwrap();
        for round in 0..50 {
            let room = format!("race-{round}");
            let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
            a.join(&room, None).await.unwrap();
            let token = a.resume_token();
            let (h1, h2) = (hub.clone(), hub.clone());
            let (r1, r2) = tokio::join!(
                tokio::spawn(async move { h1.resume(token).await }),
                tokio::spawn(async move { h2.resume(token).await })
            );
            let (won, lost) = match (r1.unwrap(), r2.unwrap()) {
                (Ok(w), Err(e)) | (Err(e), Ok(w)) => (w, e),
                (Ok(_), Ok(_)) => panic!("shards {shards}: both resumes won"),
                (Err(e1), Err(e2)) => panic!("shards {shards}: both refused: {e1} / {e2}"),
            };
            assert_eq!(lost, Error::ResumeInvalid, "shards {shards}");
            let (session, notices, resumed) = won;
            assert_eq!((session.id(), resumed.rooms.len()), (a.id(), 1));
            assert!(
                session.is_live(),
                "shards {shards}: the winner stays connected"
            );
            assert!(session.join(&room, None).await.unwrap().holding);
            assert_eq!(notices.close_reason(), None);
            assert_eq!(
                hub.resume(token).await.err(),
                Some(Error::ResumeInvalid),
                "spent"
            );
            session.close().await;
        }
        hub.backend().check_invariants().await.unwrap();
    }
}

// ----- the debugging check of the soak runs ----------------------------------------------------

/// `Config::check_invariants` makes the memory backend check the machine after every operation
/// and count it in `Stats` (the soak run reads these); off by default, it counts nothing.
#[tokio::test]
async fn enabled_invariant_checks_run_after_every_operation() {
    async fn ops(hub: &Hub) {
        let (a, _na) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, _nb) = hub.connect(None, Meta::empty()).await.unwrap();
        a.join(ROOM, None).await.unwrap();
        b.join(ROOM, None).await.unwrap();
        // A refused operation is checked too: it must have changed nothing.
        assert!(b.join("", None).await.is_err());
        b.takeover(ROOM).await.unwrap();
        a.leave(ROOM).await.unwrap();
        b.close().await;
        a.close().await;
    }

    let hub = Hub::builder()
        .config({
            let mut c = Config::default();
            c.check_invariants = true;
            c
        })
        .build()
        .unwrap();
    ops(&hub).await;
    let stats = hub.stats().await.unwrap();
    // connect ×2, join ×2, the refused join, take over, leave, close ×2.
    assert_eq!(stats.invariant_checks, 9, "{stats:?}");
    assert_eq!(stats.invariant_violations, 0);
    assert_eq!((stats.sessions, stats.rooms, stats.occupants), (0, 0, 0));

    let hub = Hub::new();
    ops(&hub).await;
    let stats = hub.stats().await.unwrap();
    assert_eq!((stats.invariant_checks, stats.invariant_violations), (0, 0));
}

// ----- server-side control ----------------------------------------------------------------------

/// Both in-memory backends: one machine, and rooms spread over shards.
fn control_hubs() -> Vec<(&'static str, Hub)> {
    vec![
        ("memory", Hub::builder().build().unwrap()),
        ("sharded", Hub::builder().shards(4).build().unwrap()),
    ]
}

/// Rooms are listed in pages, in order of their ids, with their holder and line length; the
/// last id of a page starts the next.
#[tokio::test]
async fn rooms_are_listed_in_pages_in_id_order() {
    for (name, hub) in control_hubs() {
        let mut sessions = Vec::new();
        for i in (0..25).rev() {
            let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
            s.join(&format!("room-{i:02}"), None).await.unwrap();
            sessions.push((s, n));
        }
        let (w, _wn) = hub.connect(None, Meta::empty()).await.unwrap();
        w.watch("room-03").await.unwrap();
        w.watch("watched-only").await.unwrap();
        let (extra, _en) = hub.connect(None, Meta::empty()).await.unwrap();
        extra.join("room-03", None).await.unwrap();

        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = hub.rooms(after.as_deref(), 10).await.unwrap();
            assert!(page.len() <= 10, "{name}");
            let Some(last) = page.last() else { break };
            after = Some(last.room.to_string());
            seen.extend(page);
        }
        let ids: Vec<String> = seen.iter().map(|r| r.room.to_string()).collect();
        let mut want: Vec<String> = (0..25).map(|i| format!("room-{i:02}")).collect();
        want.push("watched-only".into());
        assert_eq!(ids, want, "{name}");
        let r3 = &seen[3];
        assert_eq!((r3.waiting, r3.watchers), (1, 1), "{name}");
        assert!(r3.holder.is_some() && r3.held_since.is_some(), "{name}");
        let watched = seen.last().unwrap();
        assert_eq!((watched.holder.clone(), watched.held_since), (None, None));
        assert_eq!(hub.summary("room-03").await.unwrap().as_ref(), Some(r3));
        assert_eq!(hub.summary("nowhere").await.unwrap(), None);
        assert!(hub.rooms(Some("zzz"), 10).await.unwrap().is_empty());
    }
}

/// A kicked session leaves its rooms at once (no grace: the next in line is released), its
/// notices end with `Kicked`, its handle and resume token stop working.
#[tokio::test]
async fn a_kicked_session_leaves_at_once_and_cannot_come_back() {
    for (name, hub) in control_hubs() {
        let (a, mut an) = hub
            .connect(Some("ann".into()), Meta::empty())
            .await
            .unwrap();
        let (b, mut bn) = hub
            .connect(Some("bob".into()), Meta::empty())
            .await
            .unwrap();
        a.join(ROOM, None).await.unwrap();
        b.join(ROOM, None).await.unwrap();
        let token = a.resume_token();
        assert!(hub.kick(a.id()).await.unwrap(), "{name}");
        loop {
            match bn.recv().await {
                Some(n) if matches!(n.kind, NoticeKind::Released { .. }) => break,
                Some(_) => {}
                None => panic!("{name}: bob's notices ended"),
            }
        }
        while an.recv().await.is_some() {}
        assert_eq!(an.close_reason(), Some(Error::Kicked), "{name}");
        assert_eq!(a.join("x", None).await.err(), Some(Error::UnknownSession));
        assert_eq!(hub.resume(token).await.err(), Some(Error::ResumeInvalid));
        assert!(!hub.kick(a.id()).await.unwrap(), "{name}: gone already");
        assert!(
            !hub.kick(SessionId(12345)).await.unwrap(),
            "{name}: unknown"
        );
        assert_eq!(hub.stats().await.unwrap().sessions, 1, "{name}");
    }
}

/// The change stream reports each changed room with its newest version; a subscriber that
/// lags gets one entry per room (the latest), and nothing is recorded before it subscribes.
#[tokio::test]
async fn the_change_stream_coalesces_per_room() {
    for (name, hub) in control_hubs() {
        let (a, _an) = hub.connect(None, Meta::empty()).await.unwrap();
        let (b, _bn) = hub.connect(None, Meta::empty()).await.unwrap();
        a.join("before", None).await.unwrap();
        let mut changes = hub.changes();
        assert!(changes.is_empty(), "{name}: nothing before subscribing");
        a.join("r1", None).await.unwrap();
        b.join("r1", None).await.unwrap();
        a.join("r2", None).await.unwrap();
        a.leave("r1").await.unwrap();
        assert_eq!(changes.len(), 2, "{name}: one entry per room");
        let c1 = changes.recv().await;
        assert_eq!(c1.room.as_str(), "r1");
        assert_eq!(c1.version, hub.version("r1").await.unwrap());
        let now = c1.now.expect("bob holds r1");
        assert_eq!(
            now.holder.map(|p| p.id.to_string()),
            Some(b.id().to_string()).map(|s| format!("~{s}"))
        );
        let c2 = changes.recv().await;
        assert_eq!(
            (c2.room.as_str(), c2.now.map(|s| s.waiting)),
            ("r2", Some(0))
        );
        b.leave("r1").await.unwrap();
        let gone = changes.recv().await;
        assert_eq!(
            (gone.room.as_str(), gone.now),
            ("r1", None),
            "{name}: emptied"
        );
        assert!(changes.try_recv().is_none());
        drop(changes);
        a.leave("r2").await.unwrap();
    }
}
