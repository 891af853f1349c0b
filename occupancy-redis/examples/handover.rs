//! Bench: cross-node hand-over latency and Redis round trips per operation, on a private
//! redis-server (spawned on a free port, killed at the end).
//!
//! ```text
//! cargo run --release -p occupancy-redis --example handover [ITERATIONS]
//! ```
//!
//! Two nodes (two Hubs, each with its own `RedisBackend`) in one process share the server. Per
//! iteration: alice on node A holds a room, bob on node B waits; the clock starts when alice
//! leaves on A and stops when bob's `released` notice arrives on B (script + publish + B's
//! subscriber + the pure notice function + B's channel). Round trips: `INFO commandstats` deltas
//! over a batch of joins and leaves (every command the server executed, divided by operations),
//! and the backend's own request counter.

#[path = "../tests/common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use occupancy_core::{Hub, Meta, NoticeKind};
use occupancy_redis::{RedisBackend, RedisConfig};

/// (EVALSHA + EVAL calls, all calls including the commands scripts run inside Redis).
async fn total_calls(url: &str) -> (u64, u64) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let calls = |l: &str| -> u64 {
        l.split("calls=")
            .nth(1)
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let scripts = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(calls)
        .sum();
    (scripts, info.lines().map(calls).sum())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let server = server::RedisServer::start();
    let url = server.url();
    let node = || async {
        let b = RedisBackend::connect(RedisConfig::new(&url)).await.unwrap();
        let hub = Hub::builder().backend(b.clone()).build().unwrap();
        (hub, b)
    };
    let (a, a_backend) = node().await;
    let (b, b_backend) = node().await;
    let (alice, mut an) = a
        .connect(Some("alice".into()), Meta::empty())
        .await
        .unwrap();
    let (bob, mut bn) = b.connect(Some("bob".into()), Meta::empty()).await.unwrap();

    // Warm up (scripts loaded, connections up).
    for _ in 0..50 {
        alice.join("warm", None).await.unwrap();
        alice.leave("warm").await.unwrap();
    }

    let mut lat = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let room = format!("doc-{}", i % 64);
        alice.join(&room, None).await.unwrap();
        bob.join(&room, None).await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
        while bn.try_recv().is_some() {}
        while an.try_recv().is_some() {}
        let t0 = Instant::now();
        alice.leave(&room).await.unwrap();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), bn.recv())
                .await
                .expect("bob is released within 5 s")
                .expect("bob's notices are open");
            if matches!(n.kind, NoticeKind::Released { .. }) && n.room.as_str() == room {
                break;
            }
        }
        lat.push(t0.elapsed());
        bob.leave(&room).await.unwrap();
    }
    lat.sort();
    println!(
        "cross-node hand-over (leave on A -> released on B), {iterations} iterations: p50 {:?}, p99 {:?}, max {:?}",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // Round trips per operation.
    let ops = 1000u64;
    let before = total_calls(&url).await;
    let (ra, rb) = (a_backend.round_trips(), b_backend.round_trips());
    for i in 0..ops / 2 {
        let room = format!("rt-{i}");
        alice.join(&room, None).await.unwrap();
        alice.leave(&room).await.unwrap();
        while an.try_recv().is_some() {}
    }
    let after = total_calls(&url).await;
    let sent = (a_backend.round_trips() - ra) + (b_backend.round_trips() - rb);
    // Lease renewals (one script per node every lease/3) may add a few.
    println!(
        "round trips per operation (join/leave): {:.3} requests sent by the backends, {:.3} scripts (EVALSHA/EVAL) executed by the server, {:.1} commands run inside Redis (INFO commandstats, in-script calls included)",
        sent as f64 / ops as f64,
        (after.0 - before.0) as f64 / ops as f64,
        (after.1 - before.1 - 1) as f64 / ops as f64
    );
    drop((alice, bob));
}
