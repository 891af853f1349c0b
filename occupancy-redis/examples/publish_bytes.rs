//! Bench: bytes published on the changes channel per join + leave at the back of a long line,
//! on a private redis-server (spawned on a free port, killed at the end).
//!
//! ```text
//! cargo run --release -p occupancy-redis --example publish_bytes [LINE...]   # default 10 10000
//! ```
//!
//! Per line length: the room is written straight into Redis with that many occupants (sessions
//! of a node that does not exist: filling a 10,000 line with joins would cost 10,000 rewrites),
//! then bob on node B joins at the back (so B follows the room) and, 50 times, carol on node A
//! joins at the back and leaves; then, 5 times, carol joins, takes the room over and leaves (a
//! hand-over back). A raw `SUBSCRIBE` on the channel counts the messages and their bytes; B's
//! count of decoded states and bob's last place show what the follower did.

#[path = "../tests/common/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use occupancy_core::{Hub, Meta, NoticeKind};
use occupancy_redis::{RedisBackend, RedisConfig};

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A stored room of `n` occupants (one session each, empty metadata).
fn big_room(n: usize) -> String {
    let occupants: Vec<String> = (0..n)
        .map(|i| {
            let sid = format!("{:016x}", 0xf000_0000_0000_0000u64 + i as u64);
            format!(
                r#"{{"k":"a:{sid}","m":"{{}}","q":"{}","s":["{sid}"],"t":"{}"}}"#,
                i + 1,
                i + 1
            )
        })
        .collect();
    format!(
        r#"{{"v":"{}","o":[{}],"w":{{}}}}"#,
        n + 1,
        occupants.join(",")
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lines: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let lines = if lines.is_empty() {
        vec![10, 10_000]
    } else {
        lines
    };
    let server = server::RedisServer::start();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let (msgs, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe("occ:ch").await.unwrap();
    {
        let (msgs, bytes) = (msgs.clone(), bytes.clone());
        tokio::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                msgs.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(m.get_payload_bytes().len() as u64, Ordering::Relaxed);
            }
        });
    }

    let node = || async {
        let b = RedisBackend::connect(RedisConfig::new(&url)).await.unwrap();
        let hub = Hub::builder().backend(b.clone()).build().unwrap();
        (hub, b)
    };
    let (a, _a_backend) = node().await;
    let (b, b_backend) = node().await;
    let rounds = 50u64;
    for n in lines {
        let room = format!("big-{n}");
        let _: () = redis::cmd("SET")
            .arg(format!("occ:r:{{{}}}", hex(&room)))
            .arg(big_room(n))
            .query_async(&mut conn)
            .await
            .unwrap();
        let (bob, mut bn) = b.connect(None, Meta::empty()).await.unwrap();
        let (carol, _cn) = a.connect(None, Meta::empty()).await.unwrap();
        let j = bob.join(&room, None).await.unwrap();
        assert_eq!(j.position as usize, n);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (m0, b0, d0) = (
            msgs.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            b_backend.states_decoded(),
        );
        for _ in 0..rounds {
            carol.join(&room, None).await.unwrap();
            carol.leave(&room).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (m1, b1, d1) = (
            msgs.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            b_backend.states_decoded(),
        );
        let mut last = None;
        while let Some(x) = bn.try_recv() {
            if let NoticeKind::Presence(p) = &x.kind {
                last = p.position;
            }
        }
        println!(
            "line {n}: per join+leave at the back: {:.1} messages, {:.0} bytes published; node B decoded {:.2} whole states; bob's last presence place {:?}",
            (m1 - m0) as f64 / rounds as f64,
            (b1 - b0) as f64 / rounds as f64,
            (d1 - d0) as f64 / rounds as f64,
            last,
        );
        // Take overs at the front: every place moves. Before deltas every change published the
        // whole state (its length is STRLEN of the room's key); now a long line publishes a
        // "changed" message and each following node re-reads it.
        let (m0, b0, d0) = (
            msgs.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            b_backend.states_decoded(),
        );
        let mut whole = 0u64;
        for _ in 0..5 {
            carol.join(&room, None).await.unwrap();
            carol.takeover(&room).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let len: u64 = redis::cmd("STRLEN")
                .arg(format!("occ:r:{{{}}}", hex(&room)))
                .query_async(&mut conn)
                .await
                .unwrap();
            whole += len;
            carol.leave(&room).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (m1, b1, d1) = (
            msgs.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
            b_backend.states_decoded(),
        );
        println!(
            "line {n}: per join + take over + leave (the holder): {:.1} messages, {:.0} bytes published (the whole state after the take over: {} bytes); node B decoded {:.2} whole states",
            (m1 - m0) as f64 / 5.0,
            (b1 - b0) as f64 / 5.0,
            whole / 5,
            (d1 - d0) as f64 / 5.0,
        );
        bob.leave(&room).await.unwrap();
        drop((bob, carol));
    }
}
