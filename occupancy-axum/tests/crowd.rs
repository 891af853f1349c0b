//! 1,000 real WebSocket clients in one room: when the holder leaves there is exactly one
//! hand-over (one `released`, to the next in line) and everyone else sees the queue move (a
//! `presence` with their place one closer), all from the same room version.

mod common;

use std::time::Duration;

use futures_util::stream::{SplitSink, StreamExt};
use futures_util::{SinkExt, future};
use occupancy_axum::{Endpoint, Hub};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 1000;

/// A client whose socket is read all the time by its own task (as a browser does), so that no
/// client falls behind while the test talks to another one.
struct Member {
    sink: SplitSink<common::Ws, Message>,
    rx: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Member {
    async fn connect(addr: std::net::SocketAddr, i: usize) -> Member {
        let ws = common::open(addr, &format!("?user=u{i}"), &[])
            .await
            .unwrap();
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg
                    && tx.send(serde_json::from_str(t.as_str()).unwrap()).is_err()
                {
                    break;
                }
            }
        });
        let mut m = Member {
            sink,
            rx,
            seen: Vec::new(),
        };
        m.wait(|e| e["ev"] == "hello").await;
        m
    }

    async fn send(&mut self, v: Value) {
        self.sink.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Reads until an event matches; everything read is kept in `seen`.
    async fn wait(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.seen.iter().find(|e| f(e)) {
            return e.clone();
        }
        loop {
            let e = tokio::time::timeout(common::WAIT, self.rx.recv())
                .await
                .expect("no event in time")
                .expect("connection closed");
            self.seen.push(e.clone());
            if f(&e) {
                return e;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_one_hand_over_everyone_sees_the_queue_move() {
    let hub = Hub::builder().grace(Duration::ZERO).build().unwrap();
    let ep = Endpoint::builder(hub.clone())
        .identify(common::demo_identity)
        .build()
        .unwrap();
    let addr = common::serve(ep).await;

    let mut members = Vec::with_capacity(CLIENTS);
    for chunk in (0..CLIENTS).collect::<Vec<_>>().chunks(100) {
        members.extend(future::join_all(chunk.iter().map(|&i| Member::connect(addr, i))).await);
    }
    // Join one after the other, so member i stands at place i.
    for (i, m) in members.iter_mut().enumerate() {
        m.send(json!({"op": "join", "room": "crowd", "ref": i}))
            .await;
        let j = m.wait(|e| e["ev"] == "joined").await;
        assert_eq!(j["position"], i, "{j}");
    }
    let stats = hub.stats().await.unwrap();
    assert_eq!(stats.occupants, CLIENTS);

    // The holder leaves.
    members[0]
        .send(json!({"op": "leave", "room": "crowd", "ref": "bye"}))
        .await;
    members[0].wait(|e| e["ev"] == "left").await;

    // Everyone else sees their place move up by one.
    let mut versions = Vec::with_capacity(CLIENTS);
    for (i, m) in members.iter_mut().enumerate().skip(1) {
        let want = i - 1;
        let p = m
            .wait(|e| e["ev"] == "presence" && e["position"] == want)
            .await;
        assert_eq!(p["holder"]["id"], "u1");
        assert_eq!(p["waiting"], CLIENTS - 2);
        versions.push(p["version"].as_u64().unwrap());
    }
    // Exactly one `released`, to the new holder (a `released` precedes the presence of the same
    // change for its recipient, so every `released` there is has been read by now).
    let released: Vec<(usize, &Value)> = members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            m.seen
                .iter()
                .filter(|e| e["ev"] == "released")
                .map(move |e| (i, e))
        })
        .collect();
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].0, 1);
    // One change: the release and every move carry the same room version.
    let v = released[0].1["version"].as_u64().unwrap();
    assert!(
        versions.iter().all(|&x| x == v),
        "one version for the whole hand-over"
    );
    assert_eq!(
        hub.holder("crowd").await.unwrap().unwrap().id.to_string(),
        "u1"
    );
}
