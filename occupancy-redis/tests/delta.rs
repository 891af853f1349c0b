//! What is published is sized by the change: a join or a leave at the back of a long line
//! publishes a small delta, a change that moves many places a small "changed" message, and a
//! node that follows the room still tells its sessions the places the whole line gives them. The
//! line is written straight into Redis (sessions of a node that does not exist: 2,000 joins
//! would cost 2,000 rewrites of a growing line); a raw `SUBSCRIBE` reads what is published.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, raw_node, raw_session};
use futures_util::StreamExt;
use occupancy_core::{Backend, Notice, NoticeKind, SessionId};

const PATIENCE: Duration = Duration::from_secs(20);
const ROOM: &str = "long";
const LINE: usize = 2000;
/// What a publish about one occupant may weigh, whatever the line's length.
const SMALL: usize = 512;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A stored room of `n` occupants, one session each, of a node that does not exist.
fn long_room(n: usize) -> String {
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

/// The place the last presence to `session` told.
fn last_place(notices: &[Notice], session: SessionId) -> Option<u32> {
    notices.iter().rev().find_map(|n| match &n.kind {
        NoticeKind::Presence(p) if n.session == session => p.position,
        _ => None,
    })
}

/// Waits until `session`'s last presence says `place`.
async fn place_becomes(notices: &Mutex<Vec<Notice>>, session: SessionId, place: u32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = last_place(&notices.lock().unwrap(), session);
        if got == Some(place) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{session:?} was last told {got:?}, not {place}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Everything published on the channel, from now on.
async fn subscribe(url: &str) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let client = redis::Client::open(url).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe("occ:ch").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        let mut m = ps.into_on_message();
        while let Some(x) = m.next().await {
            s.lock().unwrap().push(x.get_payload_bytes().to_vec());
        }
    });
    seen
}

/// Waits for the next publish about the room, and takes every publish so far.
async fn next_publish(seen: &Mutex<Vec<Vec<u8>>>) -> Vec<u8> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = {
            let mut v = seen.lock().unwrap();
            let p = v
                .iter()
                .find(|p| p.len() > 1 && p[1..].starts_with(ROOM.as_bytes()))
                .cloned();
            if p.is_some() {
                v.clear();
            }
            p
        };
        if let Some(p) = found {
            return p;
        }
        assert!(Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_at_the_back_of_a_long_line_publish_small_deltas() {
    let server = RedisServer::start();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("occ:r:{{{}}}", hex(ROOM)))
        .arg(long_room(LINE))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (a, _) = raw_node(&url).await;
    let (b, b_sink) = raw_node(&url).await;
    let seen = subscribe(&url).await;
    // B follows the room: bob at LINE, then (after A's carol) bob2 at LINE + 2.
    let bob = raw_session(&b, 1, None).await;
    let carol = raw_session(&a, 2, None).await;
    let bob2 = raw_session(&b, 3, None).await;
    assert_eq!(
        b.join(bob, ROOM, None).await.unwrap().position as usize,
        LINE
    );
    next_publish(&seen).await;
    // B's subscription is up and its first re-read done.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // carol joins at the back: a delta of one occupant, not the line.
    let decoded = b.states_decoded();
    assert_eq!(
        a.join(carol, ROOM, None).await.unwrap().position as usize,
        LINE + 1
    );
    let p = next_publish(&seen).await;
    assert_eq!(p[0], b'd', "{}", String::from_utf8_lossy(&p));
    assert!(p.len() < SMALL, "{} bytes published for a join", p.len());
    b.join(bob2, ROOM, None).await.unwrap();
    next_publish(&seen).await;
    place_becomes(&b_sink.notices, bob2, LINE as u32 + 2).await;

    // carol leaves: bob2 moves up one place, told by B from the delta alone.
    a.leave(carol, ROOM).await.unwrap();
    let p = next_publish(&seen).await;
    assert_eq!(p[0], b'd', "{}", String::from_utf8_lossy(&p));
    assert!(p.len() < SMALL, "{} bytes published for a leave", p.len());
    place_becomes(&b_sink.notices, bob2, LINE as u32 + 1).await;
    place_becomes(&b_sink.notices, bob, LINE as u32).await;
    // Neither change made B decode a whole state (its own join's reply aside).
    assert_eq!(
        b.states_decoded() - decoded,
        1,
        "B decoded only its own reply"
    );

    // carol comes back and takes the room over: every place behind her moves, so a bounded
    // "changed" message goes out and B re-reads the room.
    a.join(carol, ROOM, None).await.unwrap();
    next_publish(&seen).await;
    a.takeover(carol, ROOM).await.unwrap();
    let p = next_publish(&seen).await;
    assert_eq!(p[0], b'v', "{}", String::from_utf8_lossy(&p));
    assert!(
        p.len() < SMALL,
        "{} bytes published for a take over",
        p.len()
    );
    place_becomes(&b_sink.notices, bob, LINE as u32 + 1).await;
    place_becomes(&b_sink.notices, bob2, LINE as u32 + 2).await;
    let st = b.room(ROOM).await.unwrap().unwrap();
    assert_eq!(st.occupants.len(), LINE + 3);
}
