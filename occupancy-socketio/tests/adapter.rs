//! The adapter driven over a real socket by a minimal Socket.IO client: the article's events and
//! bugs, the acked events, ordering under socketioxide's task-per-event, the connect race, bad
//! payloads, limits, identity, grace and resume, liveness and the origin check.

mod common;

use std::time::Duration;

use common::{Client, TIMEOUT, hub, server, server_with_origins};
use occupancy_core::{Error, Hub, Meta};
use occupancy_socketio::{Handshake, Identity, OriginLayer, RateLimit};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn article_flow_occupied_then_released_exactly_once() {
    let srv = server(hub(0), same_io, same_occ).await;
    let url = srv.ws_url();
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    a.emit("join_document_room", json!("document-1"));
    a.sync().await;
    assert!(a.events("is_occupied").is_empty(), "the first joiner holds");
    b.emit("join_document_room", json!("document-1"));
    assert_eq!(
        b.wait_for("is_occupied", |_| true).await,
        json!("Its occupied")
    );
    // The article's bug 1: React StrictMode joins twice. Ours: idempotent, nothing more is sent.
    b.emit("join_document_room", json!("document-1"));
    a.emit("join_document_room", json!("document-1"));
    b.sync().await;
    a.sync().await;
    assert_eq!(b.events("is_occupied").len(), 1);
    assert_eq!(srv.hub.occupants("document-1").await.unwrap().len(), 2);

    // The article's bug 2: no leave. Ours: leave_document_room hands over without a disconnect.
    a.emit("leave_document_room", json!("document-1"));
    assert_eq!(
        b.wait_for("is_released", |_| true).await,
        json!("this is released")
    );
    a.sync().await;
    b.sync().await;
    assert_eq!(b.events("is_released").len(), 1);
    assert!(a.events("is_released").is_empty());
}

fn same_io(b: socketioxide::SocketIoBuilder) -> socketioxide::SocketIoBuilder {
    b
}

fn same_occ(o: occupancy_socketio::Occupancy) -> occupancy_socketio::Occupancy {
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_client_after_a_non_first_disconnect_is_next_in_line() {
    let srv = server(hub(0), same_io, same_occ).await;
    let url = srv.ws_url();
    let mut a = Client::connect(&url).await;
    let b = Client::connect(&url).await;
    let mut c = Client::connect(&url).await;
    a.emit("join_document_room", json!("d"));
    a.sync().await;
    b.emit("join_document_room", json!("d"));
    b.wait_for("is_occupied", |_| true).await;
    b.disconnect();
    srv.until("b gone", |s| s.occupants == 1).await;
    c.emit("join_document_room", json!("d"));
    c.wait_for("is_occupied", |_| true).await;
    a.drop_transport();
    c.wait_for("is_released", |_| true).await;
    c.sync().await;
    assert_eq!(c.events("is_released").len(), 1);
    assert_eq!(
        srv.hub.holder("d").await.unwrap().map(|p| p.id.to_string()),
        Some(format!(
            "~{}",
            c.events("occupancy:hello")[0]["session"].as_str().unwrap()
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_events_are_acked_with_protocol_v1_objects_and_pushed() {
    let srv = server(hub(0), same_io, same_occ).await;
    let url = srv.ws_url();
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let mut w = Client::connect(&url).await;
    let hello = a.events("occupancy:hello");
    assert_eq!(hello.len(), 1);
    assert_eq!(hello[0]["ev"], "hello");
    assert_eq!(hello[0]["resumed"], false);
    assert_eq!(hello[0]["resume"].as_str().unwrap().len(), 32);

    let r = w
        .call("occupancy:watch", json!({"room": "doc", "ref": 1}))
        .await;
    assert_eq!(r["ev"], "watching");
    assert_eq!(r["ref"], 1);
    assert_eq!(r["holder"], Value::Null);

    let r = a
        .call(
            "occupancy:join",
            json!({"room": "doc", "ref": "a1", "meta": {"name": "Ann"}}),
        )
        .await;
    assert_eq!(
        (
            r["ev"].clone(),
            r["holding"].clone(),
            r["position"].clone(),
            r["ref"].clone()
        ),
        (json!("joined"), json!(true), json!(0), json!("a1"))
    );
    assert_eq!(r["holder"]["meta"]["name"], "Ann");
    let r = b.call("occupancy:join", json!("doc")).await;
    assert_eq!(
        (r["holding"].clone(), r["position"].clone()),
        (json!(false), json!(1))
    );
    b.wait_for("occupancy:occupied", |v| v["position"] == 1)
        .await;
    w.wait_for("occupancy:presence", |v| v["waiting"] == 1)
        .await;

    // update: Ann starts editing, in place; the watcher and Bob see it. Bob is not a member of
    // another room, and an update needs its metadata (a bare room string is not enough).
    let r = a
        .call(
            "occupancy:update",
            json!({"room": "doc", "ref": 2, "meta": {"name": "Ann", "status": "editing"}}),
        )
        .await;
    assert_eq!(
        (r["ev"].clone(), r["position"].clone(), r["ref"].clone()),
        (json!("joined"), json!(0), json!(2))
    );
    for c in [&w, &b] {
        c.wait_for("occupancy:presence", |v| {
            v["holder"]["meta"]["status"] == "editing"
        })
        .await;
    }
    let r = b
        .call("occupancy:update", json!({"room": "other", "meta": {}}))
        .await;
    assert_eq!(
        (r["ev"].clone(), r["code"].clone()),
        (json!("error"), json!("not_member"))
    );
    let r = b.call("occupancy:update", json!("doc")).await;
    assert_eq!(r["code"], "bad_message");

    // active: the place back, nobody told; from outside the line, not_member.
    let r = a.call("occupancy:active", json!("doc")).await;
    assert_eq!(
        (r["ev"].clone(), r["position"].clone()),
        (json!("joined"), json!(0))
    );
    let r = w.call("occupancy:active", json!({"room": "doc"})).await;
    assert_eq!(r["code"], "not_member");
    // ping: a pong with the ref, nothing else changes.
    let r = w.call("occupancy:ping", json!({"ref": 77})).await;
    assert_eq!(
        (r["ev"].clone(), r["ref"].clone()),
        (json!("pong"), json!(77))
    );

    let r = b.call("occupancy:takeover", json!({"room": "doc"})).await;
    assert_eq!(
        (r["ev"].clone(), r["holding"].clone()),
        (json!("joined"), json!(true))
    );
    let d = a.wait_for("occupancy:displaced", |_| true).await;
    assert_eq!(d["position"], 1);
    assert_eq!(d["reason"], "takeover");
    b.wait_for("occupancy:released", |_| true).await;

    let r = b
        .call("occupancy:leave", json!({"room": "doc", "ref": 9}))
        .await;
    assert_eq!(
        (r["ev"].clone(), r["was_member"].clone(), r["ref"].clone()),
        (json!("left"), json!(true), json!(9))
    );
    a.wait_for("occupancy:released", |_| true).await;
    let r = b.call("occupancy:leave", json!("doc")).await;
    assert_eq!(r["was_member"], false, "leave is idempotent");
    let r = w.call("occupancy:unwatch", json!("doc")).await;
    assert_eq!(
        (r["ev"].clone(), r["was_member"].clone()),
        (json!("left"), json!(true))
    );
    // A rich-only client never gets the article's events.
    a.sync().await;
    assert!(a.events("is_released").is_empty());
    assert!(a.events("is_occupied").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_race_an_event_emitted_right_after_connect_is_never_missed() {
    // The article's React hook emits `join_document_room` as soon as the socket exists. With
    // handlers registered in socketioxide's connect handler (spawned after CONNECT is sent) such
    // an event can arrive before its handler exists and vanish. Many clients at once, each
    // emitting in the same breath as reading CONNECT, and a backend whose connect takes a while
    // (as a remote one does), give that race every chance: a port that opens the session and
    // registers its handlers after CONNECT loses these events every time.
    let slow = Hub::builder()
        .grace(Duration::ZERO)
        .backend(common::SlowConnect {
            inner: occupancy_core::MemoryBackend::new(),
            delay: Duration::from_millis(30),
        })
        .build()
        .unwrap();
    let srv = server(slow, same_io, same_occ).await;
    let url = srv.ws_url();
    for round in 0..3 {
        let clients = futures_util::future::join_all((0..40).map(|i| {
            let url = url.clone();
            async move {
                let first = [
                    Client::ack_packet(1, "occupancy:join", &json!(format!("race-{round}-{i}"))),
                    format!(
                        "42{}",
                        json!(["join_document_room", format!("race-{round}")])
                    ),
                ];
                Client::connect_with(&url, None, &first).await.unwrap()
            }
        }))
        .await;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let shared = srv
                .hub
                .occupants(&format!("race-{round}"))
                .await
                .unwrap()
                .len();
            let mut own = 0;
            for i in 0..40 {
                own += srv
                    .hub
                    .occupants(&format!("race-{round}-{i}"))
                    .await
                    .unwrap()
                    .len();
            }
            if (shared, own) == (40, 40) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: events emitted right after CONNECT were lost: {shared}/40 article joins, {own}/40 acked joins"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for c in &clients {
            c.disconnect();
        }
        srv.until("all gone", |s| s.sessions == 0 && s.rooms == 0)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sockets_requests_run_in_order_despite_task_per_event() {
    let srv = server(hub(0), same_io, |o| {
        o.rate_limit(RateLimit {
            per_second: 10_000,
            burst: 10_000,
        })
        .queue_capacity(512)
    })
    .await;
    let url = srv.ws_url();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&url).await);
    }
    for round in 0..5 {
        // Each client fires join/leave pairs without waiting, ending on a join for odd rounds.
        let mut pending = Vec::new();
        for (ci, c) in clients.iter_mut().enumerate() {
            for k in 0..20 {
                let room = format!("r{ci}-{}", k % 3);
                pending.push((
                    format!("j{ci}-{k}"),
                    c.send_call("occupancy:join", json!(room)),
                ));
                pending.push((
                    format!("l{ci}-{k}"),
                    c.send_call("occupancy:leave", json!(room)),
                ));
            }
            if round % 2 == 1 {
                c.emit("occupancy:join", json!(format!("r{ci}-0")));
                c.emit("join_document_room", json!("shared"));
                c.emit("leave_document_room", json!("shared"));
            }
        }
        for (what, rx) in pending {
            let v = tokio::time::timeout(TIMEOUT, rx).await.unwrap().unwrap();
            assert_ne!(v["ev"], "error", "{what}: {v}");
            if what.starts_with('l') {
                assert_eq!(
                    v["was_member"], true,
                    "{what}: leave after join must find it"
                );
            }
        }
        for c in clients.iter_mut() {
            c.sync().await;
        }
        let stats = srv.hub.stats().await.unwrap();
        let expect = if round % 2 == 1 { clients.len() } else { 0 };
        assert_eq!(stats.occupants, expect, "round {round}: {stats:?}");
        assert!(srv.hub.occupants("shared").await.unwrap().is_empty());
        for (ci, c) in clients.iter_mut().enumerate() {
            if round % 2 == 1 {
                c.call("occupancy:leave", json!(format!("r{ci}-0"))).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_racing_requests_leaves_nothing_behind() {
    let srv = server(hub(0), same_io, |o| {
        o.rate_limit(RateLimit {
            per_second: 10_000,
            burst: 10_000,
        })
        .queue_capacity(512)
    })
    .await;
    let url = srv.ws_url();
    for i in 0..30 {
        let mut c = Client::connect(&url).await;
        for k in 0..10 {
            c.emit("occupancy:join", json!(format!("x{}", (i + k) % 7)));
            c.emit("join_document_room", json!(format!("y{}", k % 4)));
            if k % 3 == 0 {
                c.emit("occupancy:leave", json!(format!("x{}", (i + k) % 7)));
            }
            drop(c.send_call("occupancy:watch", json!(format!("w{k}"))));
        }
        if i % 2 == 0 {
            c.disconnect();
        } else {
            c.drop_transport();
        }
    }
    srv.until("every socket gone and every room empty", |s| {
        s.sessions == 0 && s.rooms == 0 && s.occupants == 0 && s.watchers == 0
    })
    .await;
    // socketioxide let go of every socket (nothing of ours keeps one alive).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !srv.io.sockets().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "sockets leaked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The server still serves.
    let mut c = Client::connect(&url).await;
    let r = c.call("occupancy:join", json!("x1")).await;
    assert_eq!(r["holding"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_get_a_clear_error_and_store_nothing() {
    let srv = server(hub(0), same_io, same_occ).await;
    let url = srv.ws_url();
    let mut other = Client::connect(&url).await;
    assert_eq!(
        other.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    let mut c = Client::connect(&url).await;
    let huge = "x".repeat(1 << 20);
    let cases = [
        (json!(5), "bad_message"),
        (json!(null), "bad_message"),
        (json!([1, 2]), "bad_message"),
        (json!({"nope": 1}), "bad_message"),
        (json!({"room": 7}), "bad_message"),
        (json!(huge), "room_invalid"),
        (json!({"room": huge}), "room_invalid"),
        (json!(""), "room_invalid"),
        (json!("a\u{0007}b"), "room_invalid"),
        (json!({"room": "doc", "meta": "Ann"}), "meta_invalid"),
        (
            json!({"room": "doc", "meta": {"bio": "y".repeat(4096)}}),
            "meta_too_large",
        ),
    ];
    for (payload, code) in &cases {
        for event in ["occupancy:join", "occupancy:takeover", "occupancy:watch"] {
            if event != "occupancy:join" && code.starts_with("meta") {
                continue;
            }
            let r = c.call(event, payload.clone()).await;
            assert_eq!(r["ev"], "error", "{event} {:.60}", payload.to_string());
            assert_eq!(r["code"], *code, "{event} {:.60}: {r}", payload.to_string());
            assert!(!r["message"].as_str().unwrap().is_empty());
            assert!(
                r["message"].as_str().unwrap().len() < 300,
                "no echo of the payload"
            );
        }
    }
    // An event with no payload at all, and a refused ref.
    let r = c.call("occupancy:join", Value::Null).await;
    assert_eq!(r["code"], "bad_message");
    let r = c
        .call("occupancy:join", json!({"room": "d", "ref": {"x": 1}}))
        .await;
    assert_eq!(r["code"], "bad_message");
    // Without an ack callback the error is pushed; the article's join wants a string.
    for payload in [
        json!(5),
        json!({"room": "doc"}),
        json!(null),
        json!(["doc"]),
        json!(huge),
    ] {
        c.emit("join_document_room", payload);
    }
    c.emit("occupancy:join", json!(7));
    c.sync().await;
    let errors = c.events("occupancy:error");
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert_eq!(errors[4]["code"], "room_invalid");
    assert!(errors.iter().all(|e| e["ev"] == "error"));
    // Nothing stored, the other socket is unaffected, the connection still works.
    let stats = srv.hub.stats().await.unwrap();
    assert_eq!(
        (stats.rooms, stats.occupants, stats.watchers),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(!c.is_disconnected());
    assert_eq!(c.call("occupancy:join", json!("doc")).await["position"], 1);
    assert_eq!(
        other.call("occupancy:leave", json!("doc")).await["was_member"],
        true
    );
    c.wait_for("occupancy:released", |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_rooms_per_socket_and_rate() {
    let h = Hub::builder()
        .grace(Duration::ZERO)
        .limits({
            let mut l = occupancy_core::Limits::default();
            l.max_rooms_per_session = 3;
            l
        })
        .build()
        .unwrap();
    let srv = server(h, same_io, |o| {
        o.rate_limit(RateLimit {
            per_second: 1,
            burst: 8,
        })
    })
    .await;
    let mut c = Client::connect(&srv.ws_url()).await;
    for i in 0..3 {
        assert_eq!(
            c.call("occupancy:join", json!(format!("r{i}"))).await["holding"],
            true
        );
    }
    let r = c.call("occupancy:join", json!("r3")).await;
    assert_eq!(r["code"], "too_many_rooms");
    // 4 of 8 tokens used; fire 10 more without waiting: some are refused, none is lost silently.
    let rxs: Vec<_> = (0..10)
        .map(|i| c.send_call("occupancy:leave", json!(format!("zz{i}"))))
        .collect();
    let mut limited = 0;
    for rx in rxs {
        let v = tokio::time::timeout(TIMEOUT, rx).await.unwrap().unwrap();
        if v["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(v["ev"], "left");
        }
    }
    assert!(limited >= 5, "{limited} refused");
    assert_eq!(srv.hub.stats().await.unwrap().occupants, 3);
}

/// An async identify hook (a session store): its answer names the socket; one that does not
/// answer within the identify timeout refuses the socket with `unavailable` and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_identify_hook_names_the_socket_or_times_out() {
    let srv = server(hub(0), same_io, |o| {
        o.identify_timeout(Duration::from_millis(200))
            .identify_async(|h: &Handshake<'_>| {
                let token = h
                    .auth
                    .get("token")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                async move {
                    match token.as_deref() {
                        Some("hang") => std::future::pending().await,
                        Some(t) => {
                            tokio::task::yield_now().await; // the lookup
                            Ok(Identity {
                                principal: Some(t.to_owned()),
                                meta: Meta::empty(),
                            })
                        }
                        None => Err("forbidden: log in first".to_owned()),
                    }
                }
            })
    })
    .await;
    let url = srv.ws_url();
    let refused = Client::connect_with(&url, Some(json!({"token": "hang"})), &[])
        .await
        .err()
        .expect("refused");
    assert!(
        refused
            .to_string()
            .contains("unavailable: the identify hook did not answer within 200ms"),
        "{refused}"
    );
    assert_eq!(srv.hub.stats().await.unwrap().sessions, 0);
    let mut ann = Client::connect_with(&url, Some(json!({"token": "ann"})), &[])
        .await
        .unwrap();
    let r = ann.call("occupancy:join", json!("doc")).await;
    assert_eq!(r["holder"]["id"], "ann");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_from_the_auth_payload_through_the_hook() {
    let srv = server(hub(0), same_io, |o| {
        o.identify(|h: &Handshake<'_>| {
            let user = h
                .auth
                .get("user")
                .and_then(Value::as_str)
                .ok_or("forbidden: log in first")?;
            Ok(Identity {
                principal: Some(user.to_owned()),
                meta: Meta::from_value(json!({"name": user.to_uppercase()})).unwrap(),
            })
        })
    })
    .await;
    let url = srv.ws_url();
    let refused = Client::connect_with(&url, None, &[])
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("log in first"), "{refused}");
    let mut tab1 = Client::connect_with(&url, Some(json!({"user": "ann"})), &[])
        .await
        .unwrap();
    let mut tab2 = Client::connect_with(&url, Some(json!({"user": "ann"})), &[])
        .await
        .unwrap();
    let mut bob = Client::connect_with(&url, Some(json!({"user": "bob"})), &[])
        .await
        .unwrap();
    assert_eq!(
        tab1.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    let r = bob.call("occupancy:join", json!("doc")).await;
    assert_eq!(
        (r["position"].clone(), r["holder"]["id"].clone()),
        (json!(1), json!("ann"))
    );
    assert_eq!(r["holder"]["meta"]["name"], "ANN");
    // Two tabs of one user are one occupant: the second tab holds too, never waits behind the first.
    let r = tab2.call("occupancy:join", json!("doc")).await;
    assert_eq!(
        (r["holding"].clone(), r["position"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(srv.hub.occupants("doc").await.unwrap().len(), 2);
}

/// A minute of grace for a lost connection, 300 ms for one the client closed.
fn long_grace_short_close() -> Hub {
    Hub::builder()
        .grace(Duration::from_secs(60))
        .close_grace(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_keeps_the_place_resume_takes_it_back_explicit_disconnect_waits_the_close_grace() {
    let srv = server(long_grace_short_close(), same_io, same_occ).await;
    let url = srv.ws_url();
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let token = a.events("occupancy:hello")[0]["resume"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        a.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    assert_eq!(b.call("occupancy:join", json!("doc")).await["position"], 1);
    a.drop_transport();
    srv.until("a in grace", |s| s.sessions_in_grace == 1).await;
    assert_eq!(
        srv.hub.occupants("doc").await.unwrap().len(),
        2,
        "the holder keeps its place"
    );
    b.sync().await;
    assert!(b.events("occupancy:released").is_empty());

    let mut a2 = Client::connect_with(&url, Some(json!({"resume": token})), &[])
        .await
        .unwrap();
    let hello = a2.wait_for("occupancy:hello", |_| true).await;
    assert_eq!(hello["resumed"], true);
    assert_ne!(
        hello["resume"],
        json!(token),
        "resume tokens are single use"
    );
    a2.wait_for("occupancy:presence", |v| {
        v["room"] == "doc" && v["position"] == 0
    })
    .await;
    assert_eq!(
        a2.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    srv.until("a live again", |s| s.sessions_in_grace == 0)
        .await;

    // A used token does not resume twice: a fresh session instead.
    let mut again = Client::connect_with(&url, Some(json!({"resume": token})), &[])
        .await
        .unwrap();
    assert_eq!(
        again.wait_for("occupancy:hello", |_| true).await["resumed"],
        false
    );
    again.sync().await;

    // An explicit disconnect is the client leaving on purpose: the next in line is released
    // after the close grace (300 ms here), not the grace (a minute).
    a2.disconnect();
    b.wait_for("occupancy:released", |_| true).await;
    srv.until("a gone", |s| s.sessions == 2).await;
}

/// A page closing (a clean WebSocket close, no Socket.IO goodbye) waits the close grace; a
/// transport dropped without any close keeps the whole grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_transport_waits_the_close_grace_a_dropped_one_the_grace() {
    let srv = server(long_grace_short_close(), same_io, same_occ).await;
    let url = srv.ws_url();
    let mut closing = Client::connect(&url).await;
    let mut dropping = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    closing.call("occupancy:join", json!("closed")).await;
    dropping.call("occupancy:join", json!("dropped")).await;
    b.call("occupancy:join", json!("closed")).await;
    b.call("occupancy:join", json!("dropped")).await;
    dropping.drop_transport();
    closing.close_transport().await;
    let released = b.wait_for("occupancy:released", |_| true).await;
    assert_eq!(released["room"], "closed");
    srv.until("the dropped one in grace", |s| s.sessions_in_grace == 1)
        .await;
    b.sync().await;
    assert_eq!(
        b.events("occupancy:released").len(),
        1,
        "{:?}",
        b.all_events()
    );
    assert_eq!(srv.hub.occupants("dropped").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_by_pings_and_its_room_released() {
    let srv = server(
        hub(0),
        |b| {
            b.ping_interval(Duration::from_millis(100))
                .ping_timeout(Duration::from_millis(100))
        },
        same_occ,
    )
    .await;
    let url = srv.ws_url();
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    assert_eq!(
        a.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    b.emit("join_document_room", json!("doc"));
    b.wait_for("is_occupied", |_| true).await;
    // The holder's network silently drops: the TCP connection stays open, nothing answers.
    a.pong.store(false, std::sync::atomic::Ordering::SeqCst);
    b.wait_for("is_released", |_| true).await;
    b.sync().await;
    assert_eq!(b.events("is_released").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_names_are_configurable_and_article_events_can_be_off() {
    let srv = server(hub(0), same_io, |o| {
        o.namespace("/docs")
            .events(occupancy_socketio::EventNames::with_prefix("doc:"))
            .article_events(false)
    })
    .await;
    let url = srv.ws_url();
    assert!(
        Client::connect_with(&url, None, &[]).await.is_err(),
        "nothing is attached to / now"
    );
    let mut a = Client::connect_ns(&url, "/docs", None, &[]).await.unwrap();
    let mut b = Client::connect_ns(&url, "/docs", None, &[]).await.unwrap();
    assert_eq!(a.events("doc:hello").len(), 1);
    assert_eq!(a.call("doc:join", json!("d")).await["holding"], true);
    assert_eq!(b.call("doc:join", json!("d")).await["position"], 1);
    b.emit("join_document_room", json!("e"));
    assert_eq!(a.call("doc:leave", json!("d")).await["was_member"], true);
    b.wait_for("doc:released", |_| true).await;
    assert_eq!(b.call("doc:unwatch", json!("d")).await["ev"], "left");
    assert!(
        srv.hub.occupants("e").await.unwrap().is_empty(),
        "article events are off"
    );
    assert!(b.events("is_released").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_on_polling_and_websocket_upgrades() {
    let srv = server_with_origins(
        hub(0),
        same_io,
        same_occ,
        OriginLayer::same_host()
            .allow("http://localhost:5173")
            .unwrap(),
    )
    .await;
    let host = srv.addr.to_string();
    let get = |origin: Option<String>| {
        let host = host.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
            let origin = origin
                .map(|o| format!("Origin: {o}\r\n"))
                .unwrap_or_default();
            let req = format!(
                "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let text = String::from_utf8_lossy(&buf).to_string();
            text.lines().next().unwrap_or_default().to_owned()
        }
    };
    assert!(
        get(None).await.contains(" 200"),
        "non-browser clients send no Origin"
    );
    assert!(
        get(Some("http://localhost:5173".into()))
            .await
            .contains(" 200")
    );
    assert!(get(Some(format!("http://{host}"))).await.contains(" 200"));
    assert!(
        get(Some("https://evil.example".into()))
            .await
            .contains(" 403")
    );

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let Err(err) = tokio_tungstenite::connect_async(req).await else {
        panic!("a disallowed origin was upgraded");
    };
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://localhost:5173".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[test]
fn attach_refuses_clashing_event_names() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_, io) = socketioxide::SocketIo::new_layer();
        let mut names = occupancy_socketio::EventNames::default();
        names.leave = names.join.clone();
        let err = occupancy_socketio::Occupancy::new(Hub::new())
            .events(names)
            .attach(&io)
            .unwrap_err();
        assert_eq!(err.code(), "config");
        // The last rich event is checked too, with the article's events off.
        let mut names = occupancy_socketio::EventNames::default();
        names.update = names.join.clone();
        let err = occupancy_socketio::Occupancy::new(Hub::new())
            .events(names)
            .article_events(false)
            .attach(&io)
            .unwrap_err();
        assert_eq!(
            err,
            Error::Config("two incoming Socket.IO events are both named \"occupancy:join\"".into())
        );
        let err = occupancy_socketio::Occupancy::new(Hub::new())
            .queue_capacity(0)
            .attach(&io)
            .unwrap_err();
        assert_eq!(err.code(), "config");
        for d in [Duration::ZERO, Duration::from_secs(61)] {
            let err = occupancy_socketio::Occupancy::new(Hub::new())
                .identify_timeout(d)
                .attach(&io)
                .unwrap_err();
            assert_eq!(err.code(), "config");
        }
    });
}
