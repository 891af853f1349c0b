//! Every event logged while a connection is served, the Hub's included, carries the
//! `occupancy_connection` span with the connection's session id and principal (absent when
//! anonymous). In its own test binary, with the subscriber installed for the test's thread before
//! anything is logged: tracing caches each callsite's interest across threads, and another test
//! logging without a subscriber first would turn these callsites off.

mod common;

use std::time::Duration;

use common::{Client, serve};
use occupancy_axum::{Endpoint, Hub};
use occupancy_core::testing::capture::{Capture, assert_span};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

// A current-thread runtime: the server's tasks run on the test's thread, under its subscriber.
#[tokio::test]
async fn a_connections_events_carry_its_session_and_principal() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let hub = Hub::new();
    let ep = Endpoint::builder(hub.clone())
        .identify(common::demo_identity)
        .build()
        .unwrap();
    let addr = serve(ep).await;

    let mut ann = Client::connect(addr, "?user=ann").await;
    let mut anon = Client::connect(addr, "").await;
    let (a, b) = (ann.session(), anon.session());
    assert_ne!(a, b);
    assert_eq!(
        ann.request(json!({"op": "join", "room": "doc"})).await["ev"],
        "joined"
    );
    assert_eq!(
        anon.request(json!({"op": "join", "room": "doc"})).await["position"],
        1
    );
    // A refusal, logged by the Hub inside the request.
    let refused = anon.request(json!({"op": "join", "room": ""})).await;
    assert_eq!(refused["code"], "room_invalid");
    // Ann leaves: the anonymous one is released, which the Hub logs while Ann's leave runs.
    ann.request(json!({"op": "leave", "room": "doc"})).await;
    anon.next("released", "doc").await;
    assert_span(&capture.one("connection open", &a), &a, Some("ann"));
    assert_span(&capture.one("joined", &a), &a, Some("ann"));
    assert_span(&capture.one("left", &a), &a, Some("ann"));
    assert_span(&capture.one("released", &b), &a, Some("ann"));

    assert_span(&capture.one("connection open", &b), &b, None);
    assert_span(&capture.one("joined", &b), &b, None);
    assert_span(&capture.one("refused", &b), &b, None);

    // A dead peer (it never answers pings): the connection's end is logged in its span too.
    // (A clean close would not do: the Hub batches disconnects, and whichever task flushes the
    // batch logs it, the Hub's timer task as often as not.)
    let ep = Endpoint::builder(hub.clone())
        .identify(common::demo_identity)
        .liveness(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .unwrap();
    let dead = Client::connect(serve(ep).await, "?user=dee").await;
    let d = dead.session();
    // Not read from again, so never pongs.
    while capture
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.message != "closed")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_span(
        &capture.one("liveness timeout: closing the session", &d),
        &d,
        Some("dee"),
    );
    assert_span(&capture.one("closed", &d), &d, Some("dee"));
    drop(dead);
}
