//! The examples' `GET /metrics` (the `examples/support` app the documents and multi_node
//! examples serve), over a real socket: after a join and a hand-over, the Prometheus text shows
//! the `occupancy_*` series the occupancy-core docs list.
#![cfg(feature = "axum")]

#[path = "../examples/support/mod.rs"]
mod support;

use occupancy::{Hub, Meta};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_hubs_counters_in_prometheus_text() {
    let hub = Hub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = support::app(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (ann, _an) = hub
        .connect(Some("ann".into()), Meta::empty())
        .await
        .unwrap();
    let (bob, _bn) = hub
        .connect(Some("bob".into()), Meta::empty())
        .await
        .unwrap();
    ann.join("doc", None).await.unwrap();
    bob.join("doc", None).await.unwrap();
    ann.leave("doc").await.unwrap();

    let resp = get(addr, support::METRICS_PATH).await;
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for line in [
        r#"occupancy_requests_total{op="join",result="ok"} 2"#,
        r#"occupancy_requests_total{op="leave",result="ok"} 1"#,
        "occupancy_released_total 1",
        "occupancy_rooms 1",
        "occupancy_sessions 2",
        "occupancy_connections 2",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line:?} missing from:\n{body}"
        );
    }
    assert!(
        body.contains("occupancy_request_duration_seconds"),
        "{body}"
    );
}
