//! Every event logged while a socket is served, the Hub's included, carries the
//! `occupancy_connection` span with the socket's session id and principal (absent when
//! anonymous). In its own test binary, with the subscriber installed for the test's thread before
//! anything is logged: tracing caches each callsite's interest across threads, and another test
//! logging without a subscriber first would turn these callsites off.

mod common;

use common::{Client, hub, server};
use occupancy_core::Identity;
use occupancy_core::testing::capture::{Capture, assert_span};
use occupancy_socketio::Handshake;
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

// A current-thread runtime: the server's tasks (socketioxide's handlers, the adapter's workers)
// run on the test's thread, under its subscriber.
#[tokio::test]
async fn a_sockets_events_carry_its_session_and_principal() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let srv = server(
        hub(0),
        |b| b,
        |o| {
            o.identify(|h: &Handshake<'_>| {
                Ok(match h.auth.get("user").and_then(Value::as_str) {
                    Some(user) => Identity::user(user),
                    None => Identity::anonymous(),
                })
            })
        },
    )
    .await;
    let url = srv.ws_url();
    let mut ann = Client::connect_with(&url, Some(json!({"user": "ann"})), &[])
        .await
        .unwrap();
    let mut anon = Client::connect(&url).await;
    let session = |c: &Client| {
        let hello = c.events("occupancy:hello");
        hello[0]["session"].as_str().unwrap().to_owned()
    };
    ann.wait_for("occupancy:hello", |_| true).await;
    anon.wait_for("occupancy:hello", |_| true).await;
    let (a, b) = (session(&ann), session(&anon));
    assert_ne!(a, b);

    assert_eq!(
        ann.call("occupancy:join", json!("doc")).await["holding"],
        true
    );
    assert_eq!(
        anon.call("occupancy:join", json!("doc")).await["position"],
        1
    );
    // A refusal, logged by the Hub inside the request.
    let refused = anon
        .call(
            "occupancy:update",
            json!({"room": "other", "meta": {"x": 1}}),
        )
        .await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    // Ann leaves: the anonymous one is released, which the Hub logs while Ann's leave runs.
    ann.call("occupancy:leave", json!("doc")).await;
    anon.wait_for("occupancy:released", |_| true).await;
    // Ann's page closes: the worker's end is logged in its span.
    ann.disconnect();
    while capture
        .0
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.message != "socket worker ended")
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    assert_span(&capture.one("socket connected", &a), &a, Some("ann"));
    assert_span(&capture.one("joined", &a), &a, Some("ann"));
    assert_span(&capture.one("left", &a), &a, Some("ann"));
    assert_span(&capture.one("released", &b), &a, Some("ann"));
    assert_span(&capture.one("socket worker ended", &a), &a, Some("ann"));

    assert_span(&capture.one("socket connected", &b), &b, None);
    assert_span(&capture.one("joined", &b), &b, None);
    assert_span(&capture.one("refused", &b), &b, None);
    drop(anon);
}
