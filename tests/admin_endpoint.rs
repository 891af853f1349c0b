//! The documents example's admin endpoints (`examples/support/admin.rs`), over a real socket:
//! refused without the bearer token; with it, rooms are listed a page at a time, a forced
//! release hands a room over (the holder is told why), a kick ends a session, and the change
//! stream reports rooms as server-sent events.
#![cfg(feature = "axum")]

#[path = "../examples/support/mod.rs"]
mod support;

use std::time::Duration;

use occupancy::{DisplacedReason, Error, Hub, Meta, NoticeKind};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "s3cret";

/// Sends one request; returns the status code and the body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head[9..12].parse().unwrap();
    (status, body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_releases_kicks_and_streams_changes() {
    let hub = Hub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = support::admin::router(hub.clone(), TOKEN.into());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    for token in [None, Some("wrong"), Some("s3cre")] {
        let (status, _) = call(addr, "GET", "/admin/rooms", token).await;
        assert_eq!(status, 401, "token {token:?}");
    }

    let (ann, mut an) = hub
        .connect(Some("ann".into()), Meta::empty())
        .await
        .unwrap();
    let (bob, _bn) = hub
        .connect(Some("bob".into()), Meta::empty())
        .await
        .unwrap();
    for i in 0..3 {
        ann.join(&format!("doc-{i}"), None).await.unwrap();
    }
    bob.join("doc-0", None).await.unwrap();

    // Pages of two: doc-0, doc-1, then doc-2 with no next page.
    let (status, body) = call(addr, "GET", "/admin/rooms?limit=2", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let page = json(&body);
    assert_eq!(page["rooms"][0]["room"], "doc-0");
    assert_eq!(page["rooms"][0]["holder"]["id"], "ann");
    assert_eq!(page["rooms"][0]["waiting"], 1);
    assert_eq!(page["next"], "doc-1");
    let (_, body) = call(addr, "GET", "/admin/rooms?limit=2&after=doc-1", Some(TOKEN)).await;
    let page = json(&body);
    assert_eq!(page["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], Value::Null);

    // The change stream, subscribed before the release.
    let mut sse = tokio::net::TcpStream::connect(addr).await.unwrap();
    sse.write_all(
        format!(
            "GET /admin/changes HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut sse = BufReader::new(sse);
    let mut line = String::new();
    sse.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // The response head has gone out: the subscription exists.
    loop {
        line.clear();
        sse.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }

    let (status, body) = call(addr, "POST", "/admin/rooms/doc-0/release", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let r = json(&body);
    assert_eq!(
        (r["outcome"].clone(), r["to"]["id"].clone()),
        ("handed_over".into(), "bob".into())
    );
    let reason = loop {
        match an.recv().await.expect("ann's notices").kind {
            NoticeKind::Displaced { reason, .. } => break reason,
            _ => continue,
        }
    };
    assert_eq!(reason, DisplacedReason::Server);
    let (_, body) = call(addr, "POST", "/admin/rooms/doc-1/release", Some(TOKEN)).await;
    assert_eq!(json(&body)["outcome"], "pending");
    let (_, body) = call(addr, "POST", "/admin/rooms/nowhere/release", Some(TOKEN)).await;
    assert_eq!(json(&body)["outcome"], "vacant");

    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            line.clear();
            sse.read_line(&mut line).await.unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                return json(data);
            }
        }
    })
    .await
    .expect("a change event");
    assert_eq!(event["room"], "doc-0");
    assert_eq!(event["now"]["holder"]["id"], "bob");

    let (status, _) = call(addr, "POST", "/admin/sessions/not-hex/kick", Some(TOKEN)).await;
    assert_eq!(status, 400);
    let (_, body) = call(
        addr,
        "POST",
        &format!("/admin/sessions/{}/kick", ann.id()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(json(&body)["kicked"], true);
    while an.recv().await.is_some() {}
    assert_eq!(an.close_reason(), Some(Error::Kicked));
    let (_, body) = call(
        addr,
        "POST",
        &format!("/admin/sessions/{}/kick", ann.id()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(json(&body)["kicked"], false);
    assert_eq!(
        hub.holder("doc-0")
            .await
            .unwrap()
            .map(|p| p.id.to_string())
            .as_deref(),
        Some("bob")
    );
}
