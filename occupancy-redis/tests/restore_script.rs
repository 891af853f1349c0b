//! The `restore` script on its own (`src/lua/restore.lua`, run with the prelude exactly as the
//! backend runs it), against a real Redis with hand-made records: the interleavings of two nodes
//! writing back after Redis restarted empty are hard to force through the nodes' own timers, and
//! easy to lay out as keys.
//!
//! The case (found by issue 18's chaos soak): a session of node Y leaves a room after Y wrote its
//! record back but before the room is back; node X then writes the room back from its own, older
//! view, and keeps Y's sessions as placeholders until Y confirms them. A placeholder whose record
//! is back and no longer lists the room must not stand in the line — not for one lease, not at
//! all: it made a ghost occupant (notices after `left`, two holders at once).

mod common;

use common::RedisServer;
use redis::AsyncCommands;
use serde_json::{Value, json};

const P: &str = "t";
const ROOM: &str = "doc";
const LEASE_MS: u64 = 60_000;

fn script() -> redis::Script {
    redis::Script::new(&format!(
        "{}\n{}",
        include_str!("../src/lua/prelude.lua"),
        include_str!("../src/lua/restore.lua")
    ))
}

fn room_key() -> String {
    let hex: String = ROOM.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{P}:r:{{{hex}}}")
}

/// Writes a session's record back as its node would (`reregister`), standing in `joined`.
async fn record(c: &mut redis::aio::MultiplexedConnection, sid: &str, node: &str, joined: &[&str]) {
    let key = format!("{P}:s:{{{sid}}}");
    let _: () = c
        .hset_multiple(
            &key,
            &[
                ("n", node.to_string()),
                ("m", "{}".to_string()),
                ("j", json!(joined).to_string()),
                ("w", "[]".to_string()),
                ("g", "0".to_string()),
            ],
        )
        .await
        .unwrap();
}

fn occupant(sid: &str, q: u64) -> Value {
    json!({"k": format!("a:{sid}"), "m": "{}", "q": q.to_string(), "s": [sid], "t": q.to_string()})
}

/// Runs `restore` as a node hosting `mine`, from the view `seen`.
async fn restore(c: &mut redis::aio::MultiplexedConnection, seen: &Value, mine: &[&str]) {
    let reply: String = script()
        .arg(P)
        .arg(0)
        .arg(ROOM)
        .arg(seen.to_string())
        .arg(json!(mine).to_string())
        .arg("[]")
        .arg(LEASE_MS)
        .invoke_async(c)
        .await
        .unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert!(reply.get("e").is_none(), "restore refused: {reply}");
}

/// The sessions standing in the stored line, in order.
async fn line(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let raw: Option<String> = c.get(room_key()).await.unwrap();
    let st: Value = serde_json::from_str(&raw.expect("the room is stored")).unwrap();
    st["o"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["s"].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

async fn connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// X writes the missing room back from a view holding Y's bob and carol: bob's record is back
/// and lists no room (he left meanwhile), carol's is not back yet.
#[tokio::test]
async fn a_placeholder_whose_record_says_it_left_is_not_written_back() {
    let server = RedisServer::start();
    let mut c = connection(&server).await;
    record(&mut c, "a11ce", "x", &[ROOM]).await;
    record(&mut c, "b0b", "y", &[]).await;
    let seen = json!({"v": "5", "o": [occupant("a11ce", 1), occupant("b0b", 2), occupant("ca401", 3)], "w": []});
    restore(&mut c, &seen, &["a11ce"]).await;
    assert_eq!(
        line(&mut c).await,
        ["a11ce", "ca401"],
        "bob's record says he left: no placeholder; carol's is not back: she is kept for Y"
    );
}

/// The room is back already, written by X with Y's bob as a placeholder; then bob's record comes
/// back without the room (he left) and Y writes the room back: the placeholder goes, and the
/// room passes to the next in line if he held it.
#[tokio::test]
async fn a_placeholder_that_left_is_dropped_when_its_node_writes_back() {
    let server = RedisServer::start();
    let mut c = connection(&server).await;
    record(&mut c, "a11ce", "x", &[ROOM]).await;
    // X writes back before bob's record is back: bob is a placeholder.
    let seen_x = json!({"v": "5", "o": [occupant("b0b", 1), occupant("a11ce", 2)], "w": []});
    restore(&mut c, &seen_x, &["a11ce"]).await;
    assert_eq!(line(&mut c).await, ["b0b", "a11ce"]);
    // Bob's record comes back without the room; Y writes its rooms back (bob is no longer among
    // its sessions there).
    record(&mut c, "b0b", "y", &[]).await;
    let seen_y = json!({"v": "5", "o": [occupant("b0b", 1), occupant("a11ce", 2)], "w": []});
    restore(&mut c, &seen_y, &[]).await;
    assert_eq!(line(&mut c).await, ["a11ce"], "bob left: no ghost holder");
    let raw: String = c.get(room_key()).await.unwrap();
    let st: Value = serde_json::from_str(&raw).unwrap();
    assert!(st["h"].is_string(), "alice is granted the room: {st}");
}
