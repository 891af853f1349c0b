//! The connection's life over real sockets: Origin refusal and the identify hook (a refusal, a
//! hook that hangs) before the upgrade, server pings and dead-client detection, resume within the grace (and a token being
//! useless after use or expiry), a closed page waiting only the close grace, a connection
//! replaced by a resume, and TCP_NODELAY on the documented listener.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use axum::serve::Listener;
use common::{Client, WAIT, open, serve};
use occupancy_axum::{Endpoint, Hub, Identity, OriginPolicy, Rejection, query_param};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite;

fn endpoint(hub: &Hub) -> occupancy_axum::EndpointBuilder {
    Endpoint::builder(hub.clone()).identify(common::demo_identity)
}

fn http_status(r: Result<common::Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_before_the_upgrade() {
    let hub = Hub::new();
    let addr = serve(Endpoint::new(hub.clone())).await;
    let own = format!("http://{addr}");

    // A cross-site page: 403, and no session was created.
    assert_eq!(
        http_status(open(addr, "", &[("origin", "https://evil.example")]).await),
        403
    );
    assert_eq!(
        http_status(open(addr, "", &[("origin", "null")]).await),
        403
    );
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
    assert_eq!(
        http_status(open(addr, "", &[("origin", &other_port)]).await),
        403
    );
    assert_eq!(hub.live_connections(), 0);
    // The page's own origin, and a non-browser client without Origin, are let in.
    Client::connect_with(addr, "", &[("origin", &own)])
        .await
        .alive()
        .await;
    Client::connect(addr, "").await.alive().await;

    // An allow-list replaces the same-host rule.
    let ep = Endpoint::builder(hub.clone())
        .allowed_origins(["https://app.example.com"])
        .unwrap()
        .build()
        .unwrap();
    let addr = serve(ep).await;
    Client::connect_with(addr, "", &[("origin", "https://app.example.com")])
        .await
        .alive()
        .await;
    let own = format!("http://{addr}");
    assert_eq!(http_status(open(addr, "", &[("origin", &own)]).await), 403);
    let ep = Endpoint::builder(hub.clone())
        .origins(
            OriginPolicy::allow(["https://app.example.com"])
                .unwrap()
                .with_same_host(),
        )
        .build()
        .unwrap();
    let addr = serve(ep).await;
    let own = format!("http://{addr}");
    Client::connect_with(addr, "", &[("origin", &own)])
        .await
        .alive()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identify_hook_names_or_refuses_the_caller() {
    let hub = Hub::new();
    let ep = Endpoint::builder(hub.clone())
        .identify_async(|parts: &axum::http::request::Parts| {
            let token = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let name = query_param(parts, "name");
            async move {
                tokio::task::yield_now().await; // a session store lookup, say
                match token.as_deref() {
                    Some("Bearer ann-token") => {
                        Ok(Identity::user("ann").with_name(name.unwrap_or_default()))
                    }
                    Some("Bearer hang") => {
                        // A session store that never answers.
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    Some(_) => Err(Rejection::forbidden("bad token")),
                    None => Err((StatusCode::UNAUTHORIZED, "sign in").into()),
                }
            }
        })
        .identify_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve(ep).await;
    assert_eq!(http_status(open(addr, "", &[]).await), 401);
    // A hook that does not answer in time: 503, and no session was started.
    assert_eq!(
        http_status(open(addr, "", &[("authorization", "Bearer hang")]).await),
        503
    );
    assert_eq!(hub.stats().await.unwrap().sessions, 0);
    assert_eq!(
        http_status(open(addr, "", &[("authorization", "Bearer x")]).await),
        403
    );
    let mut ann =
        Client::connect_with(addr, "?name=Ann", &[("authorization", "Bearer ann-token")]).await;
    let j = ann.request(json!({"op": "join", "room": "d"})).await;
    assert_eq!(
        (j["holder"]["id"].clone(), j["holder"]["meta"].clone()),
        (json!("ann"), json!({"name": "Ann"}))
    );
    assert!(j["holder"]["since"].is_u64(), "since: {j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_dropped_and_its_rooms_released() {
    // A long grace: the dead holder's room is released by the liveness timeout, not by grace.
    let hub = Hub::builder()
        .grace(Duration::from_secs(600))
        .build()
        .unwrap();
    let ep = endpoint(&hub)
        .liveness(Duration::from_millis(100), Duration::from_millis(400))
        .build()
        .unwrap();
    let addr = serve(ep).await;

    let mut dead = Client::connect(addr, "?user=dead").await;
    assert_eq!(
        dead.request(json!({"op":"join","room":"d"})).await["holding"],
        true
    );
    let mut next = Client::connect(addr, "?user=next").await;
    assert_eq!(
        next.request(json!({"op":"join","room":"d"})).await["position"],
        1
    );

    // `dead` never reads its socket again, so it never answers a ping (its TCP connection stays
    // open: only the missing pongs give it away). `next` keeps reading and answering.
    let released = next.next("released", "d").await;
    assert_eq!(released["room"], "d");
    // Detection happened while `next`, who answers pings, stayed connected.
    assert!(next.pings > 0, "the server sends WebSocket pings");
    next.alive().await;
    assert_eq!(
        hub.holder("d").await.unwrap().unwrap().id.to_string(),
        "next"
    );
    drop(dead.ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_keeps_the_place_and_a_token_is_single_use() {
    let hub = Hub::builder()
        .grace(Duration::from_secs(600))
        .build()
        .unwrap();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut ann = Client::connect(addr, "?user=ann").await;
    ann.request(json!({"op":"join","room":"d"})).await;
    let mut bob = Client::connect(addr, "?user=bob").await;
    assert_eq!(
        bob.request(json!({"op":"join","room":"d"})).await["position"],
        1
    );
    let (session, token) = (ann.session(), ann.token());

    // Ann's connection drops (a page reload): her place is kept during the grace.
    ann.ws.close(None).await.unwrap();
    drop(ann);
    let mut back = Client::connect(addr, &format!("?user=ann&resume={token}")).await;
    assert_eq!(back.hello["resumed"], true);
    assert_eq!(back.session(), session, "the same session");
    assert_ne!(back.token(), token, "a new token");
    // The Hub's presence for the kept room is forwarded right after hello.
    let p = back.next("presence", "d").await;
    assert_eq!(
        (p["position"].clone(), p["waiting"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(
        back.request(json!({"op":"join","room":"d"})).await["holding"],
        true
    );
    // Bob was never released.
    bob.alive().await;
    assert!(
        bob.buf.iter().all(|e| e["ev"] != "released"),
        "{:?}",
        bob.buf
    );

    // The used token is useless: a new session, told why.
    let mut again = Client::connect(addr, &format!("?user=ann&resume={token}")).await;
    assert_eq!(again.hello["resumed"], false);
    assert_ne!(again.session(), session);
    assert_eq!(again.read().await.unwrap()["code"], "resume_invalid");

    // Resuming a live connection's session replaces it: the old one is closed with 4000.
    let current = back.token();
    let mut newer = Client::connect(addr, &format!("?user=ann&resume={current}")).await;
    assert_eq!(newer.hello["resumed"], true);
    let close = back.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    newer.alive().await;

    // Someone else's token: refused, and nothing changes — Ann keeps her connection and place,
    // Bob is not released, and the token still works for Ann.
    let stolen = newer.token();
    let mut eve = Client::connect(addr, &format!("?user=eve&resume={stolen}")).await;
    assert_eq!(eve.hello["resumed"], false);
    assert_ne!(eve.session(), session);
    assert_eq!(eve.read().await.unwrap()["code"], "resume_invalid");
    newer.alive().await;
    assert_eq!(
        newer.request(json!({"op":"join","room":"d"})).await["holding"],
        true
    );
    bob.alive().await;
    assert!(
        bob.buf.iter().all(|e| e["ev"] != "released"),
        "{:?}",
        bob.buf
    );
    assert_eq!(newer.token(), stolen);
}

/// A page that closes (the browser sends close code 1001) hands its room over after the close
/// grace; a connection that drops without a close frame keeps its place for the whole grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_page_hands_over_after_the_close_grace_a_dropped_one_keeps_its_grace() {
    let hub = Hub::builder()
        .grace(Duration::from_secs(600))
        .close_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut ann = Client::connect(addr, "?user=ann").await;
    ann.request(json!({"op":"join","room":"closed"})).await;
    let mut cid = Client::connect(addr, "?user=cid").await;
    cid.request(json!({"op":"join","room":"dropped"})).await;
    let mut bob = Client::connect(addr, "?user=bob").await;
    bob.request(json!({"op":"join","room":"closed"})).await;
    bob.request(json!({"op":"join","room":"dropped"})).await;

    // Cid's connection is cut without a close frame; Ann's page closes.
    drop(cid);
    ann.ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "".into(),
        }))
        .await
        .unwrap();
    bob.next("released", "closed").await;
    assert_eq!(
        bob.request(json!({"op":"join","room":"closed"})).await["holding"],
        true
    );
    // Cid is still in the grace: the room is still his, Bob still waits.
    bob.alive().await;
    assert!(
        bob.buf
            .iter()
            .all(|e| !(e["ev"] == "released" && e["room"] == "dropped")),
        "{:?}",
        bob.buf
    );
    assert_eq!(hub.stats().await.unwrap().sessions_in_grace, 1);
    assert_eq!(hub.occupants("dropped").await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_useless_after_the_grace() {
    let hub = Hub::builder()
        .grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut ann = Client::connect(addr, "").await;
    ann.request(json!({"op":"join","room":"d"})).await;
    let mut bob = Client::connect(addr, "").await;
    bob.request(json!({"op":"join","room":"d"})).await;
    let token = ann.token();
    ann.ws.close(None).await.unwrap();
    drop(ann);
    // The grace ends: Bob holds, and Ann's token no longer resumes anything.
    bob.next("released", "d").await;
    let mut late = Client::connect(addr, &format!("?resume={token}")).await;
    assert_eq!(late.hello["resumed"], false);
    assert_eq!(late.read().await.unwrap()["code"], "resume_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_listener_sets_tcp_nodelay() {
    // What `axum::serve(occupancy_axum::nodelay(listener), app)` accepts has Nagle off (the
    // 42 ms hand-over regression of DESIGN.md comes back the moment this fails).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = occupancy_axum::nodelay(listener);
    let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
    let (io, _) = tokio::time::timeout(WAIT, listener.accept()).await.unwrap();
    assert!(
        io.nodelay().unwrap(),
        "accepted sockets must have TCP_NODELAY"
    );
    drop(client.await.unwrap());

    // And a hand-over round trip over a server served that way: the leave's reply and the next
    // holder's `released` both arrive.
    let hub = Hub::new();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut a = Client::connect(addr, "").await;
    let mut b = Client::connect(addr, "").await;
    a.request(json!({"op":"join","room":"h"})).await;
    b.request(json!({"op":"join","room":"h"})).await;
    for i in 0..20 {
        let (holder, waiter) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        holder.request(json!({"op":"leave","room":"h"})).await;
        waiter.next("released", "h").await;
        holder.request(json!({"op":"join","room":"h"})).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_consumer_is_closed_with_1008() {
    // A notice buffer of two, and a resume that pushes a presence for each of three kept rooms
    // at once: on a current-thread runtime the connection cannot forward any before the third
    // arrives, so the Hub closes the session as a slow consumer.
    let hub = Hub::builder().notice_buffer(2).build().unwrap();
    let addr = serve(endpoint(&hub).build().unwrap()).await;
    let mut ann = Client::connect(addr, "?user=ann").await;
    ann.request(json!({"op":"join","room":"a"})).await;
    let mut bob = Client::connect(addr, "?user=bob").await;
    for room in ["r1", "r2", "r3"] {
        bob.request(json!({"op":"join","room":room})).await;
    }
    let token = bob.token();
    bob.ws.close(None).await.unwrap();
    drop(bob);
    let mut bob = Client::connect(addr, &format!("?user=bob&resume={token}")).await;
    assert_eq!(bob.hello["resumed"], true);
    let close = bob.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("notices"), "{}", close.reason);
    // Bob's places are gone; Ann is unaffected.
    ann.alive().await;
    assert_eq!(hub.stats().await.unwrap().occupants, 1);
}
