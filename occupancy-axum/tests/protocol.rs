//! Protocol v1 over real sockets: every op and its reply, every notice, every error code with its
//! `ref`, the connection staying open after bad input, and the hard limits that close it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Client, serve};
use occupancy_axum::{Endpoint, Hub};
use occupancy_core::{
    Action, AuthRequest, Backend, Config, Error, ForcedRelease, Joined, Left, Limits,
    MemoryBackend, Meta, NoticeSink, PresenceBody, ResumeToken, Resumed, RoomState, SessionId,
    Stats, async_trait,
};
use serde_json::{Value, json};

fn endpoint(hub: &Hub) -> occupancy_axum::EndpointBuilder {
    Endpoint::builder(hub.clone()).identify(common::demo_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_gets_its_reply_and_every_notice_arrives() {
    let hub = Hub::builder().grace(Duration::ZERO).build().unwrap();
    let addr = serve(endpoint(&hub).build().unwrap()).await;

    let mut ann = Client::connect(addr, "?user=ann&name=Ann").await;
    let h = &ann.hello;
    assert_eq!(h["protocol"], 1);
    assert_eq!(h["resumed"], false);
    assert_eq!(h["heartbeat_ms"], 4000);
    assert_eq!(h["session"].as_str().unwrap().len(), 16);
    let token = h["resume"].as_str().unwrap();
    assert_eq!(token.len(), 32, "a 128-bit token in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));

    // join: the first holds.
    let j = ann.request(json!({"op": "join", "room": "doc-1"})).await;
    assert_eq!(j["ev"], "joined");
    assert_eq!(
        (j["holding"].clone(), j["position"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(
        (j["holder"]["id"].clone(), j["holder"]["meta"].clone()),
        (json!("ann"), json!({"name": "Ann"}))
    );
    assert!(j["holder"]["since"].is_u64(), "since: {j}");
    assert_eq!(j["ref"], 1);
    let v1 = j["version"].as_u64().unwrap();

    // A second occupant: joined (position 1), occupied, presence; the holder sees the line grow.
    let mut bob = Client::connect(addr, "?user=bob").await;
    let j = bob
        .request(json!({"op": "join", "room": "doc-1", "meta": {"name": "Bob"}}))
        .await;
    assert_eq!(
        (j["holding"].clone(), j["position"].clone()),
        (json!(false), json!(1))
    );
    assert_eq!(j["holder"]["id"], "ann");
    let occ = bob.next("occupied", "doc-1").await;
    assert_eq!(occ["holder"]["meta"]["name"], "Ann");
    assert_eq!(occ["position"], 1);
    assert!(occ["version"].as_u64().unwrap() > v1);
    let p = bob.next("presence", "doc-1").await;
    assert_eq!(
        (p["position"].clone(), p["waiting"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        (
            p["occupants"][1]["id"].clone(),
            p["occupants"][1]["meta"].clone()
        ),
        (json!("bob"), json!({"name": "Bob"}))
    );
    // since: when each entered the line; held_since: when the holder was granted the room (Unix
    // ms, server clock).
    let since = |v: &serde_json::Value| v.as_u64().expect("a number of milliseconds");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(since(&p["occupants"][1]["since"]).abs_diff(now_ms) < 60_000);
    assert!(since(&p["occupants"][1]["since"]) >= since(&p["occupants"][0]["since"]));
    assert_eq!(p["held_since"], p["holder"]["since"]);
    let p = ann
        .next_where("holder presence", |e| {
            e["ev"] == "presence" && e["waiting"] == 1
        })
        .await;
    assert_eq!(p["position"], 0);

    // join is idempotent: the same place, nothing sent to others.
    let again = bob
        .request(json!({"op": "join", "room": "doc-1", "ref": "x"}))
        .await;
    assert_eq!(again["position"], 1);

    // watch: a watcher gets the room's presence and every change.
    let mut carl = Client::connect(addr, "").await;
    let w = carl.request(json!({"op": "watch", "room": "doc-1"})).await;
    assert_eq!(w["ev"], "watching");
    assert_eq!(w["holder"]["id"], "ann");
    assert_eq!(w["waiting"], 1);
    assert_eq!(w["occupants"].as_array().unwrap().len(), 2);

    // update: Ann starts editing without leaving; Bob and the watcher see it, nobody moves.
    let u = ann
        .request(
            json!({"op": "update", "room": "doc-1", "meta": {"name": "Ann", "status": "editing"}}),
        )
        .await;
    assert_eq!(
        (
            u["ev"].clone(),
            u["position"].clone(),
            u["holder"]["meta"]["status"].clone()
        ),
        (json!("joined"), json!(0), json!("editing"))
    );
    for c in [&mut bob, &mut carl] {
        let p = c
            .next_where("presence after update", |e| {
                e["ev"] == "presence" && e["holder"]["meta"]["status"] == "editing"
            })
            .await;
        assert_eq!(p["version"], u["version"]);
        assert_eq!(p["occupants"][0]["meta"]["status"], "editing");
    }

    // active: "still working here" answers the place and tells nobody; not a member: refused.
    let a = ann.request(json!({"op": "active", "room": "doc-1"})).await;
    assert_eq!(
        (a["ev"].clone(), a["position"].clone()),
        (json!("joined"), json!(0))
    );
    let a = carl.request(json!({"op": "active", "room": "doc-1"})).await;
    assert_eq!(
        (a["ev"].clone(), a["code"].clone()),
        (json!("error"), json!("not_member"))
    );

    // takeover: Bob takes the room, Ann is displaced and told by whom.
    let t = bob
        .request(json!({"op": "takeover", "room": "doc-1"}))
        .await;
    assert_eq!(
        (t["ev"].clone(), t["holding"].clone()),
        (json!("joined"), json!(true))
    );
    let d = ann.next("displaced", "doc-1").await;
    assert_eq!(d["by"]["id"], "bob");
    assert_eq!(d["position"], 1);
    assert_eq!(d["reason"], "takeover");
    let p = carl.next("presence", "doc-1").await;
    assert_eq!(p["holder"]["id"], "bob");
    assert!(p.get("position").is_none(), "a watcher has no place: {p}");

    // leave: the next in line is released, exactly once, and told its new place.
    let l = bob.request(json!({"op": "leave", "room": "doc-1"})).await;
    assert_eq!(
        l,
        json!({"ev": "left", "ref": l["ref"], "room": "doc-1", "was_member": true})
    );
    let r = ann.next("released", "doc-1").await;
    assert!(r["version"].as_u64().unwrap() > v1);
    let p = ann
        .next_where("presence after release", |e| {
            e["ev"] == "presence" && e["position"] == 0 && e["waiting"] == 0
        })
        .await;
    assert_eq!(p["holder"]["id"], "ann");
    let p = carl
        .next_where("watcher presence", |e| {
            e["ev"] == "presence" && e["holder"]["id"] == "ann"
        })
        .await;
    assert_eq!(p["waiting"], 0);
    // leave is idempotent.
    let l = bob.request(json!({"op": "leave", "room": "doc-1"})).await;
    assert_eq!(l["was_member"], false);

    // unwatch replies `left`; ping replies `pong` with a string ref.
    let u = carl
        .request(json!({"op": "unwatch", "room": "doc-1"}))
        .await;
    assert_eq!(
        (u["ev"].clone(), u["was_member"].clone()),
        (json!("left"), json!(true))
    );
    carl.send_text(r#"{"op":"ping","ref":"p-1"}"#).await;
    assert_eq!(
        carl.reply(json!("p-1")).await,
        json!({"ev": "pong", "ref": "p-1"})
    );
    // No ref: the reply has none.
    carl.send_text(r#"{"op":"ping"}"#).await;
    assert_eq!(
        carl.next_where("pong", |e| e["ev"] == "pong").await,
        json!({"ev": "pong"})
    );
    // Released exactly once per hand-over: Bob once (his take over), Ann once (consumed above).
    let released = |c: &Client| c.buf.iter().filter(|e| e["ev"] == "released").count();
    assert_eq!((released(&ann), released(&bob), released(&carl)), (0, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_of_one_principal_hold_together() {
    let hub = Hub::new();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut tab1 = Client::connect(addr, "?user=ann").await;
    let mut tab2 = Client::connect(addr, "?user=ann").await;
    assert!(tab1.request(json!({"op":"join","room":"d"})).await["holding"] == true);
    assert!(tab2.request(json!({"op":"join","room":"d"})).await["holding"] == true);
}

/// A backend that fails every join while `down` is set (Redis unreachable, say).
struct Flaky {
    inner: MemoryBackend,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl Backend for Flaky {
    fn attach(&self, config: &Config, sink: Arc<dyn NoticeSink>) -> Result<(), Error> {
        self.inner.attach(config, sink)
    }
    async fn connect(
        &self,
        s: SessionId,
        p: Option<&str>,
        m: Meta,
        t: ResumeToken,
    ) -> Result<(), Error> {
        self.inner.connect(s, p, m, t).await
    }
    async fn disconnect(
        &self,
        s: SessionId,
        now: Instant,
        ending: occupancy_core::Ending,
    ) -> Result<(), Error> {
        self.inner.disconnect(s, now, ending).await
    }
    async fn close(&self, s: SessionId) -> Result<(), Error> {
        self.inner.close(s).await
    }
    async fn resume(&self, t: ResumeToken, n: ResumeToken, now: Instant) -> Result<Resumed, Error> {
        self.inner.resume(t, n, now).await
    }
    async fn session_for_token(
        &self,
        t: ResumeToken,
    ) -> Result<Option<(SessionId, Option<String>)>, Error> {
        self.inner.session_for_token(t).await
    }
    async fn join(&self, s: SessionId, room: &str, meta: Option<Meta>) -> Result<Joined, Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                reason: "test backend is down".into(),
            });
        }
        self.inner.join(s, room, meta).await
    }
    async fn update(&self, s: SessionId, room: &str, meta: Meta) -> Result<Joined, Error> {
        self.inner.update(s, room, meta).await
    }
    async fn active(&self, s: SessionId, room: &str) -> Result<Joined, Error> {
        self.inner.active(s, room).await
    }
    async fn release(&self, room: &str) -> Result<ForcedRelease, Error> {
        self.inner.release(room).await
    }
    async fn leave(&self, s: SessionId, room: &str) -> Result<Left, Error> {
        self.inner.leave(s, room).await
    }
    async fn takeover(&self, s: SessionId, room: &str) -> Result<Joined, Error> {
        self.inner.takeover(s, room).await
    }
    async fn watch(&self, s: SessionId, room: &str) -> Result<PresenceBody, Error> {
        self.inner.watch(s, room).await
    }
    async fn unwatch(&self, s: SessionId, room: &str) -> Result<bool, Error> {
        self.inner.unwatch(s, room).await
    }
    async fn room(&self, room: &str) -> Result<Option<RoomState>, Error> {
        self.inner.room(room).await
    }
    async fn stats(&self) -> Result<Stats, Error> {
        self.inner.stats().await
    }
    async fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout().await
    }
    async fn handle_timeout(&self, now: Instant) -> Result<usize, Error> {
        self.inner.handle_timeout(now).await
    }
}

async fn expect_error(c: &mut Client, req: Value, code: &str) -> Value {
    let e = c.request(req.clone()).await;
    assert_eq!(e["ev"], "error", "{req} -> {e}");
    assert_eq!(e["code"], code, "{req} -> {e}");
    assert!(!e["message"].as_str().unwrap().is_empty());
    e
}

async fn expect_raw_error(c: &mut Client, text: &str, code: &str, r: Option<Value>) {
    c.send_text(text).await;
    let e = c.next_where("error", |e| e["ev"] == "error").await;
    assert_eq!(e["code"], code, "{text} -> {e}");
    assert_eq!(e.get("ref"), r.as_ref(), "{text} -> {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_with_its_ref_and_nothing_stored() {
    let down = Arc::new(AtomicBool::new(false));
    let hub = Hub::builder()
        .limits({
            let mut l = Limits::default();
            l.max_rooms_per_session = 2;
            l.max_occupants_per_room = 2;
            l.max_meta_bytes = 64;
            l.max_room_id_len = 32;
            l
        })
        .authorize(|req: &AuthRequest<'_>| match (req.room, req.action) {
            ("secret", _) => Err("members only".to_string()),
            ("r1", Action::Takeover) if req.principal != Some("boss") => {
                Err("only the boss takes over".to_string())
            }
            _ => Ok(()),
        })
        .backend(Flaky {
            inner: MemoryBackend::new(),
            down: down.clone(),
        })
        .build()
        .unwrap();
    let ep = endpoint(&hub)
        .frame_limits(1024, 8192)
        .max_violations(100)
        .build()
        .unwrap();
    let addr = serve(ep).await;
    let mut c = Client::connect(addr, "?user=ann").await;
    let mut other = Client::connect(addr, "?user=bob").await;

    // bad_message: not JSON, not an object, missing or wrong-typed fields, a binary frame.
    expect_raw_error(&mut c, "not json", "bad_message", None).await;
    expect_raw_error(&mut c, "[1,2]", "bad_message", None).await;
    expect_raw_error(
        &mut c,
        r#"{"room":"r","ref":1}"#,
        "bad_message",
        Some(json!(1)),
    )
    .await;
    expect_raw_error(
        &mut c,
        r#"{"op":"join","ref":2}"#,
        "bad_message",
        Some(json!(2)),
    )
    .await;
    expect_raw_error(
        &mut c,
        r#"{"op":"join","room":5,"ref":3}"#,
        "bad_message",
        Some(json!(3)),
    )
    .await;
    expect_raw_error(
        &mut c,
        r#"{"op":7,"ref":"s"}"#,
        "bad_message",
        Some(json!("s")),
    )
    .await;
    expect_raw_error(&mut c, r#"{"op":"ping","ref":[1]}"#, "bad_message", None).await;
    c.send_binary(b"{\"op\":\"ping\"}".to_vec()).await;
    let e = c.next_where("binary error", |e| e["ev"] == "error").await;
    assert_eq!(e["code"], "bad_message");
    // unknown_op.
    expect_raw_error(
        &mut c,
        r#"{"op":"fly","ref":4}"#,
        "unknown_op",
        Some(json!(4)),
    )
    .await;
    // frame_too_large: over 1 KiB (not processed, even though it is a valid join).
    let big = json!({"op": "join", "room": "big", "ref": 5, "pad": "x".repeat(2000)}).to_string();
    expect_raw_error(&mut c, &big, "frame_too_large", Some(json!(5))).await;
    // room_invalid: empty, control characters, too long.
    expect_error(&mut c, json!({"op": "join", "room": ""}), "room_invalid").await;
    expect_error(
        &mut c,
        json!({"op": "join", "room": "a\u{1}b"}),
        "room_invalid",
    )
    .await;
    expect_error(
        &mut c,
        json!({"op": "watch", "room": "r".repeat(33)}),
        "room_invalid",
    )
    .await;
    // meta_invalid, meta_too_large.
    expect_error(
        &mut c,
        json!({"op": "join", "room": "m", "meta": [1]}),
        "meta_invalid",
    )
    .await;
    let fat = json!({"op": "join", "room": "m", "meta": {"name": "n".repeat(100)}});
    expect_error(&mut c, fat, "meta_too_large").await;
    // forbidden (the Hub's authorization hook).
    expect_error(&mut c, json!({"op": "join", "room": "secret"}), "forbidden").await;
    // not_in_room.
    expect_error(
        &mut c,
        json!({"op": "takeover", "room": "elsewhere"}),
        "not_in_room",
    )
    .await;
    // too_many_rooms: two rooms is the limit here.
    assert_eq!(
        c.request(json!({"op": "join", "room": "r1"})).await["ev"],
        "joined"
    );
    assert_eq!(
        c.request(json!({"op": "watch", "room": "r2"})).await["ev"],
        "watching"
    );
    expect_error(
        &mut c,
        json!({"op": "join", "room": "r3"}),
        "too_many_rooms",
    )
    .await;
    // forbidden for take over by policy (Bob waits in r1 but is not the boss).
    assert_eq!(
        other.request(json!({"op": "join", "room": "r1"})).await["position"],
        1
    );
    expect_error(
        &mut other,
        json!({"op": "takeover", "room": "r1"}),
        "forbidden",
    )
    .await;
    // update: not a member (a room never joined, or one only watched), metadata missing, not an
    // object, too large; Ann's metadata in r1 is unchanged by all of them.
    expect_error(
        &mut c,
        json!({"op": "update", "room": "elsewhere", "meta": {}}),
        "not_member",
    )
    .await;
    expect_error(
        &mut c,
        json!({"op": "update", "room": "r2", "meta": {}}),
        "not_member",
    )
    .await;
    expect_raw_error(
        &mut c,
        r#"{"op":"update","room":"r1","ref":6}"#,
        "bad_message",
        Some(json!(6)),
    )
    .await;
    expect_error(
        &mut c,
        json!({"op": "update", "room": "r1", "meta": [1]}),
        "meta_invalid",
    )
    .await;
    expect_error(
        &mut c,
        json!({"op": "update", "room": "r1", "meta": {"name": "n".repeat(100)}}),
        "meta_too_large",
    )
    .await;
    assert_eq!(
        hub.occupants("r1").await.unwrap()[0].meta.to_value(),
        json!({}),
        "as Ann joined (no name)"
    );
    // room_full: two occupants is the limit here.
    let mut third = Client::connect(addr, "?user=eve").await;
    expect_error(&mut third, json!({"op": "join", "room": "r1"}), "room_full").await;
    // unavailable: the backend cannot be reached.
    down.store(true, Ordering::SeqCst);
    expect_error(
        &mut third,
        json!({"op": "join", "room": "r9"}),
        "unavailable",
    )
    .await;
    down.store(false, Ordering::SeqCst);
    // resume_invalid: after hello (a new session), an error without ref.
    let mut stale = Client::connect(addr, &format!("?resume={}", "0".repeat(32))).await;
    assert_eq!(stale.hello["resumed"], false);
    let e = stale.read().await.unwrap();
    assert_eq!(
        (e["ev"].clone(), e["code"].clone()),
        (json!("error"), json!("resume_invalid"))
    );
    let mut junk = Client::connect(addr, "?resume=not-a-token").await;
    assert_eq!(junk.read().await.unwrap()["code"], "resume_invalid");

    // The connection is still open and served, and nothing was stored by the refused requests:
    // only r1 (two occupants) and r2 (one watcher) exist.
    c.alive().await;
    third.alive().await;
    let stats = hub.stats().await.unwrap();
    assert_eq!(
        (stats.rooms, stats.occupants, stats.watchers),
        (2, 2, 1),
        "{stats:?}"
    );
    for room in ["big", "m", "secret", "r3", "r9", ""] {
        assert!(
            hub.room(room).await.unwrap_or(None).is_none(),
            "{room:?} was stored"
        );
    }

    // Every documented code was produced by this test or is covered elsewhere (rate_limited in
    // rate_limit_answers_then_closes_a_flood; unknown_session needs a closed session, which a
    // live connection does not have).
    let documented: Vec<&str> = occupancy_core::protocol::ERROR_CODES
        .iter()
        .map(|c| c.0)
        .collect();
    for code in [
        "bad_message",
        "unknown_op",
        "frame_too_large",
        "room_invalid",
        "too_many_rooms",
        "room_full",
        "meta_too_large",
        "meta_invalid",
        "not_in_room",
        "not_member",
        "forbidden",
        "rate_limited",
        "unavailable",
        "resume_invalid",
    ] {
        assert!(documented.contains(&code), "{code} is not documented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_then_closes_a_flood_and_others_are_unaffected() {
    let hub = Hub::new();
    let ep = endpoint(&hub)
        .rate_limit(1, 3)
        .max_violations(2)
        .build()
        .unwrap();
    let addr = serve(ep).await;
    let mut calm = Client::connect(addr, "?user=calm").await;
    assert_eq!(
        calm.request(json!({"op":"join","room":"d"})).await["holding"],
        true
    );

    let mut flood = Client::connect(addr, "?user=flood").await;
    // A burst of 3 passes; the next ones are rate limited (with their ref), and past the
    // violation limit the connection is closed with 1008.
    for i in 0..10 {
        flood
            .send_text(json!({"op": "ping", "ref": i}).to_string())
            .await;
    }
    let close = flood.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("too many"), "{}", close.reason);
    let pongs = flood.buf.iter().filter(|e| e["ev"] == "pong").count();
    let limited: Vec<_> = flood
        .buf
        .iter()
        .filter(|e| e["code"] == "rate_limited")
        .collect();
    assert_eq!(pongs, 3, "{:?}", flood.buf);
    assert_eq!(limited.len(), 2, "{:?}", flood.buf);
    assert_eq!(limited[0]["ref"], 3);
    assert_eq!(limited[1]["ref"], 4);

    // The other session did not notice.
    calm.alive().await;
    let p = calm.request(json!({"op":"join","room":"d"})).await;
    assert_eq!(p["holding"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_past_the_limit_close_with_1008() {
    let hub = Hub::new();
    let ep = endpoint(&hub).max_violations(3).build().unwrap();
    let addr = serve(ep).await;
    let mut c = Client::connect(addr, "").await;
    for _ in 0..3 {
        expect_raw_error(&mut c, "{", "bad_message", None).await;
    }
    c.alive().await; // still open after three
    c.send_text("{").await;
    let close = c.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let hub = Hub::new();
    let ep = endpoint(&hub)
        .frame_limits(1024, 4096)
        .max_violations(2)
        .build()
        .unwrap();
    let addr = serve(ep).await;

    // Far over the limit: not even read, closed at once.
    let mut c = Client::connect(addr, "").await;
    c.send_text("x".repeat(10_000)).await;
    let close = c.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);

    // Over the limit, repeatedly: answered twice, then closed.
    let mut c = Client::connect(addr, "").await;
    for i in 0..3 {
        c.send_text(json!({"op":"ping","ref":i,"pad":"y".repeat(2000)}).to_string())
            .await;
    }
    let close = c.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    let errors: Vec<_> = c
        .buf
        .iter()
        .filter(|e| e["code"] == "frame_too_large")
        .collect();
    assert_eq!(errors.len(), 2, "{:?}", c.buf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_just_under_the_default_limit_is_processed() {
    // 16 KiB is the default limit, many times the connection's 512-byte read buffer.
    let hub = Hub::new();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut c = Client::connect(addr, "").await;
    let mut req = json!({"op": "join", "room": "padded", "pad": ""});
    let len = req.to_string().len();
    req["pad"] = json!("x".repeat(16 * 1024 - len - 16));
    let j = c.request(req).await;
    assert_eq!(j["ev"], "joined", "{j}");
    let mut req = json!({"op": "ping", "pad": "x".repeat(16 * 1024)});
    req["ref"] = json!("big");
    c.send_text(req.to_string()).await;
    assert_eq!(c.reply(json!("big")).await["code"], "frame_too_large");
}
