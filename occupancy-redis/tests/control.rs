//! Server-side control on the Redis backend: rooms listed a page at a time (`SCAN` over the room
//! keys, every node sees every room), a room's summary with its watcher count, and the change
//! stream reporting what this node's own calls changed.

mod common;

use std::time::Duration;

use common::{RedisServer, test_config};
use occupancy_core::{Hub, Meta};
use occupancy_redis::RedisBackend;

async fn node(url: &str) -> Hub {
    let backend = RedisBackend::connect(test_config(url)).await.unwrap();
    Hub::builder().backend(backend).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_summaries_and_changes_across_nodes() {
    let server = RedisServer::start();
    let (one, two) = (node(&server.url()).await, node(&server.url()).await);
    let mut sessions = Vec::new();
    // Room ids with braces and non-ASCII: the key's hex tag must round-trip.
    let names = ["b-{x}", "a", "é-2", "c", "d"];
    for (i, name) in names.iter().enumerate() {
        let hub = if i % 2 == 0 { &one } else { &two };
        let (s, n) = hub.connect(None, Meta::empty()).await.unwrap();
        s.join(name, None).await.unwrap();
        sessions.push((s, n));
    }
    let (w, _wn) = two.connect(None, Meta::empty()).await.unwrap();
    w.watch("a").await.unwrap();
    let (extra, _en) = one.connect(None, Meta::empty()).await.unwrap();
    extra.join("a", None).await.unwrap();

    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    let page = one.rooms(None, 3).await.unwrap();
    let ids: Vec<String> = page.iter().map(|r| r.room.to_string()).collect();
    assert_eq!(ids, sorted[..3]);
    let rest = two.rooms(Some(&ids[2]), 10).await.unwrap();
    let rest: Vec<String> = rest.iter().map(|r| r.room.to_string()).collect();
    assert_eq!(rest, sorted[3..]);
    let a = one.summary("a").await.unwrap().expect("room a");
    assert_eq!((a.waiting, a.watchers), (1, 1));
    assert!(a.holder.is_some() && a.held_since.is_some());
    assert_eq!(one.summary("nowhere").await.unwrap(), None);

    // The change stream of node one hears node one's own changes.
    let mut changes = one.changes();
    extra.leave("a").await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a change");
    assert_eq!(c.room.as_str(), "a");
    assert_eq!(c.now.map(|s| s.waiting), Some(0));
}
