//! Measurements, not tests (ignored; nothing asserted on time). The hand-over latency over a
//! server served with [`occupancy_axum::nodelay`] and over a plain `axum::serve`, to see what
//! TCP_NODELAY is worth:
//!
//! ```text
//! cargo test -p occupancy-axum --test measure -- --ignored --nocapture
//! ```

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Client;
use occupancy_axum::{Endpoint, Hub};
use serde_json::json;

async fn serve_without_nodelay(endpoint: Endpoint) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = endpoint.router::<()>("/ws");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Time from sending the holder's `leave` to the next in line reading `released`.
async fn hand_overs(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut a = Client::connect(addr, "").await;
    let mut b = Client::connect(addr, "").await;
    a.request(json!({"op": "join", "room": "h"})).await;
    b.request(json!({"op": "join", "room": "h"})).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (holder, waiter) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        holder.clear();
        waiter.clear();
        let t = Instant::now();
        holder
            .send_text(json!({"op": "leave", "room": "h", "ref": "l"}).to_string())
            .await;
        waiter.next("released", "h").await;
        out.push(t.elapsed());
        holder.reply(json!("l")).await;
        holder.request(json!({"op": "join", "room": "h"})).await;
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn hand_over_latency_with_and_without_nodelay() {
    for nodelay in [true, false] {
        // The loop sends far more than a person would: lift the rate limit.
        let ep = Endpoint::builder(Hub::new())
            .rate_limit(100_000, 100_000)
            .build()
            .unwrap();
        let addr = if nodelay {
            common::serve(ep).await
        } else {
            serve_without_nodelay(ep).await
        };
        let d = hand_overs(addr, 100).await;
        println!(
            "{}: leave -> released p50 {:?}, p90 {:?}, max {:?}",
            if nodelay {
                "nodelay"
            } else {
                "plain axum::serve"
            },
            d[d.len() / 2],
            d[d.len() * 9 / 10],
            d[d.len() - 1]
        );
    }
}
